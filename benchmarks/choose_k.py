"""`k: auto` before training: the number of clusters the fit chooses on every labelled set and variant,
against the true class count.

For each set (benchmarks/datasets.py's sets and their 4-, 7- and 20-class variants) and each seed, draw the
fit's sample (choose_k.ROWS rows, seeded) and choose k among the default candidates exactly as the fit
stage does (scaleclust.cluster.choose_k.choose_k, no labels). Prints one line per set and seed (the chosen
k, the truth, whether it is within ±30% of the truth, and with --curves the criterion per candidate), then
the verdict over all of them. Labels are used only to count the true classes.

    .venv/bin/python benchmarks/choose_k.py --data OUT [--sets mnist5k animals ...] [--seeds 0 1 2] [--curves]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from scaleclust.cluster.choose_k import ROWS, choose_k
from scaleclust.config import K_CANDIDATES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import CLUSTERING_SETS, VARIANTS, load  # noqa: E402

TOLERANCE = 0.3  # the bar: within ±30% of the true class count


def within(k: int, truth: int) -> bool:
    """Whether k is within TOLERANCE of the true count."""
    return abs(k - truth) <= TOLERANCE * truth


def on_fit_sample(x: np.ndarray, seed: int) -> dict:
    """k: auto as the fit runs it: on the fit's seeded sample of `x`, among the default candidates."""
    rows = np.random.default_rng(seed).choice(len(x), size=min(ROWS, len(x)), replace=False)
    return choose_k(x[rows], K_CANDIDATES, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the OUT folder of benchmarks/datasets.py")
    parser.add_argument("--sets", nargs="+", default=CLUSTERING_SETS + VARIANTS, help="sets or variants (SET@C, A+B)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--curves", action="store_true", help="also print the criterion per candidate")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-CPU machine
    faiss.omp_set_num_threads(1)
    print(f"candidates {list(K_CANDIDATES)}; sample {ROWS} rows; within ±{TOLERANCE:.0%} of the true count", flush=True)
    misses = []
    for name in args.sets:
        x, y = load(args.data, name)
        truth = len(np.unique(y))
        for seed in args.seeds:
            started = time.time()
            found = on_fit_sample(x, seed)
            hit = within(found["k"], truth)
            misses += [] if hit else [f"{name} seed {seed}: {found['k']} (true {truth})"]
            curve = " | " + " ".join(f"{k}:{v:.3f}" for k, v in found["values"].items()) if args.curves else ""
            print(f"{name} seed {seed}: k {found['k']} (true {truth}) {'ok' if hit else 'MISS'} "
                  f"{time.time() - started:.0f} s{curve}", flush=True)
    total = len(args.sets) * len(args.seeds)
    print(f"verdict: {total - len(misses)} of {total} within ±{TOLERANCE:.0%}"
          + (f"; misses: {'; '.join(misses)}" if misses else ": every one"), flush=True)


if __name__ == "__main__":
    main()
