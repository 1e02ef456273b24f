"""MLC's spectral step, dense membership (n x n Sinkhorn) against the sparse kNN membership that the fit
uses beyond 5,000 rows, side by side on the same rows of real labelled embedding sets.

For each set (benchmarks/datasets.py, labels only score): an MLC head is trained at MLCConfig()
defaults on all rows, then the same --rows rows (a seeded sample) are spectral-clustered from their C
features with both memberships, k = the number of classes. Prints ACC / NMI / ARI of each against the
labels, the ARI between the two labellings, and seconds of each spectral step.

    PYTHONPATH=. .venv/bin/python benchmarks/spectral_sparse.py --out QDATA [--sets mnist5k animals digits8] [--rows 4000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load  # noqa: E402

from scaleclust.cluster.local_fit import fit  # noqa: E402
from scaleclust.cluster.metrics import Contingency, scores  # noqa: E402
from scaleclust.cluster.mlc import MLC, head_features, knn_membership, membership_affinity  # noqa: E402
from scaleclust.cluster.settings import MLCConfig
from scaleclust.cluster.spectral import spectral_cluster  # noqa: E402


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return {k: round(v, 3) for k, v in scores(table.matrix()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder benchmarks/datasets.py wrote the sets to")
    parser.add_argument("--sets", nargs="+", default=["mnist5k", "animals", "digits8"])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = MLCConfig()
    for name in args.sets:
        x, labels = load(args.out, name)
        k = len(np.unique(labels))
        head = fit(torch.from_numpy(x), MLC(config), args.seed)
        rows = np.sort(np.random.default_rng(args.seed).choice(len(x), size=min(args.rows, len(x)), replace=False))
        _, c = head_features(head, x[rows])
        found, seconds = {}, {}
        for path, build in (("dense", lambda: membership_affinity(c, config)),
                            ("sparse", lambda: knn_membership(c, config, args.neighbors))):
            started = time.perf_counter()
            found[path] = spectral_cluster(build(), k, args.seed)
            seconds[path] = round(time.perf_counter() - started, 2)
        print(json.dumps({"set": name, "rows": len(rows), "k": k, "neighbors": args.neighbors,
                          "dense": evaluate(found["dense"], labels[rows]), "sparse": evaluate(found["sparse"], labels[rows]),
                          "ari_dense_vs_sparse": round(adjusted_rand_score(found["dense"], found["sparse"]), 3),
                          "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
