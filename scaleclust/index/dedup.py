"""Near-duplicates of a run: pairs above a cosine threshold, groups, one keeper each -> duplicates.parquet.

scope 'cluster': exact pairs among rows of the same cluster (assignments/), in Ray tasks that each take a
bucket of clusters (cluster % buckets) sized to fit memory. scope 'all': exact pairs within the IVF index's
lists, each row a member of its nearest list and a visitor of its next LIST_CHOICES - 1 (the choices
the index stage kept at add time), so a pair whose rows fall in neighbouring lists is still compared.
One task per shard spills its rows, grouped by bucket of lists (list % buckets), to one file,
RUN/dedup-spill/SHARD.spill (a bucket's rows are one byte range of it); then one task per bucket reads its
range of every shard's file and compares each list's members with its members and visitors. Lists hold ~256
rows whatever the size (scaleclust.index.choose), so the work per row stays flat as the data grows,
and each task holds one shard or one bucket, sized to fit memory, never all rows.
Groups and keepers follow scaleclust.index.pairs (keeper: the most central member, ties to the lowest id).
"""
from __future__ import annotations

import io
import math
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa

from scaleclust.failures import NotReady
from scaleclust.index.build import LIST_CHOICES, from_bytes, list_choices, unit_float32
from scaleclust.index.manifest import ids_to_keys, load_manifest, trained_url
from scaleclust.index.pairs import Pairs, group_duplicates, pairs_in_blocks, pairs_within_clusters, removal_counts
from scaleclust.parallel import map_shards
from scaleclust.rundir import RunDir
from scaleclust.storage import read_ranges, remove, write_bytes_atomic
from scaleclust.tables import embedding_matrix

BUCKET_BYTES = 2 << 30  # float32 vectors one bucket task holds at once
SPILL = "dedup-spill"  # scope all: each shard's rows grouped by bucket of lists, removed when dedup ends
FIELDS = ("ids", "lists", "members", "vectors")


def bucket_pairs(item: dict[str, Any], run: RunDir, manifest: dict[str, Any], threshold: float) -> Pairs:
    """Exact within-cluster pairs among the rows whose cluster falls in this bucket (a Ray task)."""
    vectors, ids, clusters = [], [], []
    assigned = run.committed("assignments")
    for shard, entry in manifest["shards"].items():
        cluster = run.read_table(run.assigned(shard, assigned[shard]), ["cluster"])["cluster"].to_numpy()
        rows = np.flatnonzero(cluster % item["buckets"] == item["bucket"])
        table = run.read_table(run.embeddings(shard), ["embedding"]).take(rows)
        vectors.append(embedding_matrix(table["embedding"]))
        ids.append(entry["first_id"] + rows)
        clusters.append(cluster[rows])
    return pairs_within_clusters(np.concatenate(vectors), np.concatenate(ids), np.concatenate(clusters), threshold)


def shard_lists(run: RunDir, entry: dict[str, Any], vectors: np.ndarray) -> np.ndarray:
    """The rows' nearest lists as the index stage kept them, or (an index built before it kept them)
    found again with the trained quantizer."""
    if "lists" in entry:
        return np.load(io.BytesIO(run.read_bytes(run.path("index", entry["lists"]))))
    return list_choices(from_bytes(run.read_bytes(trained_url(run))), unit_float32(vectors))


def spill_shard(item: dict[str, Any], run: RunDir, manifest: dict[str, Any], buckets: int,
                lists: int) -> tuple[str, list[int]]:
    """Write one shard's rows, once per list they take part in (member of the first of their ``lists``
    nearest lists, visitor of the others), to RUN/dedup-spill/SHARD.spill: one .npz per bucket, end to
    end; return the shard and the buckets' byte offsets (bucket b is [offsets[b], offsets[b + 1])). One
    file per shard, not one per shard and bucket: the files, and their writes, stay as many as the shards
    (a Ray task)."""
    entry = manifest["shards"][item["shard"]]
    vectors = embedding_matrix(run.read_table(run.embeddings(item["shard"]), ["embedding"])["embedding"], np.float16)
    chosen = shard_lists(run, entry, vectors)[:, :lists]
    rows, rank = np.nonzero(chosen >= 0)  # -1: the quantizer found fewer lists
    list_no = chosen[rows, rank]
    order = np.argsort(list_no % buckets, kind="stable")
    rows, rank, list_no = rows[order], rank[order], list_no[order]
    bounds = np.searchsorted(list_no % buckets, np.arange(buckets + 1))
    chunks = []
    for b in range(buckets):
        at = slice(bounds[b], bounds[b + 1])
        out = io.BytesIO()
        if bounds[b + 1] > bounds[b]:
            np.savez(out, ids=entry["first_id"] + rows[at], lists=list_no[at], members=rank[at] == 0,
                     vectors=vectors[rows[at]])
        chunks.append(out.getvalue())
    write_bytes_atomic(run.path(SPILL, f"{item['shard']}.spill"), b"".join(chunks), run.storage)
    return item["shard"], np.cumsum([0, *map(len, chunks)]).tolist()


