"""Label stage: name every cluster in words, for any method, by the votes of its most confident rows in
the run's semantic space (CLIP text over WordNet nouns, or a classifier encoder's own classes).

1. The semantic space is built once (a Ray task, on a GPU where the encoders have one) or reused.
2. Every shard's assignments (key, cluster, confidence only) give each cluster's `label.votes` most
   confident rows; the merge keeps at most K x votes candidates.
3. Only shards holding voters are read again, and only their voters are scored: each votes with its
   `label.top` softmax probabilities over the space (CPP's zero-shot vote). The cost grows with K x
   votes, not with the number of rows.
4. Each cluster is named (label.rule: by default the deepest WordNet synset holding label.share of its
   distinctive votes, cluster/naming.py), and name, name_id, name_score and top_names are written into
   clusters.parquet (atomically, by rename).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from scaleclust.cluster.naming import UNNAMED, name_clusters, softmax_top, vote_matrix
from scaleclust.config import Config
from scaleclust.failures import NotReady
from scaleclust.tables import embedding_matrix
from scaleclust.parallel import map_shards
from scaleclust.rundir import RunDir, id_slots
from scaleclust.semantic import wordnet
from scaleclust.semantic.space import CLASSIFIER, SemanticSpace, build_space, is_current, load_space, space_nouns
from scaleclust.stage import Stage

LOGIT_ROWS = 256  # voters scored at a time: bounds the (rows, nouns) logits matrix (~70 MB at 68k nouns)
_CACHE: dict[str, SemanticSpace] = {}  # one space per worker process, reused across its shards


def _first_per_group(grouped: np.ndarray, n: int) -> np.ndarray:
    """Mask of the first n rows of every group of a sorted group array."""
    return np.arange(len(grouped)) - np.searchsorted(grouped, grouped, side="left") < n


def shard_candidates(item: dict[str, Any], run: RunDir, n: int) -> dict[str, Any]:
    """One shard's n most confident rows per cluster, from its assignments alone."""
    table = run.read_table(run.path("assignments", item["file"]), ["key", "cluster", "confidence"])
    clusters = table["cluster"].to_numpy().astype(np.int64)
    confidence = table["confidence"].to_numpy().astype(np.float32)
    order = np.lexsort((np.arange(len(clusters)), -confidence, clusters))  # ties: earlier row first
    pick = order[_first_per_group(clusters[order], n)]
    keys = table["key"].take(pa.array(pick)).to_pylist()
    return {"shard": item["shard"], "cluster": clusters[pick], "confidence": confidence[pick], "key": keys}


def select_voters(run: RunDir, n: int) -> dict[str, dict[str, int]]:
    """shard -> {key: cluster} of the n most confident rows of every cluster over all shards."""
    markers = run.committed("assignments")
    shards = sorted(markers)
    number = {name: i for i, name in enumerate(shards)}
    cluster = np.zeros(0, np.int64)
    confidence = np.zeros(0, np.float32)
    shard = np.zeros(0, np.int64)
    keys = np.zeros(0, object)
    for part in map_shards(shard_candidates, [{"shard": s, "file": markers[s]["file"]} for s in shards], num_cpus=0.5, run=run, n=n):
        cluster = np.concatenate([cluster, part["cluster"]])
        confidence = np.concatenate([confidence, part["confidence"]])
        shard = np.concatenate([shard, np.full(len(part["key"]), number[part["shard"]])])
        keys = np.concatenate([keys, np.asarray(part["key"], object)])
        # shards arrive in completion order: rank by (confidence, shard, key) so ties do not depend on it
        order = np.lexsort((keys.astype(str), shard, -confidence, cluster))
        order = order[_first_per_group(cluster[order], n)]
        cluster, confidence, shard, keys = cluster[order], confidence[order], shard[order], keys[order]
    voters: dict[str, dict[str, int]] = {}
    for c, s, key in zip(cluster.tolist(), shard.tolist(), keys.tolist()):
        voters.setdefault(shards[s], {})[key] = c
    return voters


def _space(run: RunDir) -> SemanticSpace:
    space_id = run.marker(run.semantic("space.json"))["space_id"]
    token = f"{run.url}#{space_id}"
    if token not in _CACHE:
        _CACHE.clear()
        _CACHE[token] = load_space(run)
    return _CACHE[token]


