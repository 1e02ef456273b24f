"""Assign stage: every embedded row gets a cluster and a confidence, one Ray task per shard.

A shard is redone only when its assignments were made by another model or from an older commit of its
embeddings; its marker (written last) records both and names the current file,
assignments/SHARD.MODEL.COMMIT.parquet. Files are named by the model and embeddings commit they come
from, so a refit writes new files and never overwrites one that a version (versions/V/manifest.json)
references. Cluster ids are the model's stable ids (model.json `cluster_ids`, kept across refits by the update command), else 0..k-1.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from scaleclust import methods
from scaleclust.config import Config
from scaleclust.failures import NotReady
from scaleclust.tables import embedding_matrix
from scaleclust.parallel import map_shards
from scaleclust.progress import Progress
from scaleclust.rundir import RunDir, assignments_file, cluster_ids
from scaleclust.stage import Stage


def assign_shard(item: dict[str, Any], run: RunDir, temperature: float, model_id: str,
                 ids: np.ndarray, method: methods.MethodEntry) -> dict[str, Any]:
    shard = item["shard"]
    started = time.time()
    table = run.read_table(run.embeddings(shard), ["key", "embedding"])
    cluster, confidence, second = methods.load_assigner(run, model_id, temperature, method)(embedding_matrix(table["embedding"]))
    run.write_table(run.assignments(shard, model_id, item["commit"]), pa.table({
        "key": table["key"], "cluster": pa.array(ids[cluster], pa.int32()),
        "confidence": pa.array(confidence, pa.float32()), "cluster2": pa.array(ids[second], pa.int32())}))
    marker = {"shard": shard, "rows": len(table), "model": model_id, "embed_commit": item["commit"],
              "file": assignments_file(shard, model_id, item["commit"]), "seconds": round(time.time() - started, 3)}
    run.write_marker(run.assignments_marker(shard), marker)
    return marker


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    started = time.time()
    model = run.marker(run.model("model.json"))
    if model is None:
        raise NotReady("assign: no committed model; run the fit stage first")
    embedded = run.committed("embeddings")
    assigned = run.committed("assignments")
    todo = [{"shard": s, "commit": m["commit"]} for s, m in sorted(embedded.items())
            if assigned.get(s, {}).get("model") != model["model_id"] or assigned[s].get("embed_commit") != m["commit"]]
    print(f"assign: {len(embedded)} shards, {len(embedded) - len(todo)} already assigned, {len(todo)} to do")
    progress = Progress("assign", total=sum(embedded[item["shard"]]["embedded"] for item in todo), unit="rows")
    for marker in map_shards(assign_shard, todo, num_cpus=1, run=run, temperature=cfg.assign.temperature,
                             model_id=model["model_id"], ids=cluster_ids(model),
                             method=methods.get(model["method"])):  # resolved here: a worker may not have it
        progress.update(marker["rows"])
    progress.close()
    rows = sum(m["rows"] for m in run.committed("assignments").values())
    return {"shards": len(embedded), "assigned": rows, "seconds": round(time.time() - started, 2)}


def status(run: RunDir) -> dict[str, Any]:
    """Committed when every embedded shard has its assignments marker."""
    embedded, assigned = run.committed("embeddings"), run.committed("assignments")
    return {"done": bool(assigned) and len(assigned) == len(embedded), "shards": f"{len(assigned)}/{len(embedded)}"}


STAGE = Stage("assign", reads=("embeddings/", "model/"),
              commits=("assignments/SHARD.MODEL.COMMIT.parquet", "assignments/SHARD.done.json"),
              resources="one task of 1 CPU per shard",
              run=lambda ctx: run(ctx.cfg, ctx.run), status=status)
