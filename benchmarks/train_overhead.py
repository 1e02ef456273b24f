"""What a Ray Train fit costs before any training: TorchTrainer.fit of a loop that does no work but its
reports, at Ray's controller poll interval (2 s) and at scaleclust's (cluster.train.poll_seconds), side
by side in one local Ray, the settings taking turns.

A worker's `ray.train.report` waits in a queue of one until the controller polls the workers, so every
checkpoint of a small fit waited up to a poll interval. Printed per setting: the median seconds of a fit
with 1 report and with `--reports` reports (one checkpoint each, as the Train loop saves them), and the
ratio of the two settings.

    .venv/bin/python benchmarks/train_overhead.py [--workers 2] [--reports 5] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from scaleclust.config import TrainConfig
from scaleclust.train.loop import POLL_ENV, controller_polls

RAY_DEFAULT = 2.0  # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S when unset


def reports_only(config: dict) -> None:
    """A Train loop that only reports, rank 0 with a small checkpoint each time."""
    model = ray.train.torch.prepare_model(torch.nn.Linear(8, 3))
    for step in range(config["reports"]):
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                torch.save(model.state_dict(), os.path.join(folder, "state.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"step": step}, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step}")


def fit_seconds(storage: str, workers: int, reports: int, poll: float) -> float:
    started = time.perf_counter()
    with controller_polls(poll):  # as the Train loop sets it
        TorchTrainer(reports_only, train_loop_config={"reports": reports},
                     scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(name=f"overhead-{time.time_ns()}", storage_path=storage,
                                          checkpoint_config=CheckpointConfig(num_to_keep=2))).fit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ours = TrainConfig().poll_seconds
    if POLL_ENV in os.environ:
        raise SystemExit(f"unset {POLL_ENV}: it would override both settings compared here")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # an actor that only logs node drains
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    times: dict[tuple[float, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as storage:
        fit_seconds(storage, args.workers, 1, ours)  # warm-up: the first fit also starts Ray's own helpers
        for rep in range(args.repeats):
            for poll in (RAY_DEFAULT, ours) if rep % 2 == 0 else (ours, RAY_DEFAULT):
                for reports in (1, args.reports):
                    times.setdefault((poll, reports), []).append(fit_seconds(storage, args.workers, reports, poll))
    print(f"TorchTrainer.fit, {args.workers} workers, median of {args.repeats} (seconds):")
    for reports in (1, args.reports):
        ray_s, ours_s = (statistics.median(times[(p, reports)]) for p in (RAY_DEFAULT, ours))
        print(f"  {reports} report(s): poll {RAY_DEFAULT} s {ray_s:.1f}, poll {ours} s {ours_s:.1f}; "
              f"ratio {ray_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
