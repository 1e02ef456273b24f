"""The method registry: for each clustering method (its loss terms and recipe live in one module of
scaleclust/cluster/, its config section in scaleclust/cluster/settings.py), how the fit stage trains it
and how its committed model assigns rows.

A method is one `MethodEntry`, registered once with `register`. `trains` says where it trains: in one
Ray task ("task": k-means), or on the Ray Train loop ("ray_train"), with each sampled row's neighbours
from the index when `neighbors` is set (the index stage then runs before the fit). A Ray-Train method
only needs `build` (its `Method` from the config) unless it finishes differently: by default the trained
head is saved as head.pt, the head with the lowest loss over the last steps assigns (one head: that one),
and confidence is its softmax probability.

k: auto: the number of clusters is chosen before training, in one Ray task, on a sample of the embeddings
(scaleclust.cluster.choose_k), for every method but mlc, which chooses it after training in its head's
features; either way model.json's k_auto holds the criterion per candidate.

kmeans: spherical k-means in one Ray task. mlc: the MLC head trained with Ray Train, then, in one Ray
task, the number of clusters (k: auto, by stability across halves of a sample), spectral clustering of a
sample's membership and one subspace per cluster, which assign uses for every row. scan, spice, sic, scl:
cluster heads trained on the sample and each sampled row's neighbours, fetched from the index's search
actors (sic first reduces the run's semantic space to the nouns near the sample's k-means centres).
turtle: its task encoder trained on the sample, no neighbours.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import ray
import torch

from scaleclust.cluster import calibration, choose_k
from scaleclust.cluster.heads import HeadAssigner, HeadsMethod, OneHead, select_head
from scaleclust.cluster.kmeans import soft_assign, spherical_kmeans
from scaleclust.cluster.method import Method
from scaleclust.cluster.mlc import GB, MLC, assign_memory_bytes, fit_assigner, head_features
from scaleclust.cluster.scan import SCAN
from scaleclust.cluster.scl import SCL
from scaleclust.cluster.sic import SIC, space_nouns
from scaleclust.cluster.spice import SPICE
from scaleclust.cluster.stability import choose_k_by_stability
from scaleclust.cluster.subspaces import SubspaceAssigner
from scaleclust.cluster.turtle import Turtle
from scaleclust.config import ClusterConfig, Config, ConfigError
from scaleclust.index.actors import IndexNeighbors, searchers
from scaleclust.index.device import usable_gpus
from scaleclust.index.manifest import load_manifest
from scaleclust.ray_setup import check_task_memory
from scaleclust.rundir import RunDir
from scaleclust.sample import DealtSample, deal_sample, sample_embeddings, sampled_rows
from scaleclust.train.loop import train

Assigner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
Markers = dict[str, dict[str, Any]]

# Settings that say how a fit runs, not what it computes: they may change between a killed fit and its
# re-run, which then resumes from the checkpoint (and a committed model is reused). `workers` is not one
# of them: each worker trains on its own share of the sample with its own batches, so the worker count
# changes the result. `use_gpu` is not either: a checkpoint holds tensors of the device it was saved on.
OPERATIONAL = {"train": ("checkpoint_every", "max_failures", "cpus_per_worker", "poll_seconds")}


@dataclass(frozen=True)
class MethodEntry:
    """One clustering method as the fit, assign and update steps see it."""

    name: str
    trains: Literal["task", "ray_train"]
    fit: Callable[..., dict[str, Any]] | None = None  # (cfg, run, markers, **facts for model.json); None: fit_on_train
    load: Callable[[RunDir, dict[str, Any], float], Assigner] | None = None  # None: load_head
    build: Callable[[ClusterConfig], Method] | None = None  # the recipe, for the Ray-Train default
    # the recipe when training needs the run's data (sic: its semantic space's nouns), with its facts for
    # model.json; None: build(cluster). `recipe` reads it for fits and refits alike; `build` is still
    # needed, to load a committed head and to grow it at night
    from_run: Callable[[Config, RunDir, Markers, int], tuple[Method, dict[str, Any]]] | None = None
    neighbors: bool = False  # trains on neighbours from the index (the index stage runs before the fit)
    files: tuple[str, ...] = ("head.pt",)  # the model files model.json describes
    check: Callable[[Config], None] | None = None  # what the config alone cannot validate, before any work
    warm: Literal["task", "head"] = "head"  # a nightly refit: from the model's arrays in one Ray task, or
    # by training the committed head (grown by new outputs) on the Ray Train loop (scaleclust.update)
    refit_sample: Literal["sample_size", "assign_sample"] = "sample_size"  # the cluster field that sizes a
    # refit's sample (mlc refits its subspaces, on an assign sample)
    chooses_k: bool = False  # k: auto is chosen by the method after training (else by choose_k before it)
    experimental: str = ""  # why its clusters are not to be trusted over k-means's (README's quality table);
    # the fit prints it. Empty: the method beats k-means at its defaults on every labelled set


REGISTRY: dict[str, MethodEntry] = {}


def register(entry: MethodEntry) -> MethodEntry:
    """Add a method (or replace one of the same name); returns it."""
    if entry.trains == "task" and (entry.fit is None or entry.load is None):
        raise ValueError(f"method {entry.name!r}: a method trained in a task gives its own fit and load")
    if entry.trains == "ray_train" and entry.build is None and entry.fit is None:
        raise ValueError(f"method {entry.name!r}: a Ray-Train method gives build (or its own fit)")
    REGISTRY[entry.name] = entry
    return entry


def get(name: str) -> MethodEntry:
    """The registered method `name`; a ConfigError naming cluster.method otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"cluster.method: {name!r} is not a method; use one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def recipe(cfg: Config, run: RunDir, markers: Markers, dim: int) -> tuple[Method, dict[str, Any]]:
    """The `Method` cfg.cluster trains and its facts for model.json: from the run's data where the method
    needs it (its entry's from_run), else from the config alone."""
    entry = get(cfg.cluster.method)
    return entry.from_run(cfg, run, markers, dim) if entry.from_run else (entry.build(cfg.cluster), {})


