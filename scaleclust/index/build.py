"""Train an empty IVF index once on a sample; add each embeddings shard into its own copy.

Everything crosses process boundaries as bytes (faiss.serialize_index), so a Ray stage only moves
bytes: ``train(sample) -> bytes``, ``add(empty, vectors, first_id) -> bytes``,
``merge(parts) -> bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np

from scaleclust.index.choose import IndexSpec
from scaleclust.index.device import to_device, to_host


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


def train(sample: np.ndarray, spec: IndexSpec) -> bytes:
    """Train the coarse quantizer (and PQ codebooks) on ``sample``; return the empty index as bytes.

    Use about ``spec.train_rows`` rows. Spherical k-means is faiss's default for inner product. With
    OPQ the rotation is trained first, then the IVF-PQ on the rotated sample.
    """
    x = unit_float32(sample)
    if x.shape[1] != spec.d:
        raise ValueError(f"sample has d={x.shape[1]}, spec says d={spec.d}")
    index = faiss.index_factory(spec.d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    index = to_device(index)
    index.train(x)
    return to_bytes(index)


def add(empty_index: bytes, vectors: np.ndarray, first_id: int) -> bytes:
    """Add one shard's vectors, ids first_id .. first_id+len-1, to a copy of the trained index."""
    x = unit_float32(vectors)
    index = to_device(from_bytes(empty_index))
    if index.ntotal:
        raise ValueError("add() expects the empty trained index from train()")
    index.add_with_ids(x, np.arange(first_id, first_id + len(x), dtype=np.int64))
    return to_bytes(index)


def merge(parts: Iterable[bytes]) -> bytes:
    """Merge per-shard indexes (same trained quantizer and rotation) into one group index; ids are kept."""
    merged = None
    for part in parts:
        index = from_bytes(part)
        if merged is None:
            merged = index
        else:
            faiss.extract_index_ivf(merged).merge_from(faiss.extract_index_ivf(index), 0)
            merged.ntotal = faiss.extract_index_ivf(merged).ntotal
    if merged is None:
        raise ValueError("merge() needs at least one index")
    return to_bytes(merged)
