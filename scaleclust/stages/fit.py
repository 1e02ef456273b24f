"""Fit stage: learn the clustering on a sample of the embeddings; commit model/ with model.json last.

kmeans: spherical k-means in one Ray task. mlc: the MLC head trained with Ray Train (scaleclust.train),
then, in one Ray task, the number of clusters (k: auto, by stability across halves of a sample),
spectral clustering of a sample's membership and one subspace per cluster, which assign uses for every
row. scan, spice, sic, scl: cluster heads trained with Ray Train on the sample and each sampled row's
neighbours, fetched from the index stage's search actors; the head with the lowest loss assigns every
row (sic first reduces the run's semantic space to the nouns near the sample's k-means centres).
turtle: its task encoder trained with Ray Train on the sample, no neighbours. A committed model whose
parameters match the config (fit_params) is reused; changed ones refit.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from typing import Any, Callable

import numpy as np
import ray
import torch

from scaleclust.cluster.kmeans import soft_assign, spherical_kmeans
from scaleclust.cluster.mlc import GB, MLC, MLCConfig, assign_memory_bytes, fit_assigner, head_features
from scaleclust.cluster.scan import SCAN, HeadAssigner, HeadsMethod, select_head
from scaleclust.cluster.scl_method import SCL
from scaleclust.cluster.sic import space_nouns
from scaleclust.cluster.sic_method import SIC
from scaleclust.cluster.spice_method import SPICE
from scaleclust.cluster.turtle import OneHead, Turtle, TurtleConfig
from scaleclust.cluster.stability import choose_k_by_stability
from scaleclust.cluster.subspaces import SubspaceAssigner
from scaleclust.config import ClusterConfig, Config, ConfigError
from scaleclust.index.device import usable_gpus
from scaleclust.rundir import RunDir
from scaleclust.sample import sample_embeddings
from scaleclust.storage import write_bytes_atomic

Assigner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


# Settings that say how a fit runs, not what it computes: they may change between a killed fit and its
# re-run, which then resumes from the checkpoint (and a committed model is reused). `workers` is not one
# of them: each worker trains on its own share of the sample with its own batches, so the worker count
# changes the result. `use_gpu` is not either: a checkpoint holds tensors of the device it was saved on.
OPERATIONAL = {"train": ("checkpoint_every", "max_failures", "cpus_per_worker")}


def fit_params(cluster: ClusterConfig) -> dict[str, Any]:
    """The fit's identity: the `cluster` section less its operational settings. It names the Ray Train
    run (so the same identity resumes) and decides whether a committed model is reused."""
    params = cluster.model_dump(mode="json")
    for section, names in OPERATIONAL.items():
        for name in names:
            params[section].pop(name)
    params.pop("assign_memory_gb")  # a memory request, not a parameter of the result
    return params


def build_mlc(cluster: ClusterConfig) -> MLC:
    """The MLC method from the validated `cluster.mlc` section."""
    return MLC(MLCConfig(**cluster.mlc.model_dump()))


NEIGHBOR_METHODS = ("scan", "spice", "sic", "scl")


def needs_index(cluster: ClusterConfig) -> bool:
    """Whether the method trains on neighbours from the index (so the index stage runs before fit)."""
    return cluster.method in NEIGHBOR_METHODS


def build_neighbor_method(cluster: ClusterConfig, vectors: torch.Tensor | None = None) -> HeadsMethod:
    """The neighbour-trained method named by cluster.method, from its config section; SIC trains with
    its semantic space's noun `vectors` (a head to load for assigning needs none)."""
    if cluster.method == "sic":
        return SIC(cluster.sic, int(cluster.k), vectors)
    recipe = {"scan": SCAN, "spice": SPICE, "scl": SCL}[cluster.method]
    return recipe(getattr(cluster, cluster.method), int(cluster.k))


def build_turtle(cluster: ClusterConfig) -> Turtle:
    """TURTLE from the validated `cluster.turtle` section."""
    settings = cluster.turtle.model_dump()
    dims = settings.pop("dims")
    return Turtle(TurtleConfig(dims=tuple(dims) if dims else None, **settings), int(cluster.k))


def assign_memory(cluster: ClusterConfig, rows: int, dim: int) -> int:
    """Bytes the MLC assigner fit needs on `rows` sampled rows of width `dim` (the largest k it may try)."""
    k_max = cluster.k if isinstance(cluster.k, int) else max(cluster.k_candidates)
    return assign_memory_bytes(rows, dim, build_mlc(cluster).config, k_max, cluster.assign_neighbors)


def check_assign_memory(cluster: ClusterConfig, rows: int, dim: int) -> None:
    """The MLC assigner fit's memory estimate (rows x dim embeddings) against cluster.assign_memory_gb,
    the memory its Ray task requests: a clear error before any work instead of an OOM-killed task."""
    k_max = cluster.k if isinstance(cluster.k, int) else max(cluster.k_candidates)
    need = assign_memory(cluster, rows, dim)
    if need > cluster.assign_memory_gb * GB:
        shape = f"dim {dim}" if dim else "before the embeddings' dimension is known"
        raise ConfigError(f"cluster.assign_memory_gb: spectral clustering {rows:,} rows of cluster.assign_sample "
                          f"({shape}, k up to {k_max}) needs about {need / GB:.1f} GiB, more than the "
                          f"{cluster.assign_memory_gb} GiB requested; raise cluster.assign_memory_gb or lower "
                          "cluster.assign_sample")


