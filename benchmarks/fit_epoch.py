"""Time per epoch of the MLC fit through scaleclust's Ray Train loop, at 100k and 1M rows, with 1 and 2
workers, on synthetic clustered embeddings (d=512) committed to a run directory like real ones.

An epoch at 1M rows is ~2,000 steps of 512 rows; on a 2-CPU machine that is hours, so each
configuration runs --steps steps (checkpoint at the end included) and the epoch time is rows divided by
the measured throughput (rows/s of all workers; checkpointing included; excluded: the workers' start-up
and their one read of their share of the sample, which happens once per fit, since every
epoch replays the share from memory). Printed side by side with the 2-vs-1-worker ratio.

    .venv/bin/python benchmarks/fit_epoch.py [--rows 100000 1000000] [--steps 30]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import pyarrow as pa
import ray

from scaleclust.cluster.mlc import MLC
from scaleclust.cluster.settings import MLCConfig
from scaleclust.config import StorageConfig, TrainConfig
from scaleclust.tables import METADATA, embedding_array, write_commit
from scaleclust.index.synthetic import clustered_vectors
from scaleclust.rundir import RunDir
from scaleclust.sample import deal_sample
from scaleclust.train.loop import train

DIM, SHARD_ROWS = 512, 50_000


def synthetic_run(rows: int, folder: str) -> RunDir:
    """A run directory with `rows` committed synthetic embeddings in shards of SHARD_ROWS."""
    run = RunDir(folder, StorageConfig())
    for start in range(0, rows, SHARD_ROWS):
        n = min(SHARD_ROWS, rows - start)
        x, _ = clustered_vectors(n, DIM, n_clusters=100, noise=1.0, rank=16, seed=start)
        name = f"{start // SHARD_ROWS:05d}"
        table = pa.table({"key": pa.array([f"{name}-{i}" for i in range(n)]), "embedding": embedding_array(x),
                          **{c: pa.nulls(n, pa.string()) for c in METADATA}, "shard": pa.array([name] * n)})
        write_commit(run, name, "synthetic", table, pa.table({"key": [], "error": []}), "embed", time.time(), "synthetic")
    return run


def measure(run: RunDir, rows: int, workers: int, steps: int) -> float:
    """Rows/s of all workers over `steps` MLC steps through the Ray Train loop."""
    markers = run.committed("embeddings")
    method = MLC(MLCConfig(hidden=512, out_dim=32, batch_size=512, steps=steps, warmup_steps=steps // 2))
    sample = deal_sample(run, markers, rows, seed=0, shares=workers)
    settings = TrainConfig(workers=workers, cpus_per_worker=1, checkpoint_every=steps, max_failures=0)
    _, facts = train(run, f"epoch-{rows}-{workers}-{time.time_ns()}", method, DIM, sample, settings, seed=0)
    return facts["rows_per_second"] * workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"{'rows':>9} {'workers':>7} {'rows/s':>9} {'s/epoch':>9}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as folder:
            run = synthetic_run(rows, folder)
            speeds = {}
            for workers in (1, 2):
                speeds[workers] = measure(run, rows, workers, args.steps)
                print(f"{rows:>9} {workers:>7} {speeds[workers]:>9.0f} {rows / speeds[workers]:>9.0f}", flush=True)
            print(f"{rows:>9} 2 vs 1 workers: throughput x{speeds[2] / speeds[1]:.2f}")


if __name__ == "__main__":
    main()
