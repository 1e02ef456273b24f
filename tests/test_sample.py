"""The one sampler: seeded, the same in-process and through Ray tasks, reading only the row groups that
hold its rows; id -> key lookups through the same row reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaleclust import rundir as rundir_module
from scaleclust import sample
from scaleclust.config import StorageConfig
from scaleclust.tables import embedding_array
from scaleclust.rundir import RunDir

SIZES = {"00000": 3000, "00001": 1200, "00002": 2500}
DIM = 8


def _write_run(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RunDir, dict[str, dict], dict[str, np.ndarray]]:
    monkeypatch.setattr(rundir_module, "ROW_GROUP_ROWS", 500)  # several row groups per shard
    run = RunDir(str(root), StorageConfig())
    rng = np.random.default_rng(0)
    vectors, markers = {}, {}
    for shard, n in SIZES.items():
        x = rng.standard_normal((n, DIM)).astype(np.float16)
        vectors[shard] = x
        run.write_table(run.embeddings(shard), pa.table({"key": [f"{shard}-{i}" for i in range(n)],
                                                         "embedding": embedding_array(x)}))
        markers[shard] = {"embedded": n, "dim": DIM}
    return run, markers, vectors


def _reference(markers: dict[str, dict], vectors: dict[str, np.ndarray], n: int, seed: int) -> np.ndarray:
    """The sample drawn from whole shards in memory with the documented rule (quotas, (seed, shard) picks)."""
    chosen = sample.quotas({s: m["embedded"] for s, m in markers.items()}, n)
    return np.concatenate([vectors[s][sample.pick_rows(s, markers[s]["embedded"], chosen[s], seed)]
                           for s in sorted(chosen) if chosen[s]]).astype(np.float32)


def test_sample_is_seeded_and_matches_whole_shard_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, markers, vectors = _write_run(tmp_path, monkeypatch)
    assert pq.ParquetFile(run.embeddings("00000")).metadata.num_row_groups == 6
    x, extra = sample.sample_embeddings(run, markers, 900, seed=7, columns=("key", sample.ROW))
    assert x.shape == (900, DIM) and np.array_equal(x, _reference(markers, vectors, 900, 7))
    assert [extra["key"][i] for i in (0, -1)] == [f"00000-{extra[sample.ROW][0]}", f"00002-{extra[sample.ROW][-1]}"]
    assert len(set(extra["key"])) == 900
    again, _ = sample.sample_embeddings(run, markers, 900, seed=7)
    other, _ = sample.sample_embeddings(run, markers, 900, seed=8)
    assert np.array_equal(x, again) and not np.array_equal(x, other)
    blocks = list(sample.sample_blocks(run, markers, 900, seed=7))  # the same rows, streamed shard by shard
    assert [len(b) for b in blocks] == [c for _, c in sorted(sample.quotas(
        {s: m["embedded"] for s, m in markers.items()}, 900).items())]
    assert np.array_equal(np.concatenate(blocks), x)


def test_reads_only_the_row_groups_holding_sampled_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _, vectors = _write_run(tmp_path, monkeypatch)
    path = Path(run.embeddings("00000"))
    meta = pq.ParquetFile(path).metadata
    last = meta.row_group(meta.num_row_groups - 1).column(1)  # the embedding column of rows 2500..2999
    data = bytearray(path.read_bytes())
    start = last.data_page_offset + 16
    data[start:start + 64] = b"\xff" * 64  # corrupt it: any read of that row group now fails
    path.write_bytes(bytes(data))
    rows = np.array([3, 499, 500, 2499])
    got = sample.read_rows(run, "00000", rows, ["key", "embedding"])
    assert got["key"].to_pylist() == [f"00000-{i}" for i in rows]
    with pytest.raises(Exception):
        sample.read_rows(run, "00000", np.array([2500]), ["embedding"])
    with pytest.raises(ValueError, match="00000.parquet: row 3000 requested, the file holds 3000 rows"):
        sample.read_rows(run, "00000", np.array([3000]), ["key"])


@pytest.mark.timeout(120)
def test_ray_tasks_draw_the_same_sample_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_local) -> None:
    run, markers, vectors = _write_run(tmp_path, monkeypatch)
    x, extra = sample.sample_embeddings(run, markers, 700, seed=3, columns=("key",))
    assert np.array_equal(x, _reference(markers, vectors, 700, 3))
    streamed = sample.sample_blocks(run, markers, 700, seed=3, ahead=1)  # one shard read ahead at a time
    assert np.array_equal(np.concatenate(list(streamed)), x)
    keys = sample.keys_of_rows(run, {"00001": np.array([1199, 0, 7, 7]), "00002": np.array([2])})
    assert keys == {"00001": ["00001-1199", "00001-0", "00001-7", "00001-7"], "00002": ["00002-2"]}


@pytest.mark.timeout(120)
def test_a_dealt_sample_gives_every_share_rows_of_every_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             ray_local) -> None:
    """Shards are often ordered by source or class: Train workers that each saw some shards only would
    train one shared head on different data. Share r holds rows r, r + shares, ... of the whole sample."""
    run, markers, vectors = _write_run(tmp_path, monkeypatch)
    monkeypatch.setattr(sample, "PART_ROWS", 50)  # a read task holds 3 x 50 rows or more
    reference = _reference(markers, vectors, 700, 3)  # 314, 125 and 261 rows of the three shards
    dealt = sample.deal_sample(run, markers, 700, seed=3, shares=3)
    assert len(dealt.shares[0]) == 2  # the first shard alone, the second (125 rows) with the third
    for rank in range(3):
        assert np.array_equal(dealt.share(rank).astype(np.float32), reference[rank::3])
        assert len(dealt.share(rank)) == dealt.sizes[rank]
    assert np.array_equal(dealt.gather(), reference)  # whole again, in the sample's order
    one = sample.deal_sample(run, markers, 700, seed=3, shares=1)  # one worker: the sample as drawn
    assert np.array_equal(one.gather(), reference) and one.sizes == [700]
    # shards that give fewer rows than there are shares, read by one task: every share within one row
    few = sample.deal_sample(run, markers, 10, seed=3, shares=7)
    assert len(few.shares[0]) == 1 and few.sizes == [2, 2, 2, 1, 1, 1, 1]
    assert np.array_equal(few.gather(), _reference(markers, vectors, 10, 3))


def test_an_s3_sample_fetches_the_row_groups_that_hold_its_rows(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes received from the S3 server (counted where s3fs reads a body) stay within 2x the row groups
    that hold the sampled rows, and the rows are those a whole read gives."""
    import boto3
    from s3fs import S3FileSystem

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ranges")
    monkeypatch.setattr(rundir_module, "ROW_GROUP_ROWS", 2000)
    run = RunDir("s3://ranges/run", StorageConfig(endpoint_url=s3_endpoint))
    x = np.random.default_rng(1).standard_normal((20_000, 64)).astype(np.float16)  # 10 groups of ~256 kB
    table = pa.table({"key": [f"k{i}" for i in range(len(x))], "embedding": embedding_array(x)})
    run.write_table(run.embeddings("00000"), table)
    received = []
    original = S3FileSystem._cat_file

    async def counting(self, path, *args, **kwargs):
        data = await original(self, path, *args, **kwargs)
        received.append(len(data))
        return data

    monkeypatch.setattr(S3FileSystem, "_cat_file", counting)
    rows = np.array([4100, 4101, 5999, 16_000])  # in row groups 2 and 8 of 10
    got = sample.read_rows(run, "00000", rows, ["key", "embedding"])
    assert got["key"].to_pylist() == [f"k{i}" for i in rows]
    np.testing.assert_array_equal(np.stack(got["embedding"].to_numpy(zero_copy_only=False)).astype(np.float16), x[rows])
    meta = pq.ParquetFile(pa.BufferReader(run.read_bytes(run.embeddings("00000")))).metadata
    holding = sum(meta.row_group(g).column(c).total_compressed_size for g in (2, 8) for c in range(meta.num_columns))
    assert meta.num_row_groups == 10 and sum(received) <= 2 * holding, (sum(received), holding)