def check(cfg: Config) -> None:
    """Validate what the config alone cannot (method parameters) before any work starts."""
    if cfg.cluster.method == "mlc":
        build_mlc(cfg.cluster)
        check_assign_memory(cfg.cluster, cfg.cluster.assign_sample, 0)  # the dimension is known after embedding
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
    centroids, objective = spherical_kmeans(x, cluster.k, cluster.niter, cluster.restarts, cluster.seed,
                                            gpus=usable_gpus())
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
    stabilities: dict[int, float] = {}
    k = cluster.k
    if k == "auto":
        _, c = head_features(head, x)
        candidates = [n for n in cluster.k_candidates if 2 <= n <= len(x) // 4]  # each half holds >= 2n rows
        if not candidates:
            raise ValueError(f"cluster.k_candidates: none fits the {len(x)}-row assign sample (at most "
                             f"{len(x) // 4}); raise cluster.assign_sample or lower the candidates")
        k, stabilities = choose_k_by_stability(c, candidates, seed=cluster.seed)
    assigner, _ = fit_assigner(head, x, k, method.config, cluster.seed, rank=cluster.subspace_rank,
                               neighbors=cluster.assign_neighbors)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(run.model("head.pt"), buffer.getvalue(), run.storage)
    _save_npy(run, "subspaces.npy", assigner.subspaces.bases)
    return _commit(run, cluster, started, k=int(k), dim=int(x.shape[1]), space=assigner.space,
                   sample_rows=min(cluster.sample_size, sum(m["embedded"] for m in markers.values())),
                   assign_sample_rows=int(len(x)), k_stability={str(n): v for n, v in stabilities.items()},
                   train=facts)


def _fit_mlc(run: RunDir, cluster: ClusterConfig, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from scaleclust.train.loop import embeddings_dataset, train

    started = time.time()
    method = build_mlc(cluster)
    dim = next(iter(markers.values()))["dim"]
    check_assign_memory(cluster, min(cluster.assign_sample, sum(m["embedded"] for m in markers.values())), dim)
    memory = int(cluster.assign_memory_gb * GB)
    if memory > ray.cluster_resources().get("memory", 0):
        raise ConfigError(f"cluster.assign_memory_gb: {cluster.assign_memory_gb} GiB exceeds the Ray cluster's "
                          f"memory ({ray.cluster_resources().get('memory', 0) / GB:.1f} GiB); the task could never start")
    name = _train_name(fit_params(cluster))
    dataset = embeddings_dataset(run, markers, cluster.sample_size, cluster.seed)
    state, facts = train(run, name, method, dim, dataset, cluster.train, cluster.seed)
    facts.pop("recent_stats")
    print(f"fit: trained {facts['steps']} steps on {facts['workers']} workers, final loss {facts['final_loss']:.4f}")
    task = ray.remote(num_cpus=1, memory=memory)(_fit_mlc_assigner)
    return ray.get(task.remote(run, cluster, markers, state, facts, started))


def _train_name(params: dict[str, Any]) -> str:
    return "fit-" + hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _sic_space(cfg: Config, run: RunDir, markers: dict[str, dict[str, Any]], dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    """SIC's semantic space: the run's space of nouns (built with the label stage's settings, or the one
    committed), reduced to the cluster.sic.space_nouns nouns nearest each k-means centre of the assign
    sample. Returns the nouns' vectors (V, d) and facts for model.json."""
    from scaleclust.semantic import build_space
    from scaleclust.semantic.space import signature

    cluster = cfg.cluster
    space = build_space(cfg, run)
    if space.vectors.shape[1] != dim:
        raise ConfigError(f"cluster.method: sic needs nouns in the {dim}-d embedding space, but embed.model maps them "
                          f"to {space.vectors.shape[1]}-d; use the encoder that made the embeddings")
    x, _ = sample_embeddings(run, markers, cluster.assign_sample, cluster.seed)
    centres, _ = spherical_kmeans(x, int(cluster.k), cluster.niter, 1, cluster.seed)
    keep = space_nouns(torch.from_numpy(centres), torch.from_numpy(space.vectors), cluster.sic.space_nouns).numpy()
    return space.vectors[keep], {"nouns": int(len(keep)), "space_nouns": len(space.names), "kind": space.kind,
                                 "signature": signature(cfg)}


def _save_head(run: RunDir, state: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(run.model("head.pt"), buffer.getvalue(), run.storage)


def _fit_with_neighbors(run: RunDir, cfg: Config, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Train the cluster heads on the sample with each row's neighbours from the index, keep the head
    with the lowest loss over the last steps (no labels), commit head.pt and model.json. SIC first
    builds its semantic space (in a Ray task with the encoder's resources)."""
    from scaleclust.index.actors import IndexNeighbors, searchers
    from scaleclust.index.manifest import load_manifest
    from scaleclust.train.loop import embeddings_dataset, train

    started, cluster = time.time(), cfg.cluster
    manifest = load_manifest(run)
    stale = sorted(s for s, m in markers.items() if m["embedded"] and manifest["shards"].get(s, {}).get("commit") != m["commit"])
    if stale:
        raise RuntimeError(f"fit: the index lacks the current embeddings of {len(stale)} shard(s) ({stale[0]}, ...); "
                           "run the index stage first (`scaleclust index CONFIG`)")
    dim = next(iter(markers.values()))["dim"]
    extra: dict[str, Any] = {}
    vectors = None
    if cluster.method == "sic":
        task = ray.remote(num_cpus=cfg.embed.cpus_per_actor, num_gpus=cfg.embed.gpus_per_actor)(_sic_space)
        nouns, extra["semantic"] = ray.get(task.remote(cfg, run, markers, dim))
        vectors = torch.tensor(nouns)  # a copy: arrays from the object store are read-only
        print(f"fit: sic trains against {len(nouns)} nouns of the semantic space")
    method = build_neighbor_method(cluster, vectors)
    name = _train_name({**fit_params(cluster), "nprobe": cfg.index.nprobe, "index_next_id": manifest["next_id"],
                        **({"semantic": extra["semantic"]["signature"]} if vectors is not None else {})})
    dataset = embeddings_dataset(run, markers, cluster.sample_size, cluster.seed)
    with searchers(run, manifest, cfg.index.shards_per_searcher) as actors:
        neighbors = IndexNeighbors(actors, method.neighbors, cfg.index.nprobe)
        state, facts = train(run, name, method, dim, dataset, cluster.train, cluster.seed, neighbors)
    settings = method.config
    recent = facts.pop("recent_stats")[-settings.select_steps:]
    chosen = select_head(recent, settings.heads)
    print(f"fit: trained {facts['steps']} steps on {facts['workers']} workers, final loss {facts['final_loss']:.4f}; "
          f"head {chosen} of {settings.heads} has the lowest loss")
    _save_head(run, state)
    return _commit(run, cluster, started, k=int(cluster.k), dim=int(dim), head=chosen,
                   head_losses=[round(float(np.mean([s[f"head{h}"] for s in recent])), 5) for h in range(settings.heads)],
                   sample_rows=min(cluster.sample_size, sum(m["embedded"] for m in markers.values())),
                   neighbors={"m": method.neighbors, "nprobe": cfg.index.nprobe, "index": manifest["spec"]["factory"]},
                   train=facts, **extra)


def _fit_turtle(run: RunDir, cluster: ClusterConfig, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Train TURTLE's task encoder with Ray Train on the sample (no neighbours); commit head.pt."""
    from scaleclust.train.loop import embeddings_dataset, train

    started = time.time()
    method = build_turtle(cluster)
    dim = next(iter(markers.values()))["dim"]
    try:
        method.dims(dim)
    except ValueError as err:
        raise ConfigError(f"cluster.turtle.dims: {err}") from None
    dataset = embeddings_dataset(run, markers, cluster.sample_size, cluster.seed)
    state, facts = train(run, _train_name(fit_params(cluster)), method, dim, dataset, cluster.train, cluster.seed)
    facts.pop("recent_stats")
    print(f"fit: trained {facts['steps']} steps on {facts['workers']} workers, final loss {facts['final_loss']:.4f}")
    _save_head(run, state)
    return _commit(run, cluster, started, k=int(cluster.k), dim=int(dim), head=0,
                   sample_rows=min(cluster.sample_size, sum(m["embedded"] for m in markers.values())), train=facts)


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
    elif needs_index(cfg.cluster):
        meta = _fit_with_neighbors(run, cfg, markers)
    elif cfg.cluster.method == "turtle":
        meta = _fit_turtle(run, cfg.cluster, markers)
    else:
        gpus = 1 if cfg.cluster.train.use_gpu else 0  # faiss-gpu's k-means runs on the GPU the task is given
        meta = ray.get(ray.remote(num_cpus=1, num_gpus=gpus)(_fit_kmeans).remote(run, cfg.cluster, markers))
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
    if meta["method"] in (*NEIGHBOR_METHODS, "turtle"):
        cluster = ClusterConfig.model_validate(meta["params"])
        method = build_turtle(cluster) if meta["method"] == "turtle" else build_neighbor_method(cluster)
        head = method.head(meta["dim"])
        head.load_state_dict(torch.load(io.BytesIO(run.read_bytes(run.model("head.pt"))), weights_only=True))
        return HeadAssigner(OneHead(head) if meta["method"] == "turtle" else head, int(meta["head"])).assign
    method = build_mlc(ClusterConfig.model_validate(meta["params"]))
    head = method.head(meta["dim"])
    head.load_state_dict(torch.load(io.BytesIO(run.read_bytes(run.model("head.pt"))), weights_only=True))
    subspaces = SubspaceAssigner(_load_npy(run, "subspaces.npy"), temperature)

    def by_subspace(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, c = head_features(head, x)
        return subspaces.assign(z if meta["space"] == "z" else c)

    return by_subspace
