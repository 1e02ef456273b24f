"""Peak memory of a fit with neighbours (scan) at 1x and 4x the rows, side by side with 4x/1x.

The claim checked: every process's peak RSS stays flat as the dataset grows 4x. The fit trains on a
sample of cluster.sample_size rows (the same at both sizes), each Train worker holds its share of the
sample and those rows' neighbours; the index's search actors each hold at most
index.shards_per_searcher shard indexes, so more data means more searchers, not bigger ones.

Input: a synthetic LAION-layout dump (img_emb/*.npy fp16 + metadata/*.parquet) of clustered unit
vectors, --per-part rows per part, ingested by the embed stage and indexed by the index stage (not
measured). The fit stage then runs in a fresh subprocess with its own local Ray; a thread there samples
every 0.1 s the processes descending from it (Ray's daemons and workers) from /proc/PID/status: VmHWM is
the kernel's exact peak RSS of a process. Processes are grouped by their title: Train workers, index
searchers, other Ray workers (read tasks, Train's controller), Ray daemons; the driver is the fit
stage's own process.

    nice -n 10 .venv/bin/python benchmarks/fit_memory.py                        # 250k vs 1M rows
    nice -n 10 .venv/bin/python benchmarks/fit_memory.py --rows 50000 --sample-size 20000   # 50k vs 200k
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from embed_memory import descendants, status

GROUPS = ("driver", "Train workers", "index searchers", "other Ray workers", "Ray daemons")


def group(titles: set[str]) -> str:
    """Which group a process belongs to, from every title it had."""
    if any("RayTrainWorker" in t for t in titles):
        return "Train workers"
    if any("Searcher" in t for t in titles):
        return "index searchers"
    return "other Ray workers" if any(t.startswith("ray::") for t in titles) else "Ray daemons"


class Sampler(threading.Thread):
    """Samples the peak RSS (VmHWM) of this process's descendants until stopped."""

    def __init__(self, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.titles: dict[int, set[str]] = defaultdict(set)
        self.hwm: dict[int, int] = defaultdict(int)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            for pid, cmdline in descendants(os.getpid()).items():
                peak = status(pid).get("VmHWM")
                if peak:
                    self.titles[pid].add(cmdline)
                    self.hwm[pid] = max(self.hwm[pid], peak)

    def report(self) -> dict[str, dict[str, float]]:
        """Per group: processes, and the largest peak RSS of one of them (MiB)."""
        out: dict[str, dict[str, float]] = {}
        for pid, titles in self.titles.items():
            g = out.setdefault(group(titles), {"processes": 0, "peak": 0.0})
            g["processes"] += 1
            g["peak"] = max(g["peak"], self.hwm[pid] / 1024)
        return out


def write_dump(root: Path, rows: int, per_part: int, d: int, clusters: int, seed: int = 0) -> None:
    """A LAION-layout dump of `rows` unit vectors around `clusters` centres, part by part (the parts'
    rows are never all in memory at once)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for n, start in enumerate(range(0, rows, per_part)):
        size = min(per_part, rows - start)
        x = centres[rng.integers(0, clusters, size)] + rng.standard_normal((size, d)).astype(np.float32) * 0.7
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(root / "img_emb" / f"img_emb_{n}.npy", x.astype(np.float16))
        pq.write_table(pa.table({"key": [f"{n:05d}{i:06d}" for i in range(size)]}),
                       root / "metadata" / f"metadata_{n}.parquet")


def job(folder: Path, args: argparse.Namespace) -> Path:
    data = {"run_dir": str(folder / "run"), "input": {"format": "laion_embeddings", "shards": str(folder / "dump")},
            "index": {"nprobe": 8, "shards_per_searcher": args.shards_per_searcher, "queries": 1000,
                      "recall_queries": 100},
            "cluster": {"method": "scan", "k": 10, "sample_size": args.sample_size,
                        "scan": {"heads": 2, "steps": args.steps, "self_label_steps": 0, "batch_size": 256,
                                 "neighbors": args.neighbors, "select_steps": min(args.steps, 50)},
                        "train": {"workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": args.steps}}}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def child(config: str) -> None:
    """Run the fit stage of `config` with a fresh local Ray; print the memory report as JSON."""
    import ray

    from scaleclust.stages import fit
    from scaleclust.config import load
    from scaleclust.rundir import RunDir

    cfg = load(config)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = Sampler()
    sampler.start()
    meta = fit.run(cfg, RunDir(cfg.run_dir, cfg.storage))
    sampler.stop.set()
    sampler.join()
    report = sampler.report()
    report["driver"] = {"processes": 1, "peak": status(os.getpid())["VmHWM"] / 1024}
    print(json.dumps({"groups": report, "seconds": meta["seconds"], "sample_rows": meta["sample_rows"]}))


def measure(args: argparse.Namespace, folder: Path, rows: int) -> dict:
    """Write, embed and index `rows` rows under folder, then fit in a child process; its report."""
    write_dump(folder / "dump", rows, args.per_part, args.d, args.clusters)
    config = job(folder, args)
    cli = [sys.executable, "-m", "scaleclust.cli"]
    for stage in ("embed", "index"):
        done = subprocess.run([*cli, stage, str(config)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {stage} stage at {rows} rows failed:\n{done.stderr[-3000:]}")
    done = subprocess.run([sys.executable, __file__, "--child", str(config)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the fit at {rows} rows failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({"rows": rows, **report}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=250_000, help="rows at 1x (4x runs four times as many)")
    parser.add_argument("--per-part", type=int, default=10_000, help="rows per dump part (= per shard)")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=50, help="planted clusters of the synthetic rows")
    parser.add_argument("--sample-size", type=int, default=100_000, help="cluster.sample_size, the same at both sizes")
    parser.add_argument("--shards-per-searcher", type=int, default=25)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    scales = (args.rows, 4 * args.rows)
    runs = {}
    for rows in scales:
        with tempfile.TemporaryDirectory(prefix="fit-memory-") as tmp:
            runs[rows] = measure(args, Path(tmp), rows)
    print(f"fit stage, scan with {args.neighbors} neighbours per row from the index, sample_size {args.sample_size}, "
          f"{args.steps} steps, 2 Train workers; {args.d}-d rows, {args.per_part} per shard, "
          f"{args.shards_per_searcher} shards per searcher; peak RSS in MiB")
    print(f"{'':<40}{f'{scales[0]} rows':>14}{f'{scales[1]} rows':>14}{'4x/1x':>8}")
    small, large = (runs[n] for n in scales)
    print(f"{'fit seconds':<40}{small['seconds']:>14.0f}{large['seconds']:>14.0f}{large['seconds'] / small['seconds']:>8.2f}")
    for name in GROUPS:
        if name in small["groups"] and name in large["groups"]:
            a, b = small["groups"][name], large["groups"][name]
            print(f"{name + ': processes':<40}{a['processes']:>14}{b['processes']:>14}")
            print(f"{name + ': peak RSS, largest process':<40}{a['peak']:>14.0f}{b['peak']:>14.0f}"
                  f"{b['peak'] / a['peak']:>8.2f}")


if __name__ == "__main__":
    main()
