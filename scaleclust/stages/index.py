"""Index stage: train the IVF index once on a sample, add every committed embeddings shard in parallel.

Layout under RUN/index/: trained.faiss (the empty trained index), shards/SHARD.COMMIT.faiss (one per
embeddings commit, so re-adding a changed shard never overwrites a file the current manifest names;
stored without the coarse quantizer, which build.load_shard takes from trained.faiss),
with re-ranking also shards/SHARD.COMMIT.f16.npy (the shard's unit vectors, fp16, in id order) and
manifest.json, written last: the spec and its bytes-per-vector arithmetic, each shard's contiguous
global id range and the embeddings commit it was built from, the next free id, and with index.nprobe
auto the calibration (the smallest nprobe reaching index.target_recall, measured after the adds).
A later run adds only shards missing from the manifest (or whose embeddings changed) under new ids,
without retraining.
"""
from __future__ import annotations

import time
from typing import Any

import ray

from scaleclust import methods
from scaleclust.config import Config
from scaleclust.failures import NotReady
from scaleclust.index import build
from scaleclust.index.calibrate import calibrate
from scaleclust.index.choose import IndexSpec, choose_index
from scaleclust.index.manifest import manifest_url, shard_file, trained_url, vectors_file
from scaleclust.index.vectors import npy_bytes
from scaleclust.parallel import map_shards
from scaleclust.rundir import RunDir
from scaleclust.sample import sample_blocks, sample_embeddings
from scaleclust.tables import embedding_matrix
from scaleclust.storage import listdir, remove
from scaleclust.stage import Stage, Context

GB = 1 << 30
SMALL_SEED_OFFSET = 1  # the training task's held sample is drawn apart from its streamed one


@ray.remote(num_cpus=1)
def _train(run: RunDir, markers: dict[str, dict[str, Any]], spec: IndexSpec, seed: int) -> None:
    """Train on spec.small_rows held rows and spec.train_rows streamed ones (two uniform samples) and
    write RUN/index/trained.faiss."""
    small, _ = sample_embeddings(run, markers, spec.small_rows, seed + SMALL_SEED_OFFSET)
    blocks = sample_blocks(run, markers, spec.train_rows, seed)
    run.write_bytes(trained_url(run), build.train(small, spec, blocks, seed))


def add_shard(item: dict[str, Any], run: RunDir) -> str:
    """Add one embeddings shard to a copy of the trained index under ids first_id.. (a Ray task)."""
    vectors = embedding_matrix(run.read_table(run.embeddings(item["shard"]), ["embedding"])["embedding"])
    if len(vectors) != item["count"]:
        raise RuntimeError(f"index: {item['shard']} has {len(vectors)} rows, its marker says {item['count']}")
    data = build.add(run.read_bytes(trained_url(run)), vectors, item["first_id"], shared_quantizer=True)
    if "vectors" in item:  # before the index file: a shard is only listed once both exist
        run.write_bytes(run.path("index", item["vectors"]), npy_bytes(build.unit_float32(vectors)))
    run.write_bytes(run.path("index", item["file"]), data)
    return str(item["shard"])


def choose(cfg: Config, n: int, d: int) -> IndexSpec:
    """The index for n x d from the config: a fixed kind, or the memory budget (kind auto)."""
    budget = int(cfg.index.memory_budget_gb * GB) if cfg.index.memory_budget_gb else None
    kind = None if cfg.index.kind == "auto" else cfg.index.kind
    return choose_index(n, d, budget, kind=kind, nlist=cfg.index.nlist, pq_m=cfg.index.pq_m, opq=cfg.index.opq,
                        refine_factor=cfg.index.refine_factor)


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Train once (when no manifest exists), then add the committed shards the manifest lacks."""
    started = time.time()
    embedded = {s: m for s, m in run.committed("embeddings").items() if m["embedded"] > 0}
    if not embedded:
        raise NotReady("index: no committed embeddings; run the embed stage first")
    manifest = run.marker(manifest_url(run))
    trained = manifest is None
    if trained:
        spec = choose(cfg, sum(m["embedded"] for m in embedded.values()), next(iter(embedded.values()))["dim"])
        print(f"index: training {spec.factory} on {spec.train_rows} rows ({spec.to_dict()['arithmetic']})")
        ray.get(_train.options(num_gpus=cfg.index.train_gpus).remote(run, embedded, spec, cfg.index.seed))
        manifest = {"spec": spec.to_dict(), "trained": "trained.faiss", "shards": {}, "next_id": 0, "rows": 0}
        run.write_json(manifest_url(run), manifest)  # resumable: training is committed
    else:
        print(f"index: adding to the trained {manifest['spec']['factory']} (index.kind/nlist/pq_m/opq/refine_factor "
              f"apply only to a new index: remove {run.path('index')} to retrain)")
    shards = {s: e for s, e in manifest["shards"].items() if embedded.get(s, {}).get("commit") == e["commit"]}
    todo, next_id = [], manifest["next_id"]
    refine = manifest["spec"].get("refine_factor", 0) > 0
    for shard in sorted(set(embedded) - set(shards)):
        marker = embedded[shard]
        todo.append({"shard": shard, "first_id": next_id, "count": marker["embedded"], "commit": marker["commit"],
                     "file": shard_file(shard, marker["commit"])}
                    | ({"vectors": vectors_file(shard, marker["commit"])} if refine else {}))
        next_id += marker["embedded"]
    print(f"index: {len(embedded)} shards, {len(shards)} already indexed, {len(todo)} to add")
    entries = {item["shard"]: {k: v for k, v in item.items() if k != "shard"} for item in todo}
    for shard in map_shards(add_shard, todo, num_cpus=1, run=run):
        shards[shard] = entries[shard]
    manifest = {**manifest, "shards": shards, "next_id": next_id, "rows": sum(e["count"] for e in shards.values())}
    calibration = manifest.get("calibration")
    if cfg.index.nprobe == "auto" and (todo or calibration is None or calibration["k"] != cfg.index.k
                                       or calibration["target_recall"] != cfg.index.target_recall):
        manifest["calibration"] = calibrate(run, manifest, cfg.index)
    run.write_json(manifest_url(run), manifest)
    named = {e[f].rpartition("/")[2] for e in shards.values() for f in ("file", "vectors") if f in e}
    for name in listdir(run.path("index", "shards"), run.storage):
        if name not in named:  # files of dropped entries or of a killed run: nothing refers to them
            remove(run.path("index", "shards", name), run.storage)
    return {"trained": trained, "shards": len(shards), "added": len(todo), "rows": manifest["rows"],
            "next_id": next_id, "type": manifest["spec"]["factory"], "calibration": manifest.get("calibration"),
            "seconds": round(time.time() - started, 2)}


def wanted(ctx: Context) -> bool:
    """The index runs before fit when the method trains on neighbours, when the config asks for it (it
    has an `index:` section), and to keep up with new shards in a run directory that has one."""
    return (methods.needs_index(ctx.cfg.cluster) or "index" in ctx.cfg.model_fields_set
            or ctx.run.exists(manifest_url(ctx.run)))


def status(run: RunDir) -> dict[str, Any]:
    """Committed when the manifest exists."""
    return {"done": run.exists(manifest_url(run))}


STAGE = Stage("index", reads=("embeddings/",),
              commits=("index/trained.faiss", "index/shards/", "index/manifest.json"),
              resources="one training task of 1 CPU and index.train_gpus GPU; one add task of 1 CPU per shard",
              run=lambda ctx: run(ctx.cfg, ctx.run), status=status, when=wanted)
