"""The one shape of a stage. A stage is a function of (config, run directory): it reads committed outputs
of earlier stages, commits its own (a marker written last), and skips what is committed, so a re-run
resumes. Stages never talk to each other in memory. scaleclust.pipeline.STAGES lists them in order.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import yaml

from scaleclust.config import Config, StorageConfig, from_dict
from scaleclust.lease import Lease
from scaleclust.rundir import RunDir
from scaleclust.sources import ShardSpec


@dataclass(frozen=True)
class Context:
    """What a stage runs with: the config, the run directory, its planned input shards, and the lease
    of the command that runs it (None where a caller holds none, e.g. a test). With a lease, `run`
    carries its holder: every commit through it, in the driver or a Ray worker, checks the lease first."""

    cfg: Config
    run: RunDir
    shards: dict[str, ShardSpec]
    lease: Lease | None = None

    def __post_init__(self) -> None:
        if self.lease is not None:
            object.__setattr__(self, "run", self.run.held(self.lease.holder))


@contextmanager
def leased(cfg: Config, what: str, run: RunDir | None = None) -> Iterator[Lease]:
    """Hold the lease of the run directory command `what` writes (`run`, default cfg.run_dir) for the
    block: the one place a command takes it. Contexts made with it check it before every commit."""
    run = run or RunDir(cfg.run_dir, cfg.storage)
    with Lease(run.url, run.storage, what, ttl=cfg.update.lease_seconds) as lease:
        yield lease


def always(ctx: Context) -> bool:
    """A stage that every full run runs."""
    return True


def on_request(ctx: Context) -> bool:
    """A stage that only its own command runs."""
    return False


@dataclass(frozen=True)
class Stage:
    """One stage: its name (also its command), what it reads and commits in the run directory, its Ray
    resources (in words, naming the config fields), `run`, and `when` a full run or update runs it.
    `status` says whether its output is committed (for `scaleclust info`)."""

    name: str
    reads: tuple[str, ...]
    commits: tuple[str, ...]
    resources: str
    run: Callable[[Context], dict[str, Any]]
    status: Callable[[RunDir], dict[str, Any]]
    when: Callable[[Context], bool] = always


def recorded(run_url: str, storage: StorageConfig | None = None) -> Context:
    """The context a run directory was last prepared with (its config.yaml): config, run, shard plan."""
    probe = RunDir(run_url, storage or StorageConfig()).require()
    record = yaml.safe_load(probe.read_bytes(probe.config))
    cfg = from_dict(record["config"])
    shards = {name: ShardSpec(tuple(spec["urls"]), spec["root"], spec["kind"]) for name, spec in record["shards"].items()}
    return Context(cfg, RunDir(run_url, storage or cfg.storage), shards)
