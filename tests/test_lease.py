"""The run directory's lease on local disk and on a real S3 server: one holder, a clear refusal, an
expired lease taken over by exactly one of two takers, a heartbeat that keeps a live lease alive."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import boto3
import pytest

from scaleclust.config import StorageConfig
from scaleclust.lease import Lease, LeaseHeld, LeaseLost
from tests.tcp_proxy import TcpProxy

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


def test_expired_lease_is_taken_over_by_one_taker(where) -> None:
    url, storage = where
    killed = Lease(url, storage, "update", ttl=0.6)
    killed.owner = "elsewhere:1:killed"  # another host's: judged by its expiry alone
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
    killed2.owner = "elsewhere:2:killed"
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
    with pytest.raises(LeaseLost, match="lost the lease"):
        holder.check()
    holder.release()
    assert thief.read()[0]["owner"] == thief.owner  # release never deletes another's lease


def test_an_expired_lease_of_a_live_process_of_this_host_is_not_taken_over(where) -> None:
    """A holder whose heartbeat stalled may still be writing: while its process lives on this host, its
    lease is refused even expired (another host's expired lease is taken over, as above)."""
    url, storage = where
    stalled = Lease(url, storage, "run", ttl=0.6)
    stalled.acquire()
    stalled._stop.set()  # the heartbeat stops; the process (this one) lives on
    stalled._thread.join()
    time.sleep(0.8)
    assert stalled.read()[0]["expires"] < time.time()
    with pytest.raises(LeaseHeld, match=r"held by .* expired \d+ s ago, but its process is alive on this host"):
        Lease(url, storage, "update").acquire()
    assert stalled.read()[0]["owner"] == stalled.owner
    stalled.release()


@pytest.fixture
def cut_s3(s3_endpoint: str, tmp_path: Path) -> Iterator[tuple[str, StorageConfig, TcpProxy]]:
    """A bucket on the S3 server reached through a TCP proxy the test can cut; storage requests are not
    retried by botocore (retries=0), so each cut request fails at once."""
    proxy = TcpProxy(s3_endpoint)
    bucket = f"cut-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/run", StorageConfig(endpoint_url=proxy.url, retries=0), proxy
    proxy.close()


def test_heartbeat_survives_a_storage_outage_shorter_than_the_lease(cut_s3) -> None:
    """The endpoint is down from before the first heartbeat (a third into the lease) until a third of the
    lease is left: the heartbeat's failed tries are retried, and it renews once the endpoint is back."""
    url, storage, proxy = cut_s3
    holder = Lease(url, storage, "run", ttl=12.0)  # long enough for a loaded machine's delays
    holder.acquire()
    proxy.cut()
    assert time.time() < holder.expires - 8.0, "the outage must begin before the first heartbeat"
    time.sleep(max(0.0, holder.expires - 4.0 - time.time()))
    proxy.restore()
    restored = time.time()
    while holder.read()[0]["heartbeat"] < restored and time.time() < restored + 5:
        time.sleep(0.1)
    assert holder.lost is None and holder._thread.is_alive()
    held = holder.read()[0]
    assert held["owner"] == holder.owner and held["heartbeat"] > restored  # renewed after the outage
    holder.check()
    holder.release()


def test_storage_outage_longer_than_the_lease_loses_it(cut_s3) -> None:
    url, storage, proxy = cut_s3
    holder = Lease(url, storage, "run", ttl=2.0)
    holder.acquire()
    proxy.cut()
    deadline = holder.expires + 3
    while holder.lost is None and time.time() < deadline:
        time.sleep(0.1)
    assert holder.lost is not None, "the heartbeat must mark the lease lost"
    assert time.time() >= holder.expires - 0.5  # not before it would expire
    assert holder.lost.startswith(f"{url}: lost the lease (it could not be renewed before it expired")
    proxy.restore()
    with pytest.raises(LeaseLost, match=f"{url}: lost the lease"):
        holder.check()
    holder.release()


def test_a_lease_this_process_could_not_release_is_taken_over_by_its_next_command(cut_s3, capsys) -> None:
    """A command that ends while the store is down cannot delete its lease (one line says so); the same
    process's next command takes it over at once: its holder, this process's Lease, is gone."""
    url, storage, proxy = cut_s3
    first = Lease(url, storage, "run", ttl=60.0)
    first.acquire()
    proxy.cut()
    first.release()
    assert "could not release" in capsys.readouterr().err
    proxy.restore()
    assert first.read()[0]["owner"] == first.owner and first.read()[0]["expires"] > time.time()
    with Lease(url, storage, "update") as second:
        assert second.read()[0]["owner"] == second.owner


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


@pytest.mark.timeout(300)
def test_a_lost_lease_stops_run_with_one_line_and_exit_3(tmp_path: Path, ray_local: None,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Another writer takes lease.json over as soon as `run` has recorded its config: the run's next
    commit is refused (the embed stage's first, or its first part written by a Ray worker), and `run`
    ends with one line and exit 3. Nothing but the config is committed, and the other's lease stays."""
    import json
    import threading

    import yaml

    from scaleclust.cli import main
    from tests.conftest import tiny_config
    from tests.shards import write_synthetic_shards

    write_synthetic_shards(tmp_path / "shards", 2, 8)
    run_dir = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tiny_config(str(run_dir), str(tmp_path / "shards" / "*.tar")).model_dump(mode="json")))
    thief = {"owner": "elsewhere:1:thief", "command": "update", "heartbeat": 0, "expires": time.time() + 3600}

    def take_over() -> None:
        deadline = time.time() + 240
        while not (run_dir / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.001)
        (run_dir / "lease.tmp").write_text(json.dumps(thief))
        (run_dir / "lease.tmp").replace(run_dir / "lease.json")

    thread = threading.Thread(target=take_over, daemon=True)
    thread.start()
    capsys.readouterr()
    code = main(["run", str(config)])
    thread.join()
    err = capsys.readouterr().err
    assert code == 3, err
    said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("scaleclust:")]
    assert said == [f"scaleclust: {run_dir}: lost the lease (lease.json now names elsewhere:1:thief (update)); "
                    "stopped before the next commit, run the command again to resume"], err
    assert "Traceback" not in err
    assert json.loads((run_dir / "lease.json").read_text()) == thief  # release leaves another's lease alone
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert written == ["config.yaml", "lease.json"], written


def test_a_commit_in_a_ray_worker_checks_the_lease(tmp_path: Path, ray_local: None) -> None:
    """The run directory a stage hands to its Ray tasks carries the lease's holder: a commit there
    succeeds while the lease is the command's and is refused once another owns it."""
    import json

    import ray

    from scaleclust.rundir import RunDir

    with Lease(str(tmp_path / "run"), StorageConfig(), "embed") as lease:
        run = RunDir(str(tmp_path / "run"), StorageConfig()).held(lease.holder)
        commit = ray.remote(num_cpus=0.25)(lambda run, n: run.write_marker(run.path(f"{n}.done.json"), {"n": n}))
        ray.get(commit.remote(run, 1))
        (tmp_path / "run" / "lease.json").write_text(json.dumps({"owner": "elsewhere:1:thief", "expires": 2e9}))
        with pytest.raises(LeaseLost, match="lost the lease .*elsewhere:1:thief"):
            ray.get(commit.remote(run, 2))
    assert (tmp_path / "run" / "1.done.json").exists() and not (tmp_path / "run" / "2.done.json").exists()
