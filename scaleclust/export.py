"""Write a run's embeddings in LAION's layout (clip-retrieval's output), so tools that read such dumps
(faiss index builders, clip-retrieval back-ends) read ours: OUT/img_emb/img_emb_N.npy (float16) and
OUT/metadata/metadata_N.parquet in the same row order, text_emb/text_emb_N.npy when the run embedded
captions, and OUT/shards.json (N -> our shard name).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scaleclust.config import StorageConfig
from scaleclust.tables import embedding_matrix
from scaleclust.rundir import RunDir
from scaleclust.storage import join, write_bytes_atomic

METADATA = ["key", "caption", "url", "width", "height", "shard"]


def _npy(matrix: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, matrix)
    return sink.getvalue()


def _with_assignments(run: RunDir, shard: str, table: pa.Table, marker: dict | None) -> pa.Table:
    """Metadata columns plus cluster and confidence joined by key (nulls when the shard is not assigned)."""
    meta = table.select(METADATA)
    if marker is None:
        return meta.append_column("cluster", pa.nulls(len(meta), pa.int32())).append_column(
            "confidence", pa.nulls(len(meta), pa.float32()))
    assignments = run.read_table(run.assigned(shard, marker), ["key", "cluster", "confidence"])
    rows = pc.index_in(meta["key"], value_set=assignments["key"].combine_chunks())
    return meta.append_column("cluster", assignments["cluster"].take(rows)).append_column(
        "confidence", assignments["confidence"].take(rows))


def export_laion(run: RunDir, out_root: str, storage: StorageConfig) -> list[str]:
    """Export every committed embeddings shard, N by sorted shard name; returns the URLs written.

    One shard is read at a time; every file is written atomically, so a re-run rewrites the same bytes.
    """
    shards = sorted(run.committed("embeddings"))
    out = RunDir(out_root, storage)  # only for its atomic Parquet write
    assigned = run.committed("assignments")
    written: list[str] = []
    for n, shard in enumerate(shards):
        table = run.read_table(run.embeddings(shard))
        files = {join(out_root, "img_emb", f"img_emb_{n}.npy"): _npy(embedding_matrix(table["embedding"], np.float16))}
        if "text_embedding" in table.column_names:  # rows without a caption become zero vectors
            text = table["text_embedding"].combine_chunks()
            filled = pc.fill_null(text, pa.scalar([0.0] * text.type.list_size, text.type))
            files[join(out_root, "text_emb", f"text_emb_{n}.npy")] = _npy(embedding_matrix(filled, np.float16))
        for url, data in files.items():
            write_bytes_atomic(url, data, storage)
        meta = join(out_root, "metadata", f"metadata_{n}.parquet")
        out.write_table(meta, _with_assignments(run, shard, table, assigned.get(shard)))
        written += [*files, meta]
    index = join(out_root, "shards.json")
    write_bytes_atomic(index, json.dumps({str(n): s for n, s in enumerate(shards)}, indent=2).encode(), storage)
    return written + [index]