def needs_index(cluster: ClusterConfig) -> bool:
    """Whether the method trains on neighbours from the index (so the index stage runs before fit)."""
    return get(cluster.method).neighbors


def fit_params(cluster: ClusterConfig) -> dict[str, Any]:
    """The fit's identity: the `cluster` section less its operational settings. It names the Ray Train
    run (so the same identity resumes) and decides whether a committed model is reused."""
    params = cluster.model_dump(mode="json")
    for section, names in OPERATIONAL.items():
        for name in names:
            params[section].pop(name)
    params.pop("assign_memory_gb")  # a memory request, not a parameter of the result
    return params


def train_name(params: dict[str, Any], prefix: str = "fit") -> str:
    """The Ray Train run's name for an identity: the same identity resumes the same checkpoints."""
    return f"{prefix}-" + hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def commit(run: RunDir, cluster: ClusterConfig, started: float, **facts: Any) -> dict[str, Any]:
    """Write model/model.json, the fit's commit marker (written after every model file). A model whose k
    was chosen (facts hold k_auto) records k: auto among its parameters, so that the same config reuses it."""
    params = {**fit_params(cluster), **({"k": "auto"} if "k_auto" in facts else {})}
    meta = {"method": cluster.method, "params": params, "model_id": uuid.uuid4().hex,
            "seconds": round(time.time() - started, 2), **facts}
    run.write_marker(run.model("model.json"), meta)
    return meta


def save(run: RunDir, url: str, value: np.ndarray | dict[str, torch.Tensor]) -> None:
    """A model file: an array as .npy, a state dict with torch.save (loadable with weights_only)."""
    buffer = io.BytesIO()
    np.save(buffer, value) if isinstance(value, np.ndarray) else torch.save(value, buffer)
    run.write_bytes(url, buffer.getvalue())


def read(run: RunDir, url: str) -> Any:
    """A model file that `save` wrote: an array (.npy) or a state dict."""
    data = io.BytesIO(run.read_bytes(url))
    return np.load(data) if url.endswith(".npy") else torch.load(data, weights_only=True)


# k: auto -----------------------------------------------------------------------------------------

def said_k(found: dict[str, Any]) -> str:
    """`fit`'s one line on the chosen k and its evidence (the criterion per candidate)."""
    values = ", ".join(f"{k} {v:.3f}" for k, v in found["values"].items())
    return f"fit: k auto chose k={found['k']} by {found['criterion']} on {found['rows']} sampled rows ({values})"


def _choose_k_task(run: RunDir, cluster: ClusterConfig, markers: Markers) -> dict[str, Any]:
    x, _ = sample_embeddings(run, markers, choose_k.ROWS, cluster.seed)
    return choose_k.choose_k(x, cluster.k_candidates, cluster.seed)


