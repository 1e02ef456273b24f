"""The one seeded sampler of committed embeddings: the fit's training rows, the index's training rows,
the neighbours graph's queries and the nightly update's calibration rows are all drawn here.

Each shard contributes in proportion to its rows (largest-remainder rounding); which of its rows is
chosen by a generator seeded with (seed, shard name), so the same seed draws the same sample on any
cluster, with any number of workers, in any order of completion. The rows are read by parallel Ray
tasks, one per shard, that read only the row groups holding rows they keep (embeddings are written in
row groups of rundir.ROW_GROUP_ROWS rows), and only the columns asked for: on object stores only those
column chunks and the footer are fetched (storage.ParquetObject). Without a Ray cluster (unit tests, benchmarks on arrays) the same reads run in-process.
"""
from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from scaleclust.tables import embedding_matrix
from scaleclust.rundir import RunDir
from scaleclust.storage import ParquetObject

ROW = "_row"  # pseudo-column: a sampled row's position in its shard (its global id is first_id + ROW)
READ_CPUS = 0.5  # reads wait on storage and decompression; half a CPU lets them run beside a caller's task
READ_AHEAD = 4  # shards a streaming reader keeps in flight


def quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Rows to draw from each shard: proportional to its size, largest remainders rounded up."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    exact = {s: n * m / total for s, m in sizes.items()}
    base = {s: int(v) for s, v in exact.items()}
    left = n - sum(base.values())
    for s in sorted(exact, key=lambda s: base[s] - exact[s])[:left]:
        base[s] += 1
    return base


def pick_rows(shard: str, size: int, count: int, seed: int) -> np.ndarray:
    """Sorted positions of the `count` rows drawn from a shard of `size` rows, seeded by (seed, shard)."""
    rng = np.random.default_rng([seed, zlib.crc32(shard.encode())])
    return np.sort(rng.choice(size, size=count, replace=False))


def sample_plan(markers: dict[str, dict[str, Any]], n: int, seed: int) -> dict[str, np.ndarray]:
    """Row positions to read per shard (shards with none left out), in shard-name order."""
    chosen = quotas({s: m["embedded"] for s, m in markers.items()}, n)
    return {s: pick_rows(s, markers[s]["embedded"], chosen[s], seed) for s in sorted(chosen) if chosen[s]}


