"""Precomputed LAION-style embedding dumps (clip-retrieval's output) as input: the encoder is skipped.

A dump is ROOT/img_emb/img_emb_N.npy ((rows, d) float16/float32, L2-normalised CLIP image embeddings),
ROOT/metadata/metadata_N.parquet (the same rows in the same order: key or image_path, caption, url,
width, height, ...) and optionally ROOT/text_emb/text_emb_N.npy. Each N is a part, the unit of
exactly-once work, committed like a shard: embeddings/img_emb_N.parquet in our schema, then its marker.
"""
from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scaleclust.config import ConfigError, StorageConfig
from scaleclust.tables import embedding_array, write_commit
from scaleclust.rundir import RunDir
from scaleclust.storage import arrow_source, filesystem, join, listdir, read_bytes

KINDS = {"img_emb": r"img_emb_(\d+)\.npy", "metadata": r"metadata_(\d+)\.parquet", "text_emb": r"text_emb_(\d+)\.npy"}
MIN_NORM = 1e-6  # below this an embedding has no direction to normalise to
CHUNK = 65_536  # rows normalised at a time, so a memory-mapped part is never copied whole to float32
PASSTHROUGH = {"caption": pa.string(), "url": pa.string(), "width": pa.int32(), "height": pa.int32()}


@dataclass(frozen=True)
class LaionPart:
    """One part of a dump: its name (img_emb_N, also our shard name) and the URLs of its files."""

    name: str
    npy_url: str
    metadata_url: str
    text_url: str | None = None


def _numbered(root: str, kind: str, storage: StorageConfig) -> dict[int, str]:
    """N -> URL of the ROOT/KIND/KIND_N.* files; other names are ignored."""
    folder = join(root, kind)
    found = (re.fullmatch(KINDS[kind], name) for name in listdir(folder, storage))
    return {int(m.group(1)): join(folder, m.group(0)) for m in found if m}


def list_parts(root: str, storage: StorageConfig) -> list[LaionPart]:
    """The parts of the dump at `root`, by N. Raises ConfigError naming a file without its partner."""
    root = root.rstrip("/")
    emb, meta, text = (_numbered(root, kind, storage) for kind in KINDS)
    if not emb and not meta:
        raise ConfigError(f"input.shards: no img_emb/img_emb_N.npy + metadata/metadata_N.parquet under {root!r}")
    for have, lack in ((emb, meta), (meta, emb), (text, emb)):
        orphans = sorted(set(have) - set(lack))
        if orphans:
            partner = "metadata/metadata_{}.parquet" if lack is meta else "img_emb/img_emb_{}.npy"
            raise ConfigError(f"LAION dump {root!r}: {have[orphans[0]]} has no partner "
                              f"{partner.format(orphans[0])} ({len(orphans)} such file(s))")
    return [LaionPart(f"img_emb_{n}", emb[n], meta[n], text.get(n)) for n in sorted(emb)]


def load_npy(url: str, storage: StorageConfig) -> np.ndarray:
    """A 2-D .npy array: memory-mapped when local, else the object's bytes (a part is bounded)."""
    fs, path = filesystem(url, storage)
    if "file" in fs.protocol:
        matrix = np.load(path, mmap_mode="r")
    else:
        matrix = np.load(io.BytesIO(read_bytes(url, storage)))
    if matrix.ndim != 2:
        raise ValueError(f"{url}: expected a (rows, dim) array, got shape {matrix.shape}")
    return matrix


def npy_rows(url: str, storage: StorageConfig) -> int:
    """The row count of a .npy file, from its header alone (a few hundred bytes)."""
    fs, path = filesystem(url, storage)
    with fs.open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = header(handle)
    return int(shape[0]) if shape else 0


def part_keys(metadata: pa.Table, part: LaionPart, key_column: str | None) -> list[str]:
    """Row keys: `key_column`, else `key`, else `image_path`; a missing or null key is PART/row."""
    column = key_column or next((c for c in ("key", "image_path") if c in metadata.column_names), None)
    values = metadata[column].cast(pa.string()).to_pylist() if column else [None] * len(metadata)
    return [f"{part.name}/{i}" if v is None else v for i, v in enumerate(values)]


