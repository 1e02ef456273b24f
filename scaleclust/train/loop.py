"""Train any clustering `Method` with Ray Train: a TorchTrainer (DDP) over N workers, embedding batches
streamed from the run directory by Ray Data, checkpoints under RUN/model/train/ every N steps.

Resuming is by name: a run with the same method parameters (same name under the same storage path)
continues from its last checkpoint, whether a worker died (FailureConfig) or the whole job did (Ray
Train restores a run when the trainer is created again with the same name and storage path).
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from scaleclust.cluster.method import Method, unwrap
from scaleclust.config import TrainConfig
from scaleclust.embed.writer import embedding_matrix
from scaleclust.rundir import RunDir
from scaleclust.storage import arrow_filesystem

STATE = "state.pt"


def _as_matrix(batch: pa.Table) -> dict[str, Any]:
    return {"x": embedding_matrix(batch["embedding"], np.float16)}


def embeddings_dataset(run: RunDir, markers: dict[str, dict[str, Any]], sample_size: int, seed: int) -> ray.data.Dataset:
    """A uniform random sample of about `sample_size` committed rows as fp16 rows `x`, materialised in
    the object store once (bounded by sample_size) so every epoch streams from memory, not storage."""
    fs, _ = arrow_filesystem(run.url, run.storage)
    paths = [arrow_filesystem(run.embeddings(s), run.storage)[1] for s in sorted(markers)]
    ds = ray.data.read_parquet(paths, columns=["embedding"], filesystem=fs)
    total = sum(m["embedded"] for m in markers.values())
    if sample_size < total:
        ds = ds.random_sample(sample_size / total, seed=seed)
    return ds.map_batches(_as_matrix, batch_format="pyarrow").materialize()


def _save(head: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, losses: list[float],
          starts: list[int]) -> str:
    folder = tempfile.mkdtemp(prefix="scaleclust-ckpt-")
    torch.save({"head": unwrap(head).state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "losses": losses, "starts": starts}, os.path.join(folder, STATE))
    return folder


class WorkerSample:
    """A worker's share of the sample: streamed once through Ray Data, then kept (fp16, bounded by
    sample_size / workers) and reshuffled for every later epoch, so small samples do not pay Ray Data's
    per-epoch start-up on every pass."""

    def __init__(self, shard: Any, batch_size: int, seed: int) -> None:
        self.shard, self.batch_size = shard, batch_size
        self.cache: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> Iterator[torch.Tensor]:
        if not self.cache:
            for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, drop_last=True,
                                                       local_shuffle_buffer_size=4 * self.batch_size):
                self.cache.append(batch["x"])
                yield batch["x"]
            return
        rows = torch.cat(self.cache)
        order = torch.randperm(len(rows), generator=self.generator)
        for start in range(0, len(rows) - self.batch_size + 1, self.batch_size):
            yield rows[order[start : start + self.batch_size]]


def train_worker(config: dict[str, Any]) -> None:
    """The per-worker loop: resume, then step until method.steps, checkpointing every N steps."""
    method: Method = config["method"]
    torch.manual_seed(config["seed"])
    head = method.head(config["in_dim"])
    state: dict[str, Any] = {"step": 0, "losses": [], "starts": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE), weights_only=True)
        head.load_state_dict(state["head"])
    head = ray.train.torch.prepare_model(head)
    optimizer = method.optimizer(head)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    step, losses = int(state["step"]), list(state["losses"])
    starts = [*state["starts"], step]  # where each attempt began: a resumed run shows two
    rank = ray.train.get_context().get_world_rank()
    batches_of = WorkerSample(ray.train.get_dataset_shard("train"), config["batch_size"], config["seed"] + rank)
    head.train()
    started, rows = time.time(), 0
    while step < method.steps:
        batches = 0
        for x in batches_of():
            x = x.to(ray.train.torch.get_device(), dtype=torch.float32)
            loss, stats = method.loss(head, x, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.on_step(head, step)
            step, batches, rows = step + 1, batches + 1, rows + len(x)
            losses.append(float(stats["loss"]))
            if step % config["checkpoint_every"] == 0 or step == method.steps:
                metrics = {"step": step, "loss": losses[-1], "rows_per_second": rows / (time.time() - started)}
                folder = _save(head, optimizer, step, losses, starts) if rank == 0 else None
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)
            if step >= method.steps:
                break
        if batches == 0:
            raise ValueError(f"a worker's share of the sample holds fewer than {config['batch_size']} rows; "
                             "lower the method's batch_size or raise cluster.sample_size")


def train(run: RunDir, name: str, method: Method, in_dim: int, dataset: ray.data.Dataset, rows: int,
          settings: TrainConfig, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fit the method's head with Ray Train as run `name` (the same name resumes); returns the final head
    state dict and training facts."""
    batch_size = min(method.batch_size, rows // settings.workers)
    fs, path = arrow_filesystem(run.model("train"), run.storage)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"method": method, "in_dim": in_dim, "seed": seed, "batch_size": batch_size,
                           "checkpoint_every": settings.checkpoint_every},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        datasets={"train": dataset},
        run_config=RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=settings.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE), weights_only=True)
    tail = state["losses"][-10:]
    return state["head"], {"steps": int(state["step"]), "starts": state["starts"], "batch_size": batch_size,
                           "workers": settings.workers,
                           "final_loss": sum(tail) / len(tail), "rows_per_second": result.metrics.get("rows_per_second")}
