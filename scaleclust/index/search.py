"""Fan-out search over per-shard (or per-group) IVF indexes that share one trained quantizer.

The queries are assigned to their ``nprobe`` nearest coarse centroids once, with the first index's
quantizer; every index is then scanned with that assignment (``search_preassigned``) and the
per-index top-k lists are merged exactly. Because the indexes are copies of one trained index, the
result equals one unsharded index over the same data. Indexes may come from a generator that
loads them one at a time, so a searcher holds one index plus a (queries x k) result in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import faiss
import numpy as np

from scaleclust.index.build import from_bytes, unit_float32
from scaleclust.index.device import to_device

# (sims float32 (nq, k), ids int64 (nq, k)); a missing neighbour is sim -inf, id -1
Result = tuple[np.ndarray, np.ndarray]
# Result plus each neighbour's vector, float16 (nq, k, d)
VectorResult = tuple[np.ndarray, np.ndarray, np.ndarray]


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


def reconstruct(index: faiss.IndexIVFInterface, ids: np.ndarray) -> np.ndarray:
    """float16 vectors (ids.shape + (d,)) of ids held by this index (zeros for -1): exact for Flat and
    fp16 lists, PQ's decoding for IVF-PQ. Builds the index's id map on first use."""
    if index.direct_map.type != faiss.DirectMap.Hashtable:
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
    flat = np.asarray(ids, np.int64).reshape(-1)
    out = np.zeros((len(flat), index.d), np.float16)
    found = flat >= 0
    if found.any():
        out[found] = index.reconstruct_batch(flat[found]).astype(np.float16)
    return out.reshape(*np.shape(ids), index.d)


def as_index(item: faiss.Index | bytes) -> faiss.IndexIVFInterface:
    """Accept an IVF index (used where it lives) or its bytes (loaded onto the GPU when present)."""
    is_bytes = isinstance(item, bytes | bytearray | memoryview)
    index = to_device(from_bytes(item)) if is_bytes else item
    if not isinstance(index, faiss.IndexIVFInterface):
        raise TypeError(f"expected an IVF index, got {type(index).__name__}")
    return index


def preassigned(
    indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, nprobe: int
) -> Iterator[tuple[faiss.IndexIVFInterface, np.ndarray, np.ndarray]]:
    """Yield (index, centroid ids, centroid sims) with the queries' one shared coarse assignment.

    The assignment is computed with the first index's quantizer; each index gets ``nprobe`` set.
    All indexes must be copies of one trained index (checked: same nlist).
    """
    coarse = None
    for item in indexes:
        index = as_index(item)
        if coarse is None:
            nlist = index.nlist
            coarse = index.quantizer.search(queries, min(nprobe, nlist))
        elif index.nlist != nlist:
            raise ValueError(f"indexes were trained separately: nlist {index.nlist} != {nlist}")
        index.nprobe = coarse[1].shape[1]
        yield index, coarse[1], coarse[0]


def search(
    indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, k: int, nprobe: int
) -> Result:
    """Top-k neighbours of ``queries`` over all indexes: (sims (nq, k), ids (nq, k)) best first.

    Queries are L2-normalised here; ``nprobe`` is set on each index as it is searched.
    """
    q = unit_float32(queries)
    best = empty_result(len(q), k)
    for index, centroid_ids, centroid_sims in preassigned(indexes, q, nprobe):
        best = merge_topk(best, index.search_preassigned(q, k, centroid_ids, centroid_sims), k)
    return best


def search_vectors(indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, k: int, nprobe: int) -> VectorResult:
    """:func:`search` that also returns each neighbour's vector, reconstructed from the index holding it."""
    q = unit_float32(queries)
    best = (*empty_result(len(q), k), np.zeros((len(q), k, q.shape[1]), np.float16))
    for index, centroid_ids, centroid_sims in preassigned(indexes, q, nprobe):
        sims, ids = index.search_preassigned(q, k, centroid_ids, centroid_sims)
        best = merge_topk_vectors(best, (sims, ids, reconstruct(index, ids)), k)
    return best