def read_metadata(part: LaionPart, key_column: str | None, storage: StorageConfig) -> pa.Table:
    """The metadata columns we use (a dump may carry many more, e.g. exif), those present.
    Raises ValueError when an explicit `key_column` is not among them."""
    wanted = {key_column, "key", "image_path", *PASSTHROUGH}
    with arrow_source(part.metadata_url, storage) as source, pq.ParquetFile(source) as parquet:
        names = parquet.schema_arrow.names
        if key_column is not None and key_column not in names:
            raise ValueError(f"{part.metadata_url}: key column {key_column!r} not found (columns: {', '.join(names)})")
        return parquet.read(columns=[c for c in names if c in wanted])


def normalise(matrix: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """Unit-norm float16 rows and, per row, why it cannot be used (None when it can)."""
    out = np.zeros(matrix.shape, np.float16)
    reasons: list[str | None] = []
    for start in range(0, len(matrix), CHUNK):
        block = np.asarray(matrix[start : start + CHUNK], np.float32)
        finite = np.isfinite(block).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], block, 0), axis=1)
        good = finite & (norms >= MIN_NORM)
        out[start : start + CHUNK][good] = block[good] / norms[good, None]
        reasons += [_reason(f, n) for f, n in zip(finite.tolist(), norms.tolist())]
    return out, reasons


def _reason(finite: bool, norm: float) -> str | None:
    if not finite:
        return "NonFinite: embedding has NaN or infinite values"
    return f"ZeroNorm: embedding norm {norm:.3g} is below {MIN_NORM}" if norm < MIN_NORM else None


def _column(metadata: pa.Table, name: str, kind: pa.DataType) -> pa.Array:
    """A metadata column cast to `kind` (float NaN -> null), or all nulls when the dump lacks it."""
    if name not in metadata.column_names:
        return pa.nulls(len(metadata), kind)
    column = metadata[name].combine_chunks()
    if pa.types.is_floating(column.type):
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
    return column.cast(kind)


def ingest_part(run: RunDir, part: LaionPart, key_column: str | None, model: str) -> dict[str, Any]:
    """Commit one part as embeddings/PART.parquet (+ errors/PART.parquet) and its marker, returned.

    Embeddings are re-normalised to unit norm; a row that is not finite or has ~zero norm, or repeats a
    key of an earlier row of the part, goes to errors/ with the reason (stage "ingest"). A caption
    embedding (text_emb) that cannot be normalised is stored as null, like a sample without a caption.
    Raises ValueError when the part's files disagree on the row count: then no row can be trusted.
    """
    t0 = time.time()
    matrix = load_npy(part.npy_url, run.storage)
    metadata = read_metadata(part, key_column, run.storage)
    text = load_npy(part.text_url, run.storage) if part.text_url else None
    for url, rows in ((part.metadata_url, len(metadata)), (part.text_url, len(matrix) if text is None else len(text))):
        if rows != len(matrix):
            raise ValueError(f"{part.npy_url} has {len(matrix)} rows but {url} has {rows}: a part's files "
                             "must be row-aligned")
    keys = part_keys(metadata, part, key_column)
    vectors, reasons = normalise(matrix)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if reasons[i] is None and first.setdefault(key, i) != i:
            reasons[i] = f"DuplicateKey: kept row {first[key]} of {part.name}"
    good = np.array([r is None for r in reasons], bool)
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "embedding": embedding_array(vectors),
        **{name: _column(metadata, name, kind) for name, kind in PASSTHROUGH.items()},
        "label": pa.nulls(len(keys), pa.string()),
        "shard": pa.array([part.name] * len(keys), pa.string()),
    })
    if text is not None:
        text_vectors, text_reasons = normalise(text)
        valid = np.array([r is None for r in text_reasons], bool)
        table = table.add_column(2, "text_embedding", embedding_array(text_vectors, valid))
    errors = pa.table({"key": pa.array(keys, pa.string()), "error": pa.array(reasons, pa.string())})
    mask = pa.array(good)
    return write_commit(run, part.name, part.npy_url, table.filter(mask), errors.filter(pc.invert(mask)),
                        "ingest", t0, model)
