"""Train any clustering `Method` with Ray Train: a TorchTrainer (DDP) over N workers, each reading its
share of the sample from the object store (scaleclust.sample.DealtSample), checkpoints under
RUN/model/train/ every N steps.

Resuming is by name: a run with the same method parameters (same name under the same storage path)
continues from its newest complete checkpoint, whether a worker died (FailureConfig) or the whole job
did. Checkpoint folders are named by step (checkpoint_step_00000120) and found on storage, not in Ray
Train's own record of its checkpoints, which is written after the upload (a job killed in between would
resume from an older one and never delete the newer). Rank 0 alone reads them: it takes the newest that
loads whole, skipping (by name, in the log and in the state's `skipped`) any that cannot be read, and
hands that state to every rank by a torch.distributed broadcast. Every rank therefore resumes at one
step: ranks that each chose for themselves resumed at different steps after one rank's transient read
error, and DDP then hung or diverged. After a fit only the newest KEEP checkpoints stay.

A warm start (`init_state`: a head's weights, optionally its optimizer's state) only replaces the
fresh head of step 0: a run that finds a checkpoint of its own name resumes from that, so a killed
warm refit ends where an unbroken one ends.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from scaleclust.cluster.method import Method, unwrap
from scaleclust.config import TrainConfig
from scaleclust.rundir import RunDir
from scaleclust.sample import DealtSample
from scaleclust.storage import arrow_filesystem, join, listdir, read_bytes, remove

STATE = "state.pt"
LOCAL_CHECKPOINT_PREFIX = "scaleclust-ckpt-"  # + PID-: the temporary folder a checkpoint is written to before upload
KEEP_STATS = 50  # last steps' stats kept in the checkpoint (label-free head selection reads them)
KEEP = 2  # checkpoints kept under model/train/NAME/
CHECKPOINT = re.compile(r"checkpoint_step_(\d+)")
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def _save(folder: str, head: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, losses: list[float],
          starts: list[int], stats: list[dict[str, float]], skipped: list[str]) -> ray.train.Checkpoint:
    """The training state as a checkpoint in ``folder`` (a local temporary folder that report uploads)."""
    torch.save({"head": unwrap(head).state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "losses": losses, "starts": starts, "stats": stats, "skipped": skipped},
               os.path.join(folder, STATE))
    return ray.train.Checkpoint.from_directory(folder)


def local_checkpoint_prefix(pid: int) -> str:
    """The prefix of the temporary folders the worker process `pid` writes its checkpoints to before upload."""
    return f"{LOCAL_CHECKPOINT_PREFIX}{pid}-"


def sweep_local_checkpoints() -> list[str]:
    """Remove the local checkpoint folders of workers that are gone, and return those removed: a worker
    killed while its checkpoint uploaded never ran its TemporaryDirectory's cleanup, and a long-lived node
    would otherwise keep one folder (a head and its optimizer's state) per kill. A folder names its
    worker's process id; one whose process still runs (or whose id was reused) is left. (Two containers
    whose process ids differ but whose temporary folder is shared would see each other's as gone: KubeRay's
    pods each have their own.)"""
    swept: list[str] = []
    for folder in Path(tempfile.gettempdir()).glob(f"{LOCAL_CHECKPOINT_PREFIX}*-*"):
        pid = folder.name[len(LOCAL_CHECKPOINT_PREFIX):].split("-")[0]
        if not (pid.isdigit() and folder.is_dir() and not folder.is_symlink()) or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            swept.append(str(folder))
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; an id past any process's
        return False
    except PermissionError:  # another user's process
        return True
    return True


def checkpoints(run: RunDir, name: str) -> list[tuple[int, str]]:
    """(step, URL) of fit `name`'s checkpoint folders, newest first."""
    folder = join(run.model("train"), name)
    found = ((CHECKPOINT.fullmatch(entry), entry) for entry in listdir(folder, run.storage))
    return sorted(((int(m.group(1)), join(folder, entry)) for m, entry in found if m), reverse=True)


# What reading a checkpoint's state raises when it cannot be read: a transient storage error, a state cut
# short by a kill mid-upload (torch: RuntimeError, EOFError, UnpicklingError).
UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


def load_state(url: str, run: RunDir) -> dict[str, Any]:
    """The training state of the checkpoint folder `url`."""
    return torch.load(io.BytesIO(read_bytes(join(url, STATE), run.storage)), weights_only=True)


