"""Fit stage: learn the clustering on a sample of the embeddings; commit model/ with model.json last.

kmeans: spherical k-means in one Ray task. mlc: the MLC head trained with Ray Train (scaleclust.train),
then, in one Ray task, the number of clusters (k: auto, by coding length), spectral clustering of a
sample's membership and one subspace per cluster, which assign uses for every row. A committed model
whose parameters match the config is reused; changed parameters refit.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import io
import json
import time
import uuid
from typing import Any, Callable

import numpy as np
import ray
import torch

from scaleclust.cluster.coding_length import choose_k
from scaleclust.cluster.kmeans import soft_assign, spherical_kmeans
from scaleclust.cluster.mlc import MLC, MLCConfig, cluster_sample, fit_assigner, head_features
from scaleclust.cluster.subspaces import SubspaceAssigner
from scaleclust.config import ClusterConfig, Config, ConfigError
from scaleclust.rundir import RunDir
from scaleclust.sample import sample_embeddings
from scaleclust.storage import write_bytes_atomic

Assigner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def fit_params(cluster: ClusterConfig) -> dict[str, Any]:
    return cluster.model_dump(mode="json")


def build_mlc(cluster: ClusterConfig) -> MLC:
    """The MLC method from `cluster.mlc`; an unknown field is a config error that names it."""
    known = [f.name for f in dataclasses.fields(MLCConfig)]
    for name in cluster.mlc:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"Did you mean '{close[0]}'?" if close else f"Valid fields: {', '.join(known)}."
            raise ConfigError(f"cluster.mlc.{name}: unknown MLC field. {hint}")
    try:
        return MLC(MLCConfig(**cluster.mlc))
    except TypeError as err:
        raise ConfigError(f"cluster.mlc: {err}") from None


def check(cfg: Config) -> None:
    """Validate what the config alone cannot (method parameters) before any work starts."""
    if cfg.cluster.method == "mlc":
        build_mlc(cfg.cluster)
    if isinstance(cfg.cluster.k, int) and cfg.cluster.sample_size < cfg.cluster.k:
        raise ConfigError(f"cluster.k: {cfg.cluster.k} clusters exceed cluster.sample_size={cfg.cluster.sample_size} "
                          "rows to fit them on; lower cluster.k or raise cluster.sample_size")


def check_rows(cluster: ClusterConfig, rows: int, where: str) -> None:
    """cluster.k against the rows there are to cluster, as soon as their number is known."""
    if isinstance(cluster.k, int) and rows < cluster.k:
        raise ConfigError(f"cluster.k: {cluster.k} clusters exceed the {rows} rows {where}; lower cluster.k "
                          "or add input")


def _save_npy(run: RunDir, name: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(run.model(name), buffer.getvalue(), run.storage)


def _load_npy(run: RunDir, name: str) -> np.ndarray:
    return np.load(io.BytesIO(run.read_bytes(run.model(name))))


def _commit(run: RunDir, cluster: ClusterConfig, started: float, **facts: Any) -> dict[str, Any]:
    meta = {"method": cluster.method, "params": fit_params(cluster), "model_id": uuid.uuid4().hex,
            "seconds": round(time.time() - started, 2), **facts}
    run.write_marker(run.model("model.json"), meta)
    return meta


def _fit_kmeans(run: RunDir, cluster: ClusterConfig, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    started = time.time()
    x, _ = sample_embeddings(run, markers, cluster.sample_size, cluster.seed)
    if len(x) < cluster.k:
        raise ValueError(f"cluster.k={cluster.k} exceeds the {len(x)} embedded rows; lower cluster.k")
    centroids, objective = spherical_kmeans(x, cluster.k, cluster.niter, cluster.restarts, cluster.seed)
    _save_npy(run, "centroids.npy", centroids.astype(np.float32))
    return _commit(run, cluster, started, k=cluster.k, dim=int(x.shape[1]), sample_rows=int(len(x)),
                   objective=objective)


def _fit_mlc_assigner(run: RunDir, cluster: ClusterConfig, markers: dict[str, dict[str, Any]],
                      state: dict[str, torch.Tensor], facts: dict[str, Any], started: float) -> dict[str, Any]:
    """Choose K (when auto), spectral-cluster a sample in the trained head's space, fit the subspaces."""
    method = build_mlc(cluster)
    x, _ = sample_embeddings(run, markers, cluster.assign_sample, cluster.seed)
    head = method.head(x.shape[1])
    head.load_state_dict(state)
    head.eval()
    lengths: dict[int, float] = {}
    k = cluster.k
    if k == "auto":
        z, _ = head_features(head, x)
        candidates = [c for c in cluster.k_candidates if 2 <= c < len(x)]
        k, lengths = choose_k(z, candidates, lambda c: cluster_sample(head, x, c, method.config, cluster.seed),
                              method.config.eps2)
    assigner, _ = fit_assigner(head, x, k, method.config, cluster.seed, rank=cluster.subspace_rank)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(run.model("head.pt"), buffer.getvalue(), run.storage)
    _save_npy(run, "subspaces.npy", assigner.subspaces.bases)
    return _commit(run, cluster, started, k=int(k), dim=int(x.shape[1]), space=assigner.space,
                   sample_rows=min(cluster.sample_size, sum(m["embedded"] for m in markers.values())),
                   assign_sample_rows=int(len(x)), coding_lengths={str(c): v for c, v in lengths.items()},
                   train=facts)


