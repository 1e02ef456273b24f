"""Run the stages of the registry (STAGES) in order over one run directory, after `prepare`."""
from __future__ import annotations

import time
from importlib import metadata
from typing import Any

import yaml

from scaleclust.config import Config, ConfigError
from scaleclust.lease import Lease
from scaleclust.ray_setup import ensure_ray
from scaleclust.rundir import RunDir
from scaleclust.sources import ShardSpec, plan
from scaleclust.sources.laion import npy_rows
from scaleclust.stage import Context, Stage
from scaleclust.stages import assign, embed, fit, index, label, neighbors, report, summary
from scaleclust.storage import write_bytes_atomic

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
    write_bytes_atomic(run.config, yaml.safe_dump(record, sort_keys=False).encode(), cfg.storage)
    return Context(cfg, run, shards, lease)


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
    """Run one stage by name and record its duration in metrics.json."""
    started = time.time()
    result = BY_NAME[name].run(ctx)
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
    with Lease(cfg.run_dir, cfg.storage, "run", ttl=cfg.update.lease_seconds) as lease:
        ctx = prepare(cfg, lease)
        ensure_ray(cfg)
        for stage in STAGES:
            if stage.when(ctx):
                run_stage(stage.name, ctx)
        return ctx.run.marker(ctx.run.metrics)
