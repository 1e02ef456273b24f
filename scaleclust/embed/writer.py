"""Write encoded rows as per-shard parts, then commit each shard once all its rows are in.

Ray Data does not keep shard boundaries between operators, so writers write whatever rows they get as
parts under embeddings/_parts/SHARD/, and the driver commits a shard when its row count is reached:
the commit merges the parts (dropping rows a retried task wrote twice), writes embeddings/SHARD.parquet
and errors/SHARD.parquet, and writes the marker last.
"""
from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scaleclust.rundir import RunDir
from scaleclust.storage import listdir, remove
from scaleclust.tables import METADATA, embedding_array, string_array, write_commit


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
            "retryable": pa.array(np.asarray(batch["retryable"][pick], bool)),
            "decode_fallback": pa.array(np.asarray(batch["decode_fallback"][pick], bool)),
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
    marker = write_commit(run, shard, url, embedded, errors.select(["key", "error", "retryable"]), "embed", t0, model,
                          busy, decode_fallbacks=int(pc.sum(table["decode_fallback"]).as_py() or 0))
    remove(folder, run.storage, recursive=True)
    return marker
