"""Run the stages of the registry (STAGES) in order over one run directory, after `prepare`.

Every command that writes runs its stages through `run_stage` under the lease taken by
`scaleclust.stage.leased`: the lease is checked before each stage and before each commit (see
scaleclust.rundir), and a stage that fails once its lease is lost reports that, as LeaseLost."""
from __future__ import annotations

import time
from contextlib import suppress
from importlib import metadata
from typing import Any

import yaml

from scaleclust.config import Config, ConfigError
from scaleclust.lease import TRANSIENT, Lease, LeaseLost
from scaleclust.parallel import ShardTaskError
from scaleclust.ray_setup import ensure_ray
from scaleclust.rundir import RunDir
from scaleclust.sources import ShardSpec, plan
from scaleclust.sources.laion import npy_rows
from scaleclust.stage import Context, Stage, leased
from scaleclust.stages import assign, embed, fit, index, label, neighbors, report, summary

VERSIONED = ("scaleclust", "torch", "ray", "open_clip_torch", "timm", "faiss-cpu", "pyarrow")


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def prepare(cfg: Config, lease: Lease | None = None) -> Context:
    """Plan the input shards and record the resolved config in RUN/config.yaml.

    Fails (before any Ray work) when no shard matches, or when the run directory holds embeddings of
    another model: mixing embedding spaces would silently ruin the clustering. The method settings are
    the caller's to check (fit.check) before it takes the lease, so a bad one leaves no run directory.
    """
    shards = plan(cfg.input, cfg.storage)
    run = RunDir(cfg.run_dir, cfg.storage)
    if run.exists(run.config):
        previous = yaml.safe_load(run.read_bytes(run.config))["config"]["embed"]["model"]
        if previous != cfg.embed.model.model_dump(mode="json"):
            raise ConfigError(f"embed.model: {cfg.run_dir} holds embeddings of {previous}; "
                              f"use a new run_dir for another model")
    record = {"config": cfg.model_dump(mode="json"), "versions": _versions(),
              "shards": {name: {"urls": list(spec.urls), "root": spec.root, "kind": spec.kind}
                         for name, spec in shards.items()}}
    rows = known_rows(cfg, run, shards)
    if rows is not None:
        fit.check_rows(cfg.cluster, rows, "in the input")
    ctx = Context(cfg, run, shards, lease)
    ctx.run.write_bytes(run.config, yaml.safe_dump(record, sort_keys=False).encode())
    return ctx


def known_rows(cfg: Config, run: RunDir, shards: dict[str, ShardSpec]) -> int | None:
    """How many rows the input holds when that is known before embedding: every shard committed by an
    earlier run, or LAION parts (their .npy headers); None for shards still to be decoded. Stops reading
    headers once cluster.k rows are found."""
    committed = run.committed("embeddings")
    rows = sum(committed[name]["embedded"] for name in shards if name in committed)
    todo = [spec for name, spec in shards.items() if name not in committed]
    if todo and cfg.input.format != "laion_embeddings":
        return None
    for spec in todo:
        if isinstance(cfg.cluster.k, int) and rows >= cfg.cluster.k:
            break
        rows += npy_rows(spec.urls[0], cfg.storage)
    return rows


# The stages in the order a full run runs them; `run`, the single-stage commands, `update`, `plan` and
# `info` all read this list. Each stage's `when` says whether a full run or update runs it.
STAGES: tuple[Stage, ...] = (embed.STAGE, index.STAGE, neighbors.STAGE, fit.STAGE, assign.STAGE, summary.STAGE,
                             label.STAGE, report.STAGE)
BY_NAME = {stage.name: stage for stage in STAGES}


def run_stage(name: str, ctx: Context) -> dict[str, Any]:
    """Run one stage by name and record its duration in metrics.json. Under a lease: checked first, and
    a stage that fails after losing it (a commit refused in a Ray worker arrives wrapped by Ray) raises
    LeaseLost with the lease's one line."""
    if ctx.lease is not None:
        ctx.lease.check()
    started = time.time()
    try:
        result = BY_NAME[name].run(ctx)
    except Exception as err:
        cause = getattr(err, "cause", err)  # ray.exceptions.RayTaskError keeps the worker's exception
        cause = cause.original if isinstance(cause, ShardTaskError) else cause  # a per-shard task's (map_shards)
        if isinstance(cause, LeaseLost):
            raise LeaseLost(*cause.args) from None
        if ctx.lease is not None:  # Ray Data wraps a worker's exception otherwise: ask the lease itself
            with suppress(*TRANSIENT):  # the store unreachable: the stage's own error says more
                ctx.lease.check()
        raise
    rate = result.get("rows_per_second")  # stages that measure their throughput (embed)
    ctx.run.record_seconds(name, time.time() - started, rate if isinstance(rate, (int, float)) else None)
    return result


def status(run: RunDir) -> dict[str, dict[str, Any]]:
    """Per stage: whether its output is committed and, for per-shard stages, how many shards are."""
    return {stage.name: stage.status(run) for stage in STAGES}


def run_all(cfg: Config) -> dict[str, Any]:
    """Every stage whose `when` holds, in order; each skips what is already committed, so a re-run resumes
    where the last one stopped. Holds the run directory's lease (one writer at a time)."""
    fit.check(cfg)  # a bad method setting fails before the lease creates the run directory
    with leased(cfg, "run") as lease:
        ctx = prepare(cfg, lease)
        ensure_ray(cfg)
        for stage in STAGES:
            if stage.when(ctx):
                run_stage(stage.name, ctx)
        return ctx.run.marker(ctx.run.metrics)
