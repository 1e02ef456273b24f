"""LAION embedding dumps: ingest into a run directory (no encoder, no Ray) and export back, locally and on S3."""
from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaleclust.config import ConfigError, StorageConfig
from scaleclust.tables import embedding_matrix
from scaleclust.export import export_laion
from scaleclust.rundir import RunDir
from scaleclust.sources.laion import LaionPart, ingest_part, list_parts

DIM = 16
ROWS = (20, 15, 10)
BAD = {(1, 3): "NonFinite", (2, 5): "ZeroNorm"}  # (part, row) -> the reason's type


def write_dump(root: Path, dtype: type) -> dict[int, tuple[np.ndarray, pa.Table]]:
    """Three parts as clip-retrieval writes them, keyed by `key`, by `image_path`, and by neither; part 0
    also has caption embeddings. Part 1 row 3 is NaN, part 2 row 5 is zero."""
    rng = np.random.default_rng(0)
    dump = {}
    for n, rows in enumerate(ROWS):
        emb = rng.standard_normal((rows, DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb.astype(dtype)
        meta = {"caption": [f"caption {n}-{i}" for i in range(rows)],
                "url": [f"http://x/{n}/{i}.jpg" for i in range(rows)],
                "width": np.arange(rows, dtype=np.int64) + 100, "height": np.arange(rows, dtype=np.float64) + 50,
                "similarity": rng.random(rows), "exif": ["{}"] * rows}
        if n == 0:
            meta["key"] = [f"{n:05d}{i:04d}" for i in range(rows)]
            text = rng.standard_normal((rows, DIM)).astype(dtype)
            (root / "text_emb").mkdir(parents=True, exist_ok=True)
            np.save(root / "text_emb" / f"text_emb_{n}.npy", text)
        elif n == 1:
            meta["image_path"] = [f"folder/{i}.jpg" for i in range(rows)]
            meta["height"][0] = np.nan  # pandas-written dumps store missing sizes as float NaN
        for (part, row), kind in BAD.items():
            if part == n:
                emb[row] = np.nan if kind == "NonFinite" else 0
        (root / "img_emb").mkdir(parents=True, exist_ok=True)
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        np.save(root / "img_emb" / f"img_emb_{n}.npy", emb)
        table = pa.table(meta)
        pq.write_table(table, root / "metadata" / f"metadata_{n}.parquet")
        dump[n] = (emb, table)
    return dump


def expected_keys(n: int, table: pa.Table) -> list[str]:
    if "key" in table.column_names:
        return table["key"].to_pylist()
    if "image_path" in table.column_names:
        return table["image_path"].to_pylist()
    return [f"img_emb_{n}/{i}" for i in range(len(table))]


def good_rows(n: int) -> np.ndarray:
    return np.array([(n, i) not in BAD for i in range(ROWS[n])])


def ingest_all(root: str, run: RunDir) -> dict[str, dict]:
    return {p.name: ingest_part(run, p, None, "laion:test") for p in list_parts(root, run.storage)}


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip(tmp_path: Path, dtype: type) -> None:
    dump = write_dump(tmp_path / "dump", dtype)
    run = RunDir(str(tmp_path / "run"), StorageConfig())
    markers = ingest_all(str(tmp_path / "dump"), run)
    assert run.committed("embeddings") == markers
    for n, (emb, meta) in dump.items():
        name, good = f"img_emb_{n}", good_rows(n)
        marker = markers[name]
        assert (marker["rows"], marker["embedded"], marker["errors"]) == (ROWS[n], good.sum(), (~good).sum())
        assert (marker["dim"], marker["model"], marker["shard"]) == (DIM, "laion:test", name)
        table = run.read_table(run.embeddings(name))
        text = ["text_embedding"] if n == 0 else []
        assert table.column_names == ["key", "embedding", *text, "caption", "url", "width", "height", "label", "shard"]
        kind = table.schema.field("embedding").type
        assert pa.types.is_fixed_size_list(kind) and (kind.value_type, kind.list_size) == (pa.float16(), DIM)
        assert table.schema.field("width").type == table.schema.field("height").type == pa.int32()
        keys = np.array(expected_keys(n, meta), dtype=object)
        assert table["key"].to_pylist() == keys[good].tolist()
        vectors = embedding_matrix(table["embedding"])
        np.testing.assert_allclose(vectors, emb[good].astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
        assert table["caption"].to_pylist() == np.array(meta["caption"].to_pylist())[good].tolist()
        assert table["label"].null_count == len(table) and set(table["shard"].to_pylist()) == {name}
        if n == 1:
            assert table["height"][0].as_py() is None
        if good.all():
            assert not run.exists(run.errors(name))
            continue
        errors = run.read_table(run.errors(name)).to_pylist()
        row = int(np.flatnonzero(~good)[0])
        assert [(e["key"], e["shard"], e["stage"]) for e in errors] == [(keys[row], name, "ingest")]
        assert errors[0]["error"].startswith(BAD[(n, row)] + ": ")

    # Part 0 is clustered: its export carries cluster and confidence, joined by key.
    assigned = run.read_table(run.embeddings("img_emb_0"), ["key"])
    rows = len(assigned)
    run.write_table(run.assignments("img_emb_0", "m0", "c0"), pa.table({
        "key": assigned["key"].take(pa.array(np.arange(rows)[::-1])),
        "cluster": pa.array(np.arange(rows)[::-1] % 3, pa.int32()),
        "confidence": pa.array(np.linspace(0, 1, rows)[::-1], pa.float32())}))
    run.write_marker(run.assignments_marker("img_emb_0"), {"rows": rows, "file": "img_emb_0.m0.c0.parquet"})

    out = tmp_path / "out"
    written = export_laion(run, str(out), StorageConfig())
    assert sorted(Path(w).relative_to(out).as_posix() for w in written) == sorted(
        [f"img_emb/img_emb_{n}.npy" for n in dump] + [f"metadata/metadata_{n}.parquet" for n in dump]
        + ["text_emb/text_emb_0.npy", "shards.json"])
    assert json.loads((out / "shards.json").read_text()) == {str(n): f"img_emb_{n}" for n in dump}
    for n, (emb, meta) in dump.items():
        good = good_rows(n)
        exported = np.load(out / "img_emb" / f"img_emb_{n}.npy")
        assert exported.dtype == np.float16 and exported.shape == (good.sum(), DIM)
        np.testing.assert_allclose(exported.astype(np.float32), emb[good].astype(np.float32), atol=2e-3)
        table = pq.read_table(out / "metadata" / f"metadata_{n}.parquet")
        assert table.column_names == ["key", "caption", "url", "width", "height", "shard", "cluster", "confidence"]
        assert table["key"].to_pylist() == np.array(expected_keys(n, meta), dtype=object)[good].tolist()
        for column in ("caption", "url", "width"):
            assert table[column].to_pylist() == np.array(meta[column].to_pylist(), dtype=object)[good].tolist()
        if n == 0:
            assert table["cluster"].to_pylist() == [i % 3 for i in range(rows)]
            np.testing.assert_allclose(table["confidence"].to_numpy(), np.linspace(0, 1, rows), rtol=1e-6)
        else:
            assert table["cluster"].null_count == table["confidence"].null_count == len(table)
    text = np.load(out / "text_emb" / "text_emb_0.npy").astype(np.float32)
    original = np.load(tmp_path / "dump" / "text_emb" / "text_emb_0.npy").astype(np.float32)
    np.testing.assert_allclose(text, original / np.linalg.norm(original, axis=1, keepdims=True), atol=2e-3)

    # The exported dump is itself a dump: it reads back to the same rows, and a second export changes nothing.
    again = RunDir(str(tmp_path / "again"), StorageConfig())
    ingest_all(str(out), again)
    columns = ["key", "caption", "url", "width", "height"]
    for n in dump:
        first = run.read_table(run.embeddings(f"img_emb_{n}"))
        second = again.read_table(again.embeddings(f"img_emb_{n}"))
        assert first.select(columns).equals(second.select(columns))
        np.testing.assert_allclose(embedding_matrix(first["embedding"]), embedding_matrix(second["embedding"]),
                                   atol=1e-3)
    before = {w: Path(w).read_bytes() for w in written}
    assert export_laion(run, str(out), StorageConfig()) == written
    assert {w: Path(w).read_bytes() for w in written} == before


def test_list_parts_numeric_order_and_orphans(tmp_path: Path) -> None:
    for n in (0, 2, 10):
        (tmp_path / "img_emb").mkdir(exist_ok=True)
        (tmp_path / "metadata").mkdir(exist_ok=True)
        np.save(tmp_path / "img_emb" / f"img_emb_{n}.npy", np.ones((1, 2), np.float16))
        pq.write_table(pa.table({"key": ["a"]}), tmp_path / "metadata" / f"metadata_{n}.parquet")
    (tmp_path / "img_emb" / "_SUCCESS").write_text("")
    parts = list_parts(str(tmp_path), StorageConfig())
    assert [p.name for p in parts] == ["img_emb_0", "img_emb_2", "img_emb_10"]
    assert parts[2].metadata_url == str(tmp_path / "metadata" / "metadata_10.parquet")
    assert parts[0].text_url is None

    np.save(tmp_path / "img_emb" / "img_emb_3.npy", np.ones((1, 2), np.float16))
    with pytest.raises(ConfigError, match=r"img_emb_3\.npy has no partner metadata/metadata_3\.parquet"):
        list_parts(str(tmp_path), StorageConfig())
    (tmp_path / "img_emb" / "img_emb_3.npy").unlink()
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "metadata" / "metadata_7.parquet")
    with pytest.raises(ConfigError, match=r"metadata_7\.parquet has no partner img_emb/img_emb_7\.npy"):
        list_parts(str(tmp_path), StorageConfig())
    with pytest.raises(ConfigError, match="no img_emb"):
        list_parts(str(tmp_path / "nothing"), StorageConfig())


def test_ingest_rejects_misaligned_part_and_records_repeated_keys(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.eye(3, 4, dtype=np.float32))
    pq.write_table(pa.table({"key": ["x", "y"]}), tmp_path / "a.parquet")
    run = RunDir(str(tmp_path / "run"), StorageConfig())
    part = LaionPart("img_emb_0", str(tmp_path / "a.npy"), str(tmp_path / "a.parquet"))
    with pytest.raises(ValueError, match=r"a\.npy has 3 rows but .*a\.parquet has 2"):
        ingest_part(run, part, None, "m")
    assert run.committed("embeddings") == {}

    pq.write_table(pa.table({"key": ["x", "y", "x"], "id": ["1", None, "3"]}), tmp_path / "a.parquet")
    marker = ingest_part(run, part, None, "m")
    assert (marker["embedded"], marker["errors"]) == (2, 1)
    assert run.read_table(run.errors("img_emb_0"))["error"].to_pylist() == ["DuplicateKey: kept row 0 of img_emb_0"]
    # An explicit key column wins; its nulls fall back to PART/row.
    ingest_part(run, part, "id", "m")
    assert run.read_table(run.embeddings("img_emb_0"))["key"].to_pylist() == ["1", "img_emb_0/1", "3"]
    with pytest.raises(ValueError, match="key column 'nope' not found"):
        ingest_part(run, part, "nope", "m")


def test_ingest_and_export_on_s3(tmp_path: Path, s3_endpoint: str) -> None:
    dump = write_dump(tmp_path / "dump", np.float16)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="laion")
    for file in (tmp_path / "dump").rglob("*.*"):
        client.upload_file(str(file), "laion", f"dump/{file.relative_to(tmp_path / 'dump').as_posix()}")
    storage = StorageConfig(endpoint_url=s3_endpoint)
    run = RunDir("s3://laion/runs/one", storage)
    markers = ingest_all("s3://laion/dump/", run)
    assert sorted(markers) == ["img_emb_0", "img_emb_1", "img_emb_2"]
    assert run.committed("embeddings") == markers
    for n, (emb, meta) in dump.items():
        table = run.read_table(run.embeddings(f"img_emb_{n}"))
        good = good_rows(n)
        assert table["key"].to_pylist() == np.array(expected_keys(n, meta), dtype=object)[good].tolist()
        np.testing.assert_allclose(embedding_matrix(table["embedding"]), emb[good].astype(np.float32), atol=2e-3)
    assert run.read_table(run.errors("img_emb_2"))["key"].to_pylist() == ["img_emb_2/5"]

    written = export_laion(run, "s3://laion/export", storage)
    assert "s3://laion/export/img_emb/img_emb_1.npy" in written
    body = client.get_object(Bucket="laion", Key="export/img_emb/img_emb_1.npy")["Body"].read()
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), emb_rows(dump, 1))
    names = [o["Key"] for o in client.list_objects_v2(Bucket="laion")["Contents"]]
    assert not [k for k in names if "/.tmp-" in k]


def emb_rows(dump: dict[int, tuple[np.ndarray, pa.Table]], n: int) -> np.ndarray:
    """A float16 part's good rows as ingested: re-normalised, then float16."""
    rows = dump[n][0][good_rows(n)].astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
