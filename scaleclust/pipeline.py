"""Run the stages in order over one run directory: prepare -> embed -> fit -> assign -> summary -> label."""
from __future__ import annotations

import time
from importlib import metadata
from typing import Any

import yaml

from scaleclust.stages import assign, fit, label, summary
from scaleclust.config import Config, ConfigError, StorageConfig
from scaleclust.stages import embed
from scaleclust.stages import report
from scaleclust.lease import Lease
from scaleclust.ray_setup import ensure_ray
from scaleclust.rundir import RunDir
from scaleclust.config import from_dict
from scaleclust.sources import ShardSpec, plan
from scaleclust.sources.laion import npy_rows
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


def prepare(cfg: Config) -> tuple[RunDir, dict[str, ShardSpec]]:
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
    return run, shards


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


def recorded(run_url: str, storage: StorageConfig | None = None) -> tuple[Config, RunDir, dict[str, ShardSpec]]:
    """The config and shard plan a run directory was last prepared with."""
    probe = RunDir(run_url, storage or StorageConfig())
    if not probe.exists(probe.config):
        raise FileNotFoundError(f"{run_url}: not a run directory (no config.yaml)")
    record = yaml.safe_load(probe.read_bytes(probe.config))
    cfg = from_dict(record["config"])
    shards = {name: ShardSpec(tuple(spec["urls"]), spec["root"], spec["kind"]) for name, spec in record["shards"].items()}
    return cfg, RunDir(run_url, storage or cfg.storage), shards


def run_stage(name: str, cfg: Config, run: RunDir, shards: dict[str, ShardSpec]) -> dict[str, Any]:
    """Run one stage by name and record its duration in metrics.json."""
    started = time.time()
    if name == "embed":
        result = embed.run(cfg, run, shards)
    elif name == "fit":
        result = fit.run(cfg, run)
    elif name == "assign":
        result = assign.run(cfg, run)
    elif name == "summary":
        result = summary.run(cfg, run)
    elif name == "label":
        result = label.run(cfg, run)
    elif name == "index":
        from scaleclust.stages import index as index_stage
        result = index_stage.run(cfg, run)
    elif name == "report":
        result = report.run(cfg, run, shards)
    else:
        raise ValueError(f"unknown stage {name!r}")
    rate = result.get("rows_per_second")  # stages that measure their throughput (embed)
    summary.record_seconds(run, name, time.time() - started, rate if isinstance(rate, (int, float)) else None)
    return result


STAGES = ("embed", "fit", "assign", "summary", "label", "report")


def run_all(cfg: Config) -> dict[str, Any]:
    """All stages; each skips what is already committed, so a re-run resumes where the last one stopped.
    Holds the run directory's lease (one writer at a time)."""
    fit.check(cfg)  # a bad method setting fails before the lease creates the run directory
    with Lease(cfg.run_dir, cfg.storage, "run", ttl=cfg.update.lease_seconds):
        run, shards = prepare(cfg)
        ensure_ray(cfg)
        for name in STAGES:
            if name == "fit" and fit.needs_index(cfg.cluster):
                run_stage("index", cfg, run, shards)  # the method trains on neighbours from the index
            run_stage(name, cfg, run, shards)
        return run.marker(run.metrics)
