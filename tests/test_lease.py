"""The run directory's lease on local disk and on a real S3 server: one holder, a clear refusal, an
expired lease taken over by exactly one of two takers, a heartbeat that keeps a live lease alive."""
from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from scaleclust.config import StorageConfig
from scaleclust.lease import Lease, LeaseHeld

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def where(request, tmp_path: Path) -> tuple[str, StorageConfig]:
    if request.param == "local":
        return str(tmp_path / "run"), StorageConfig()
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lease-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/run", StorageConfig(endpoint_url=endpoint)


def test_one_holder_and_a_clear_refusal(where) -> None:
    url, storage = where
    with Lease(url, storage, "update") as first:
        with pytest.raises(LeaseHeld, match=r"lease.json is held by .*\(update, heartbeat .* another run"):
            Lease(url, storage, "run").acquire()
        first.check()
    # Released: the next run takes it at once.
    with Lease(url, storage, "run"):
        pass


def test_a_missing_bucket_is_named(s3_endpoint: str) -> None:
    """The lease is a run's first write: a run_dir in a bucket that does not exist fails there, naming both."""
    with pytest.raises(FileNotFoundError, match=r"^s3://no-such-bucket/runs/x/lease.json: cannot write the run directory: .*"
                                                r"\(bucket no-such-bucket\); create it"):
        Lease("s3://no-such-bucket/runs/x", StorageConfig(endpoint_url=s3_endpoint), "run").acquire()


def test_expired_lease_is_taken_over_by_one_taker(where) -> None:
    url, storage = where
    killed = Lease(url, storage, "update", ttl=0.6)
    killed.acquire()
    killed._stop.set()  # as if SIGKILLed: no heartbeat, no release
    killed._thread.join()
    time.sleep(0.8)
    stale, etag = killed.read()
    assert stale["owner"] == killed.owner and stale["expires"] < time.time()
    # Two runs found the same expired lease: only one replaces it.
    a, b = Lease(url, storage, "update"), Lease(url, storage, "update")
    assert a._take_over(stale, etag) is True
    assert b._take_over(stale, etag) is False
    assert a.read()[0]["owner"] == a.owner
    with pytest.raises(LeaseHeld, match=a.owner):
        b.acquire()
    # And through acquire(): a fresh run takes over a lease that expired.
    a._stop.set()
    c = Lease(url, storage, "update", ttl=0.6)
    time.sleep(0.1)
    held = c.read()[0]
    assert held["owner"] == a.owner
    killed2 = Lease(url, storage, "run", ttl=0.3)
    killed2._take_over(held, c.read()[1])  # replace with a short lease, then let it lapse
    time.sleep(0.5)
    c.acquire()
    assert c.read()[0]["owner"] == c.owner
    c.release()
    assert c.read() == (None, None)


def test_heartbeat_keeps_the_lease_and_notices_a_theft(where) -> None:
    url, storage = where
    holder = Lease(url, storage, "update", ttl=0.6)
    holder.acquire()
    time.sleep(1.2)  # two lease lifetimes: alive only through the heartbeat
    with pytest.raises(LeaseHeld):
        Lease(url, storage, "run").acquire()
    thief = Lease(url, storage, "run")
    # Forced, as an operator clearing a lease would; a heartbeat in between makes a try fail (CAS).
    assert any(thief._take_over(*thief.read()) for _ in range(5))
    time.sleep(0.6)
    with pytest.raises(LeaseHeld, match="lost the lease"):
        holder.check()
    holder.release()
    assert thief.read()[0]["owner"] == thief.owner  # release never deletes another's lease


@pytest.mark.subprocess  # a process that has exited: its pid names no process
def test_a_dead_holders_lease_is_taken_over_at_once(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid no longer names a process
    killed = Lease(str(tmp_path / "run"), StorageConfig(), "update")
    killed.owner = f"{socket.gethostname()}:{gone.pid}:killed"
    killed.acquire()
    killed._stop.set()  # as if SIGKILLed: no heartbeat, no release
    killed._thread.join()
    assert killed.read()[0]["expires"] > time.time()  # not expired, but its holder is gone
    taker = Lease(str(tmp_path / "run"), StorageConfig(), "run")
    taker.acquire()
    assert taker.read()[0]["owner"] == taker.owner
    taker.release()


@pytest.mark.timeout(300)
def test_cli_refuses_with_one_line_and_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every command that writes a run directory takes the lease: a stage run by hand while a cron update
    holds it is refused before it writes anything (one line naming the holder, exit 3)."""
    import yaml

    from scaleclust.cli import main
    from scaleclust.config import load
    from scaleclust.pipeline import prepare
    from tests.shards import write_synthetic_shards

    write_synthetic_shards(tmp_path / "shards", 1, 2)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "input": {"shards": str(tmp_path / "shards" / "*.tar")},
                                      "embed": {"model": {"arch": "scaleclust-tiny"}}, "cluster": {"method": "kmeans"}}))
    prepare(load(str(config), []))  # a recorded run directory, as `report RUN` and `label RUN` need
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with Lease(str(tmp_path / "run"), StorageConfig(), "update") as cron:
        for command in (["update", str(config)], ["run", str(config)], ["embed", str(config)], ["fit", str(config)],
                        ["index", str(config)], ["report", str(tmp_path / "run")], ["dedup", str(tmp_path / "run")]):
            capsys.readouterr()
            assert main(command) == 3, command
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"lease.json is held by {cron.owner} (update" in err, (command, err)
            after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name != "lease.json"}
            assert after == before, command  # refused before any work
