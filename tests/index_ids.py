"""Global int64 ids for sharded embeddings: shard i owns ids offsets[i] .. offsets[i+1]-1.

Ids are assigned in shard order, so id -> (shard, row) is a binary search over the offsets and the
manifest stores only the shard names and their row counts, never one entry per vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IdRanges:
    """Shard names in id order and their row counts; ids of shard i start at ``first_id(i)``."""

    shards: tuple[str, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_counts(cls, shards: Sequence[str], counts: Sequence[int]) -> IdRanges:
        """Build from shard names and row counts, in the order ids are assigned."""
        if len(shards) != len(counts) or len(set(shards)) != len(shards):
            raise ValueError("shards must be unique and match counts one to one")
        if any(c < 0 for c in counts):
            raise ValueError("row counts must be >= 0")
        return cls(tuple(shards), tuple(int(c) for c in counts))

    @property
    def offsets(self) -> np.ndarray:
        """int64 array of len(shards)+1: first id of each shard, then the total."""
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64)

    @property
    def total(self) -> int:
        """Number of ids assigned."""
        return int(sum(self.counts))

    def first_id(self, shard: str) -> int:
        """First global id of a shard (the ``first_id`` to pass to ``build.add``)."""
        return int(self.offsets[self.shards.index(shard)])

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map global ids to (shard position, row in shard); raises on ids outside [0, total)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.total):
            raise ValueError(f"ids must lie in [0, {self.total}); -1 marks a missing neighbour")
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        return shard, ids - self.offsets[shard]

    def to_dict(self) -> dict:
        """JSON-ready form for manifest.json."""
        return {"shards": list(self.shards), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: dict) -> IdRanges:
        """Inverse of :meth:`to_dict`."""
        return cls.from_counts(data["shards"], data["counts"])
