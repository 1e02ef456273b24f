"""Tables every stage shares: embedding matrices as Arrow columns, and a shard's commit (its
embeddings, its errors, then its marker last). Below the stages, so any source or stage can write or
read embeddings without importing the embed stage."""
from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa

from scaleclust.failures import error_types, reasons, retryable_rows
from scaleclust.rundir import RunDir
from scaleclust.storage import remove

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


def write_commit(run: RunDir, shard: str, url: str, embedded: pa.Table, errors: pa.Table, stage: str, t0: float,
                 model: str, busy: float | None = None, decode_fallbacks: int = 0) -> dict[str, Any]:
    """Write a shard's embeddings and its errors (`errors`: key, error and, where some may pass, retryable;
    none removes the file), then its marker last: the commit. Shared by every source that produces
    embeddings. The marker counts the errors that may pass (`retryable`, see scaleclust.failures): the
    next embed run redoes such a shard.

    `seconds` is wall time from the shard's read start to its commit (it includes waiting for the
    encoder); `busy_seconds` the time spent reading, decoding and encoding its rows (default: the wall
    time), and `images_per_second` counts against busy time. `decode_fallbacks`: rows the device decoder
    had no memory for, decoded on the CPU instead (scaleclust.embed.device_decode)."""
    run.write_table(run.embeddings(shard), embedded)
    retryable = errors["retryable"] if "retryable" in errors.column_names else pa.array([False] * len(errors), pa.bool_())
    errors = pa.table({"key": errors["key"], "shard": pa.array([shard] * len(errors), pa.string()),
                       "stage": pa.array([stage] * len(errors), pa.string()), "error": errors["error"],
                       "retryable": retryable})
    if len(errors):
        run.write_table(run.errors(shard), errors)
    else:
        remove(run.errors(shard), run.storage)
    seconds = max(time.time() - t0, 1e-9)
    busy = max(busy or seconds, 1e-9)
    marker = {"shard": shard, "url": url, "rows": len(embedded) + len(errors), "embedded": len(embedded),
              "errors": len(errors), "error_types": error_types(errors["error"].to_pylist()),
              "retryable": sum(retryable_rows(errors)), "retry_reasons": reasons(errors),
              "seconds": round(seconds, 3), "busy_seconds": round(busy, 3),
              "images_per_second": round(len(embedded) / busy, 2), "decode_fallbacks": decode_fallbacks, "model": model,
              "dim": embedded.schema.field("embedding").type.list_size, "commit": uuid.uuid4().hex}
    run.write_marker(run.embeddings_marker(shard), marker)
    return marker
