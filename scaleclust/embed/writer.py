"""Write encoded rows as per-shard parts, then commit each shard once all its rows are in.

Ray Data does not keep shard boundaries between operators, so writers write whatever rows they get as
parts under embeddings/_parts/SHARD/, and the driver commits a shard when its row count is reached:
the commit merges the parts (dropping rows a retried task wrote twice), writes embeddings/SHARD.parquet
and errors/SHARD.parquet, and writes the marker last.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from scaleclust.failures import count_retryable, reasons
from scaleclust.rundir import RunDir
from scaleclust.runinfo import error_type
from scaleclust.storage import listdir, remove

METADATA = ("caption", "url", "width", "height", "label")


def embedding_array(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(n, d) float16 -> Arrow fixed_size_list<halffloat>[d]; rows where `valid` is False are null."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float16)
    mask = None if valid is None else pa.array(~np.asarray(valid, bool))
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1], mask=mask)


def embedding_matrix(column: pa.ChunkedArray | pa.Array, dtype: Any = np.float32) -> np.ndarray:
    """Arrow fixed_size_list column -> (n, d) numpy matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    d = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(dtype, copy=False)


TEXT = ("caption", "url", "label")  # string columns that may be null on every row of a batch


def texts(values: np.ndarray) -> np.ndarray:
    """Strings with None for null, as an object array. Ray Data hands an all-null column back as float
    NaN; passed on as floats, it cannot be merged with another batch's strings (a string vs float schema
    clash in Ray's block builder), while None-only columns merge as Arrow's null type."""
    return np.asarray([v if isinstance(v, str) else None for v in values.tolist()], dtype=object)


def string_array(values: np.ndarray) -> pa.Array:
    """Strings with nulls (see texts)."""
    return pa.array(texts(values), pa.string())


def write_parts(batch: dict[str, np.ndarray], run: RunDir) -> dict[str, np.ndarray]:
    """Write one part per shard present in the batch; return (shard, rows, shard_rows, t0, busy) per part,
    busy being the decode + encode seconds its rows took."""
    shards, rows, totals, starts, busy = [], [], [], [], []
    for shard in np.unique(batch["shard"]):
        pick = batch["shard"] == shard
        table = pa.table({
            "key": string_array(batch["key"][pick]),
            "idx": pa.array(batch["idx"][pick]),
            "embedding": embedding_array(batch["embedding"][pick]),
            "embedding_norm": pa.array(batch["embedding_norm"][pick], pa.float32()),
            "caption": string_array(batch["caption"][pick]),
            "url": string_array(batch["url"][pick]),
            "width": pa.array(batch["width"][pick], pa.int32()),
            "height": pa.array(batch["height"][pick], pa.int32()),
            "label": string_array(batch["label"][pick]),
            "error": string_array(batch["error"][pick]),
        })
        if "text_embedding" in batch:
            table = table.append_column("text_embedding", embedding_array(batch["text_embedding"][pick],
                                                                          batch["has_text"][pick]))
        run.write_table(run.path("embeddings", "_parts", str(shard), f"{uuid.uuid4().hex}.parquet"), table)
        shards.append(shard)
        rows.append(int(pick.sum()))
        totals.append(int(batch["shard_rows"][pick][0]))
        starts.append(float(batch["t0"][pick].min()))
        busy.append(float(batch["busy"][pick].sum()))
    return {"shard": np.asarray(shards, dtype=object), "rows": np.asarray(rows), "shard_rows": np.asarray(totals),
            "t0": np.asarray(starts), "busy": np.asarray(busy)}


def commit_shard(run: RunDir, shard: str, url: str, expected: int, t0: float, model: str,
                 busy: float | None = None) -> dict[str, Any] | None:
    """Merge a shard's parts and commit it; None when rows are still missing (more parts to come)."""
    folder = run.embedding_parts(shard)
    parts = [run.read_table(run.path("embeddings", "_parts", shard, n)) for n in listdir(folder, run.storage)
             if n.endswith(".parquet")]
    if not parts:
        return None
    table = pa.concat_tables(parts)
    idx = table["idx"].to_numpy()
    _, first = np.unique(idx, return_index=True)  # sorted by idx, one row per idx
    if len(first) < expected:
        return None
    table = table.take(pa.array(first))
    failed = np.asarray(table["error"].to_pylist(), dtype=object) != ""
    shard_col = pa.array([shard] * len(table), pa.string())
    embedded = table.filter(pa.array(~failed)).append_column("shard", shard_col.slice(0, int((~failed).sum())))
    text = ["text_embedding"] if "text_embedding" in embedded.column_names else []
    embedded = embedded.select(["key", "embedding", "embedding_norm", *text, *METADATA, "shard"])
    errors = table.filter(pa.array(failed))
    marker = write_commit(run, shard, url, embedded, errors.select(["key", "error"]), "embed", t0, model, busy)
    remove(folder, run.storage, recursive=True)
    return marker


def write_commit(run: RunDir, shard: str, url: str, embedded: pa.Table, errors: pa.Table, stage: str, t0: float,
                 model: str, busy: float | None = None) -> dict[str, Any]:
    """Write a shard's embeddings and its errors (`errors`: key, error; none removes the file), then its
    marker last: the commit. Shared by every source that produces embeddings. The marker counts the
    errors that may pass (`retryable`, see scaleclust.failures): the next embed run redoes such a shard.

    `seconds` is wall time from the shard's read start to its commit (it includes waiting for the
    encoder); `busy_seconds` the time spent reading, decoding and encoding its rows (default: the wall
    time), and `images_per_second` counts against busy time."""
    run.write_table(run.embeddings(shard), embedded)
    if len(errors):
        run.write_table(run.errors(shard), pa.table({
            "key": errors["key"], "shard": pa.array([shard] * len(errors), pa.string()),
            "stage": pa.array([stage] * len(errors), pa.string()), "error": errors["error"]}))
    else:
        remove(run.errors(shard), run.storage)
    seconds = max(time.time() - t0, 1e-9)
    failed = errors["error"].to_pylist()
    busy = max(busy or seconds, 1e-9)
    marker = {"shard": shard, "url": url, "rows": len(embedded) + len(errors), "embedded": len(embedded),
              "errors": len(errors), "error_types": dict(Counter(error_type(e) for e in failed)),
              "retryable": count_retryable(failed), "retry_reasons": reasons(failed),
              "seconds": round(seconds, 3), "busy_seconds": round(busy, 3),
              "images_per_second": round(len(embedded) / busy, 2), "model": model,
              "dim": embedded.schema.field("embedding").type.list_size, "commit": uuid.uuid4().hex}
    run.write_marker(run.embeddings_marker(shard), marker)
    return marker
