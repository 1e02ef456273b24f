"""nprobe from measured recall: the smallest nprobe whose recall@k reaches index.target_recall.

After the index stage's adds, a seeded sample of ``index.recall_queries`` indexed rows is searched
through the same search actors as every later search (each row's own hit dropped, so the rows act as
held-out queries against the rest), and compared with exact search over the shards streamed one at
a time. nprobe doubles from 1 until the target is met or every list is probed; the manifest records
the choice and every recall measured on the way, and `index.nprobe: auto` uses it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaleclust.config import IndexConfig
from scaleclust.index.knn import drop_self, exact_search, recall_at_k
from scaleclust.index.actors import fan_out, searchers
from scaleclust.index.manifest import sample_rows, shard_vectors
from scaleclust.rundir import RunDir

SEED_OFFSET = 1  # a different sample from the neighbors stage's recall check (same index.seed)


def nprobe_ladder(nlist: int) -> list[int]:
    """1, 2, 4, ... up to nlist (nlist itself last): the nprobe values tried, cheapest first."""
    ladder = [1]
    while ladder[-1] < nlist:
        ladder.append(min(2 * ladder[-1], nlist))
    return ladder


def smallest_nprobe(recall_at: Callable[[int], float], nlist: int, target: float) -> tuple[int, dict[str, float]]:
    """Walk :func:`nprobe_ladder` until ``recall_at(nprobe)`` reaches ``target``: (that nprobe, or the
    last tried when none does; {nprobe: recall} of every one tried)."""
    tried: dict[str, float] = {}
    for nprobe in nprobe_ladder(nlist):
        tried[str(nprobe)] = round(recall_at(nprobe), 4)
        if tried[str(nprobe)] >= target:
            break
    return nprobe, tried


def calibrate(run: RunDir, manifest: dict[str, Any], cfg: IndexConfig) -> dict[str, Any]:
    """Measure recall@k at increasing nprobe; return the manifest's calibration entry."""
    k = cfg.k
    vectors, ids, _ = sample_rows(run, manifest, cfg.recall_queries, cfg.seed + SEED_OFFSET)
    exact = drop_self(exact_search(shard_vectors(run, manifest), vectors, k + 1), ids, k)
    with searchers(run, manifest, cfg.shards_per_searcher) as actors:
        chosen, tried = smallest_nprobe(
            lambda nprobe: recall_at_k(drop_self(fan_out(actors, vectors, k + 1, nprobe), ids, k)[1], exact[1]),
            manifest["spec"]["nlist"], cfg.target_recall)
    recall = tried[str(chosen)]
    reached = recall >= cfg.target_recall
    print(f"index: nprobe {chosen} gives recall@{k} {recall:.3f} on {len(ids)} sampled rows"
          + ("" if reached else f": the target {cfg.target_recall} is not reached even probing every list"))
    return {"nprobe": chosen, "recall_at_k": recall, "reached": reached, "k": k, "target_recall": cfg.target_recall,
            "queries": len(ids), "rows": manifest["rows"], "tried": tried}
