"""One retry policy and atomic commits, against a real S3 server on loopback and real local files:
a commit on S3 is one PUT and leaves no temporary object; a request is retried by botocore alone; an
S3 body that breaks off mid-read is read again; a local writer killed mid-commit leaves no partial file;
a local commit flushes its file and, after the rename, its folder."""
from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest

from scaleclust.config import StorageConfig
from scaleclust.storage import filesystem, read_bytes, write_bytes_atomic
from tests.conftest import free_port


def s3_calls(storage: StorageConfig, url: str, event: str) -> list[str]:
    """The names of the operations the S3 client behind `url` performs from now on, one per `event`
    ('before-call': API call, 'before-send': HTTP attempt)."""
    fs, _ = filesystem(url, storage)
    fs.connect()
    calls: list[str] = []
    fs.s3.meta.events.register(f"{event}.s3", lambda event_name, **_: calls.append(event_name.split(".")[-1]))
    return calls


def test_s3_commit_is_one_put_and_leaves_no_temporary(s3_endpoint: str) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="commits")
    storage = StorageConfig(endpoint_url=s3_endpoint)
    url = "s3://commits/run/embeddings/00000.done.json"
    calls = s3_calls(storage, url, "before-call")
    write_bytes_atomic(url, b'{"rows": 1}', storage)
    assert calls == ["PutObject"]
    write_bytes_atomic(url, b'{"rows": 2}', storage)  # an overwrite is one PUT as well
    assert calls == ["PutObject", "PutObject"]
    assert read_bytes(url, storage) == b'{"rows": 2}'
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="commits")["Contents"]]
    assert keys == ["run/embeddings/00000.done.json"]


def test_s3_requests_are_retried_by_botocore_only() -> None:
    """A store that refuses connections: each request is attempted retries + 1 times in all (botocore's
    policy), not multiplied by s3fs's loop or the project's."""
    storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", retries=2, retry_mode="standard",
                            retry_backoff=0.01)
    url = "s3://nowhere/run/config.yaml"
    attempts = s3_calls(storage, url, "before-send")
    with pytest.raises(Exception, match="Could not connect"):
        read_bytes(url, storage)
    assert len(attempts) == 3, attempts
    assert len(set(attempts)) == 1  # one request (the first the read needs), attempted 3 times


class TruncatingS3(http.server.BaseHTTPRequestHandler):
    """Serves one object; the first GET of each run breaks off after half its body (Content-Length
    promises all of it): a connection dropped mid-body."""

    body = b"0123456789" * 1000
    gets = 0

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", '"e"')
        self.send_header("Last-Modified", "Mon, 30 Nov 2026 00:00:00 GMT")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._headers()

    def do_GET(self) -> None:  # noqa: N802
        TruncatingS3.gets += 1
        self._headers()
        self.wfile.write(self.body if TruncatingS3.gets > 1 else self.body[: len(self.body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def truncating_s3() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TruncatingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    TruncatingS3.gets = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_s3_body_broken_mid_read_is_read_again(truncating_s3: str) -> None:
    url = "s3://bucket/run/embeddings/00000.parquet"
    assert read_bytes(url, StorageConfig(endpoint_url=truncating_s3, retry_backoff=0.01)) == TruncatingS3.body
    assert TruncatingS3.gets == 2
    TruncatingS3.gets = 0
    with pytest.raises(Exception, match="(?i)payload|incomplete|not completed"):  # no retries allowed
        read_bytes(url, StorageConfig(endpoint_url=truncating_s3, retries=0))
    assert TruncatingS3.gets == 1


WRITER = """
import sys
from scaleclust.config import StorageConfig
from scaleclust.storage import write_bytes_atomic
size, target = int(sys.argv[1]), sys.argv[2]
for i in range(1000):
    write_bytes_atomic(target, bytes([65 + i % 2]) * size, StorageConfig())
    print(i, flush=True)
"""


@pytest.mark.subprocess
def test_local_commit_killed_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A writer commits 32 MiB files of one repeated byte in a loop and is SIGKILLed at several moments:
    the target always holds one whole commit."""
    target = tmp_path / "run" / "embeddings" / "00000.parquet"
    size = 32 * 2**20
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    for delay in (0.0, 0.05, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(size), str(target)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # the first commit is in place; the next is being written
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = target.read_bytes()
        assert len(data) == size and data.count(data[:1]) == size
        assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".tmp-")] == [target.name]


def test_local_commit_fsyncs_the_file_then_its_folder_after_the_rename(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A marker renamed into place survives a power loss only once its folder is flushed too: the real
    os.fsync and os.replace, watched, show the file flushed before the rename and the folder after it."""
    import stat

    events: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append(("fsync", ("folder" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino)))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        events.append(("replace", os.stat(dst).st_ino))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "run" / "embeddings" / "00000.done.json"
    write_bytes_atomic(str(target), b'{"rows": 1}', StorageConfig())
    assert target.read_bytes() == b'{"rows": 1}'
    folder = target.parent.stat().st_ino
    assert events == [("fsync", ("file", target.stat().st_ino)), ("replace", target.stat().st_ino),
                      ("fsync", ("folder", folder))], events
