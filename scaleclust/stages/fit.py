"""Fit stage: learn the clustering on a sample of the embeddings; commit model/ with model.json last.

How each method trains is its entry in the method registry (scaleclust.methods); with k: auto the number
of clusters is chosen first (methods.resolve_k). A committed model whose parameters match the config
(methods.fit_params; k: auto stays auto) is reused; changed ones refit.
"""
from __future__ import annotations

from typing import Any

from scaleclust import methods
from scaleclust.config import ClusterConfig, Config, ConfigError
from scaleclust.failures import NotReady
from scaleclust.index.manifest import load_manifest
from scaleclust.rundir import RunDir
from scaleclust.stage import Stage


def check(cfg: Config) -> None:
    """Validate what the config alone cannot (the method and its parameters) before any work starts."""
    entry = methods.get(cfg.cluster.method)
    if entry.check is not None:
        entry.check(cfg)
    if isinstance(cfg.cluster.k, int) and cfg.cluster.sample_size < cfg.cluster.k:
        raise ConfigError(f"cluster.k: {cfg.cluster.k} clusters exceed cluster.sample_size={cfg.cluster.sample_size} "
                          "rows to fit them on; lower cluster.k or raise cluster.sample_size")


def check_rows(cluster: ClusterConfig, rows: int, where: str) -> None:
    """cluster.k against the rows there are to cluster, as soon as their number is known."""
    if isinstance(cluster.k, int) and rows < cluster.k:
        raise ConfigError(f"cluster.k: {cluster.k} clusters exceed the {rows} rows {where}; lower cluster.k "
                          "or add input")


def _check_index(run: RunDir, markers: dict[str, dict[str, Any]]) -> None:
    """A method trained on neighbours needs every embedded shard's current commit in the index."""
    manifest = load_manifest(run)
    stale = sorted(s for s, m in markers.items()
                   if m["embedded"] and manifest["shards"].get(s, {}).get("commit") != m["commit"])
    if stale:
        raise NotReady(f"fit: the index lacks the current embeddings of {len(stale)} shard(s) ({stale[0]}, ...); "
                           "run the index stage first (`scaleclust index CONFIG`)")


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Fit unless a model with the same parameters is committed; returns the model's metadata."""
    current = run.marker(run.model("model.json"))
    if current and current["params"] == methods.fit_params(cfg.cluster):
        print(f"fit: model {current['model_id']} ({current['method']}, k={current['k']}) already committed")
        return current
    markers = run.committed("embeddings")
    if not markers:
        raise NotReady("fit: no committed embeddings; run the embed stage first")
    check_rows(cfg.cluster, sum(m["embedded"] for m in markers.values()), "embedded")
    entry = methods.get(cfg.cluster.method)
    if entry.neighbors:
        _check_index(run, markers)
    print(f"fit: {cfg.cluster.method} on the rows of {len(markers)} shard(s)", flush=True)  # the stage's start
    if entry.experimental:
        print(f"fit: {cfg.cluster.method} is experimental: {entry.experimental}", flush=True)
    fit_cfg, facts = methods.resolve_k(cfg, run, markers)
    meta = (entry.fit or methods.fit_on_train)(fit_cfg, run, markers, **facts)
    print(f"fit: {meta['method']} k={meta['k']} on {meta['sample_rows']} rows in {meta['seconds']} s")
    return meta


def status(run: RunDir) -> dict[str, Any]:
    """Committed when model.json exists."""
    return {"done": run.exists(run.model("model.json"))}


STAGE = Stage("fit", reads=("embeddings/", "index/ (methods trained on neighbours)"),
              commits=("model/ (method files)", "model/model.json"),
              resources="k: auto (not mlc): first one task of 1 CPU; kmeans: one task of 1 CPU; Ray Train methods: cluster.train.workers workers of cluster.train.cpus_per_worker CPU (1 GPU each with cluster.train.use_gpu); mlc: then one task of cluster.assign_memory_gb",
              run=lambda ctx: run(ctx.cfg, ctx.run), status=status)