def shard_votes(item: dict[str, Any], run: RunDir, top: int) -> dict[str, np.ndarray]:
    """The votes of one shard's voters: their cluster, and the indices and softmax probabilities of
    their `top` best nouns."""
    space = _space(run)
    url = run.embeddings(item["shard"])
    columns = ["key", "embedding"] + (["embedding_norm"] if space.kind == CLASSIFIER else [])
    try:
        table = run.read_table(url, columns)
    except (KeyError, pa.ArrowInvalid) as err:
        raise ValueError(f"label: {url} lacks a column naming needs ({', '.join(columns)}): it was embedded by "
                         f"an older scaleclust; embed into a new run_dir ({err})") from None
    table = table.filter(pc.is_in(table["key"], pa.array(list(item["voters"]), pa.string())))
    clusters = np.asarray([item["voters"][key] for key in table["key"].to_pylist()], np.int64)
    x = embedding_matrix(table["embedding"])
    norms = table["embedding_norm"].to_numpy() if space.kind == CLASSIFIER else None
    width = min(top, len(space.names))
    idx, probs = [np.zeros((0, width), np.int64)], [np.zeros((0, width), np.float32)]
    for start in range(0, len(x), LOGIT_ROWS):
        rows = slice(start, start + LOGIT_ROWS)
        i, p = softmax_top(space.logits(x[rows], None if norms is None else norms[rows]), top)
        idx.append(i)
        probs.append(p)
    return {"cluster": clusters, "idx": np.concatenate(idx), "probs": np.concatenate(probs)}


def _build(cfg: Config, run: RunDir) -> None:
    build_space(cfg, run)


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    started = time.time()
    model = run.marker(run.model("model.json"))
    k = model["k"]
    if not run.exists(run.clusters):
        raise NotReady(f"label: {run.clusters} does not exist; run the summary stage first")
    print(f"label: naming {k} clusters", flush=True)  # the stage's start: its one other line comes at its end
    if not is_current(cfg, run):
        task = ray.remote(num_cpus=cfg.embed.cpus_per_actor, num_gpus=cfg.embed.gpus_per_actor)(_build)
        ray.get(task.remote(cfg, run))
    space = run.marker(run.semantic("space.json"))
    if space["dim"] != model["dim"]:
        reason = (f"the embeddings are {model['dim']}-d but {space['signature']['model']} (embed.model) maps nouns "
                  f"to {space['dim']}-d: the embeddings were made by another model, so clusters stay unnamed")
        print(f"label: {reason}", flush=True)
        return {"skipped": reason}
    names, ids = space_nouns(run)
    voters = select_voters(run, cfg.label.votes)
    items = [{"shard": shard, "voters": rows} for shard, rows in sorted(voters.items())]
    parts = list(map_shards(shard_votes, items, num_cpus=1, run=run, top=cfg.label.top))
    if parts:
        clusters, idx, probs = (np.concatenate([p[f] for p in parts]) for f in ("cluster", "idx", "probs"))
    else:
        clusters, idx, probs = np.zeros(0, np.int64), np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float32)
    table = run.read_table(run.clusters)
    order = table["cluster"].to_numpy()
    slots = id_slots(order)  # stable cluster ids -> rows of clusters.parquet
    clusters = slots[clusters]
    counts = np.bincount(clusters, minlength=k)
    tree = wordnet.hierarchy(wordnet.load(cfg.label.wordnet_file, cfg.storage), names, ids) \
        if cfg.label.rule == "hierarchy" else None
    named = name_clusters(vote_matrix(clusters, idx, probs, k, len(names)), counts, names, cfg.label.min_score,
                          ids=ids, tree=tree, share=cfg.label.share)

    replace = {
        "name": pa.array([named[c].name for c in range(len(order))], pa.string()),
        "name_id": pa.array([named[c].name_id for c in range(len(order))], pa.string()),
        "name_score": pa.array([named[c].score for c in range(len(order))], pa.float32()),
        "top_names": pa.array([named[c].top_names for c in range(len(order))], pa.list_(pa.string())),
    }
    for column, values in replace.items():
        if column in table.column_names:
            table = table.set_column(table.column_names.index(column), column, values)
        else:  # clusters.parquet of an older scaleclust: the column goes after the name
            table = table.add_column(table.column_names.index("name") + 1, column, values)
    run.write_table(run.clusters, table)
    unnamed = sum(1 for c in range(len(order)) if named[c].name == UNNAMED)
    print(f"label: {len(order) - unnamed} of {len(order)} clusters named from {len(names)} nouns "
          f"({int(counts.sum())} voters); {unnamed} with weak evidence named '{UNNAMED}'", flush=True)
    return {"clusters": len(order), "named": len(order) - unnamed, "unnamed": unnamed, "voters": int(counts.sum()),
            "nouns": len(names), "seconds": round(time.time() - started, 2)}


def status(run: RunDir) -> dict[str, Any]:
    """Committed when clusters.parquet holds at least one name."""
    if not run.exists(run.clusters):
        return {"done": False}
    names = run.read_table(run.clusters, ["name"])["name"]
    return {"done": names.null_count < len(names)}


STAGE = Stage("label", reads=("clusters.parquet", "assignments/", "embeddings/"),
              commits=("semantic/", "clusters.parquet (names)"),
              resources="one task with the encoder's resources (embed.cpus_per_actor CPU, embed.gpus_per_actor GPU); one task of 1 CPU per shard",
              run=lambda ctx: run(ctx.cfg, ctx.run), status=status)
