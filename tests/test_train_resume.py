"""Resume of the Ray Train loop: rank 0 decides the checkpoint and every rank starts from it. A read failure
of the newest checkpoint on one rank (injected on rank 0) makes every rank skip it alike and resume at the
older one, reported by name; ranks that chose for themselves resumed at different steps and DDP hung."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from torch import nn

from scaleclust.config import StorageConfig, TrainConfig
from scaleclust.rundir import RunDir
from scaleclust.sample import DealtSample
from scaleclust.train import loop

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300), pytest.mark.slow]  # Ray Train: ~30 s+

NAME = "resume-test"


class Linear:
    """A linear head scored by the entropy of its mean prediction: enough to step DDP. Its stats carry the
    controller's poll interval as the worker sees it (Ray passes it on from the driver)."""

    steps, batch_size, neighbors = 6, 16, 0

    def head(self, in_dim: int) -> nn.Module:
        return nn.Linear(in_dim, 3)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(head.parameters(), lr=0.1)

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        mean = head(x).softmax(-1).mean(0)
        loss = (mean * mean.clamp_min(1e-8).log()).sum()
        return loss, {"loss": loss.item(), "poll": float(os.environ.get(loop.POLL_ENV, "nan"))}

    def on_step(self, head: nn.Module, step: int) -> None:
        """No schedule."""


def fails_on_rank_0(config: dict) -> None:
    """The Train loop, with rank 0's reads of checkpoint_step_00000004 failing as a storage error would."""
    from scaleclust.train import loop as worker_loop

    if ray.train.get_context().get_world_rank() == 0:
        real = worker_loop.read_bytes

        def read_bytes(url: str, storage: StorageConfig) -> bytes:
            if "checkpoint_step_00000004" in url:
                raise OSError(f"injected read failure of {url}")
            return real(url, storage)

        worker_loop.read_bytes = read_bytes
    worker_loop.train_worker(config)


def test_one_ranks_read_failure_makes_every_rank_resume_from_the_same_older_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(str(tmp_path / "run"), StorageConfig())
    method = Linear()
    # Two checkpoints of a killed fit, at steps 2 and 4, holding what the loop saves.
    for step in (2, 4):
        folder = Path(run.model("train")) / NAME / f"checkpoint_step_{step:08d}"
        folder.mkdir(parents=True)
        head = method.head(8)
        torch.save({"head": head.state_dict(), "optimizer": method.optimizer(head).state_dict(), "step": step,
                    "losses": [0.0] * step, "starts": [0], "stats": []}, folder / loop.STATE)
    rows = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float16)
    sample = DealtSample([[ray.put(rows[rank::2])] for rank in range(2)], 64, 8)
    monkeypatch.setattr(loop, "train_worker", fails_on_rank_0)
    monkeypatch.delenv(loop.POLL_ENV, raising=False)
    settings = TrainConfig(workers=2, checkpoint_every=2, poll_seconds=0.25)
    _, facts = loop.train(run, NAME, method, 8, sample, settings, seed=0)
    assert facts["steps"] == 6
    assert facts["recent_stats"][-1]["poll"] == 0.25  # the fit ran with cluster.train.poll_seconds
    assert loop.POLL_ENV not in os.environ  # and left the driver's environment as it found it
    assert facts["starts"] == [0, 2]  # every rank resumed at step 2, the newest that rank 0 could read
    assert len(facts["skipped_checkpoints"]) == 1
    assert facts["skipped_checkpoints"][0].startswith("checkpoint_step_00000004 (OSError: injected read failure")


def refuses(config: dict) -> None:
    raise AssertionError("a Train worker started for a fit whose last checkpoint was written")


def test_a_fit_killed_after_its_last_checkpoint_returns_it_without_training_and_records_the_attempt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(str(tmp_path / "run"), StorageConfig())
    method = Linear()
    for step in (2, 4, 6):  # the killed job wrote its last checkpoint (step 6 of 6), then died before its commit
        folder = Path(run.model("train")) / NAME / f"checkpoint_step_{step:08d}"
        folder.mkdir(parents=True)
        torch.save({"head": method.head(8).state_dict(), "step": step, "losses": [float(step)] * step,
                    "starts": [0], "stats": [{"loss": float(step)}]}, folder / loop.STATE)
    sample = DealtSample([[ray.put(np.zeros((32, 8), np.float16))] for _ in range(2)], 64, 8)
    monkeypatch.setattr(loop, "train_worker", refuses)
    _, facts = loop.train(run, NAME, method, 8, sample, TrainConfig(workers=2, checkpoint_every=2), seed=0)
    assert facts["steps"] == 6 and facts["final_loss"] == 6.0 and facts["recent_stats"] == [{"loss": 6.0}]
    assert facts["starts"] == [0, 6]  # the attempt that found the fit done is recorded
    assert [step for step, _ in loop.checkpoints(run, NAME)] == [6, 4]  # pruned to loop.KEEP, as after a fit