def resolve_k(cfg: Config, run: RunDir, markers: Markers) -> tuple[Config, dict[str, Any]]:
    """For k: auto (unless the method chooses k itself): k chosen on a sample in one Ray task, printed;
    returns the config at that k and model.json's facts about it (k_auto). Otherwise the config as given."""
    if cfg.cluster.k != "auto" or get(cfg.cluster.method).chooses_k:
        return cfg, {}
    rows = sampled_rows(markers, choose_k.ROWS)
    if not choose_k.usable(cfg.cluster.k_candidates, rows):
        raise ConfigError(f"cluster.k_candidates: none fits the {rows} sampled rows (each k needs "
                          f"{choose_k.MIN_ROWS_PER_CLUSTER} rows per cluster); lower the candidates or add input")
    found = ray.get(ray.remote(num_cpus=1)(_choose_k_task).remote(run, cfg.cluster, markers))
    print(said_k(found), flush=True)
    return cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"k": found["k"]})}), {"k_auto": found}


# kmeans ------------------------------------------------------------------------------------------

def _kmeans_task(run: RunDir, cluster: ClusterConfig, markers: Markers, facts: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    x, _ = sample_embeddings(run, markers, cluster.sample_size, cluster.seed)
    if len(x) < cluster.k:
        raise ValueError(f"cluster.k={cluster.k} exceeds the {len(x)} embedded rows; lower cluster.k")
    centroids, objective = spherical_kmeans(x, cluster.k, cluster.niter, cluster.restarts, cluster.seed,
                                            gpus=usable_gpus())
    save(run, run.model("centroids.npy"), centroids.astype(np.float32))
    return commit(run, cluster, started, k=cluster.k, dim=int(x.shape[1]), sample_rows=int(len(x)),
                  objective=objective, **facts)


def fit_kmeans(cfg: Config, run: RunDir, markers: Markers, **facts: Any) -> dict[str, Any]:
    """Spherical k-means on the sample in one Ray task (faiss-gpu's on the GPU the task is given)."""
    gpus = 1 if cfg.cluster.train.use_gpu else 0
    return ray.get(ray.remote(num_cpus=1, num_gpus=gpus)(_kmeans_task).remote(run, cfg.cluster, markers, facts))


def load_kmeans(run: RunDir, meta: dict[str, Any], temperature: float) -> Assigner:
    """Nearest centroid, with a softmax over cosine / temperature as confidence."""
    centroids = read(run, run.model("centroids.npy"))

    def by_centroid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = soft_assign(x, centroids, temperature)
        return out["cluster"], out["confidence"], out["cluster2"]

    return by_centroid


# mlc ---------------------------------------------------------------------------------------------

def build_mlc(cluster: ClusterConfig) -> MLC:
    """The MLC method from the validated `cluster.mlc` section."""
    return MLC(cluster.mlc)


def assign_memory(cluster: ClusterConfig, rows: int, dim: int) -> int:
    """Bytes the MLC assigner fit needs on `rows` sampled rows of width `dim` (the largest k it may try)."""
    return assign_memory_bytes(rows, dim, cluster.mlc, cluster.largest_k(), cluster.assign_neighbors)


def check_assign_memory(cluster: ClusterConfig, rows: int, dim: int) -> None:
    """The MLC assigner fit's memory estimate (rows x dim embeddings) against cluster.assign_memory_gb,
    the memory its Ray task requests: a clear error before any work instead of an OOM-killed task."""
    k_max = cluster.largest_k()
    need = assign_memory(cluster, rows, dim)
    if need > cluster.assign_memory_gb * GB:
        shape = f"dim {dim}" if dim else "before the embeddings' dimension is known"
        raise ConfigError(f"cluster.assign_memory_gb: spectral clustering {rows:,} rows of cluster.assign_sample "
                          f"({shape}, k up to {k_max}) needs about {need / GB:.1f} GiB, more than the "
                          f"{cluster.assign_memory_gb} GiB requested; raise cluster.assign_memory_gb or lower "
                          "cluster.assign_sample")


def check_mlc(cfg: Config) -> None:
    """The assigner fit's memory, as far as it is known before embedding."""
    check_assign_memory(cfg.cluster, cfg.cluster.assign_sample, 0)


def _mlc_assigner_task(run: RunDir, cluster: ClusterConfig, markers: Markers, state: dict[str, torch.Tensor],
                       facts: dict[str, Any], started: float) -> dict[str, Any]:
    """Choose K (when auto), spectral-cluster a sample in the trained head's space, fit the subspaces."""
    method = build_mlc(cluster)
    x, _ = sample_embeddings(run, markers, cluster.assign_sample, cluster.seed)
    head = method.head(x.shape[1])
    head.load_state_dict(state)
    head.eval()
    chosen: dict[str, Any] = {}
    k = cluster.k
    if k == "auto":
        _, c = head_features(head, x)
        candidates = [n for n in cluster.k_candidates if 2 <= n <= len(x) // 4]  # each half holds >= 2n rows
        if not candidates:
            raise ValueError(f"cluster.k_candidates: none fits the {len(x)}-row assign sample (at most "
                             f"{len(x) // 4}); raise cluster.assign_sample or lower the candidates")
        k, stabilities = choose_k_by_stability(c, candidates, seed=cluster.seed)
        chosen = {"k_auto": {"k": int(k), "criterion": "stability of k-means across halves of the assign sample, in "
                             "the trained head's cluster features", "rows": int(len(x)),
                             "values": {str(n): round(v, 4) for n, v in stabilities.items()}}}
    assigner, _ = fit_assigner(head, x, k, method.config, cluster.seed, rank=cluster.subspace_rank,
                               neighbors=cluster.assign_neighbors)
    save(run, run.model("head.pt"), state)
    save(run, run.model("subspaces.npy"), assigner.subspaces.bases)
    return commit(run, cluster, started, k=int(k), dim=int(x.shape[1]), space=assigner.space,
                  sample_rows=sampled_rows(markers, cluster.sample_size), assign_sample_rows=int(len(x)),
                  train=facts, **chosen)


def fit_mlc(cfg: Config, run: RunDir, markers: Markers) -> dict[str, Any]:
    """The MLC head on the Ray Train loop, then its subspaces in one Ray task of cluster.assign_memory_gb."""
    started, cluster = time.time(), cfg.cluster
    method = build_mlc(cluster)
    dim = next(iter(markers.values()))["dim"]
    check_assign_memory(cluster, sampled_rows(markers, cluster.assign_sample), dim)
    memory = int(cluster.assign_memory_gb * GB)
    check_task_memory(cfg, memory, "cluster.assign_memory_gb", "the MLC assigner fit")
    sample = deal_sample(run, markers, cluster.sample_size, cluster.seed, cluster.train.workers)
    state, facts = train(run, train_name(fit_params(cluster)), method, dim, sample, cluster.train, cluster.seed)
    facts.pop("recent_stats")
    print(f"fit: trained {facts['steps']} steps on {facts['workers']} workers, final loss {facts['final_loss']:.4f}")
    task = ray.remote(num_cpus=1, memory=memory)(_mlc_assigner_task)
    meta = ray.get(task.remote(run, cluster, markers, state, facts, started))
    if "k_auto" in meta:
        print(said_k(meta["k_auto"]), flush=True)
    return meta


def load_mlc(run: RunDir, meta: dict[str, Any], temperature: float) -> Assigner:
    """The head's features (Z or C, as chosen at fit), then the nearest cluster subspace."""
    head = build_mlc(ClusterConfig.model_validate(meta["params"])).head(meta["dim"])
    head.load_state_dict(read(run, run.model("head.pt")))
    head.eval()
    subspaces = SubspaceAssigner(read(run, run.model("subspaces.npy")), temperature)

    def by_subspace(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, c = head_features(head, x)
        return subspaces.assign(z if meta["space"] == "z" else c)

    return by_subspace


# methods trained on the Ray Train loop (the default fit and load) --------------------------------

def _sic_space(cfg: Config, run: RunDir, markers: Markers, dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    """SIC's semantic space: the run's space of nouns (built with the label stage's settings, or the one
    committed), reduced to the cluster.sic.space_nouns nouns nearest each k-means centre of the assign
    sample. Returns the nouns' vectors (V, d) and facts for model.json."""
    from scaleclust.semantic import build_space  # the encoder's modules: only where SIC trains
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


def sic_recipe(cfg: Config, run: RunDir, markers: Markers, dim: int) -> tuple[SIC, dict[str, Any]]:
    """SIC against its semantic space's nouns, built in a Ray task with the encoder's resources; the
    space's facts ("semantic") for model.json."""
    task = ray.remote(num_cpus=cfg.embed.cpus_per_actor, num_gpus=cfg.embed.gpus_per_actor)(_sic_space)
    nouns, semantic = ray.get(task.remote(cfg, run, markers, dim))
    # torch.tensor copies: arrays from the object store are read-only
    return SIC(cfg.cluster.sic, int(cfg.cluster.k), torch.tensor(nouns)), {"semantic": semantic}


def fit_sic(cfg: Config, run: RunDir, markers: Markers, **facts: Any) -> dict[str, Any]:
    """The default Ray-Train fit of SIC's recipe; its semantic space's signature joins the fit's identity."""
    method, found = sic_recipe(cfg, run, markers, next(iter(markers.values()))["dim"])
    print(f"fit: sic trains against {found['semantic']['nouns']} nouns of the semantic space")
    return fit_on_train(cfg, run, markers, method, {"semantic": found["semantic"]["signature"]}, **found, **facts)


@dataclass(frozen=True)
class Trained:
    """A head trained on the Ray Train loop: its state, the loop's facts, the chosen head, model.json facts,
    and the Train run's name (where its checkpoints are)."""

    state: dict[str, torch.Tensor]
    facts: dict[str, Any]
    head: int
    found: dict[str, Any]
    name: str


def train_head(cfg: Config, run: RunDir, markers: Markers, method: Method, params: dict[str, Any],
               prefix: str = "fit", init_state: dict[str, Any] | None = None,
               sample: DealtSample | None = None) -> Trained:
    """Train `method`'s head on the Ray Train loop on cfg.cluster's sample (`sample` when the caller has
    read it already), with each row's neighbours from the index when the method needs them, under the
    name `prefix`-hash(params + the index's state), so the same identity resumes; start from
    `init_state` (a warm refit) when no checkpoint of that name exists. Keeps the head with the lowest
    loss over the last steps (no labels)."""
    cluster, dim, found = cfg.cluster, next(iter(markers.values()))["dim"], {}
    if sample is None:
        sample = deal_sample(run, markers, cluster.sample_size, cluster.seed, cluster.train.workers)
    if method.neighbors:
        manifest = load_manifest(run)
        params = {**params, "nprobe": cfg.index.nprobe, "index_next_id": manifest["next_id"]}
        found["neighbors"] = {"m": method.neighbors, "nprobe": cfg.index.nprobe, "index": manifest["spec"]["factory"]}
        with searchers(run, manifest, cfg.index.shards_per_searcher) as actors:
            neighbors = IndexNeighbors(actors, method.neighbors, cfg.index.nprobe)
            state, facts = train(run, train_name(params, prefix), method, dim, sample, cluster.train, cluster.seed,
                                 neighbors, init_state=init_state)
    else:
        state, facts = train(run, train_name(params, prefix), method, dim, sample, cluster.train, cluster.seed,
                             init_state=init_state)
    recent, chosen, said = facts.pop("recent_stats"), 0, ""
    if isinstance(method, HeadsMethod):
        heads, recent = method.config.heads, recent[-method.config.select_steps:]
        chosen = select_head(recent, heads)
        said = f"; head {chosen} of {heads} has the lowest loss"
        found["head_losses"] = [round(float(np.mean([s[f"head{h}"] for s in recent])), 5) for h in range(heads)]
    print(f"{prefix}: trained {facts['steps']} steps on {facts['workers']} workers, final loss "
          f"{facts['final_loss']:.4f}{said}")
    found["calibration"] = calibrate_confidence(run, markers, method, state, dim, int(cluster.k), chosen, cluster.seed)
    return Trained(state, facts, chosen, found, train_name(params, prefix))


def calibrate_confidence(run: RunDir, markers: Markers, method: Method, state: dict[str, torch.Tensor], dim: int,
                         k: int, head: int, seed: int) -> dict[str, Any]:
    """The trained head's label-free confidence temperature (cluster.calibration) on a fresh sample of
    calibration.ROWS rows, with its evidence, for model.json; printed."""
    x, _ = sample_embeddings(run, markers, calibration.ROWS, seed + 1)
    found = calibration.calibrate(x, head_assigner(method, state, dim, k, head).logits(x))
    print(calibration.describe(found))
    return found


def fit_on_train(cfg: Config, run: RunDir, markers: Markers, method: Method | None = None,
                 identity: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The default fit of a Ray-Train method: train_head, then commit head.pt and model.json.
    `identity` joins the fit's identity (the Train run's name)."""
    started, cluster, dim = time.time(), cfg.cluster, int(next(iter(markers.values()))["dim"])
    if method is None:
        method, found = recipe(cfg, run, markers, dim)
        extra = {**found, **extra}
    trained = train_head(cfg, run, markers, method, {**fit_params(cluster), **(identity or {})})
    save(run, run.model("head.pt"), trained.state)
    return commit(run, cluster, started, k=int(cluster.k), dim=dim,
                  head=trained.head, sample_rows=sampled_rows(markers, cluster.sample_size), **trained.found, train=trained.facts,
                  **extra)


def head_assigner(method: Method, state: dict[str, torch.Tensor], dim: int, k: int, index: int,
                  temperature: float = 1.0) -> HeadAssigner:
    """Rows -> (cluster, confidence, second choice) by head `index` of `method`'s head with weights `state`,
    confidence at `temperature` (1: the raw softmax)."""
    head = method.head(dim)
    head.load_state_dict(state)
    head.eval()
    return HeadAssigner(head if isinstance(method, HeadsMethod) else OneHead(head, k), index, temperature)


def model_cluster(meta: dict[str, Any]) -> ClusterConfig:
    """The `cluster` section a committed model was fitted with, at its current k (a refit may grow it)."""
    return ClusterConfig.model_validate({**meta["params"], "k": meta["k"]})


def load_head(run: RunDir, meta: dict[str, Any], temperature: float,
              entry: MethodEntry | None = None) -> Assigner:
    """The chosen head of the committed model: argmax cluster, its softmax probability at the model's
    calibrated temperature (1 for a model fitted before calibration), the runner-up."""
    method = (entry or get(meta["method"])).build(model_cluster(meta))
    state = read(run, run.model("head.pt"))
    calibrated = meta.get("calibration", {}).get("temperature", 1.0)
    return head_assigner(method, state, meta["dim"], int(meta["k"]), int(meta["head"]), calibrated).assign


def build_turtle(cluster: ClusterConfig) -> Turtle:
    """TURTLE from the validated `cluster.turtle` section."""
    return Turtle(cluster.turtle, int(cluster.k))


def fit_turtle(cfg: Config, run: RunDir, markers: Markers, **facts: Any) -> dict[str, Any]:
    """The default Ray-Train fit, after checking cluster.turtle.dims against the embeddings' width."""
    method = build_turtle(cfg.cluster)
    try:
        method.dims(next(iter(markers.values()))["dim"])
    except ValueError as err:
        raise ConfigError(f"cluster.turtle.dims: {err}") from None
    return fit_on_train(cfg, run, markers, method, **facts)


def _heads(kind: type) -> Callable[[ClusterConfig], Method]:
    """The builder of a multi-head method from its own section of the config (cluster.<name>)."""
    return lambda cluster: kind(getattr(cluster, cluster.method), int(cluster.k))


register(MethodEntry("kmeans", "task", fit=fit_kmeans, load=load_kmeans, files=("centroids.npy",), warm="task"))
register(MethodEntry("mlc", "ray_train", fit=fit_mlc, load=load_mlc, build=build_mlc,
                     files=("head.pt", "subspaces.npy"), check=check_mlc, warm="task", refit_sample="assign_sample",
                     chooses_k=True))
register(MethodEntry("scan", "ray_train", build=_heads(SCAN), neighbors=True))
register(MethodEntry("spice", "ray_train", build=_heads(SPICE), neighbors=True))
register(MethodEntry("sic", "ray_train", fit=fit_sic, build=_heads(SIC), from_run=sic_recipe, neighbors=True))
register(MethodEntry("scl", "ray_train", build=_heads(SCL), neighbors=True))
register(MethodEntry("turtle", "ray_train", fit=fit_turtle, build=build_turtle,
                     experimental="at its defaults it scored below k-means on some of the labelled sets of "
                     "docs/measurements.md#methods-x-data-sets"))

_LOADED: dict[tuple[str, str, float], Assigner] = {}


def load_assigner(run: RunDir, model_id: str, temperature: float, entry: MethodEntry | None = None) -> Assigner:
    """The committed model as a function: embeddings (n, d) -> (cluster, confidence, second choice).
    `entry`: the model's method, where the caller resolved it (a Ray worker's registry holds only the
    methods the package registers). Cached per process, so each assign worker loads a model once."""
    key = (run.url, model_id, temperature)
    if key not in _LOADED:
        _LOADED.clear()
        meta = run.marker(run.model("model.json"))
        if meta is None or meta["model_id"] != model_id:
            raise RuntimeError(f"model {model_id} is no longer the committed model of {run.url}; re-run assign")
        entry = entry or get(meta["method"])
        _LOADED[key] = entry.load(run, meta, temperature) if entry.load else load_head(run, meta, temperature, entry)
    return _LOADED[key]
