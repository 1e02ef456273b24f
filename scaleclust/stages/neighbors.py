"""Neighbors stage: the kNN graph of a uniform sample of rows against the whole index, and its recall.

Writes RUN/neighbors/part-NNNNN.parquet (key, neighbor_keys, sims; the row itself excluded) in parts of
at most PART_ROWS rows, then neighbors/done.json last. Every run also measures recall@k of the fan-out
search against exact search (the shards streamed one by one) and merges it into metrics.json.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from scaleclust.config import Config
from scaleclust.index.knn import drop_self, exact_search, recall_at_k
from scaleclust.index.actors import fan_out, searchers
from scaleclust.index.manifest import ids_to_keys, load_manifest, resolve_nprobe, sample_rows, shard_vectors
from scaleclust.rundir import RunDir
from scaleclust.storage import remove
from scaleclust.stage import Stage, on_request

PART_ROWS = 10_000


def record_metrics(run: RunDir, name: str, values: dict[str, Any]) -> None:
    """Merge one section into metrics.json, keeping every other key."""
    metrics = run.marker(run.metrics) or {}
    metrics[name] = values
    run.write_json(run.metrics, metrics)


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Write the kNN graph (unless committed for this index and config) and record recall@k."""
    started = time.time()
    manifest = load_manifest(run)
    k, nprobe = cfg.index.k, resolve_nprobe(cfg.index.nprobe, manifest)
    vectors, ids, keys = sample_rows(run, manifest, cfg.index.queries, cfg.index.seed)
    done_url = run.path("neighbors", "done.json")
    wanted = {"rows": len(ids), "k": k, "nprobe": nprobe, "seed": cfg.index.seed, "index_next_id": manifest["next_id"],
              "index_rows": manifest["rows"]}
    done = run.marker(done_url)
    with searchers(run, manifest, cfg.index.shards_per_searcher) as actors:
        if done is None or {f: done.get(f) for f in wanted} != wanted:
            remove(run.path("neighbors"), run.storage, recursive=True)
            parts = 0
            for start in range(0, len(ids), PART_ROWS):
                q, qid = vectors[start:start + PART_ROWS], ids[start:start + PART_ROWS]
                sims, found = drop_self(fan_out(actors, q, k + 1, nprobe), qid, k)
                run.write_table(run.path("neighbors", f"part-{parts:05d}.parquet"), pa.table({
                    "key": pa.array(keys[start:start + PART_ROWS], pa.string()),
                    "neighbor_keys": pa.array([[n for n in row if n is not None]
                                               for row in ids_to_keys(run, manifest, found)], pa.list_(pa.string())),
                    "sims": pa.array([s[f >= 0].tolist() for s, f in zip(sims, found)], pa.list_(pa.float32()))}))
                parts += 1
            done = {**wanted, "parts": parts}
            run.write_marker(done_url, done)
        rng = np.random.default_rng(cfg.index.seed)
        pick = np.sort(rng.choice(len(ids), size=min(cfg.index.recall_queries, len(ids)), replace=False))
        approx = drop_self(fan_out(actors, vectors[pick], k + 1, nprobe), ids[pick], k)
    exact = drop_self(exact_search(shard_vectors(run, manifest), vectors[pick], k + 1), ids[pick], k)
    recall = recall_at_k(approx[1], exact[1])
    metrics = {"recall_at_k": round(recall, 4), "k": k, "nprobe": nprobe, "recall_queries": len(pick),
               "graph_rows": done["rows"], "parts": done["parts"], "index": manifest["spec"]["factory"]}
    record_metrics(run, "neighbors", metrics)
    print(f"neighbors: {done['rows']} rows x {k} neighbours in {done['parts']} part(s); "
          f"recall@{k} {recall:.3f} on {len(pick)} queries (nprobe {nprobe})")
    return {**metrics, "seconds": round(time.time() - started, 2)}


def status(run: RunDir) -> dict[str, Any]:
    """Committed when metrics.json records the kNN graph's recall."""
    return {"done": "neighbors" in (run.marker(run.metrics) or {})}


STAGE = Stage("neighbors", reads=("index/", "embeddings/"),
              commits=("neighbors/PART.parquet", "metrics.json"),
              resources="search actors of 0.5 CPU, each holding index.shards_per_searcher shard indexes",
              run=lambda ctx: run(ctx.cfg, ctx.run), status=status, when=on_request)
