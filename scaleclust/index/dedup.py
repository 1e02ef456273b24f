"""Near-duplicates of a run: pairs above a cosine threshold, groups, one keeper each -> duplicates.parquet.

scope 'cluster': exact pairs among rows of the same cluster (assignments/), in Ray tasks that each take a
bucket of clusters (cluster % buckets) sized to fit memory. scope 'all': range search of every row over
the whole sharded index through the search actors (approximate: IVF misses pairs in unprobed cells).
Groups and keepers follow scaleclust.index.dedup (keeper: the most central member, ties to the lowest id).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import ray

from scaleclust.failures import NotReady
from scaleclust.tables import embedding_matrix
from scaleclust.index.pairs import Pairs, group_duplicates, pairs_within_clusters, removal_counts
from scaleclust.index.actors import searchers, shared
from scaleclust.index.manifest import ids_to_keys, load_manifest, shard_vectors
from scaleclust.parallel import map_shards
from scaleclust.rundir import RunDir

BUCKET_BYTES = 2 << 30  # float32 vectors one cluster-bucket task holds at once


def bucket_pairs(item: dict[str, Any], run: RunDir, manifest: dict[str, Any], threshold: float) -> Pairs:
    """Exact within-cluster pairs among the rows whose cluster falls in this bucket (a Ray task)."""
    vectors, ids, clusters = [], [], []
    assigned = run.committed("assignments")
    for shard, entry in manifest["shards"].items():
        cluster = run.read_table(run.assigned(shard, assigned[shard]), ["cluster"])["cluster"].to_numpy()
        rows = np.flatnonzero(cluster % item["buckets"] == item["bucket"])
        table = run.read_table(run.embeddings(shard), ["embedding"]).take(rows)
        vectors.append(embedding_matrix(table["embedding"]))
        ids.append(entry["first_id"] + rows)
        clusters.append(cluster[rows])
    return pairs_within_clusters(np.concatenate(vectors), np.concatenate(ids), np.concatenate(clusters), threshold)


def find_pairs(run: RunDir, manifest: dict[str, Any], threshold: float, scope: Literal["cluster", "all"],
               nprobe: int, per_actor: int) -> Pairs:
    """Every pair with cosine >= threshold, within clusters or over the whole index."""
    if scope == "cluster":
        missing = sorted(set(manifest["shards"]) - set(run.committed("assignments")))
        if missing:
            raise NotReady(f"dedup --scope cluster: no assignments for {missing[:3]}...; run assign first")
        buckets = max(1, math.ceil(manifest["rows"] * manifest["spec"]["d"] * 4 / BUCKET_BYTES))
        items = [{"bucket": b, "buckets": buckets} for b in range(buckets)]
        return Pairs.concat(map_shards(bucket_pairs, items, run=run, manifest=manifest, threshold=threshold))
    with searchers(run, manifest, per_actor) as actors:
        found = []
        for turn, (first_id, vectors) in enumerate(shard_vectors(run, manifest)):
            ids = np.arange(first_id, first_id + len(vectors))
            ref, coarse = shared(actors, vectors, nprobe, turn)  # the actors take turns assigning shards
            found += ray.get([a.pairs.remote(ref, ids, threshold, nprobe, coarse) for a in actors])
    return Pairs.concat(found)


def dedup(run: RunDir, threshold: float, thresholds: Sequence[float], scope: Literal["cluster", "all"],
          nprobe: int, per_actor: int) -> tuple[pa.Table, dict[float, int]]:
    """Write RUN/duplicates.parquet for `threshold`; return it and the rows removed at each of `thresholds`."""
    manifest = load_manifest(run)
    pairs = find_pairs(run, manifest, min([threshold, *thresholds]), scope, nprobe, per_actor)
    kept = pairs.above(threshold)
    dups = group_duplicates(kept)
    best = np.full(len(dups.ids), -np.inf, np.float32)
    for end in (kept.a, kept.b):
        np.maximum.at(best, np.searchsorted(dups.ids, end), kept.sims)
    keys = ids_to_keys(run, manifest, np.concatenate([dups.ids, dups.group]))
    table = pa.table({"key": pa.array(keys[:len(dups.ids)], pa.string()), "group": pa.array(dups.group, pa.int64()),
                      "keeper_key": pa.array(keys[len(dups.ids):], pa.string()),
                      "is_keeper": pa.array(dups.keep), "max_sim": pa.array(best, pa.float32())})
    run.write_table(run.path("duplicates.parquet"), table)
    return table, removal_counts(pairs, thresholds)
