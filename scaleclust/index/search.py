"""Fan-out search over per-shard (or per-group) IVF indexes that share one trained quantizer.

The queries are assigned to their ``nprobe`` nearest coarse centroids once (:func:`coarse_assign`,
with the first index's quantizer, or given by the caller); every index is then scanned with that
assignment (``search_preassigned``) and the per-index top-k lists are merged exactly. Because the
indexes are copies of one trained index, the result equals one unsharded index over the same data.
Indexes may come from a generator that loads them one at a time, so a caller can hold one index plus
a (queries x k) result in memory.

An OPQ index is an IVF behind a rotation: the queries are rotated once and the IVF inside is
searched. With :class:`Refine`, the indexes' merged top ``factor * k`` PQ candidates are re-scored
exactly against the shards' stored fp16 vectors (as faiss's IndexRefine does for one index), so the
similarities are exact and the recall is that of the candidate list, not of the PQ distances.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from scaleclust.index.build import from_bytes, ivf_of, transforms, unit_float32
from scaleclust.index.device import to_device
from scaleclust.index.vectors import StoredVectors

# (sims float32 (nq, k), ids int64 (nq, k)); a missing neighbour is sim -inf, id -1
Result = tuple[np.ndarray, np.ndarray]
# Result plus each neighbour's vector, float16 (nq, k, d)
VectorResult = tuple[np.ndarray, np.ndarray, np.ndarray]
RERANK_BLOCK = 256  # queries re-scored at a time: block x factor*k x d float16 stays ~50 MB at d 512
ROUGH_KEEP = 3  # x k candidates that the fp16 pass of rerank() hands to the exact fp32 pass


@dataclass(frozen=True)
class Refine:
    """Exact re-ranking: ``factor`` x k PQ candidates over all the indexes searched, re-scored against
    ``stored``, the stored vectors of those indexes (any order; each covers its own id range)."""

    stored: Sequence[StoredVectors]
    factor: int

    def take(self, ids: np.ndarray) -> np.ndarray:
        """float16 vectors of global ids (ids.shape + (d,); -1 gives zeros), each from its shard's file."""
        flat = np.asarray(ids, np.int64).reshape(-1)
        order = sorted(self.stored, key=lambda s: s.first_id)
        owner = np.searchsorted([s.first_id for s in order], flat, side="right") - 1
        owner[flat < 0] = -2  # missing neighbours stay zero
        out = np.zeros((len(flat), order[0].d), np.float16)
        for i in np.unique(owner[owner >= -1]):  # -1: below every range, which rows() reports
            mine = np.flatnonzero(owner == i)
            out[mine] = order[max(i, 0)].rows(flat[mine])
        return out.reshape(*np.shape(ids), order[0].d)


@dataclass(frozen=True)
class Probe:
    """One index ready for a preassigned search: the IVF inside it, the queries in its space (rotated
    by OPQ when the index has it), and the queries' shared coarse assignment."""

    index: faiss.Index
    ivf: faiss.IndexIVFInterface
    queries: np.ndarray
    centroid_ids: np.ndarray
    centroid_sims: np.ndarray


def empty_result(nq: int, k: int) -> Result:
    """A result with no neighbours yet: sims -inf, ids -1."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def merge_topk(a: Result, b: Result, k: int) -> Result:
    """Exact top-k of two results by descending similarity, ties to the smaller id, missing last."""
    sims = np.concatenate([a[0], b[0]], axis=1)
    ids = np.concatenate([a[1], b[1]], axis=1)
    sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def merge_topk_vectors(a: VectorResult, b: VectorResult, k: int) -> VectorResult:
    """merge_topk that carries each neighbour's vector (nq, k, d) along with its id."""
    sims, ids = merge_topk(a[:2], b[:2], k)
    both = np.concatenate([a[1], b[1]], axis=1)
    vectors = np.concatenate([a[2], b[2]], axis=1)
    # position of each kept id among the concatenated candidates (ids are unique per row, -1 repeats)
    pos = np.argmax(both[:, None, :] == ids[:, :, None], axis=2)
    return sims, ids, np.take_along_axis(vectors, pos[:, :, None], axis=1)


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """float16 vectors (ids.shape + (d,)) of ids held by this index (zeros for -1): exact for Flat and
    fp16 lists, PQ's decoding (rotated back when OPQ) for IVF-PQ. Builds the id map on first use."""
    ivf = ivf_of(index)
    if ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    flat = np.asarray(ids, np.int64).reshape(-1)
    out = np.zeros((len(flat), index.d), np.float16)
    found = flat >= 0
    if found.any():
        x = ivf.reconstruct_batch(flat[found])
        for transform in reversed(transforms(index)):
            x = transform.reverse_transform(x)
        out[found] = x.astype(np.float16)
    return out.reshape(*np.shape(ids), index.d)


def as_index(item: faiss.Index | bytes) -> faiss.Index:
    """Accept an IVF index, optionally behind OPQ (used where it lives), or its bytes (loaded onto the
    GPU when present). Raises on a shard stored without its quantizer (see build.load_shard)."""
    is_bytes = isinstance(item, bytes | bytearray | memoryview)
    index = to_device(from_bytes(item)) if is_bytes else item
    ivf = ivf_of(index)
    if ivf.quantizer.ntotal != ivf.nlist:
        raise ValueError(f"IVF index with {ivf.quantizer.ntotal} of its {ivf.nlist} coarse centroids: a shard "
                         "stored without its quantizer is loaded with build.load_shard(data, trained)")
    return index


