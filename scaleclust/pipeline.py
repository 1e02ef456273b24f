"""Run the stages in order over one run directory: prepare -> embed -> fit -> assign -> summary."""
from __future__ import annotations

import time
from importlib import metadata
from typing import Any

import yaml

from scaleclust import assign, fit, summary
from scaleclust.config import Config, ConfigError, StorageConfig
from scaleclust.embed import stage as embed
from scaleclust.lease import Lease
from scaleclust.ray_setup import ensure_ray
from scaleclust.rundir import RunDir
from scaleclust.config import from_dict
from scaleclust.sources import ShardSpec, plan
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
    another model: mixing embedding spaces would silently ruin the clustering.
    """
    fit.check(cfg)
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
    write_bytes_atomic(run.config, yaml.safe_dump(record, sort_keys=False).encode(), cfg.storage)
    return run, shards


def recorded(run_url: str, storage: StorageConfig | None = None) -> tuple[Config, RunDir, dict[str, ShardSpec]]:
    """The config and shard plan a run directory was last prepared with."""
    probe = RunDir(run_url, storage or StorageConfig())
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
    else:
        raise ValueError(f"unknown stage {name!r}")
    summary.record_seconds(run, name, time.time() - started)
    return result


STAGES = ("embed", "fit", "assign", "summary")


def run_all(cfg: Config) -> dict[str, Any]:
    """All stages; each skips what is already committed, so a re-run resumes where the last one stopped.
    Holds the run directory's lease (one writer at a time)."""
    with Lease(cfg.run_dir, cfg.storage, "run", ttl=cfg.update.lease_seconds):
        run, shards = prepare(cfg)
        ensure_ray(cfg)
        for name in STAGES:
            run_stage(name, cfg, run, shards)
        return run.marker(run.metrics)
