"""Is a head's confidence what it says? Expected calibration error of SCAN at its defaults on labelled
sets, with the raw softmax and with the label-free temperature (scaleclust.cluster.calibration), over
seeds. Each row counts as right when its label is its cluster's majority label; 10 equal-width bins of
confidence. Labels only score: the temperature comes from the rows' neighbour agreement.

    .venv/bin/python benchmarks/calibration.py OUT/mnist5k OUT/animals OUT/digits8 [--seeds 0 1 2] [--work DIR]

OUT comes from benchmarks/datasets.py. Each fit's logits are kept in --work (a fit already there is not
run again), so a killed run resumes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets import load
from quality import index_neighbors

from scaleclust.cluster.calibration import ROWS, calibrate, softmax
from scaleclust.cluster.heads import HeadAssigner, select_head
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.scan import SCAN, ScanConfig


def expected_calibration_error(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Sum over equal-width confidence bins of (share of rows) x |mean confidence - share right|."""
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    return float(sum((which == b).mean() * abs(confidence[which == b].mean() - right[which == b].mean())
                     for b in range(bins) if (which == b).any()))


def scan_logits(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """SCAN at its defaults on all rows (neighbours from an IVF index), its lowest-loss head's logits."""
    method = SCAN(ScanConfig(), k)
    _, near = index_neighbors(x, method.neighbors, seed)
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), method, seed, log=lambda step, s: stats.append(s), neighbors=torch.from_numpy(near))
    return HeadAssigner(head, select_head(stats[-method.config.select_steps:], method.config.heads)).logits(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories with committed, labelled embeddings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("calibration-logits"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print("| set | seed | ACC (majority) | temperature | neighbours | agreement | mean conf raw / calibrated | ECE raw | ECE calibrated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run_dir in args.runs:
        name = Path(run_dir).name
        x, labels = load(Path(run_dir).parent, name)
        k = len(set(labels.tolist()))
        for seed in args.seeds:
            cached = args.work / f"{name}-{seed}.npy"
            if not cached.exists():
                np.save(cached, scan_logits(x, k, seed))
            logits = np.load(cached)
            clusters = logits.argmax(axis=1)
            majority = {c: np.bincount(labels[clusters == c]).argmax() for c in np.unique(clusters)}
            right = (labels == np.array([majority[c] for c in clusters])).astype(float)
            rows = np.random.default_rng(seed + 1).choice(len(x), min(ROWS, len(x)), replace=False)
            found = calibrate(x[rows], logits[rows])
            raw = expected_calibration_error(softmax(logits).max(axis=1), right)
            calibrated = expected_calibration_error(softmax(logits, found["temperature"]).max(axis=1), right)
            print(f"| {name} | {seed} | {right.mean():.3f} | {found['temperature']:.2f} | {found['neighbors']} | "
                  f"{found['agreement']:.3f} | {found['mean_confidence_raw']:.3f} / {found['mean_confidence']:.3f} | "
                  f"{raw:.3f} | {calibrated:.3f} |", flush=True)


if __name__ == "__main__":
    main()
