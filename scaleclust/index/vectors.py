"""A shard's stored fp16 vectors for exact re-ranking, read by row and never loaded whole.

The index stage writes one ``.npy`` file (float16, L2-normalised rows, row i = global id first_id + i)
beside each IVF-PQ shard index. A searcher memory-maps it when the run directory is local (the page
cache holds what is read, reclaimable, not the process) and fetches only the wanted rows with ranged
reads on object stores, so the RAM a searcher holds per vector stays the PQ code plus its id.
"""
from __future__ import annotations

import io

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from scaleclust.config import StorageConfig
from scaleclust.storage import filesystem


def npy_bytes(array: np.ndarray, dtype: type = np.float16) -> bytes:
    """The .npy file of ``array`` as ``dtype`` (vectors: float16, their rows already L2-normalised)."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return out.getvalue()


class StoredVectors:
    """Rows of one shard's vector file by global id: ``rows(ids)`` -> float16 (len(ids), d)."""

    def __init__(self, url: str, storage: StorageConfig, first_id: int) -> None:
        self.first_id = first_id
        self.fs, self.path = filesystem(url, storage)
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.array = np.load(self.path, mmap_mode="r")
            self.count, self.d = self.array.shape
            return
        with self.fs.open(self.path, "rb") as handle:
            header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(handle) == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(handle)
            self.offset = handle.tell()
        if fortran or dtype != np.float16 or len(shape) != 2:
            raise ValueError(f"{url}: expected a C-order float16 matrix, got {dtype} {shape}")
        self.count, self.d = shape

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), d) float16 for global ids that all lie in this shard (else ValueError): fancy
        indexing of the memory map (the page cache serves repeats), or one ranged read per distinct
        row of a remote file (fsspec runs them concurrently)."""
        rows = np.asarray(ids, np.int64) - self.first_id
        if rows.size and (rows.min() < 0 or rows.max() >= self.count):
            raise ValueError(f"{self.path}: ids outside {self.first_id}..{self.first_id + self.count - 1}")
        if self.local:
            return self.array[rows]
        unique, inverse = np.unique(rows, return_inverse=True)
        size = 2 * self.d
        starts = [self.offset + int(r) * size for r in unique]
        parts = self.fs.cat_ranges([self.path] * len(starts), starts, [s + size for s in starts])
        return np.frombuffer(b"".join(parts), np.float16).reshape(len(unique), self.d)[inverse]
