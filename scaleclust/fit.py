"""Fit stage: learn the clustering on a sample of the embeddings; commit model/ with model.json last.

Runs as one Ray task (so on Kubernetes it lands on a worker, not the head). A committed model whose
parameters match the config is reused; changed parameters refit.
"""
from __future__ import annotations

import io
import time
import uuid
from typing import Any

import numpy as np
import ray

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.config import ClusterConfig, Config
from scaleclust.rundir import RunDir
from scaleclust.sample import sample_embeddings
from scaleclust.storage import write_bytes_atomic


def fit_params(cluster: ClusterConfig) -> dict[str, Any]:
    return cluster.model_dump(mode="json")


def _fit(run: RunDir, cluster: ClusterConfig, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    started = time.time()
    x, _ = sample_embeddings(run, markers, cluster.sample_size, cluster.seed)
    if len(x) < cluster.k:
        raise ValueError(f"cluster.k={cluster.k} exceeds the {len(x)} embedded rows; lower cluster.k")
    centroids, objective = spherical_kmeans(x, cluster.k, cluster.niter, cluster.restarts, cluster.seed)
    buffer = io.BytesIO()
    np.save(buffer, centroids.astype(np.float32))
    write_bytes_atomic(run.model("centroids.npy"), buffer.getvalue(), run.storage)
    meta = {"method": cluster.method, "params": fit_params(cluster), "model_id": uuid.uuid4().hex,
            "k": cluster.k, "dim": int(x.shape[1]), "sample_rows": int(len(x)), "objective": objective,
            "seconds": round(time.time() - started, 2)}
    run.write_marker(run.model("model.json"), meta)
    return meta


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Fit unless a model with the same parameters is committed; returns the model's metadata."""
    current = run.marker(run.model("model.json"))
    if current and current["params"] == fit_params(cfg.cluster):
        print(f"fit: model {current['model_id']} ({current['method']}, k={current['k']}) already committed")
        return current
    markers = run.committed("embeddings")
    if not markers:
        raise RuntimeError("fit: no committed embeddings; run the embed stage first")
    meta = ray.get(ray.remote(num_cpus=1)(_fit).remote(run, cfg.cluster, markers))
    print(f"fit: {meta['method']} k={meta['k']} on {meta['sample_rows']} rows in {meta['seconds']} s")
    return meta


def load_centroids(run: RunDir) -> np.ndarray:
    return np.load(io.BytesIO(run.read_bytes(run.model("centroids.npy"))))
