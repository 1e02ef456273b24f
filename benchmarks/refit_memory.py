"""Memory and time of a head refit's two helper tasks at a production sample's shape, per sample row.

A nightly refit of a head method (update.refit_heads) runs two Ray tasks on the whole refit sample
(cluster.sample_size rows: 2,000,000 x 768 in jobs/laion.yaml, k 1,000): warm_start (novelty of every
row, the old head's clusters, the rows of new concepts) before the training, finish_heads (the new head's
clusters, the prototypes that match ids, the novelty calibration) after it. This script runs the same
pieces in the same order on synthetic unit rows (k Gaussian concepts, and NEW_CONCEPTS more in a fifth of
the NEW_SHARE of rows from new shards) with a real SCAN head of k outputs (random weights),
each sequence in a fresh process, and prints per sequence the peak resident memory above the rows
themselves (bytes per sample row, and as a multiple of the rows' own size) and the seconds. The third
sequence, `kmeans`, is a k-means refit's pieces (update.refit_model once its sample is read: the old
centroids' clusters, the rows of new concepts, k-means from the old centroids plus seeds, the ids, the
calibration); the fourth, `assign`, is the head's assignment alone (cluster, confidence, runner-up), which
the assign stage runs on every shard.

    .venv/bin/python benchmarks/refit_memory.py --rows 100000 200000 --dim 768 --k 1000

The rows' own float32 copy (rows x dim x 4 bytes) is what the tasks cannot avoid; at laion.yaml's
shape it is 6.1 GB. What the pieces add on top should not grow with k x rows.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from fit_cost import memory_kib, reset_peak  # this folder's: /proc/self/status figures, the peak's reset

NEW_CONCEPTS = 5  # concepts the old model lacks, in the night's new shards
NEW_SHARE = 0.1  # share of the sample from the night's new shards (a fifth of them of new concepts)


def sequence(which: str, rows: int, dim: int, k: int) -> dict[str, float]:
    """Run one helper's pieces (warm, finish, kmeans or assign) on `rows` synthetic rows; its peak memory
    and seconds."""
    import numpy as np
    import torch

    from scaleclust.cluster.drift import calibrate
    from scaleclust.cluster.heads import ClusterHeads, HeadAssigner
    from scaleclust.cluster.kmeans import soft_assign
    from scaleclust.cluster.refit import match_ids, prototypes, warm_kmeans
    from scaleclust.config import UpdateConfig
    from scaleclust.update import concept_groups

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((k + NEW_CONCEPTS, dim)).astype(np.float32)
    truth = rng.integers(0, k, rows)
    arrived = rng.random(rows) < NEW_SHARE  # rows of the night's new shards: old concepts and, for some, new ones
    fresh = arrived & (rng.random(rows) < 0.2)
    truth[fresh] = k + rng.integers(0, NEW_CONCEPTS, int(fresh.sum()))
    x = np.empty((rows, dim), np.float32)
    for i in range(0, rows, 65536):
        block = centres[truth[i:i + 65536]] + 2.0 * rng.standard_normal((len(truth[i:i + 65536]), dim), np.float32)
        x[i:i + 65536] = block / np.linalg.norm(block, axis=1, keepdims=True)
    torch.manual_seed(0)
    head = ClusterHeads(dim, k, heads=2, hidden=512)
    assigner = HeadAssigner(head, 0)
    ids = np.arange(k, dtype=np.int32)
    known = np.flatnonzero(truth < k)
    reference = calibrate(x[known], truth[known], ids, 0.05)  # the old model's novelty file
    is_new = arrived
    base = memory_kib("VmRSS") * 1024
    reset_peak()  # the peak (VmHWM) restarts from now: the set-up's temporaries do not count
    started = time.time()
    if which == "warm":
        novel = reference.novel(x)
        slots = assigner.assign(x)[0]
        concept, groups = concept_groups(x, novel, slots, ids, {"is_new": is_new, "grown": [0, 1]}, UpdateConfig(),
                                         10, 0)
        known = x[np.flatnonzero(~concept)[:: max(1, int((~concept).sum()) // 20_000)]]
        facts = {"concept_rows": int(concept.sum()), "known_rows": int(len(known))}
    elif which == "kmeans":  # a k-means refit (update.refit_model) after its sample is read
        old = centres[:k] / np.linalg.norm(centres[:k], axis=1, keepdims=True)
        novel = reference.novel(x)
        concept, groups = concept_groups(x, novel, soft_assign(x, old, 1.0)["cluster"], ids,
                                         {"is_new": is_new, "grown": [0, 1]}, UpdateConfig(), 10, 0)
        n_new = int(groups.max()) + 1 if len(groups) else 0
        seeds = prototypes(x[concept][groups >= 0], groups[groups >= 0], n_new).astype(np.float32)
        centroids = warm_kmeans(x, np.concatenate([old, seeds]), 10, 0)
        new_ids, _ = match_ids(old, ids, centroids, 0.5, k)
        slots = soft_assign(x, centroids, 1.0)["cluster"]
        calibrate(x, new_ids[slots], new_ids, 0.05)
        facts = {"seeded": n_new}
    elif which == "assign":  # what the assign stage does with each shard's rows, for comparison
        slots = assigner.assign(x)[0]
        facts = {"rows_per_second": round(rows / (time.time() - started))}
    else:
        slots = assigner.assign(x)[0]
        protos = prototypes(x, slots, k)
        novelty = calibrate(x, ids[slots], ids, 0.05)
        facts = {"prototypes": int(len(protos)), "accepting": int(np.isfinite(novelty.thresholds).sum())}
    seconds = time.time() - started
    extra = max(0, memory_kib("VmHWM") * 1024 - base)
    return {"which": which, "rows": rows, "dim": dim, "k": k, "seconds": round(seconds, 2),
            "extra_bytes_per_row": round(extra / rows), "extra_over_rows": round(extra / (rows * dim * 4), 2), **facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, rows, dim, k = args.child
        print(json.dumps(sequence(which, int(rows), int(dim), int(k))))
        return
    print(f"{'task':8} {'rows':>9} {'dim':>5} {'k':>6} {'s':>8} {'extra B/row':>12} {'extra / rows':>13}")
    for rows in args.rows:
        for which in ("warm", "finish", "kmeans", "assign"):
            done = subprocess.run([sys.executable, __file__, "--child", which, str(rows), str(args.dim), str(args.k)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{which:8} {rows:>9,} {args.dim:>5} {args.k:>6} {r['seconds']:>8.2f} {r['extra_bytes_per_row']:>12,} "
                  f"{r['extra_over_rows']:>13.2f}")


if __name__ == "__main__":
    main()
