"""Train an empty IVF index once on a sample; add each embeddings shard into its own copy.

Everything crosses process boundaries as bytes (faiss.serialize_index), so a Ray stage only moves
bytes: ``train(small, spec, blocks) -> bytes``, ``add(empty, vectors, first_id) -> bytes``,
``merge(parts) -> bytes``. Every shard's copy shares the trained coarse quantizer (nlist x d floats,
up to 3.2 GB at LAION scale), so the index stage stores shards without it (``add(...,
shared_quantizer=True)``) and :func:`load_shard` puts the trained one back. :func:`add_listed` also
returns each row's LIST_CHOICES nearest lists (the first is the list it is added to), which dedup
``--scope all`` compares rows in without assigning them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from scaleclust.index.choose import IndexSpec
from scaleclust.index.coarse import fill_quantizer, train_centroids
from scaleclust.index.device import to_device, to_host

LIST_CHOICES = 3  # nearest lists kept per row at add time (dedup --scope all: recall in docs/measurements.md)

def unit_float32(x: np.ndarray) -> np.ndarray:
    """C-contiguous float32 copy of x with L2-normalised rows (inner product = cosine)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(out)
    return out


def to_bytes(index: faiss.Index) -> bytes:
    """Serialise an index (CPU or GPU) to bytes."""
    return faiss.serialize_index(to_host(index)).tobytes()


def from_bytes(data: bytes) -> faiss.Index:
    """Deserialise bytes from :func:`to_bytes` into a CPU index."""
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def transforms(index: faiss.Index) -> list[faiss.VectorTransform]:
    """The vector transforms in front of the IVF (the OPQ rotation), in the order they apply."""
    if not isinstance(index, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]


