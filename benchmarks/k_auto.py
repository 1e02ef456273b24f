"""MLC at its default settings on every labelled set, and the K that `k: auto` chooses against the true
number of classes.

For each set of benchmarks/datasets.py and each seed: train MLC at MLCConfig's defaults (the same Method
the Ray Train loop drives) on every row; score the pipeline's assignment at the true K (spectral
clustering of a sample's membership, rank-1 subspaces, every row assigned) against k-means (10 restarts)
on the same embeddings; then choose K without labels, as `k: auto` does, by stability across halves of
the sample in the head's cluster features, on the whole sample (true K = the set's classes) and on its
rows of classes 0-4 only (true K = 5; same head); each seed's line has the stability per K.
`--raw-embeddings` adds the same criterion on the sample's raw embeddings; `--coding-length` adds the
criterion `k: auto` used before (minimum lossy coding length of spectral clusterings; slow). Labels are
used only to score and to pick the 5-class rows.

    .venv/bin/python benchmarks/k_auto.py --data OUT [--sets mnist5k animals digits8] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scaleclust.cluster.coding_length import choose_k
from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.cluster.mlc import MLC, cluster_sample, fit_assigner, head_features
from scaleclust.cluster.settings import MLCConfig
from scaleclust.cluster.stability import choose_k_by_stability

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import CLUSTERING_SETS, SETS, load  # noqa: E402

CANDIDATES = [3, 4, 5, 6, 8, 10, 12, 15, 20, 30]


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())


def one_seed(x: np.ndarray, y: np.ndarray, seed: int, sample_rows: int, coding: bool,
             raw: bool) -> dict[str, object]:
    k = len(np.unique(y))
    config = MLCConfig()
    started = time.time()
    head = fit(torch.from_numpy(x), MLC(config), seed)
    fit_seconds = time.time() - started
    sample = np.random.default_rng(seed).choice(len(x), size=min(sample_rows, len(x)), replace=False)
    assigner, _ = fit_assigner(head, x[sample], k, config, seed)
    mlc = evaluate(assigner.assign(x)[0], y)
    centroids, _ = spherical_kmeans(x, k, niter=25, restarts=10, seed=seed)
    kmeans = evaluate(np.argmax(x @ centroids.T, axis=1), y)
    z, c = head_features(head, x[sample])
    five = y[sample] < 5
    started = time.time()
    k_all, curve = choose_k_by_stability(c, CANDIDATES, seed=seed)
    k_five, _ = choose_k_by_stability(c[five], CANDIDATES, seed=seed)
    result: dict[str, object] = {
        "mlc_acc": mlc["acc"], "mlc_nmi": mlc["nmi"], "kmeans_acc": kmeans["acc"], "kmeans_nmi": kmeans["nmi"],
        "fit_s": fit_seconds, "k_all": k_all, "k_five": k_five, "stability_s": time.time() - started,
        "curve": {k: round(v, 3) for k, v in curve.items()}}
    if raw:
        result["k_raw"], raw_curve = choose_k_by_stability(x[sample], CANDIDATES, seed=seed)
        result["raw_curve"] = {k: round(v, 3) for k, v in raw_curve.items()}
    if coding:
        result["k_coding"], _ = choose_k(z, CANDIDATES, lambda kk: cluster_sample(head, x[sample], kk, config, seed),
                                         config.eps2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the OUT folder of benchmarks/datasets.py")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=CLUSTERING_SETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sample", type=int, default=2000, help="rows of the assign sample (cluster.assign_sample)")
    parser.add_argument("--coding-length", action="store_true", help="also the minimum-coding-length choice")
    parser.add_argument("--raw-embeddings", action="store_true",
                        help="also the stability choice on the raw embeddings of the sample (no head)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # stable timings on a shared 2-CPU machine
    print(f"MLC defaults: {MLCConfig()}; K candidates {CANDIDATES}", flush=True)
    for name in args.sets:
        x, y = load(args.data, name)
        runs = []
        for seed in args.seeds:
            runs.append(one_seed(x, y, seed, args.sample, args.coding_length, args.raw_embeddings))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in runs[-1].items()), flush=True)

        def cell(key: str) -> str:
            values = np.asarray([r[key] for r in runs])
            return f"{values.mean():.3f} ± {values.std():.3f}"

        coding = f" | K by coding length {[r['k_coding'] for r in runs]}" if args.coding_length else ""
        print(f"| {name} | {len(x)} | {cell('mlc_acc')} | {cell('kmeans_acc')} | {cell('mlc_nmi')} | "
              f"{cell('kmeans_nmi')} | {np.mean([r['fit_s'] for r in runs]):.0f} | {len(np.unique(y))}: "
              f"{[r['k_all'] for r in runs]} | 5: {[r['k_five'] for r in runs]} |{coding}", flush=True)


if __name__ == "__main__":
    main()