def newest_state(run: RunDir, name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The state of the newest checkpoint of fit `name` that loads whole (None: no checkpoint loads), and
    the newer ones that could not be read, each as 'NAME (why)'."""
    skipped = []
    for _, url in checkpoints(run, name):
        try:
            return load_state(url, run), skipped
        except UNREADABLE as err:
            skipped.append(f"{url.rstrip('/').rsplit('/', 1)[-1]} ({type(err).__name__}: {err})")
    return None, skipped


def shared_resume(run: RunDir, name: str, rank: int) -> dict[str, Any] | None:
    """The state every rank resumes from: rank 0 picks it (newest_state) and broadcasts it, so all ranks
    start at the same step; None for a fresh start. Unreadable checkpoints are reported by name."""
    picked: list[Any] = [None]
    if rank == 0:
        state, skipped = newest_state(run, name)
        for why in skipped:
            print(f"fit {name}: checkpoint {why} cannot be read; every rank skips it")
        if state is not None:
            state["skipped"] = [*state.get("skipped", []), *skipped]
            print(f"fit {name}: every rank resumes at step {state['step']}")
        picked = [state]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(picked, src=0)
    return picked[0]


def prune(run: RunDir, name: str, keep: int = KEEP) -> None:
    """Remove all but the newest `keep` checkpoints of fit `name`."""
    for _, url in checkpoints(run, name)[keep:]:
        remove(url, run.storage, recursive=True)


class WorkerSample:
    """A worker's share of the sample, read once from the object store and kept (fp16, bounded by
    sample_size / workers), then replayed in a fresh permutation each epoch. Epoch e's order depends
    only on (seed, rank, e), so a run resumed at step s sees exactly the batches an unbroken run sees
    from step s on.

    With `neighbors` (rows -> their neighbours' embeddings (b, m, d) from the index), each row's
    neighbours are fetched once, in chunks, and kept beside it: the share is self-contained and holds
    rows x (1 + m) x d fp16, bounded by sample_size / workers, never by the dataset."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int, rank: int,
                 neighbors: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.rows = torch.from_numpy(rows)
        self.near = None if neighbors is None else torch.cat(
            [torch.from_numpy(neighbors(self.rows[i:i + 4096].numpy())) for i in range(0, len(self.rows), 4096)])
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.per_epoch = len(self.rows) // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"a worker's share of the sample holds {len(self.rows)} rows, fewer than the batch "
                             f"size {batch_size}; lower the method's batch_size or raise cluster.sample_size")

    def batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(rows, their neighbours or None) batches from global step `step` on, without end."""
        epoch, skip = divmod(step, self.per_epoch)
        while True:
            order = torch.from_numpy(np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(self.rows)))
            for i in range(skip, self.per_epoch):
                pick = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield self.rows[pick], None if self.near is None else self.near[pick]
            epoch, skip = epoch + 1, 0


def train_worker(config: dict[str, Any]) -> None:
    """The per-worker loop: resume (or start from config["init_state"], else a fresh head), then step
    until method.steps, checkpointing every N steps."""
    method: Method = config["method"]
    for folder in sweep_local_checkpoints():
        print(f"fit {config['name']}: removed {folder}, the local checkpoint copy of a worker that was killed")
    torch.manual_seed(config["seed"])
    head = method.head(config["in_dim"])
    rank = ray.train.get_context().get_world_rank()
    state: dict[str, Any] = shared_resume(config["run"], config["name"], rank) or {
        "step": 0, "losses": [], "starts": [], "stats": [], "skipped": [], **(config.get("init_state") or {})}
    if "head" in state:
        head.load_state_dict(state["head"])
    head = ray.train.torch.prepare_model(head)
    optimizer = method.optimizer(head)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    step, losses, kept = int(state["step"]), list(state["losses"]), list(state["stats"])
    starts = [*state["starts"], step]  # where each attempt began: a resumed run shows two
    skipped = list(state.get("skipped", []))
    sample = WorkerSample(config["sample"].share(rank), config["batch_size"], config["seed"], rank,
                          config.get("neighbors"))
    head.train()
    started, rows = time.time(), 0
    device = ray.train.torch.get_device()
    for x, near in sample.batches(step):
        if step >= method.steps:
            break
        x = x.to(device, dtype=torch.float32)
        near = None if near is None else near.to(device, dtype=torch.float32)
        loss, stats = method.loss(head, x, step, near)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.on_step(head, step)
        step, rows = step + 1, rows + len(x)
        losses.append(float(stats["loss"]))
        kept = [*kept[1 - KEEP_STATS:], {name: float(v) for name, v in stats.items()}]
        if step % config["checkpoint_every"] == 0 or step == method.steps:
            metrics = {"step": step, "loss": losses[-1], "rows_per_second": rows / (time.time() - started)}
            # report uploads the checkpoint before it returns; the local copy then goes (it once piled up in /tmp)
            with tempfile.TemporaryDirectory(prefix=local_checkpoint_prefix(os.getpid())) as folder:
                checkpoint = _save(folder, head, optimizer, step, losses, starts, kept, skipped) if rank == 0 else None
                ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_step_{step:08d}")


@contextlib.contextmanager
def controller_polls(seconds: float) -> Iterator[None]:
    """Ray Train's controller polls its workers every `seconds` during a fit. A worker's report waits in a
    queue of one until the controller's next poll, so at Ray's default (2 s) every checkpoint of a small
    fit cost up to 2 s: 7 of a 23 s refit's seconds on 100 rows with 5 checkpoints. Ray reads the setting
    from the driver's environment when a fit starts and passes it on to the controller; a value the user
    set there wins."""
    if POLL_ENV in os.environ:
        yield
        return
    os.environ[POLL_ENV] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(POLL_ENV, None)


def train(run: RunDir, name: str, method: Method, in_dim: int, sample: DealtSample, settings: TrainConfig,
          seed: int, neighbors: Callable[[np.ndarray], np.ndarray] | None = None,
          init_state: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fit the method's head with Ray Train as run `name` (the same name resumes; one whose last checkpoint
    is written already returns it without starting Ray Train); returns the final head
    state dict and training facts (with `recent_stats`: rank 0's stats of the last steps). Rank r trains
    on `sample`'s share r (deal_sample into settings.workers shares).
    `neighbors` maps rows to their neighbours' embeddings, for methods with neighbors > 0.
    `init_state` warm-starts a run that has no checkpoint yet: {"head": state dict} of method.head's
    shape, and optionally {"optimizer": state dict} of method.optimizer's."""
    if init_state is not None and set(init_state) - {"head", "optimizer"}:
        raise ValueError(f"init_state holds {sorted(init_state)}; only 'head' and 'optimizer' start a run")
    if method.neighbors and neighbors is None:
        raise ValueError("this method trains on neighbours: pass the index's neighbour lookup")
    if len(sample.shares) != settings.workers:
        raise ValueError(f"the sample is dealt into {len(sample.shares)} shares for {settings.workers} workers")
    batch_size = max(1, min(method.batch_size, min(sample.sizes)))
    finished = finished_state(run, name, method.steps)
    if finished is not None:
        print(f"fit {name}: its last checkpoint (step {method.steps}) is already written; nothing left to train")
        return _result(run, name, finished, [*finished["starts"], method.steps], batch_size, settings, None)
    fs, path = arrow_filesystem(run.model("train"), run.storage)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"method": method, "in_dim": in_dim, "seed": seed, "batch_size": batch_size,
                           "checkpoint_every": settings.checkpoint_every, "run": run, "name": name, "sample": sample,
                           "neighbors": neighbors if method.neighbors else None, "init_state": init_state},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=settings.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP)),
    )
    with controller_polls(settings.poll_seconds):
        result = trainer.fit()
    done = checkpoints(run, name)
    if not done:
        raise RuntimeError(f"fit {name}: the training ended without a checkpoint under {run.model('train')}")
    try:
        state = load_state(done[0][1], run)  # the fit's last: never an older one in its place
    except UNREADABLE as err:
        raise RuntimeError(f"fit {name}: its last checkpoint {done[0][1]} cannot be read ({type(err).__name__}: "
                           f"{err}); run the fit again to read it (it resumes there)") from err
    return _result(run, name, state, state["starts"], batch_size, settings, result.metrics.get("rows_per_second"))


def finished_state(run: RunDir, name: str, steps: int) -> dict[str, Any] | None:
    """The state of fit `name`'s newest checkpoint when it is at `steps` and loads whole, else None: a fit
    killed after its last checkpoint, before its caller committed the result, is not started again (it would
    start Ray Train to train nothing, and its attempt would go unrecorded in `starts`)."""
    done = checkpoints(run, name)
    if not done or done[0][0] < steps:
        return None
    try:
        return load_state(done[0][1], run)
    except UNREADABLE:
        return None  # cut short by the kill: Ray Train resumes from the one before


def _result(run: RunDir, name: str, state: dict[str, Any], starts: list[int], batch_size: int,
            settings: TrainConfig, rows_per_second: float | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """train's result from the fit's last state; the older checkpoints pruned."""
    prune(run, name)
    tail = state["losses"][-10:]
    return state["head"], {"steps": int(state["step"]), "starts": starts, "batch_size": batch_size,
                           "workers": settings.workers, "final_loss": sum(tail) / len(tail),
                           "rows_per_second": rows_per_second, "recent_stats": state.get("stats", []),
                           "skipped_checkpoints": state.get("skipped", [])}