def ivf_of(index: faiss.Index) -> faiss.IndexIVFInterface:
    """The IVF index itself, behind an OPQ rotation or not."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if not isinstance(inner, faiss.IndexIVFInterface):
        raise TypeError(f"expected an IVF index, got {type(inner).__name__}")
    return inner


def train(small: np.ndarray, spec: IndexSpec, blocks: Iterable[np.ndarray] | None = None, seed: int = 0) -> bytes:
    """Train the OPQ rotation, coarse centroids and PQ codebooks; return the empty index as bytes.

    ``small`` (about ``spec.small_rows`` rows) trains the rotation, the top level of the centroids and
    the codebooks; ``blocks`` streams the whole training sample (about ``spec.train_rows`` rows) for
    the centroids, one block in memory at a time (default: ``small`` itself). Rows are L2-normalised
    here; the k-means is spherical (inner product = cosine).
    """
    x = unit_float32(small)
    if x.shape[1] != spec.d:
        raise ValueError(f"sample has d={x.shape[1]}, spec says d={spec.d}")
    index = faiss.index_factory(spec.d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    rotations = transforms(index)
    for rotation in rotations:
        rotation.train(x)
        x = rotation.apply(x)

    def rotated(block: np.ndarray) -> np.ndarray:
        block = unit_float32(block)
        for rotation in rotations:
            block = rotation.apply(block)
        return block

    ivf = ivf_of(index)
    fill_quantizer(ivf.quantizer, train_centroids(x, (rotated(b) for b in (blocks or [small])), spec.nlist, seed))
    ivf.train(x)  # the quantizer is full: only the codes' own training (PQ codebooks on residuals) is left
    index.is_trained = True
    return to_bytes(index)


@contextmanager
def borrowed_quantizer(index: faiss.Index, quantizer: faiss.Index) -> Iterator[faiss.Index]:
    """``index`` with its IVF using ``quantizer`` (not owned) inside the block, its own one again after."""
    ivf = ivf_of(index)
    own, owned = ivf.quantizer, ivf.own_fields
    ivf.quantizer, ivf.own_fields = quantizer, False
    try:
        yield index
    finally:
        ivf.quantizer, ivf.own_fields = own, owned


def list_choices(index: faiss.Index, x: np.ndarray, m: int = LIST_CHOICES) -> np.ndarray:
    """The m nearest coarse lists of each unit row of x, best first, int32 (n, m); the first is the
    list an add puts the row in (-1 where the quantizer found fewer than m)."""
    for rotation in transforms(index):
        x = rotation.apply(x)
    return ivf_of(index).quantizer.search(np.ascontiguousarray(x, np.float32), m)[1].astype(np.int32)


def add_listed(empty_index: bytes, vectors: np.ndarray, first_id: int,
               shared_quantizer: bool = False) -> tuple[bytes, np.ndarray]:
    """Add one shard's vectors, ids first_id .. first_id+len-1, to a copy of the trained index; return
    its bytes and the rows' :func:`list_choices`.

    On the CPU the rows go into their first choice as found (one coarse search per row, not two). With
    ``shared_quantizer`` the bytes leave the coarse quantizer out (an empty flat index stands in);
    :func:`load_shard` puts the trained one back.
    """
    x = unit_float32(vectors)
    host = from_bytes(empty_index)
    if host.ntotal:
        raise ValueError("add() expects the empty trained index from train()")
    ids = np.arange(first_id, first_id + len(x), dtype=np.int64)
    lists = list_choices(host, x)
    index = to_device(host)
    if index is host:
        rotated = x
        for rotation in transforms(host):
            rotated = rotation.apply(rotated)
        rotated, first = np.ascontiguousarray(rotated, np.float32), np.ascontiguousarray(lists[:, 0], np.int64)
        ivf_of(host).add_core(len(x), faiss.swig_ptr(rotated), faiss.swig_ptr(ids), faiss.swig_ptr(first))
        host.ntotal = ivf_of(host).ntotal
    else:
        index.add_with_ids(x, ids)
    if not shared_quantizer:
        return to_bytes(index), lists
    index = to_host(index)
    with borrowed_quantizer(index, faiss.IndexFlat(ivf_of(index).d, index.metric_type)) as stripped:
        return to_bytes(stripped), lists


def add(empty_index: bytes, vectors: np.ndarray, first_id: int, shared_quantizer: bool = False) -> bytes:
    """:func:`add_listed`'s index bytes alone."""
    return add_listed(empty_index, vectors, first_id, shared_quantizer)[0]


def load_shard(data: bytes, trained: faiss.Index) -> faiss.Index:
    """A shard index stored without its quantizer (``add(..., shared_quantizer=True)``), given the
    trained index whose quantizer it shares (a CPU index: :func:`to_device` moves it, or the group it
    is merged into)."""
    index = from_bytes(data)
    ivf = ivf_of(index)
    # The empty flat stand-in read from the file (~100 bytes) is not freed: handing a member pointer to
    # Python's ownership (thisown) corrupts SWIG's type table in faiss 1.15 (measured: later reads fail).
    ivf.quantizer, ivf.own_fields = ivf_of(trained).quantizer, False
    # faiss holds a raw pointer to the shared quantizer: keep its owner alive as long as the index
    index.referenced_objects = [*getattr(index, "referenced_objects", []), trained]
    return index


def merge_indexes(indexes: Iterable[faiss.Index]) -> faiss.Index:
    """Move the entries of CPU copies of one trained index into the first (ids kept), one index at a
    time: a search then visits each probed list once per group, not once per shard."""
    merged = None
    for index in indexes:
        if merged is None:
            merged = index
        else:
            ivf_of(merged).merge_from(ivf_of(index), 0)
            merged.ntotal = ivf_of(merged).ntotal
    if merged is None:
        raise ValueError("merge needs at least one index")
    return merged


def merge(parts: Iterable[bytes]) -> bytes:
    """Merge per-shard indexes (same trained quantizer and rotation) into one group index; ids are kept."""
    return to_bytes(merge_indexes(from_bytes(part) for part in parts))
