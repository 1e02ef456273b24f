"""One pass over the committed shards, reduced to what the report shows: per cluster its most and
least confident members (key, shard, confidence, caption, url), the confidence histogram of all rows,
and near-duplicate counts when dedup has run. Each shard becomes a small partial in its own Ray task;
the driver merges partials, so memory is bounded by clusters x members shown, not by rows.

The merged result is kept in RUN/report-picks.json (beside report/, which stays what a reader opens)
with what it was computed from: the cluster ids, the member counts, the dedup file's version and the
assignment files merged. A later pass whose inputs differ only by added assignment files (a nightly
update without a refit: old shards keep their immutable files) merges just the new files' partials
into it, so a night's report reads the night's shards, not every shard. Merging is order-free (top/low
members are the extremes of a total order, histograms add), so the result is the one a full pass gives."""
from __future__ import annotations

import heapq
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scaleclust.parallel import map_shards
from scaleclust.rundir import RunDir, id_slots
from scaleclust.storage import filesystem, read_json, stamp, write_json_atomic

BINS = 50  # confidence histogram over [0, 1]

Member = tuple[float, str, str, str | None, str | None]  # confidence, key, shard, caption, url


class Picks:
    """A shard's (or the merged) contribution."""

    def __init__(self, k: int) -> None:
        self.top: list[list[Member]] = [[] for _ in range(k)]
        self.low: list[list[Member]] = [[] for _ in range(k)]
        self.hist = np.zeros(BINS, np.int64)
        self.duplicates = np.zeros(k, np.int64)

    def merge(self, other: "Picks", n_top: int, n_low: int) -> None:
        for c in range(len(self.top)):
            if other.top[c]:
                self.top[c] = heapq.nlargest(n_top, self.top[c] + other.top[c])
                self.low[c] = heapq.nsmallest(n_low, self.low[c] + other.low[c])
        self.hist += other.hist
        self.duplicates += other.duplicates

    def to_json(self) -> dict[str, Any]:
        return {"top": self.top, "low": self.low, "hist": self.hist.tolist(), "duplicates": self.duplicates.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Picks":
        picks = cls(len(data["top"]))
        picks.top = [[tuple(m) for m in members] for members in data["top"]]  # tuples: they compare as members
        picks.low = [[tuple(m) for m in members] for members in data["low"]]
        picks.hist = np.asarray(data["hist"], np.int64)
        picks.duplicates = np.asarray(data["duplicates"], np.int64)
        return picks


class Collected(NamedTuple):
    picks: Picks
    deduped: bool  # whether dedup has run: a count of 0 then means 'no duplicates', not 'not checked'
    shards_read: int  # assignment files read by this pass (the others came from RUN/report-picks.json)


def _duplicate_keys(run: RunDir) -> pa.Array | None:
    """Keys that dedup marked for removal (not their group's keeper), when dedup has run."""
    url = run.path("duplicates.parquet")
    if not run.exists(url):
        return None
    table = run.read_table(url, ["key", "is_keeper"])
    return table.filter(pc.invert(table["is_keeper"]))["key"].combine_chunks()


def shard_picks(item: dict[str, Any], run: RunDir, slots: np.ndarray, n_top: int, n_low: int,
                duplicates: pa.Array | None) -> Picks:
    """One shard's partial: its assignments joined to its embeddings' caption and url by key; clusters
    by slot (row of clusters.parquet)."""
    shard = item["shard"]
    k = int(slots.max(initial=-1)) + 1
    asg = run.read_table(run.path("assignments", item["file"]), ["key", "cluster", "confidence"])
    fs, path = filesystem(run.embeddings(shard), run.storage)
    with fs.open(path, "rb") as handle:
        names = pq.ParquetFile(handle).schema_arrow.names
    meta = run.read_table(run.embeddings(shard), ["key"] + [c for c in ("caption", "url") if c in names])
    order = {key: i for i, key in enumerate(meta["key"].to_pylist())}
    at = [order[key] for key in asg["key"].to_pylist()]
    captions = meta["caption"].to_pylist() if "caption" in meta.column_names else [None] * len(meta)
    urls = meta["url"].to_pylist() if "url" in meta.column_names else [None] * len(meta)
    keys = asg["key"].to_pylist()
    clusters = slots[asg["cluster"].to_numpy()]
    conf = asg["confidence"].to_numpy().astype(np.float64)
    part = Picks(k)
    part.hist += np.histogram(np.clip(conf, 0, 1), bins=BINS, range=(0.0, 1.0))[0]
    if duplicates is not None:
        marked = pc.is_in(asg["key"], value_set=duplicates).to_numpy(zero_copy_only=False)
        part.duplicates += np.bincount(clusters[marked], minlength=k)
    order_rows = np.lexsort((-conf, clusters))  # by cluster, most confident first
    ids, starts, counts = np.unique(clusters[order_rows], return_index=True, return_counts=True)

    def member(i: int) -> Member:
        return float(conf[i]), keys[i], shard, captions[at[i]], urls[at[i]]

    for c, start, count in zip(ids, starts, counts):
        rows = order_rows[start:start + count]
        part.top[c] = [member(i) for i in rows[:n_top]]
        part.low[c] = sorted(member(i) for i in rows[max(count - n_low, 0):])
    return part


def collect(run: RunDir, ids: np.ndarray, n_top: int, n_low: int, progress: Any = None) -> Collected:
    """Merge every committed assignments file's partial (one Ray task per file) into the cached result
    of an earlier pass when that one still applies (see the module docstring); `ids` are the
    clusters.parquet rows' cluster ids."""
    duplicates = _duplicate_keys(run)
    basis = {"clusters": [int(c) for c in ids], "n_top": n_top, "n_low": n_low,
             "duplicates": stamp(run.path("duplicates.parquet"), run.storage)}
    files = {m["file"]: s for s, m in run.committed("assignments").items()}
    total, done = _cached(run, basis, files) or (Picks(len(ids)), set())
    if progress is not None:
        progress.update(int(total.hist.sum()))
    items = [{"shard": s, "file": f} for f, s in sorted(files.items(), key=lambda fs: fs[1]) if f not in done]
    for part in map_shards(shard_picks, items, num_cpus=1, run=run, slots=id_slots(ids), n_top=n_top, n_low=n_low,
                           duplicates=duplicates):
        total.merge(part, n_top, n_low)
        if progress is not None:
            progress.update(int(part.hist.sum()))
    if items or not done:
        write_json_atomic(_cache_url(run), {**basis, "files": sorted(files), "picks": total.to_json()}, run.storage)
    return Collected(total, duplicates is not None, len(items))


def _cache_url(run: RunDir) -> str:
    return run.path("report-picks.json")


def _cached(run: RunDir, basis: dict[str, Any], files: dict[str, str]) -> tuple[Picks, set[str]] | None:
    """The earlier pass's picks and files when its basis matches and all its files are still committed."""
    if not run.exists(_cache_url(run)):
        return None
    cached = read_json(_cache_url(run), run.storage)
    if any(cached.get(name) != value for name, value in basis.items()) or not set(cached["files"]) <= set(files):
        return None
    return Picks.from_json(cached["picks"]), set(cached["files"])
