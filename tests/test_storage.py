"""Shard listing (braces, globs) and atomic writes, on local disk and on a real S3 server."""
from __future__ import annotations

from pathlib import Path

import boto3
import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from scaleclust.config import ConfigError, StorageConfig
from scaleclust.storage import expand_shards, listdir, read_bytes, read_json, shard_names, write_json_atomic


def test_braces_and_globs(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"x")
    (tmp_path / "00000.parquet").write_bytes(b"sidecar")
    s = StorageConfig()
    assert [Path(u).name for u in expand_shards([str(tmp_path / "{00000..00002}.tar")], s)] == \
        ["00000.tar", "00001.tar", "00002.tar"]
    assert len(expand_shards([str(tmp_path / "*.tar"), str(tmp_path / "00001.tar")], s)) == 4
    with pytest.raises(ConfigError, match=r"6 shard\(s\) .* do not exist: .*00004.tar.* and 3 more"):
        expand_shards([str(tmp_path / "{00000..00009}.tar")], s)
    with pytest.raises(ConfigError, match="matches no file"):
        expand_shards([str(tmp_path / "*.tgz")], s)


def test_shard_names_are_unique_and_stable() -> None:
    assert shard_names(["/a/00000.tar", "/a/00001.tar"]) == {"/a/00000.tar": "00000", "/a/00001.tar": "00001"}
    names = shard_names(["s3://b/x/00000.tar", "s3://b/y/00000.tar"])
    assert sorted(names.values()) == ["x__00000", "y__00000"]


def test_s3_listing_and_atomic_json(s3_endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="listing")
    for i in range(3):
        client.put_object(Bucket="listing", Key=f"shards/{i:05d}.tar", Body=b"x")
    s = StorageConfig(endpoint_url=s3_endpoint)
    assert expand_shards(["s3://listing/shards/*.tar"], s) == [f"s3://listing/shards/{i:05d}.tar" for i in range(3)]
    assert len(expand_shards(["s3://listing/shards/{00000..00001}.tar"], s)) == 2
    write_json_atomic("s3://listing/run/m.done.json", {"rows": 3}, s)
    assert read_json("s3://listing/run/m.done.json", s) == {"rows": 3}
    assert listdir("s3://listing/run", s) == ["m.done.json"]  # no temporary left behind


class FlakyFileSystem(LocalFileSystem):
    """Local files behind a connection that drops the first `failures` reads of each file."""

    protocol = "flaky"
    failures = 2
    calls: dict[str, int] = {}

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        FlakyFileSystem.calls[path] = FlakyFileSystem.calls.get(path, 0) + 1
        if FlakyFileSystem.calls[path] <= FlakyFileSystem.failures:
            raise ConnectionError(f"connection reset while reading {path}")
        return super().cat_file(path, start=start, end=end, **kwargs)


def test_transient_read_errors_are_retried_then_raised(tmp_path: Path) -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    (tmp_path / "a.bin").write_bytes(b"payload")
    url = f"flaky://{tmp_path}/a.bin"
    assert read_bytes(url, StorageConfig(retries=2, retry_backoff=0.01)) == b"payload"
    FlakyFileSystem.calls.clear()
    with pytest.raises(ConnectionError):
        read_bytes(url, StorageConfig(retries=1, retry_backoff=0.01))
    FlakyFileSystem.calls.clear()
    with pytest.raises(FileNotFoundError):  # not transient: no retry
        read_bytes(f"flaky://{tmp_path}/missing.bin", StorageConfig(retries=5, retry_backoff=0.01))
    assert list(FlakyFileSystem.calls.values()) == [FlakyFileSystem.failures + 1]  # the drops read again, then not


def test_an_orphaned_aiohttp_connection_error_prints_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A request body's write task that failed on a dropped connection (aiohttp leaves it unawaited) is not
    reported on fsspec's I/O loop; another unawaited failure still is."""
    import asyncio
    import gc

    import aiohttp
    import fsspec.asyn

    from scaleclust.storage import quiet_orphaned_transport_errors

    quiet_orphaned_transport_errors()

    async def orphan(error: Exception) -> None:
        async def fail() -> None:
            raise error

        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0.01)
        del task
        gc.collect()

    loop = fsspec.asyn.get_loop()
    asyncio.run_coroutine_threadsafe(orphan(aiohttp.ClientConnectionResetError("Cannot write to closing transport")),
                                     loop).result(5)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    asyncio.run_coroutine_threadsafe(orphan(KeyError("a bug")), loop).result(5)
    reported = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(reported) == 1 and isinstance(reported[0].exc_info[1], KeyError)
