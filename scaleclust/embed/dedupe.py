"""Keys are unique across the dataset: a key that several shards contain is kept in the first shard
(by name) and recorded in errors/ of the others ("DuplicateKey: kept in shard S"), so nothing silently
disappears and every key stays exactly once in embeddings ∪ errors.

Keys are counted in partitions of at most KEYS_PER_TASK rows, so no process holds more keys than that:
one partition is a single Ray task, more are a distributed Ray Data shuffle (groupby). Only the
duplicates come back to the driver. A shard that loses rows is recommitted with a new marker, so its
assignments are redone.
"""
from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from scaleclust.failures import retryable_rows
from scaleclust.parallel import map_shards
from scaleclust.rundir import RunDir
from scaleclust.storage import arrow_filesystem


KEYS_PER_TASK = 2_000_000  # keys one process counts (~100 MB); a shuffle's start-up costs seconds


@ray.remote(num_cpus=0.5)
def _repeated_in_one_task(run: RunDir, shards: list[str]) -> frozenset[str]:
    keys = pa.chunked_array([run.read_table(run.embeddings(s), ["key"])["key"].combine_chunks() for s in shards])
    counts = pc.value_counts(keys)
    return frozenset(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())


def repeated_keys(run: RunDir, shards: list[str], rows: int, keys_per_task: int = KEYS_PER_TASK) -> frozenset[str]:
    """Keys found in more than one row of these shards (`rows` in all)."""
    partitions = -(-rows // keys_per_task)
    if partitions <= 1:
        return ray.get(_repeated_in_one_task.remote(run, shards))
    fs, _ = arrow_filesystem(run.url, run.storage)
    paths = [arrow_filesystem(run.embeddings(s), run.storage)[1] for s in shards]
    counts = ray.data.read_parquet(paths, columns=["key"], filesystem=fs).groupby("key", num_partitions=partitions).count()
    return frozenset(row["key"] for row in counts.filter(expr=col("count()") > 1).iter_rows())


def _holders(item: dict[str, Any], run: RunDir, keys: frozenset[str]) -> tuple[str, list[str]]:
    """The repeated keys this shard holds."""
    found = [k for k in run.read_table(run.embeddings(item["shard"]), ["key"])["key"].to_pylist() if k in keys]
    return item["shard"], found


def find_duplicates(run: RunDir, shards: list[str], rows: int,
                    keys_per_task: int = KEYS_PER_TASK) -> dict[str, list[str]]:
    """Key -> the sorted shards that contain it, for keys found in more than one row: the repeated keys
    are counted (`repeated_keys`), then one task per shard says which of them it holds."""
    repeated = repeated_keys(run, shards, rows, keys_per_task)
    if not repeated:
        return {}
    holders: dict[str, list[str]] = {}
    for shard, keys in map_shards(_holders, [{"shard": s} for s in shards], num_cpus=0.5, run=run, keys=repeated):
        for key in keys:
            holders.setdefault(key, []).append(shard)
    return {key: sorted(found) for key, found in holders.items()}


def drop_duplicates(run: RunDir, shard: str, kept_in: dict[str, str]) -> dict[str, Any]:
    """Move the rows of `kept_in` (key -> shard that keeps it) from this shard's embeddings to its
    errors, then recommit the shard. Errors are written first: a kill in between leaves the key still
    embedded here, and the next check moves it again without recording it twice."""
    table = run.read_table(run.embeddings(shard))
    drop = np.isin(np.asarray(table["key"].to_pylist(), dtype=object), list(kept_in))
    marker = run.marker(run.embeddings_marker(shard))
    old = run.read_table(run.errors(shard)) if marker["errors"] else None
    recorded = set(old["key"].to_pylist()) if old is not None else set()
    keys = [k for k in table.filter(pa.array(drop))["key"].to_pylist() if k not in recorded]
    new = pa.table({"key": pa.array(keys, pa.string()), "shard": pa.array([shard] * len(keys), pa.string()),
                    "stage": pa.array(["embed"] * len(keys), pa.string()),
                    "error": pa.array([f"DuplicateKey: kept in shard {kept_in[k]}" for k in keys], pa.string()),
                    "retryable": pa.array([False] * len(keys), pa.bool_())})
    if old is not None and "retryable" not in old.column_names:  # written before the column existed
        old = old.append_column("retryable", pa.array(retryable_rows(old), pa.bool_()))
    errors = pa.concat_tables([old.select(new.column_names), new]) if old is not None else new
    kept = table.filter(pa.array(~drop))
    run.write_table(run.errors(shard), errors)
    run.write_table(run.embeddings(shard), kept)
    marker.update(embedded=len(kept), errors=len(errors), commit=uuid.uuid4().hex)
    run.write_marker(run.embeddings_marker(shard), marker)
    return marker


def resolve_duplicates(run: RunDir) -> int:
    """Find keys held by several committed shards and keep each in its first shard; returns how many
    rows moved to errors."""
    markers = {s: m for s, m in run.committed("embeddings").items() if m["embedded"]}  # empty files: no schema
    if not markers:
        return 0
    duplicates = find_duplicates(run, sorted(markers), sum(m["embedded"] for m in markers.values()))
    moves: dict[str, dict[str, str]] = {}
    for key, holders in duplicates.items():
        for shard in holders[1:]:
            moves.setdefault(shard, {})[key] = holders[0]
    for shard, kept_in in sorted(moves.items()):
        drop_duplicates(run, shard, kept_in)
    return sum(len(v) for v in moves.values())
