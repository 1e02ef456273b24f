"""The run directory: the only contract between stages (see docs/run-directory.md).

Paths are built here and nowhere else. A stage's output counts only once its marker exists: per-shard
`embeddings/SHARD.done.json` and `assignments/SHARD.done.json`, and `model/model.json` for the fit.

A RunDir made for a command that holds the lease carries its `holder`; then every write through it
(write_marker, write_json, write_bytes, write_table, record_seconds) first checks that the lease is
still the command's, in the driver and in the Ray workers it is pickled to (docs/operations.md).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scaleclust.config import StorageConfig
from scaleclust.failures import NotARunDirectory
from scaleclust.lease import Holder
from scaleclust.storage import arrow_source, exists, join, listdir, read_bytes, read_json, write_bytes_atomic, write_json_atomic

DONE = ".done.json"
# Parquet row group size of every table written: the sampler and id -> key lookups read only the row
# groups holding the rows they want (8,192 rows of 768-d fp16 embeddings: ~12 MB per group).
ROW_GROUP_ROWS = 8192


def assignments_file(shard: str, model_id: str, embed_commit: str) -> str:
    """Name of a shard's assignments by one model from one embeddings commit, relative to
    RUN/assignments/: the name changes whenever the content could, so a named file is never rewritten."""
    return f"{shard}.{model_id}.{embed_commit[:8]}.parquet"


def id_slots(ids: np.ndarray) -> np.ndarray:
    """Lookup table from a stable cluster id (model.json cluster_ids, clusters.parquet `cluster`) to its
    slot 0..k-1 (the model output and the clusters.parquet row); -1 for ids the model does not have."""
    ids = np.asarray(ids, np.int64)
    table = np.full(int(ids.max(initial=-1)) + 1, -1, np.int64)
    table[ids] = np.arange(len(ids))
    return table


def cluster_ids(model: dict[str, Any]) -> np.ndarray:
    """Stable cluster id of each model output (slot) 0..k-1."""
    return np.asarray(model.get("cluster_ids") or range(model["k"]), np.int32)


@dataclass(frozen=True)
class RunDir:
    url: str
    storage: StorageConfig
    holder: Holder | None = field(default=None, compare=False)  # the writing command's lease, if any

    def held(self, holder: Holder | None) -> "RunDir":
        """The same run directory, its writes checking `holder`'s lease first."""
        return replace(self, holder=holder)

    def check_lease(self) -> None:
        """Raise LeaseLost when the writing command no longer holds the lease: before every commit."""
        if self.holder is not None:
            self.holder.check()

    def path(self, *parts: str) -> str:
        return join(self.url, *parts)

    # layout
    @property
    def config(self) -> str:
        return self.path("config.yaml")

    def embeddings(self, shard: str) -> str:
        return self.path("embeddings", f"{shard}.parquet")

    def embeddings_marker(self, shard: str) -> str:
        return self.path("embeddings", f"{shard}{DONE}")

    def embedding_parts(self, shard: str) -> str:
        return self.path("embeddings", "_parts", shard)

    def errors(self, shard: str) -> str:
        return self.path("errors", f"{shard}.parquet")

    def model(self, name: str = "") -> str:
        return self.path("model", name) if name else self.path("model")

    def assignments(self, shard: str, model_id: str, embed_commit: str) -> str:
        """One shard's assignments by one model: never rewritten once committed, so a version that
        names the file (versions/V/manifest.json) keeps reading the same rows."""
        return self.path("assignments", assignments_file(shard, model_id, embed_commit))

    def assigned(self, shard: str, marker: dict[str, Any]) -> str:
        """The assignments file a shard's marker says is current."""
        return self.path("assignments", marker["file"])

    def assignments_marker(self, shard: str) -> str:
        return self.path("assignments", f"{shard}{DONE}")

    def semantic(self, name: str) -> str:
        """RUN/semantic/NAME: the semantic space clusters are named in (space.json is its marker)."""
        return self.path("semantic", name)

    @property
    def clusters(self) -> str:
        return self.path("clusters.parquet")

    @property
    def metrics(self) -> str:
        return self.path("metrics.json")

    @property
    def report_marker(self) -> str:
        """RUN/report/report.json: what the last report holds (written after its page)."""
        return self.path("report", "report.json")

    # markers and tables
    def committed(self, folder: str) -> dict[str, dict[str, Any]]:
        """Markers under `folder` ('embeddings' or 'assignments'), by shard name."""
        names = [n for n in listdir(self.path(folder), self.storage) if n.endswith(DONE) and not n.startswith(".")]
        return {n[: -len(DONE)]: read_json(self.path(folder, n), self.storage) for n in names}

    def marker(self, url: str) -> dict[str, Any] | None:
        return read_json(url, self.storage) if exists(url, self.storage) else None

    def write_marker(self, url: str, payload: dict[str, Any]) -> None:
        """Commit a marker (written last: what makes a stage's output count)."""
        self.write_json(url, payload)

    def write_json(self, url: str, payload: Any) -> None:
        self.check_lease()
        write_json_atomic(url, payload, self.storage)

    def write_bytes(self, url: str, data: bytes) -> None:
        self.check_lease()
        write_bytes_atomic(url, data, self.storage)

    def write_table(self, url: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        self.write_bytes(url, sink.getvalue())

    def read_table(self, url: str, columns: list[str] | None = None) -> pa.Table:
        """Read `columns` of a Parquet file from a native Arrow source (see storage.arrow_source)."""
        with arrow_source(url, self.storage) as source, pq.ParquetFile(source) as parquet:
            return parquet.read(columns=columns)

    def read_bytes(self, url: str) -> bytes:
        return read_bytes(url, self.storage)

    def exists(self, url: str) -> bool:
        return exists(url, self.storage)

    def require(self) -> "RunDir":
        """This run directory, or NotARunDirectory when it holds no config.yaml (a wrong RUN argument)."""
        if not self.exists(self.config):
            raise NotARunDirectory(f"{self.url}: not a run directory (no config.yaml)")
        return self

    def record_seconds(self, stage: str, seconds: float, rows_per_second: float | None = None) -> None:
        """Keep each stage's last duration (and its throughput, when it did work) in metrics.json, whether
        stages run together or one by one."""
        metrics = self.marker(self.metrics) or {}
        metrics.setdefault("seconds", {})[stage] = round(seconds, 2)
        if rows_per_second:
            metrics.setdefault("rows_per_second", {})[stage] = rows_per_second
        self.write_json(self.metrics, metrics)
