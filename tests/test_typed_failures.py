"""The class of a failure decides: a transient read is recorded as retryable, corrupt bytes as data, and
any other exception (a parser bug) fails the read with its traceback instead of becoming a row. errors/
rows store whether they may pass; the text of a row decides nothing, and older run directories (no
`retryable` column) are still read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.embed.dedupe import drop_duplicates
from scaleclust.failures import Unreachable, needs_retry, retryable_rows, storage_mistake
from scaleclust.rundir import RunDir
from scaleclust.sources import decode, image_folder, webdataset
from scaleclust.sources.decode import decode_member
from scaleclust.tables import embedding_array, write_commit
from tests.shards import write_synthetic_shards

LOCAL = StorageConfig()


def test_a_missing_shard_is_a_retryable_read_failure(tmp_path: Path) -> None:
    [sample] = webdataset.read_tar_samples("gone", [str(tmp_path / "gone.tar")], LOCAL)
    assert sample.retryable and sample.error.startswith("ReadFailed: FileNotFoundError")


def test_a_parser_bug_fails_loudly_and_is_never_recorded(tmp_path: Path, monkeypatch) -> None:
    [path] = write_synthetic_shards(tmp_path / "shards", n_shards=1, per_shard=3)
    samples = webdataset.read_tar_samples("00000", [path], LOCAL)
    assert len(samples) == 3 and not any(s.error for s in samples)

    def buggy_parser(data: bytes, shard: str) -> list:
        return {}["members"]  # a KeyError: our bug, not the shard's

    monkeypatch.setattr(webdataset, "parse_tar", buggy_parser)
    with pytest.raises(KeyError):
        webdataset.read_tar_samples("00000", [path], LOCAL)


def test_an_image_folder_read_bug_fails_loudly(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"not really a jpeg")
    root = str(tmp_path / "photos")
    urls = [str(tmp_path / "photos" / "a.jpg"), str(tmp_path / "photos" / "b.jpg")]  # b.jpg vanished
    ok, gone = image_folder.read_folder_samples("photos-00000", urls, root, LOCAL)
    assert not ok.error and gone.retryable and gone.error.startswith(f"ReadFailed: {urls[1]}: FileNotFoundError")

    def buggy_read(url: str, storage: StorageConfig) -> bytes:
        raise TypeError("read_bytes() got an unexpected keyword")

    monkeypatch.setattr(image_folder, "read_bytes", buggy_read)
    with pytest.raises(TypeError):
        image_folder.read_folder_samples("photos-00000", urls, root, LOCAL)


def test_corrupt_bytes_are_data_and_a_decoder_bug_propagates(monkeypatch) -> None:
    image, _, _, error = decode_member(b"\xff\xd8 cut short", "k.jpg", 32, 1.0)
    assert image is None and error.startswith("ImageDecodeError: k.jpg: UnidentifiedImageError")

    def buggy_decoder(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(decode, "decode_image", buggy_decoder)
    with pytest.raises(TypeError):
        decode_member(b"\xff\xd8 cut short", "k.jpg", 32, 1.0)


def _commit(run: RunDir, errors: pa.Table) -> dict:
    """Commit shard `s`: one embedded row, key 'ok', and `errors`."""
    embedded = pa.table({"key": pa.array(["ok"]), "embedding": embedding_array(np.ones((1, 2)))})
    return write_commit(run, "s", "s.tar", embedded, errors, "embed", 0.0, "m")


def test_the_stored_column_decides_retry_not_the_text(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path / "run"), LOCAL)
    errors = pa.table({"key": ["a", "b", "c"],
                       "error": ["ReadFailed: told in words only", "ImageDecodeError: x", "ReadFailed: timeout"],
                       "retryable": [False, False, True]})
    marker = _commit(run, errors)
    assert marker["retryable"] == 1 and marker["retry_reasons"] == "ReadFailed: timeout" and needs_retry(marker)
    stored = pq.read_table(run.errors("s"))
    assert stored["retryable"].to_pylist() == [False, False, True]
    assert stored["error"].to_pylist()[0] == "ReadFailed: told in words only"  # the text is kept for people


def test_errors_written_before_the_column_still_read(tmp_path: Path) -> None:
    """A run directory of an earlier version: errors/ without `retryable`; its type name decides, and a
    duplicate moved into it keeps the file one schema."""
    legacy = pa.table({"key": ["a", "b"], "shard": ["s", "s"], "stage": ["embed", "embed"],
                       "error": ["ReadFailed: FileNotFoundError: x", "ImageDecodeError: y"]})
    assert retryable_rows(legacy) == [True, False]
    run = RunDir(str(tmp_path / "run"), LOCAL)
    _commit(run, pa.table({"key": ["a", "b"], "error": legacy["error"]}))
    pq.write_table(legacy, run.errors("s"))  # as an older version wrote it
    marker = drop_duplicates(run, "s", {"ok": "other"})
    moved = pq.read_table(run.errors("s"))
    assert moved["retryable"].to_pylist() == [True, False, False] and marker["errors"] == 3
    assert json.loads(Path(run.embeddings_marker("s")).read_text())["embedded"] == 0


def test_decoded_rows_carry_the_flag(tmp_path: Path) -> None:
    [path] = write_synthetic_shards(tmp_path / "shards", n_shards=1, per_shard=2)
    samples = webdataset.read_tar_samples("00000", [path], LOCAL)
    samples += webdataset.read_tar_samples("gone", [str(tmp_path / "gone.tar")], LOCAL)

    [batch] = decode.decode_shard("00000", samples, 32, 1.0, InputConfig(shards=[path]), batch_rows=10)
    assert batch["retryable"].tolist() == [False, False, True] and batch["retryable"].dtype == bool


def test_a_read_timeout_names_its_endpoint() -> None:
    """aiobotocore's read timeout carries its URL as a yarl URL, not a string: explaining it must not fail
    (the fault campaign's one traceback, an S3 outage during a read of a done marker)."""
    from aiobotocore.response import AioReadTimeoutError
    from yarl import URL

    err = AioReadTimeoutError(endpoint_url=URL("http://127.0.0.1:39375/chaos/run/assignments/00003.done.json"),
                              error="timed out")
    mistake = storage_mistake(err)
    assert isinstance(mistake, Unreachable)
    assert str(mistake).startswith("cannot reach the storage endpoint http://127.0.0.1:39375 (AioReadTimeoutError)")
