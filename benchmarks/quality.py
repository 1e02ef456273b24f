"""Clustering quality of every method on several real labelled embedding sets: one table of ACC / NMI /
ARI (mean ± std over seeds) and seconds per fit, methods x data sets.

Each data set is a run directory whose embed stage has committed embeddings with a `label` column
(benchmarks/datasets.py prepares them: MNIST-5k as in `make demo`, and more sets that ship in packages,
embedded with ImageNet EfficientNet-Lite0). k = the number of classes. Every method runs at its
defaults, the same on every set; no label is used for any choice, labels only score.

- kmeans: faiss spherical k-means, 10 restarts (as `make demo` configured it before SCAN).
- mlc: MLCConfig() defaults, fitted with the same Method object the Ray Train loop drives, every row
  assigned by the nearest-subspace rule fitted on a 2,000-row sample.
- scan, spice: ScanConfig() / SpiceConfig() defaults; each row's neighbours come from an IVF index
  chosen and searched as the index stage does (IVF-Flat, nlist ~4 sqrt(n), nprobe 16), never from
  exact all-pairs kNN; the head with the lowest loss over the last steps assigns.

    .venv/bin/python benchmarks/quality.py RUN_DIR [RUN_DIR ...] [--methods kmeans mlc scan spice] [--seeds 0 1 2] [--jobs N]
"""
from __future__ import annotations

import argparse
import multiprocessing
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
from scaleclust.cluster.spice_method import SPICE
from scaleclust.config import IndexConfig, ScanConfig, SpiceConfig, StorageConfig
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


def run_with_neighbors(method: SCAN | SPICE, x: np.ndarray, seed: int) -> np.ndarray:
    """Train a neighbour method on all rows (neighbours from the IVF index), assign with its lowest-loss head."""
    near = index_neighbors(x, method.neighbors, seed)
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), method, seed, log=lambda step, s: stats.append(s), neighbors=torch.from_numpy(near))
    return HeadAssigner(head, select_head(stats[-method.config.select_steps:], method.config.heads)).assign(x)[0]


def run_scan(x: np.ndarray, k: int, seed: int, config: ScanConfig | None = None) -> np.ndarray:
    return run_with_neighbors(SCAN(config or ScanConfig(), k), x, seed)


def run_spice(x: np.ndarray, k: int, seed: int, config: SpiceConfig | None = None) -> np.ndarray:
    return run_with_neighbors(SPICE(config or SpiceConfig(), k), x, seed)


METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "kmeans": run_kmeans, "mlc": run_mlc, "scan": run_scan, "spice": run_spice}


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())


def one_fit(task: tuple[str, str, int]) -> tuple[str, str, int, dict[str, float], float]:
    """One (data set, method, seed) fit, scored; runs in its own process."""
    torch.set_num_threads(1)  # comparable timings on a shared machine
    run_dir, method, seed = task
    x, labels = load_set(run_dir)
    started = time.time()
    clusters = METHODS[method](x, len(set(labels.tolist())), seed)
    seconds = time.time() - started
    result = evaluate(clusters, labels)
    print(f"  {Path(run_dir).name} {method} seed {seed}: ACC {result['acc']:.3f} NMI {result['nmi']:.3f} "
          f"ARI {result['ari']:.3f} ({seconds:.0f} s)", flush=True)
    return run_dir, method, seed, result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories with committed, labelled embeddings")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="fits run at once, one process each")
    args = parser.parse_args()
    tasks = [(r, m, s) for r in args.runs for m in args.methods for s in args.seeds]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        done = pool.map(one_fit, tasks, chunksize=1)
    print(f"\n| data set | method | ACC | NMI | ARI | s per fit |   (mean ± std over seeds {args.seeds})")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for run_dir in args.runs:
        name, acc = Path(run_dir).name, {}
        for method in args.methods:
            mine = [d for d in done if d[0] == run_dir and d[1] == method]
            cells = {m: np.asarray([d[3][m] for d in mine]) for m in ("acc", "nmi", "ari")}
            acc[method] = cells["acc"]
            print(f"| {name} | {method} | " + " | ".join(f"{cells[m].mean():.3f} ± {cells[m].std():.3f}"
                                                      for m in ("acc", "nmi", "ari"))
                  + f" | {np.mean([d[4] for d in mine]):.0f} |")
        best = max(acc, key=lambda m: acc[m].mean())
        if len(acc) > 1:
            spread = max(np.ptp(v) for v in acc.values())
            margin = min(acc[best].mean() - acc[m].mean() for m in acc if m != best)
            verdicts.append(f"{name}: best {best}, ahead of the next by {margin:+.3f} ACC; largest spread over "
                            f"seeds {spread:.3f}; ahead by more than the spread: {'yes' if margin > spread else 'no'}")
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