def _fit_mlc(run: RunDir, cluster: ClusterConfig, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from scaleclust.train.loop import embeddings_dataset, train

    started = time.time()
    method = build_mlc(cluster)
    dim = next(iter(markers.values()))["dim"]
    name = "fit-" + hashlib.sha1(json.dumps(fit_params(cluster), sort_keys=True).encode()).hexdigest()[:12]
    dataset = embeddings_dataset(run, markers, cluster.sample_size, cluster.seed)
    state, facts = train(run, name, method, dim, dataset, cluster.train, cluster.seed)
    print(f"fit: trained {facts['steps']} steps on {facts['workers']} workers, final loss {facts['final_loss']:.4f}")
    task = ray.remote(num_cpus=1)(_fit_mlc_assigner)
    return ray.get(task.remote(run, cluster, markers, state, facts, started))


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Fit unless a model with the same parameters is committed; returns the model's metadata."""
    current = run.marker(run.model("model.json"))
    if current and current["params"] == fit_params(cfg.cluster):
        print(f"fit: model {current['model_id']} ({current['method']}, k={current['k']}) already committed")
        return current
    markers = run.committed("embeddings")
    if not markers:
        raise RuntimeError("fit: no committed embeddings; run the embed stage first")
    check_rows(cfg.cluster, sum(m["embedded"] for m in markers.values()), "embedded")
    if cfg.cluster.method == "mlc":
        meta = _fit_mlc(run, cfg.cluster, markers)
    else:
        meta = ray.get(ray.remote(num_cpus=1)(_fit_kmeans).remote(run, cfg.cluster, markers))
    print(f"fit: {meta['method']} k={meta['k']} on {meta['sample_rows']} rows in {meta['seconds']} s")
    return meta


_LOADED: dict[tuple[str, str, float], Assigner] = {}


def load_assigner(run: RunDir, model_id: str, temperature: float) -> Assigner:
    """The committed model as a function: embeddings (n, d) -> (cluster, confidence, second choice).
    Cached per process, so each assign worker loads a model once."""
    key = (run.url, model_id, temperature)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _load_assigner(run, model_id, temperature)
    return _LOADED[key]


def _load_assigner(run: RunDir, model_id: str, temperature: float) -> Assigner:
    meta = run.marker(run.model("model.json"))
    if meta is None or meta["model_id"] != model_id:
        raise RuntimeError(f"model {model_id} is no longer the committed model of {run.url}; re-run assign")
    if meta["method"] == "kmeans":
        centroids = _load_npy(run, "centroids.npy")

        def by_centroid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out = soft_assign(x, centroids, temperature)
            return out["cluster"], out["confidence"], out["cluster2"]

        return by_centroid
    method = build_mlc(ClusterConfig.model_validate(meta["params"]))
    head = method.head(meta["dim"])
    head.load_state_dict(torch.load(io.BytesIO(run.read_bytes(run.model("head.pt"))), weights_only=True))
    subspaces = SubspaceAssigner(_load_npy(run, "subspaces.npy"), temperature)

    def by_subspace(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, c = head_features(head, x)
        return subspaces.assign(z if meta["space"] == "z" else c)

    return by_subspace