def list_pairs(item: dict[str, Any], run: RunDir, threshold: float) -> Pairs:
    """Exact pairs within every list of one bucket: members with members and with visitors (a Ray task).
    ``item["parts"]``: (shard, start, end) of the bucket's rows in each shard's spill file."""
    parts = [np.load(io.BytesIO(read_ranges(run.path(SPILL, f"{shard}.spill"), run.storage, [(start, end)])[0]))
             for shard, start, end in item["parts"]]
    if not parts:  # more buckets than lists in use
        return Pairs.concat([])
    joined = {f: np.concatenate([p[f] for p in parts]) for f in FIELDS}
    return pairs_in_blocks(joined["vectors"], joined["ids"], joined["lists"], joined["members"], threshold)


def find_pairs(run: RunDir, manifest: dict[str, Any], threshold: float, scope: Literal["cluster", "all"],
               lists: int, bucket_bytes: int = BUCKET_BYTES) -> Pairs:
    """Every pair with cosine >= threshold within clusters, or (scope all) within the index's lists with
    each row compared in its ``lists`` nearest ones."""
    d = manifest["spec"]["d"]
    if scope == "cluster":
        missing = sorted(set(manifest["shards"]) - set(run.committed("assignments")))
        if missing:
            raise NotReady(f"dedup --scope cluster: no assignments for {missing[:3]}...; run assign first")
        buckets = max(1, math.ceil(manifest["rows"] * d * 4 / bucket_bytes))
        items = [{"bucket": b, "buckets": buckets} for b in range(buckets)]
        return Pairs.concat(map_shards(bucket_pairs, items, run=run, manifest=manifest, threshold=threshold))
    if not 1 <= lists <= LIST_CHOICES:
        raise ValueError(f"dedup --nprobe {lists}: scope all compares a row in 1 to {LIST_CHOICES} lists")
    buckets = max(1, math.ceil(manifest["rows"] * lists * d * 4 / bucket_bytes))
    remove(run.path(SPILL), run.storage, recursive=True)  # a killed dedup's spill
    try:
        offsets = dict(map_shards(spill_shard, [{"shard": s} for s in sorted(manifest["shards"])], run=run,
                                  manifest=manifest, buckets=buckets, lists=lists))
        items = [{"parts": [(s, o[b], o[b + 1]) for s, o in sorted(offsets.items()) if o[b + 1] > o[b]]}
                 for b in range(buckets)]
        return Pairs.concat(map_shards(list_pairs, items, run=run, threshold=threshold))
    finally:
        remove(run.path(SPILL), run.storage, recursive=True)


def dedup(run: RunDir, threshold: float, thresholds: Sequence[float], scope: Literal["cluster", "all"],
          lists: int = LIST_CHOICES, bucket_bytes: int = BUCKET_BYTES) -> tuple[pa.Table, dict[float, int]]:
    """Write RUN/duplicates.parquet for `threshold`; return it and the rows removed at each of `thresholds`."""
    manifest = load_manifest(run)
    pairs = find_pairs(run, manifest, min([threshold, *thresholds]), scope, lists, bucket_bytes)
    kept = pairs.above(threshold)
    dups = group_duplicates(kept)
    best = np.full(len(dups.ids), -np.inf, np.float32)
    for end in (kept.a, kept.b):
        np.maximum.at(best, np.searchsorted(dups.ids, end), kept.sims)
    keys = ids_to_keys(run, manifest, np.concatenate([dups.ids, dups.group]))
    table = pa.table({"key": pa.array(keys[:len(dups.ids)], pa.string()), "group": pa.array(dups.group, pa.int64()),
                      "keeper_key": pa.array(keys[len(dups.ids):], pa.string()),
                      "is_keeper": pa.array(dups.keep), "max_sim": pa.array(best, pa.float32())})
    run.write_table(run.path("duplicates.parquet"), table)
    return table, removal_counts(pairs, thresholds)
