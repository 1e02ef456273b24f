"""Nightly update: embed new shards only, index and assign them with the current model, report drift,
refit when the policy says so (warm-started, cluster ids matched), then write a new version and move
the versions/LATEST.json pointer last. One writer at a time: the run directory's lease is held
throughout.

Steps, each committed before the next, so a killed update re-run resumes (see scaleclust.versions):
1. embed the shards no marker covers (the embed stage skips committed ones); index them when the run has
   an index; assign them with the current model (the assign stage skips assigned ones);
2. drift of the new shards' rows against the latest version (Ray task per shard; novel rows, and rows
   whose neighbourhoods only new rows fill) and the refit decision, recorded in versions/V/decision.json
   and drift.json;
3. on refit: a warm start from the current model on a fresh sample (k-means from the centroids; MLC
   keeps its head and refits its subspaces, both in a Ray task; the heads trained with Ray Train
   (scan, spice, sic, scl, turtle) train update.refit_steps steps from the committed head, grown by
   outputs for new concepts, with each row's neighbours from the index), ids matched to the old
   clusters, the model written to models/NEW/ and then promoted to model/; every shard re-assigned
   into new files (the old ones stay for older versions);
4. summary (clusters.parquet, metrics.json; without a refit only the new shards are read and merged
   into the parent version's partial), cluster names carried over by id, the label stage (after a refit
   only) and the report, the model archived in models/, versions/V/manifest.json, then the pointer;
5. versions beyond update.keep_versions pruned.
The first update of a run directory runs every stage and writes version 1 (no drift).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.remote_function import RemoteFunction

from scaleclust import methods
from scaleclust.stages import fit, summary
from scaleclust.cluster.drift import FRESH_QUERIES, DriftCounts, Novelty, calibrate, fresh_neighbourhoods, report
from scaleclust.cluster.grow import grow_state
from scaleclust.cluster.heads import OneHead
from scaleclust.cluster.mlc import head_features
from scaleclust.cluster.kmeans import soft_assign
from scaleclust.cluster.refit import (fresh_rows, keep_fresh, match_ids, match_similar, novel_groups,
                                      prototypes, subspace_similarity, typical_tightness, warm_kmeans, warm_subspaces)
from scaleclust.cluster.subspaces import SubspaceAssigner, fit_subspaces
from scaleclust.config import ClusterConfig, Config, UpdateConfig
from scaleclust.tables import embedding_matrix
from scaleclust.lease import Lease
from scaleclust.parallel import map_shards
from scaleclust.pipeline import BY_NAME, STAGES, prepare, run_stage
from scaleclust.ray_setup import GIB, check_task_memory, ensure_ray
from scaleclust.rundir import RunDir, cluster_ids
from scaleclust.sample import DealtSample, deal_sample, sample_embeddings, sample_plan, sampled_rows
from scaleclust.stage import Context, leased
from scaleclust.storage import copy_file, join, remove
from scaleclust.versions import Versions

EXAMPLES = 20  # novel keys listed in drift.json
KNOWN_ROWS = 20_000  # sampled rows the old clusters accept that place a grown head's new outputs' biases


def sample_task(cfg: Config, fn: Callable[..., Any], rows: int, dim: int, field: str) -> RemoteFunction:
    """`fn` as a Ray task of 1 CPU that requests the memory of a task holding `rows` x `dim` sampled
    float32 rows: the rows, then at most 0.7 of their size again (the batches' scores, the rows of new
    concepts and their masks: benchmarks/refit_memory.py; the fp16 parts read, half the rows' size, while
    sample_embeddings fills its matrix), so twice the rows' size, plus a GiB for the process itself (torch,
    the head): 12.4 GiB at jobs/laion.yaml's refit sample. Ray then never puts the task on a node that has
    less memory than that left by the other tasks that request memory. `field` sizes it."""
    memory = sample_memory(rows, dim)
    check_task_memory(cfg, memory, field, f"a sample of {rows:,} rows x {dim}")
    return ray.remote(num_cpus=1, memory=memory)(fn)


def sample_memory(rows: int, dim: int) -> int:
    """Bytes sample_task requests for `rows` x `dim` sampled rows."""
    return 2 * rows * dim * 4 + GIB


def refit_size(cluster: ClusterConfig, method: str) -> tuple[int, str]:
    """The rows a refit of `method` samples at most (its entry's refit_sample), and the setting that says so."""
    field = methods.get(method).refit_sample
    return getattr(cluster, field), f"cluster.{field}"


def check_refit_memory(cfg: Config, run: RunDir, latest: dict[str, Any]) -> None:
    """Whether a node can hold the refit's sample tasks, before the night's work: on the rows committed
    so far (sample_task checks again on the rows it reads, the night's new ones counted)."""
    if refit_policy(cfg) == "never":
        return
    model = run.marker(run.path("models", latest["model"], "model.json"))
    size, field = refit_size(cfg.cluster, model["method"])
    rows = sampled_rows(run.committed("embeddings"), size)
    check_task_memory(cfg, sample_memory(rows, int(model["dim"])), field, f"the refit's sample of {rows:,} rows x "
                      f"{model['dim']}")


def refit_policy(cfg: Config) -> str:
    """update.refit, or its default: on_drift (every method has a warm refit)."""
    return cfg.update.refit or "on_drift"


def check(cfg: Config) -> None:
    """What the update needs of the config, checked before any work."""
    fit.check(cfg)


# novelty of a model -------------------------------------------------------------------------------

def _novelty_url(run: RunDir, model_id: str) -> str:
    return run.path("models", model_id, "novelty.npz")


def _calibrate(run: RunDir, model: dict[str, Any], markers: dict[str, dict[str, Any]], temperature: float,
               upd: UpdateConfig, seed: int) -> None:
    """Novelty prototypes and thresholds of the committed model from a sample of the rows (a Ray task)."""
    x, _ = sample_embeddings(run, markers, upd.calibration_rows, seed)
    slots, _, _ = methods.load_assigner(run, model["model_id"], temperature)(x)
    ids = cluster_ids(model)
    novelty = calibrate(x, ids[slots], ids, upd.novelty_quantile)
    run.write_bytes(_novelty_url(run, model["model_id"]), novelty.to_bytes())


def _novelty(run: RunDir, model_id: str) -> Novelty:
    return Novelty.from_bytes(run.read_bytes(_novelty_url(run, model_id)))


# drift -------------------------------------------------------------------------------------------

def drift_shard(item: dict[str, Any], run: RunDir, novelty: Novelty, low: float,
                sample_rows: int) -> tuple[str, DriftCounts]:
    """One new shard's contribution to the drift report: its assignments joined to its embeddings, and
    `sample_rows` of its rows for the neighbourhood test; with the shard's name."""
    emb = run.read_table(run.embeddings(item["shard"]), ["key", "embedding"])
    asg = run.read_table(run.path("assignments", item["file"]), ["key", "cluster", "confidence"])
    asg = asg.take(pc.index_in(emb["key"], value_set=asg["key"].combine_chunks()))
    counts = DriftCounts()
    x = embedding_matrix(emb["embedding"])
    counts.add(asg["cluster"].to_numpy(), asg["confidence"].to_numpy(), novelty.novel(x), emb["key"].to_pylist(), low,
               EXAMPLES, x, sample_rows)
    return item["shard"], counts


def drift(run: RunDir, latest: dict[str, Any], new: list[str], upd: UpdateConfig) -> dict[str, Any]:
    """The drift report of the rows of `new` shards against the latest version's clusters; the
    neighbourhood test runs here on FRESH_QUERIES rows sampled over the shards and the model's reference.
    The shards' counts merge as their tasks finish; their sampled rows (FRESH_QUERIES in all, or one per
    shard) join in shard order, so the report does not depend on which task finished first."""
    print(f"drift: {len(new)} new shard(s) against version {latest['version']}", flush=True)
    markers = run.committed("assignments")
    novelty = _novelty(run, latest["model"])
    total, samples = DriftCounts(), {}
    for shard, part in map_shards(drift_shard, [{"shard": s, "file": markers[s]["file"]} for s in new],
                                  num_cpus=1, run=run, novelty=replace(novelty, reference=None),
                                  low=upd.low_confidence, sample_rows=-(-FRESH_QUERIES // max(len(new), 1))):
        samples[shard] = DriftCounts(sample=part.sample, sample_novel=part.sample_novel)
        total.merge(replace(part, sample=None, sample_novel=None), EXAMPLES)
    for shard in sorted(samples):
        total.merge(samples[shard], EXAMPLES)
    fitted = {int(c): n for c, n in latest["sizes"].items()}
    return {"parent": latest["version"], "shards": new,
            **report(fitted, total, upd.growth, upd.min_expected_rows, upd.drift_warn, upd.drift_refit,
                     total.fresh_share(novelty.reference))}


def decide(upd: UpdateConfig, policy: str, latest: dict[str, Any], report_: dict[str, Any]) -> tuple[bool, str]:
    """Whether this update refits under `policy` (refit_policy), and why."""
    if policy == "on_drift":
        hit = report_["score"] >= upd.drift_refit
        if not hit and report_.get("grown_excess", 0.0) >= upd.grown_refit:
            return True, (f"clusters {report_['grown']} grew by {report_['grown_excess']:.3f} of the new rows >= "
                          f"update.grown_refit {upd.grown_refit}")
        return hit, f"drift score {report_['score']:.3f} {'>=' if hit else '<'} update.drift_refit {upd.drift_refit}"
    if policy == "every_n":
        since = latest.get("updates_since_refit", 0) + 1
        return since >= upd.every_n, f"{since} update(s) since the last refit, update.every_n {upd.every_n}"
    return False, "update.refit is never"


# refit -------------------------------------------------------------------------------------------

def unseen_shards(history: Versions, markers: dict[str, dict[str, Any]], model_id: str) -> set[str]:
    """The committed shards that model `model_id` was not fitted on: those absent from the earliest
    complete version it assigned (with that one pruned, the earliest left: fewer count, never more)."""
    for manifest in history.complete():
        if manifest["model"] == model_id:
            return set(markers) - set(manifest["shards"])
    return set()


def news(markers: dict[str, dict[str, Any]], n: int, seed: int, unseen: set[str], grown: list[int]) -> dict[str, Any]:
    """What a refit needs to find concepts an old cluster absorbed: for each row of the refit's sample
    (sample_plan's order) whether its shard is one the old model has not seen, and the clusters that grew."""
    plan = sample_plan(markers, n, seed)
    is_new = np.concatenate([np.full(len(r), s in unseen) for s, r in plan.items()]) if plan else np.zeros(0, bool)
    return {"is_new": is_new, "grown": list(grown)}


def concept_groups(x: np.ndarray, novel: np.ndarray, slots: np.ndarray, old_ids: np.ndarray, new: dict[str, Any],
                   upd: UpdateConfig, niter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of concepts the old model lacks, which seed new clusters, and their groups (one per new
    cluster, -1 for a row left out). The rows: novel rows (no cluster accepts them), the new-shard
    parts of grown clusters (cluster.refit.fresh_rows) and new rows whose neighbourhoods are new
    (cluster.drift.fresh_neighbourhoods); x's rows with their old cluster slots and `new` = news() of
    this sample. The groups: cluster.refit.novel_groups, at most update.max_new_clusters, at the
    granularity of the old clusters, less the groups whose rows come from old and new shards alike
    (keep_fresh: outliers of old concepts)."""
    grown = [int(np.flatnonzero(old_ids == c)[0]) for c in new["grown"] if c in old_ids]
    concept = (novel | fresh_rows(x, slots, new["is_new"], grown, upd.min_new_cluster_rows, niter, seed)
               | fresh_neighbourhoods(x, new["is_new"], seed))
    wanted = min(upd.max_new_clusters, int(concept.sum()) // upd.min_new_cluster_rows)
    tight = typical_tightness(x, np.where(concept, -1, slots), upd.min_new_cluster_rows)
    groups = novel_groups(x[concept], wanted, niter, seed, upd.min_new_cluster_rows, tight)
    return concept, keep_fresh(groups, new["is_new"][concept], float(np.mean(new["is_new"])))


def refit_model(run: RunDir, cluster: ClusterConfig, upd: UpdateConfig, markers: dict[str, dict[str, Any]],
                old: dict[str, Any], seed: int, size: int, new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Warm-started refit of the current model on a fresh sample of at most `size` rows (refit_size, read on
    the driver: the task's worker may lack a method registered from outside the package), ids matched to
    the old model's; written to models/NEW/ (model.json last). Returns the new model's metadata and the id
    mapping.

    kmeans: k-means from the old centroids plus centroids seeded on new concepts (concept_groups; `new` is
    news() of this sample); ids by centroid cosine.
    mlc: the trained head is kept; k-subspaces in its feature space from the old bases plus a basis fitted
    on each group of concept_groups (grouped on the embeddings, as for k-means; the old clusters are the
    old bases' slots), on a fresh assign sample; ids by subspace similarity."""
    started = time.time()
    mlc = old["method"] == "mlc"
    x, _ = sample_embeddings(run, markers, size, seed)
    novel = _novelty(run, old["model_id"]).novel(x)
    old_ids = cluster_ids(old)
    next_id = old.get("next_cluster_id", int(old_ids.max()) + 1)
    model_id = uuid.uuid4().hex

    def was(name: str) -> str:
        return run.path("models", old["model_id"], name)

    def now(name: str) -> str:
        return run.path("models", model_id, name)

    if mlc:
        head = methods.build_mlc(ClusterConfig.model_validate(old["params"])).head(old["dim"])
        head.load_state_dict(methods.read(run, was("head.pt")))
        z, c = head_features(head, x)
        feats = z if old["space"] == "z" else c
        old_bases = methods.read(run, was("subspaces.npy"))
        concept, groups = concept_groups(x, novel, SubspaceAssigner(old_bases).assign(feats)[0],
                                         old_ids, new, upd, cluster.niter, seed)
        n_new = int(groups.max()) + 1 if len(groups) else 0
        seeds = fit_subspaces(feats[concept][groups >= 0], groups[groups >= 0], n_new, old_bases.shape[2]).bases
        bases = warm_subspaces(feats, np.concatenate([old_bases, seeds]), cluster.niter)
        ids, mapping = match_similar(subspace_similarity(bases, old_bases), old_ids, upd.match_floor, next_id)
        copy_file(was("head.pt"), now("head.pt"), run.storage)  # the head is kept
        methods.save(run, now("subspaces.npy"), bases.astype(np.float32))
        slots = SubspaceAssigner(bases).assign(feats)[0]
        facts = {"params": old["params"], "k": int(len(bases)), "space": old["space"]}
    else:
        old_centroids = methods.read(run, was("centroids.npy"))
        concept, groups = concept_groups(x, novel, soft_assign(x, old_centroids, 1.0)["cluster"], old_ids, new, upd,
                                         cluster.niter, seed)
        n_new = int(groups.max()) + 1 if len(groups) else 0
        seeds = prototypes(x[concept][groups >= 0], groups[groups >= 0], n_new).astype(np.float32)
        centroids = warm_kmeans(x, np.concatenate([old_centroids, seeds]), cluster.niter, seed)
        ids, mapping = match_ids(old_centroids, old_ids, centroids, upd.match_floor, next_id)
        methods.save(run, now("centroids.npy"), centroids.astype(np.float32))
        slots = soft_assign(x, centroids, 1.0)["cluster"]
        facts = {"params": methods.fit_params(cluster), "k": int(len(centroids))}
    run.write_bytes(_novelty_url(run, model_id), calibrate(x, ids[slots], ids, upd.novelty_quantile).to_bytes())
    meta = {"method": old["method"], **facts, "model_id": model_id, "dim": int(x.shape[1]), "sample_rows": int(len(x)),
            "cluster_ids": ids.tolist(), "next_cluster_id": mapping["next_id"], "warm_from": old["model_id"],
            "seeded_new": int(n_new), "novel_in_sample": int(novel.sum()), "seconds": round(time.time() - started, 2)}
    run.write_json(run.path("models", model_id, "model.json"), meta)
    return meta, {"from_model": old["model_id"], "to_model": model_id, **mapping}


# refit of a head trained with Ray Train ------------------------------------------------------------

def refit_cluster(cluster: ClusterConfig, upd: UpdateConfig, old: dict[str, Any], k: int) -> ClusterConfig:
    """The `cluster` section a head refit trains with: the committed model's (its method and architecture)
    at k clusters, with update.refit_steps steps, split between the method's phases in the proportion of
    its cold fit (scan: consistency, then self-labelling); sample size, seed and workers are today's."""
    fitted = methods.model_cluster(old)
    section = getattr(fitted, fitted.method)
    if hasattr(section, "self_label_steps"):
        first = max(1, round(upd.refit_steps * section.steps / (section.steps + section.self_label_steps)))
        steps = {"steps": first, "self_label_steps": max(0, upd.refit_steps - first)}
    else:
        steps = {"steps": upd.refit_steps}
    return cluster.model_copy(update={"method": fitted.method, "k": k,
                                      fitted.method: section.model_copy(update=steps)})


def warm_start(run: RunDir, cluster: ClusterConfig, upd: UpdateConfig, sample: DealtSample, old: dict[str, Any],
               seed: int, new: dict[str, Any]) -> dict[str, Any]:
    """The committed head grown for new concepts, on the refit's sample (a Ray task): each
    group of rows of a concept the old model lacks (concept_groups; `new` is news() of this sample) seeds
    a new output (cluster.grow). Returns the grown state ("head"), the number of new outputs, and the
    counts of novel and new-concept rows."""
    x = sample.gather()
    novel = _novelty(run, old["model_id"]).novel(x)
    method = methods.get(old["method"]).build(methods.model_cluster(old))
    state = methods.read(run, run.path("models", old["model_id"], "head.pt"))
    assigner = methods.head_assigner(method, state, old["dim"], int(old["k"]), int(old["head"]))
    concept, groups = concept_groups(x, novel, assigner.assign(x)[0], cluster_ids(old), new, upd, cluster.niter, seed)
    n_new = int(groups.max()) + 1 if len(groups) else 0
    known = x[np.flatnonzero(~concept)[:: max(1, int((~concept).sum()) // KNOWN_ROWS)]]
    trained = assigner.head.inner if isinstance(assigner.head, OneHead) else assigner.head
    grown = grow_state(trained, torch.from_numpy(x[concept][groups >= 0]), torch.from_numpy(groups[groups >= 0]),
                       n_new, torch.from_numpy(known))
    return {"head": grown, "n_new": n_new, "novel": int(novel.sum()), "concept": int(concept.sum()),
            "rows": int(len(x))}


def finish_heads(run: RunDir, cluster: ClusterConfig, upd: UpdateConfig, sample: DealtSample, old: dict[str, Any],
                 trained: methods.Trained, warm: dict[str, Any],
                 started: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """After the refit's training (a Ray task), on the refit's sample: ids matched by the Hungarian
    algorithm on prototypes above update.match_floor (the new clusters' on this sample against the old
    ones' from the old model's novelty calibration: the rows each old cluster held when it was
    committed, so new rows an old cluster absorbed cannot carry its id off to another concept), novelty
    calibrated, models/NEW/ written (model.json last)."""
    x = sample.gather()
    method = methods.get(old["method"]).build(cluster)
    slots = methods.head_assigner(method, trained.state, old["dim"], int(cluster.k), trained.head).assign(x)[0]
    old_ids = cluster_ids(old)
    next_id = old.get("next_cluster_id", int(old_ids.max()) + 1)
    ids, mapping = match_ids(_novelty(run, old["model_id"]).prototypes, old_ids, prototypes(x, slots, int(cluster.k)),
                             upd.match_floor, next_id)
    model_id = uuid.uuid4().hex
    methods.save(run, run.path("models", model_id, "head.pt"), trained.state)
    run.write_bytes(_novelty_url(run, model_id), calibrate(x, ids[slots], ids, upd.novelty_quantile).to_bytes())
    meta = {"method": old["method"], "params": old["params"], "k": int(cluster.k), "model_id": model_id,
            "dim": int(old["dim"]), "head": trained.head, "sample_rows": int(len(x)), "cluster_ids": ids.tolist(),
            "next_cluster_id": mapping["next_id"], "warm_from": old["model_id"], "seeded_new": warm["n_new"],
            "novel_in_sample": warm["novel"], "concept_in_sample": warm["concept"], **trained.found,
            "train": {**trained.facts, "name": trained.name},
            "seconds": round(time.time() - started, 2), **({"semantic": old["semantic"]} if "semantic" in old else {})}
    run.write_json(run.path("models", model_id, "model.json"), meta)
    return meta, {"from_model": old["model_id"], "to_model": model_id, **mapping}


def refit_heads(cfg: Config, run: RunDir, markers: dict[str, dict[str, Any]], old: dict[str, Any], seed: int,
                version: str, unseen: set[str], grown: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Warm refit of a head trained with Ray Train: the committed head, grown for new concepts
    (warm_start), trains update.refit_steps steps on a fresh seeded sample over all shards, each row with
    its neighbours from the index (which the update has extended by the new shards), under a Train name
    of its own (refit-, the old model, the version, the seed), so a killed refit resumes from its newest
    checkpoint and ends where an unbroken one ends. The sample is read once, for the growth, the training,
    the ids and the novelty calibration. Returns finish_heads' (meta, id mapping)."""
    started = time.time()
    sample_cfg = cfg.cluster.model_copy(update={"seed": seed})
    size, field = refit_size(sample_cfg, old["method"])
    sample = deal_sample(run, markers, size, seed, sample_cfg.train.workers)
    new = news(markers, size, seed, unseen, grown)
    rows, dim = sample.rows, sample.dim
    warm = ray.get(sample_task(cfg, warm_start, rows, dim, field).remote(
        run, refit_cluster(sample_cfg, cfg.update, old, int(old["k"])), cfg.update, sample, old, seed, new))
    cluster = refit_cluster(sample_cfg, cfg.update, old, int(old["k"]) + warm["n_new"])
    refit_cfg = cfg.model_copy(update={"cluster": cluster})
    method, _ = methods.recipe(refit_cfg, run, markers, int(old["dim"]))  # the old model's facts carry over
    identity = {"from": old["model_id"], "version": version, "seed": seed, "params": methods.fit_params(cluster)}
    trained = methods.train_head(refit_cfg, run, markers, method, identity, prefix="refit",
                                 init_state={"head": warm["head"]}, sample=sample)
    print(f"refit: {old['method']} trained from model {old['model_id']} with {warm['n_new']} new output(s) "
          f"({warm['concept']} rows of new concepts, {warm['novel']} of them novel, in the {warm['rows']}-row sample)")
    finish = sample_task(cfg, finish_heads, rows, dim, field)
    return ray.get(finish.remote(run, cluster, cfg.update, sample, old, trained, warm, started))


def promote(run: RunDir, model: dict[str, Any]) -> None:
    """Make an archived model the committed one: model.json removed first and written last, so no
    reader ever pairs one model's metadata with another's files."""
    remove(run.model("model.json"), run.storage)
    for name in methods.get(model["method"]).files:
        copy_file(run.path("models", model["model_id"], name), run.model(name), run.storage)
    run.write_json(run.model("model.json"), model)


class Clock:
    """Seconds per step of one update, recorded in its manifest (`steps`): where a night's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self._last, 3)
        self._last = now


# versions ----------------------------------------------------------------------------------------

def carry_names(run: RunDir, parent_clusters: str | None) -> None:
    """Fill empty names in clusters.parquet from the parent version's clusters with the same id."""
    if parent_clusters is None:
        return
    table = run.read_table(run.clusters)
    parent = run.read_table(parent_clusters)
    # a parent written before name_id existed carries the others
    carried = [c for c in ("name", "name_id", "name_score", "top_names") if c in parent.column_names]
    old = {row["cluster"]: row for row in parent.select(["cluster", *carried]).to_pylist() if row["name"]}
    if not old:
        return
    rows = table.to_pylist()
    for row in rows:
        if not row["name"] and row["cluster"] in old:
            row.update({k: old[row["cluster"]][k] for k in carried})
    run.write_table(run.clusters, pa.Table.from_pylist(rows, schema=table.schema))


def write_version(run: RunDir, history: Versions, version: str, lease: Lease, parent: dict[str, Any] | None,
                  facts: dict[str, Any], clock: Clock | None = None) -> dict[str, Any]:
    """versions/V/clusters.parquet and manifest.json (last in V), then the pointer."""
    model = run.marker(run.model("model.json"))
    embedded = run.committed("embeddings")
    assigned = run.committed("assignments")
    stale = sorted(s for s, m in embedded.items() if assigned.get(s, {}).get("model") != model["model_id"]
                   or assigned[s]["embed_commit"] != m["commit"])
    if stale:
        raise RuntimeError(f"update: shards {stale[:5]} are not assigned by model {model['model_id']}; re-run")
    history.archive_model(model, list(methods.get(model["method"]).files))
    copy_file(run.clusters, history.path(version, "clusters.parquet"), run.storage)
    clusters = run.read_table(run.clusters, ["cluster", "size"]).to_pylist()
    manifest = {
        "version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parent": parent["version"] if parent else None, "model": model["model_id"], "method": model["method"],
        "model_dir": f"models/{model['model_id']}", "k": model["k"],
        "shards": {s: {"file": assigned[s]["file"], "rows": assigned[s]["rows"], "embed_commit": assigned[s]["embed_commit"]}
                   for s in sorted(assigned) if s in embedded},
        "rows": sum(assigned[s]["rows"] for s in assigned if s in embedded),
        "sizes": {str(c["cluster"]): c["size"] for c in clusters},
        **facts,
    }
    if clock is not None:
        clock.lap("version")
        manifest["steps"] = clock.seconds
    run.write_json(history.path(version, "manifest.json"), manifest)
    lease.check()
    history.point(version)
    return manifest


def summarise(cfg: Config, run: RunDir, history: Versions, version: str, parent: dict[str, Any] | None,
              new: list[str]) -> None:
    """The summary stage, incremental when it can be: the parent's partial (versions/P/partial.npz) merged
    with the new shards' partials, when the model and every old shard's assignments file are unchanged;
    else over every shard. The result's partial is kept in versions/V/ for the next night."""
    started = time.time()
    model = run.marker(run.model("model.json"))
    assigned = run.committed("assignments")
    base_url = history.path(parent["version"], "partial.npz") if parent else None
    if (parent and parent["model"] == model["model_id"] and run.exists(base_url)
            and all(assigned.get(s, {}).get("file") == e["file"] for s, e in parent["shards"].items())):
        _, total = summary.summarise(cfg, run, summary.Partial.from_bytes(run.read_bytes(base_url)), new)
    else:
        _, total = summary.summarise(cfg, run)
    run.write_bytes(history.path(version, "partial.npz"), total.to_bytes())
    run.record_seconds("summary", time.time() - started)


def after_summary(ctx: Context, parent: dict[str, Any] | None, history: Versions, relabel: bool) -> None:
    """The pipeline's stages after summary (naming, report). Names are first carried over by cluster id
    from the parent version; the label stage re-runs only when `relabel` (a new model): with the model
    unchanged a cluster keeps its name, and the night skips the label stage's pass over every shard."""
    carry_names(ctx.run, history.path(parent["version"], "clusters.parquet") if parent else None)
    for stage in STAGES[STAGES.index(BY_NAME["summary"]) + 1:]:
        if stage.when(ctx) and (stage.name != "label" or relabel):
            run_stage(stage.name, ctx)


def _first_version(ctx: Context, history: Versions, lease: Lease) -> dict[str, Any]:
    """Version 1: the registry's stages up to assign, the model's novelty calibration, then as any night."""
    cfg, run = ctx.cfg, ctx.run
    for stage in STAGES[:STAGES.index(BY_NAME["assign"]) + 1]:
        if stage.when(ctx):
            run_stage(stage.name, ctx)
    model = run.marker(run.model("model.json"))
    markers = run.committed("embeddings")
    rows = sampled_rows(markers, cfg.update.calibration_rows)
    task = sample_task(cfg, _calibrate, rows, int(model["dim"]), "update.calibration_rows")
    ray.get(task.remote(run, model, markers, cfg.assign.temperature, cfg.update, cfg.cluster.seed))
    version = history.start(None)
    summarise(cfg, run, history, version, None, sorted(markers))
    after_summary(ctx, None, history, relabel=True)
    facts = {"refit": True, "reason": "first version", "new_shards": sorted(markers),
             "new_rows": sum(m["embedded"] for m in markers.values()), "updates_since_refit": 0}
    return write_version(run, history, version, lease, None, facts)


def prune(upd: UpdateConfig, history: Versions, lease: Lease) -> None:
    """Drop versions beyond update.keep_versions (and the files only they reference), after the pointer."""
    if upd.keep_versions is None:
        return
    lease.check()
    gone = history.prune(upd.keep_versions)
    if gone["versions"]:
        print(f"update: pruned {len(gone['versions'])} version(s) beyond update.keep_versions {upd.keep_versions} "
              f"({', '.join(gone['versions'])}), {len(gone['assignments'])} assignment file(s), "
              f"{len(gone['models'])} model(s)")


def update(cfg: Config) -> dict[str, Any]:
    """One nightly update of cfg.run_dir; returns the manifest of the version it leaves as latest, after
    pruning versions beyond update.keep_versions."""
    check(cfg)
    with leased(cfg, "update") as lease:
        history = Versions(RunDir(cfg.run_dir, cfg.storage).held(lease.holder))
        manifest = _update(cfg, lease, history)
        prune(cfg.update, history, lease)
        return manifest


def _update(cfg: Config, lease: Lease, history: Versions) -> dict[str, Any]:
    """The update's steps under the lease (see the module docstring)."""
    clock = Clock()
    ctx = prepare(cfg, lease)
    run = ctx.run
    clock.lap("prepare")
    ensure_ray(cfg)
    clock.lap("ray")
    latest, unfinished = history.recover()
    clock.lap("versions")
    if latest is None:
        return _first_version(ctx, history, lease)
    check_refit_memory(cfg, run, latest)
    run_stage("embed", ctx)
    clock.lap("embed")
    if BY_NAME["index"].when(ctx):
        run_stage("index", ctx)
    clock.lap("index")
    new = sorted(set(run.committed("embeddings")) - set(latest["shards"]))
    if not new and unfinished is None:
        print(f"update: no new shards; version {latest['version']} stays the latest")
        return latest
    version = unfinished or history.start(latest)
    decision = run.marker(history.path(version, "decision.json"))
    if decision is None:
        run_stage("assign", ctx)
        clock.lap("assign")
        report_ = drift(run, latest, new, cfg.update)
        clock.lap("drift")
        run.write_json(history.path(version, "drift.json"), report_)
        refit, reason = decide(cfg.update, refit_policy(cfg), latest, report_)
        decision = {"parent": latest["version"], "refit": refit, "reason": reason, "model": None}
        run.write_marker(history.path(version, "decision.json"), decision)
    else:
        print(f"update: resuming {version} (refit: {decision['refit']})")
    report_ = run.marker(history.path(version, "drift.json"))
    print_drift(report_)
    print(f"update: refit {'yes' if decision['refit'] else 'no'}: {decision['reason']}")
    if decision["refit"]:
        if decision["model"] is None:
            old = run.marker(run.path("models", latest["model"], "model.json"))
            seed = cfg.cluster.seed + int(version[:5])  # a fresh sample every refit
            markers = run.committed("embeddings")
            unseen = unseen_shards(history, markers, old["model_id"])
            if methods.get(old["method"]).warm == "head":
                meta, mapping = refit_heads(cfg, run, markers, old, seed, version, unseen, report_["grown"])
            else:
                size, field = refit_size(cfg.cluster, old["method"])
                task = sample_task(cfg, refit_model, sampled_rows(markers, size), int(old["dim"]), field)
                meta, mapping = ray.get(task.remote(run, cfg.cluster, cfg.update, markers, old, seed, size,
                                                    news(markers, size, seed, unseen, report_["grown"])))
            run.write_json(history.path(version, "id_map.json"), mapping)
            decision["model"] = meta["model_id"]
            run.write_marker(history.path(version, "decision.json"), decision)
            if "name" in meta.get("train", {}):  # the refit is recorded: its checkpoints are no longer needed
                remove(join(run.model("train"), meta["train"]["name"]), run.storage, recursive=True)
        meta = run.marker(run.path("models", decision["model"], "model.json"))
        if (run.marker(run.model("model.json")) or {}).get("model_id") != meta["model_id"]:
            promote(run, meta)
        print_id_map(run.marker(history.path(version, "id_map.json")))
    clock.lap("refit")
    run_stage("assign", ctx)
    clock.lap("assign")
    summarise(cfg, run, history, version, latest, new)
    clock.lap("summary")
    after_summary(ctx, latest, history, relabel=decision["refit"])
    clock.lap("label_report")
    facts = {"refit": decision["refit"], "reason": decision["reason"], "new_shards": new,
             "new_rows": sum(run.committed("embeddings")[s]["embedded"] for s in new),
             "updates_since_refit": 0 if decision["refit"] else latest.get("updates_since_refit", 0) + 1,
             "drift": {k: report_[k] for k in ("score", "status", "novel_rows", "novel_share",
                                              "low_confidence_share", "grown", "shrunk")}}
    return write_version(run, history, version, lease, latest, facts, clock)


def print_drift(report_: dict[str, Any]) -> None:
    print(f"drift: {report_['new_rows']} new rows, score {report_['score']:.3f} ({report_['status']}; warn at "
          f"{report_['thresholds']['warn']}, refit at {report_['thresholds']['refit']}), novel "
          f"{report_['novel_rows']} ({report_['novel_share']:.1%}), "
          + (f"fresh {report_['fresh_share']:.1%}, " if report_.get("fresh_share") is not None else "")
          + f"low-confidence {report_['low_confidence_share']:.1%}, "
          f"total variation {report_['total_variation']:.3f}")
    if report_["grown"] or report_["shrunk"]:
        print(f"drift: grew {report_['grown']}, shrank {report_['shrunk']}")


def print_id_map(mapping: dict[str, Any]) -> None:
    print(f"refit: {len(mapping['matched'])} cluster(s) kept their ids, new ids {[n['id'] for n in mapping['new']]}, "
          f"retired {mapping['retired']} (match floor {mapping['floor']})")