def rerank(queries: np.ndarray, result: Result, refine: Refine, k: int) -> Result:
    """Re-score the candidates of ``result`` exactly against their stored vectors; keep the best k.

    A first pass in fp16 (torch's CPU half matmul: ~10x faster than casting every candidate to fp32;
    error <= ~3e-4) keeps the best ROUGH_KEEP x k; those are then scored exactly in fp32.
    """
    _, ids = result
    out = empty_result(len(queries), k)
    keep = min(ROUGH_KEEP * k, ids.shape[1])
    for start in range(0, len(queries), RERANK_BLOCK):
        block = slice(start, start + RERANK_BLOCK)
        q, cand = queries[block], ids[block]
        vectors = refine.take(cand)
        rough = torch.bmm(torch.from_numpy(vectors), torch.from_numpy(q).half()[:, :, None])[:, :, 0]
        rough = np.where(cand < 0, -np.inf, rough.float().numpy())
        best = np.argpartition(-rough, keep - 1, axis=1)[:, :keep]
        cand = np.take_along_axis(cand, best, axis=1)
        exact = np.einsum("qd,qcd->qc", q, np.take_along_axis(vectors, best[:, :, None], axis=1).astype(np.float32))
        out[0][block], out[1][block] = merge_topk((exact, cand), empty_result(len(q), 0), k)
    return out


@dataclass(frozen=True)
class Coarse:
    """Unit queries in the IVF's space (rotated by OPQ when the index has it), their nprobe nearest lists
    with similarities, and the nlist of the index that assigned them."""

    queries: np.ndarray
    centroid_ids: np.ndarray
    centroid_sims: np.ndarray
    nlist: int


def coarse_assign(index: faiss.Index | bytes, queries: np.ndarray, nprobe: int) -> Coarse:
    """The coarse assignment of unit ``queries`` by ``index``'s rotation and quantizer, shared by every
    copy of that trained index: a fan-out computes it once per batch, not once per search actor."""
    index = as_index(index)
    ivf = ivf_of(index)
    rotated = queries
    for transform in transforms(index):
        rotated = transform.apply(rotated)
    sims, ids = ivf.quantizer.search(rotated, min(nprobe, ivf.nlist))
    return Coarse(rotated, ids, sims, ivf.nlist)


def preassigned(indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, nprobe: int,
                coarse: Coarse | None = None) -> Iterator[Probe]:
    """Yield each index as a :class:`Probe` with the queries' one shared coarse assignment.

    The assignment is ``coarse`` when given, else computed with the first index; each IVF gets its
    nprobe set. All indexes must be copies of one trained index (checked: same nlist).
    """
    for item in indexes:
        index = as_index(item)
        ivf = ivf_of(index)
        if coarse is None:
            coarse = coarse_assign(index, queries, nprobe)
        if ivf.nlist != coarse.nlist:
            raise ValueError(f"indexes were trained separately: nlist {ivf.nlist} != {coarse.nlist}")
        ivf.nprobe = coarse.centroid_ids.shape[1]
        yield Probe(index, ivf, coarse.queries, coarse.centroid_ids, coarse.centroid_sims)


def search(indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, k: int, nprobe: int,
           refine: Refine | None = None, coarse: Coarse | None = None) -> Result:
    """Top-k neighbours of ``queries`` over all indexes: (sims (nq, k), ids (nq, k)) best first.

    Queries are L2-normalised here; ``nprobe`` is set on each index as it is searched (``coarse``: the
    queries' assignment computed already). With ``refine`` the merged top ``refine.factor * k`` PQ
    candidates of all indexes are re-scored exactly, once.
    """
    q = unit_float32(queries)
    want = refine.factor * k if refine else k
    best = empty_result(len(q), want)
    for probe in preassigned(indexes, q, nprobe, coarse):
        found = probe.ivf.search_preassigned(probe.queries, want, probe.centroid_ids, probe.centroid_sims)
        best = merge_topk(best, found, want)
    return rerank(q, best, refine, k) if refine else best


def search_vectors(indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, k: int, nprobe: int,
                   refine: Refine | None = None, coarse: Coarse | None = None) -> VectorResult:
    """:func:`search` that also returns each neighbour's vector: the stored one with re-ranking, else
    reconstructed from the index holding it."""
    if refine:
        sims, ids = search(indexes, queries, k, nprobe, refine, coarse)
        return sims, ids, refine.take(ids)
    q = unit_float32(queries)
    best = (*empty_result(len(q), k), np.zeros((len(q), k, q.shape[1]), np.float16))
    for probe in preassigned(indexes, q, nprobe, coarse):
        sims, ids = probe.ivf.search_preassigned(probe.queries, k, probe.centroid_ids, probe.centroid_sims)
        best = merge_topk_vectors(best, (sims, ids, reconstruct(probe.index, ids)), k)
    return best