def read_rows(run: RunDir, shard: str, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """`columns` of the given rows (positions, in the order given) of one embeddings shard, reading only
    the row groups that hold them. Raises, naming the shard, when a row lies beyond the file's rows."""
    rows = np.asarray(rows, np.int64)
    with ParquetObject(run.embeddings(shard), run.storage) as parquet:
        meta = parquet.metadata
        ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
        if len(rows) and (not len(ends) or rows.max() >= ends[-1]):
            raise ValueError(f"{run.embeddings(shard)}: row {int(rows.max())} requested, the file holds "
                             f"{int(ends[-1]) if len(ends) else 0} rows; its marker and file disagree")
        group = np.searchsorted(ends, rows, side="right")
        wanted = np.unique(group)
        table = parquet.read_row_groups(wanted.tolist(), columns=columns)
    starts = np.concatenate([[0], ends[:-1]])
    sizes = ends - starts
    offset_in_read = np.concatenate([[0], np.cumsum(sizes[wanted])[:-1]])
    local = rows - starts[group] + offset_in_read[np.searchsorted(wanted, group)]
    return table.take(pa.array(local))


def _keys(run: RunDir, shard: str, rows: np.ndarray) -> list[str]:
    return read_rows(run, shard, rows, ["key"])["key"].to_pylist()


_keys_task = ray.remote(num_cpus=READ_CPUS)(_keys)


def keys_of_rows(run: RunDir, rows: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The keys of the given row positions per shard, each shard's looked up by a task that reads only
    the row groups of its key column that hold them (in-process without a Ray cluster)."""
    if not ray.is_initialized():
        return {s: _keys(run, s, r) for s, r in rows.items()}
    refs = {s: _keys_task.remote(run, s, r) for s, r in rows.items()}
    return {s: ray.get(ref) for s, ref in refs.items()}


def _read_sample(run: RunDir, shard: str, rows: np.ndarray, columns: tuple[str, ...],
                 dtype: Any) -> tuple[np.ndarray, dict[str, list]]:
    """One shard's sampled rows: (embeddings as `dtype`, the requested extra columns as lists)."""
    stored = [c for c in columns if c != ROW]
    table = read_rows(run, shard, rows, ["embedding", *stored])
    extra = {c: (rows.tolist() if c == ROW else table[c].to_pylist()) for c in columns}
    return embedding_matrix(table["embedding"], dtype), extra


_read_task = ray.remote(num_cpus=READ_CPUS, num_returns=2)(_read_sample)


def sample_refs(run: RunDir, markers: dict[str, dict[str, Any]], n: int, seed: int, columns: tuple[str, ...] = (),
                dtype: Any = np.float16) -> list[tuple[ray.ObjectRef, ray.ObjectRef]]:
    """Start one read task per shard that contributes rows; (embeddings ref, extra-columns ref) per
    shard in shard-name order. The rows stay in the object store until someone gets them."""
    plan = sample_plan(markers, n, seed)
    return [tuple(_read_task.remote(run, shard, rows, tuple(columns), dtype)) for shard, rows in plan.items()]


def sampled_rows(markers: dict[str, dict[str, Any]], n: int) -> int:
    """How many rows a sample of `n` over the committed `markers` holds: n, or every row when fewer."""
    return min(n, sum(m["embedded"] for m in markers.values()))


def sample_embeddings(run: RunDir, markers: dict[str, dict[str, Any]], n: int, seed: int,
                      columns: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, list]]:
    """Up to `n` rows drawn uniformly over committed shards: (float32 matrix, requested extra columns;
    ROW gives each row's position in its shard). Rows come in shard-name order, then row order."""
    if ray.is_initialized():
        parts = [(ray.get(x), ray.get(e)) for x, e in sample_refs(run, markers, n, seed, columns)]
    else:
        parts = [_read_sample(run, s, rows, tuple(columns), np.float16)
                 for s, rows in sample_plan(markers, n, seed).items()]
    extra = {c: [v for _, e in parts for v in e[c]] for c in columns}
    dim = next(iter(markers.values()))["dim"] if markers else 0
    x = np.empty((sum(len(part) for part, _ in parts), dim), np.float32)  # filled in place: no float32 copy per part
    at = 0
    for part, _ in parts:
        x[at:at + len(part)] = part
        at += len(part)
    return x, extra


def _read_dealt(run: RunDir, plan: list[tuple[str, np.ndarray]], shares: int,
                offset: int) -> np.ndarray | tuple[np.ndarray, ...]:
    """The sampled fp16 rows of a run of consecutive shards, dealt into `shares` parts: part r holds the
    rows whose position in the whole sample is r modulo `shares` (the run starts at position `offset`
    modulo `shares`)."""
    x = np.concatenate([_read_sample(run, shard, rows, (), np.float16)[0] for shard, rows in plan])
    parts = tuple(x[(r - offset) % shares::shares] for r in range(shares))
    return parts if shares > 1 else parts[0]


_dealt_task = ray.remote(num_cpus=READ_CPUS)(_read_dealt)
PART_ROWS = 512  # rows a read task gives each share at least (where the sample has them): Ray keeps a task's
# return of under 100 KiB in its owner's process, here the driver, so parts of a few rows per shard would
# gather the whole sample there at LAION's shard count (about nine rows per shard of a 2M-row sample)


@dataclass(frozen=True)
class DealtSample:
    """A seeded sample of committed rows dealt into shares in the object store: share r holds the rows
    r, r + len(shares), r + 2 len(shares), ... of the sample, so the shares differ by one row at most and
    each holds rows of every shard (shards are often ordered by source, crawl or class). Read once, by
    tasks of a few consecutive shards each; each row crosses the network once, to the one reader of its
    share. A Train worker reads one share; a caller that needs the whole sample gathers it."""

    shares: list[list[ray.ObjectRef]]  # [share][read task]: fp16 blocks, in the sample's order
    rows: int  # in the whole sample
    dim: int

    @property
    def sizes(self) -> list[int]:
        """Rows per share."""
        return [len(range(rank, self.rows, len(self.shares))) for rank in range(len(self.shares))]

    def share(self, rank: int) -> np.ndarray:
        """Share `rank`'s fp16 rows, in the sample's order."""
        blocks = ray.get(self.shares[rank])
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float16)

    def gather(self) -> np.ndarray:
        """Every row as float32, in the order sample_embeddings gives them (shard, then row)."""
        x = np.empty((self.rows, self.dim), np.float32)
        for rank in range(len(self.shares)):
            x[rank::len(self.shares)] = self.share(rank)
        return x


def deal_sample(run: RunDir, markers: dict[str, dict[str, Any]], n: int, seed: int, shares: int) -> DealtSample:
    """The rows of sample_embeddings(run, markers, n, seed), dealt into `shares` shares (DealtSample).
    A read task takes consecutive shards until it holds PART_ROWS rows per share."""
    tasks: list[list[ray.ObjectRef]] = []
    group: list[tuple[str, np.ndarray]] = []
    held = total = 0
    plan = list(sample_plan(markers, n, seed).items())
    for i, (shard, rows) in enumerate(plan):
        group.append((shard, rows))
        held += len(rows)
        if held >= shares * PART_ROWS or i == len(plan) - 1:
            refs = _dealt_task.options(num_returns=shares).remote(run, group, shares, total % shares)
            tasks.append([refs] if shares == 1 else list(refs))
            total, held, group = total + held, 0, []
    dim = int(next(iter(markers.values()))["dim"]) if markers else 0
    return DealtSample([[parts[r] for parts in tasks] for r in range(shares)], total, dim)


def sample_blocks(run: RunDir, markers: dict[str, dict[str, Any]], n: int, seed: int,
                  ahead: int = READ_AHEAD) -> Iterator[np.ndarray]:
    """The rows of ``sample_embeddings(run, markers, n, seed)`` as float32 blocks, one per shard, for a
    caller that streams a sample too large to hold: at most ``ahead`` shards are read ahead."""
    plan = iter(sample_plan(markers, n, seed).items())
    if not ray.is_initialized():
        for shard, rows in plan:
            yield _read_sample(run, shard, rows, (), np.float16)[0].astype(np.float32)
        return
    pending: deque[ray.ObjectRef] = deque()
    for shard, rows in plan:
        pending.append(_read_task.remote(run, shard, rows, (), np.float16)[0])
        if len(pending) > ahead:
            yield ray.get(pending.popleft()).astype(np.float32)
    while pending:
        yield ray.get(pending.popleft()).astype(np.float32)
