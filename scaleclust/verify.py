"""Check the run directory's invariants (see README, "Run directory"):

- every input shard is committed, and its embeddings + errors rows equal its marker's row count;
- each sample of a shard appears exactly once in that shard's embeddings ∪ errors (with `deep`, the
  shards are re-read and their keys compared as multisets: a key the input repeats is embedded once and
  its repeats are errors);
- each embedded key is unique across the dataset (a key that the input repeats in several shards is
  embedded once and recorded as DuplicateKey in the other shards' errors);
- each embedded key appears exactly once in assignments.
Runs in one process, shard by shard; keys are held as 64-bit hashes for the cross-shard check.
"""
from __future__ import annotations

import hashlib
import numpy as np

from scaleclust.config import StorageConfig
from scaleclust.pipeline import recorded
from scaleclust.rundir import RunDir
from scaleclust.sources import describe, shard_keys


def _hashes(keys: list[str]) -> np.ndarray:
    return np.asarray([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys],
                      dtype=np.uint64)


def verify(url: str, storage: StorageConfig | None = None, deep: bool = False) -> list[str]:
    """Return the list of violated invariants (empty when the run is consistent)."""
    probe = RunDir(url, storage or StorageConfig())
    if not probe.exists(probe.config):
        return [f"{url}: no config.yaml; not a run directory"]
    cfg, run, shards = recorded(url, storage)
    problems: list[str] = []
    embedded = run.committed("embeddings")
    assigned = run.committed("assignments")
    seen: list[np.ndarray] = []
    for shard, spec in sorted(shards.items()):
        marker = embedded.get(shard)
        if marker is None:
            problems.append(f"shard {shard} ({describe(spec)}): not committed (no embeddings/{shard}.done.json)")
            continue
        keys = run.read_table(run.embeddings(shard), ["key"])["key"].to_pylist()
        errors = run.read_table(run.errors(shard), ["key"])["key"].to_pylist() if marker["errors"] else []
        if (len(keys), len(errors)) != (marker["embedded"], marker["errors"]):
            problems.append(f"shard {shard}: {len(keys)} embedded + {len(errors)} errors on disk, marker says "
                            f"{marker['embedded']} + {marker['errors']}")
        if len(set(keys)) != len(keys):
            problems.append(f"shard {shard}: an embedded key appears more than once")
        if deep:
            inputs = shard_keys(shard, spec, cfg.input, run.storage)
            if sorted(inputs) != sorted(keys + errors):
                missing = set(inputs) - set(keys + errors)
                extra = set(keys + errors) - set(inputs)
                problems.append(f"shard {shard}: input keys differ from embeddings ∪ errors "
                                f"(missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]})")
        seen.append(_hashes(keys))
        if shard in assigned:
            got = run.read_table(run.assigned(shard, assigned[shard]), ["key"])["key"].to_pylist()
            if len(got) != len(set(got)) or set(got) != set(keys):
                problems.append(f"shard {shard}: assignments keys are not exactly the embedded keys "
                                f"({len(got)} rows, {len(set(got) ^ set(keys))} differ)")
        else:
            problems.append(f"shard {shard}: no assignments (assignments/{shard}.done.json missing)")
    if seen:
        hashes = np.sort(np.concatenate(seen))
        dups = int((hashes[1:] == hashes[:-1]).sum())
        if dups:
            problems.append(f"{dups} embedded key(s) appear in more than one shard")
    return problems
