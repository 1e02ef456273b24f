"""Is a head's confidence what it says? Expected calibration error of a head method (SCAN by default) at
its defaults on labelled sets, with the raw softmax and with the label-free temperature
(scaleclust.cluster.calibration), over seeds. Each row counts as right when its label is its cluster's
majority label; 10 equal-width bins of confidence. Labels only score: the temperature comes from the
rows' neighbour agreement, on a 5,000-row sample as in the fit stage.

    .venv/bin/python benchmarks/quality.py OUT/mnist5k OUT/animals OUT/digits8 --methods scan --logits LOGITS
    .venv/bin/python benchmarks/calibration.py OUT/mnist5k OUT/animals OUT/digits8 --logits LOGITS [--seeds 0 1 2]

OUT comes from benchmarks/datasets.py; the fits (the chosen head's logits of every row) are the ones
quality.py kept with --logits, so the same fits score clustering, head choice and confidence.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datasets import load

from scaleclust.cluster.calibration import ROWS, calibrate, softmax


def expected_calibration_error(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Sum over equal-width confidence bins of (share of rows) x |mean confidence - share right|."""
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    return float(sum((which == b).mean() * abs(confidence[which == b].mean() - right[which == b].mean())
                     for b in range(bins) if (which == b).any()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories with committed, labelled embeddings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", default="scan", help="a head method whose fits quality.py kept")
    parser.add_argument("--logits", type=Path, required=True, help="the --logits folder of benchmarks/quality.py")
    args = parser.parse_args()
    print("| set | seed | ACC (majority) | temperature | neighbours | agreement | mean conf raw / calibrated | ECE raw | ECE calibrated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run_dir in args.runs:
        name = Path(run_dir).name
        x, labels = load(Path(run_dir).parent, name)
        for seed in args.seeds:
            kept = args.logits / f"{name}-{args.method}-{seed}.npz"
            if not kept.exists():
                raise SystemExit(f"{kept}: no such fit; run benchmarks/quality.py {run_dir} --methods {args.method} "
                                 f"--seeds {seed} --logits {args.logits}")
            fitted = np.load(kept)
            logits = fitted["logits"][int(fitted["chosen"])].astype(np.float32)
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
