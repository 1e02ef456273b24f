"""nprobe from measured recall: the smallest nprobe whose recall@k reaches index.target_recall.

After the index stage's adds, a seeded sample of ``index.recall_queries`` indexed rows is searched
through the same search actors as every later search (each row's own hit dropped, so the rows act as
held-out queries against the rest), and compared with exact search over the shards streamed one at
a time. nprobe doubles from 1 until the target is met or every list is probed; the manifest records
the choice and every recall measured on the way, and `index.nprobe: auto` uses it.
"""
from __future__ import annotations

from typing import Any

from scaleclust.config import IndexConfig
from scaleclust.index.knn import drop_self, exact_search, recall_at_k
from scaleclust.index.neighbors import sample_rows
from scaleclust.index.searcher import fan_out, searchers
from scaleclust.index.stage import shard_vectors
from scaleclust.rundir import RunDir

SEED_OFFSET = 1  # a different sample from the neighbors stage's recall check (same index.seed)


def nprobe_ladder(nlist: int) -> list[int]:
    """1, 2, 4, ... up to nlist (nlist itself last): the nprobe values tried, cheapest first."""
    ladder = [1]
    while ladder[-1] < nlist:
        ladder.append(min(2 * ladder[-1], nlist))
    return ladder


def calibrate(run: RunDir, manifest: dict[str, Any], cfg: IndexConfig) -> dict[str, Any]:
    """Measure recall@k at increasing nprobe; return the manifest's calibration entry."""
    k = cfg.k
    vectors, ids, _ = sample_rows(run, manifest, cfg.recall_queries, cfg.seed + SEED_OFFSET)
    exact = drop_self(exact_search(shard_vectors(run, manifest), vectors, k + 1), ids, k)
    tried: dict[str, float] = {}
    with searchers(run, manifest, cfg.shards_per_searcher) as actors:
        for nprobe in nprobe_ladder(manifest["spec"]["nlist"]):
            approx = drop_self(fan_out(actors, vectors, k + 1, nprobe), ids, k)
            tried[str(nprobe)] = round(recall_at_k(approx[1], exact[1]), 4)
            if tried[str(nprobe)] >= cfg.target_recall:
                break
    chosen = int(next(reversed(tried)))
    reached = tried[str(chosen)] >= cfg.target_recall
    print(f"index: nprobe {chosen} gives recall@{k} {tried[str(chosen)]:.3f} on {len(ids)} sampled rows"
          + ("" if reached else f": the target {cfg.target_recall} is not reached even probing every list"))
    return {"nprobe": chosen, "recall_at_k": tried[str(chosen)], "reached": reached, "k": k,
            "target_recall": cfg.target_recall, "queries": len(ids), "rows": manifest["rows"], "tried": tried}
