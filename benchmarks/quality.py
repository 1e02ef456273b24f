"""Clustering quality of every method on several real labelled embedding sets: one table of ACC / NMI /
ARI (mean ± std over seeds) and seconds per fit, methods x data sets.

Each data set is a run directory whose embed stage has committed embeddings with a `label` column
(benchmarks/datasets.py prepares them: MNIST-5k as in `make demo`, and more sets that ship in packages,
embedded with ImageNet EfficientNet-Lite0). k = the number of classes. Every method runs at its
defaults, the same on every set; no label is used for any choice, labels only score.

- kmeans: faiss spherical k-means, 10 restarts (as `make demo` configured it before SCAN).
- mlc: MLCConfig() defaults, fitted with the same Method object the Ray Train loop drives, every row
  assigned by the nearest-subspace rule fitted on a 2,000-row sample.
- scan: ScanConfig() defaults; each row's neighbours come from an IVF index chosen and searched as the
  index stage does (IVF-Flat, nlist ~4 sqrt(n), nprobe 16), never from exact all-pairs kNN.

    .venv/bin/python benchmarks/quality.py RUN_DIR [RUN_DIR ...] [--methods kmeans mlc scan] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.cluster.mlc import MLC, MLCConfig, fit_assigner
from scaleclust.cluster.scan import SCAN, HeadAssigner, select_head
from scaleclust.config import IndexConfig, ScanConfig, StorageConfig
from scaleclust.embed.writer import embedding_matrix
from scaleclust.index.build import add, train
from scaleclust.index.choose import choose_index
from scaleclust.index.search import search_vectors
from scaleclust.rundir import RunDir


def load_set(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """All committed embeddings of a run (float32) and their labels."""
    run = RunDir(run_dir, StorageConfig())
    xs, labels = [], []
    for shard in sorted(run.committed("embeddings")):
        table = run.read_table(run.embeddings(shard), ["embedding", "label"])
        xs.append(embedding_matrix(table["embedding"]))
        labels += table["label"].to_pylist()
    if not xs:
        raise SystemExit(f"{run_dir}: no committed embeddings (run benchmarks/datasets.py first)")
    return np.concatenate(xs), np.asarray(labels)


def index_neighbors(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Each row's m nearest other rows' embeddings (n, m, d) float16, from an IVF index as the index
    stage builds it (kind auto, default nlist) searched at the default nprobe."""
    spec = choose_index(len(x), x.shape[1])
    sample = x[np.random.default_rng(seed).choice(len(x), size=min(spec.train_rows, len(x)), replace=False)]
    index = add(train(sample.astype(np.float16), spec), x.astype(np.float16), 0)
    parts = [search_vectors([index], x[i:i + 2048].astype(np.float16), m + 1, IndexConfig().nprobe)[2][:, 1:]
             for i in range(0, len(x), 2048)]
    return np.concatenate(parts)


def run_kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    centroids, _ = spherical_kmeans(x, k, niter=25, restarts=10, seed=seed)
    return np.argmax(x @ centroids.T, axis=1)


def run_mlc(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    config = MLCConfig()
    head = fit(torch.from_numpy(x), MLC(config), seed)
    sample = np.random.default_rng(seed).choice(len(x), size=min(2000, len(x)), replace=False)
    assigner, _ = fit_assigner(head, x[sample], k, config, seed, rank=1, space="c")
    return assigner.assign(x)[0]


def run_scan(x: np.ndarray, k: int, seed: int, config: ScanConfig | None = None) -> np.ndarray:
    config = config or ScanConfig()
    near = index_neighbors(x, config.neighbors, seed)
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), SCAN(config, k), seed, log=lambda step, s: stats.append(s),
               neighbors=torch.from_numpy(near))
    return HeadAssigner(head, select_head(stats[-config.select_steps:], config.heads)).assign(x)[0]


METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {"kmeans": run_kmeans, "mlc": run_mlc, "scan": run_scan}


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories with committed, labelled embeddings")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # comparable timings on a shared 2-CPU machine
    rows = []
    for run_dir in args.runs:
        x, labels = load_set(run_dir)
        k, name = len(set(labels.tolist())), Path(run_dir).name
        print(f"{name}: {len(x)} rows, d = {x.shape[1]}, k = {k}", flush=True)
        acc_by_method = {}
        for method in args.methods:
            results, seconds = [], []
            for seed in args.seeds:
                started = time.time()
                clusters = METHODS[method](x, k, seed)
                seconds.append(time.time() - started)
                results.append(evaluate(clusters, labels))
                print(f"  {method} seed {seed}: ACC {results[-1]['acc']:.3f} NMI {results[-1]['nmi']:.3f} "
                      f"ARI {results[-1]['ari']:.3f} ({seconds[-1]:.0f} s)", flush=True)
            cells = {m: np.asarray([r[m] for r in results]) for m in ("acc", "nmi", "ari")}
            acc_by_method[method] = cells["acc"]
            rows.append((name, method, cells, float(np.mean(seconds))))
        best = max(acc_by_method, key=lambda m: acc_by_method[m].mean())
        others = [m for m in acc_by_method if m != best]
        if others:
            spread = max(np.ptp(v) for v in acc_by_method.values())
            margin = min(acc_by_method[best].mean() - acc_by_method[m].mean() for m in others)
            print(f"  best {best}: ahead of the next by {margin:+.3f} ACC; largest spread over seeds {spread:.3f}; "
                  f"ahead by more than the spread: {'yes' if margin > spread else 'no'}", flush=True)
    print(f"\n| data set | method | ACC | NMI | ARI | s per fit |   (mean ± std over seeds {args.seeds})")
    print("|---|---|---|---|---|---|")
    for name, method, cells, seconds in rows:
        print(f"| {name} | {method} | " + " | ".join(f"{cells[m].mean():.3f} ± {cells[m].std():.3f}"
                                                  for m in ("acc", "nmi", "ari")) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
