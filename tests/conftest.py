"""Shared fixtures: one local Ray for the session, a real S3 server on loopback, tiny-model configs.

Fake AWS credentials are set before Ray starts so that Ray workers inherit them; they only ever reach
the moto server on 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}.items():
    os.environ[name] = value

# Ray's loggers (ray.data's too) bind their stream when first imported. Imported here, at collection, that is the
# session's stream, not the capsys stream of whichever test imports ray first, which is closed after it.
import ray.data  # noqa: E402,F401

from scaleclust.config import Config, from_dict  # noqa: E402
from tests.shards import write_synthetic_shards  # noqa: E402


@contextmanager
def private_ray_env() -> Iterator[dict[str, str]]:
    """Environment for a CLI subprocess whose Ray lives under its own temp dir. A test that SIGKILLs
    the driver orphans Ray's daemons (they run in their own sessions); on exit, every process whose
    command line names that dir is killed, so nothing outlives the test."""
    folder = tempfile.mkdtemp(prefix="scr", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        yield {**os.environ, "RAY_TMPDIR": folder}
    finally:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and folder.encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue
        shutil.rmtree(folder, ignore_errors=True)


def rejected_before_ray(tmp_path: Path, job: dict[str, Any], timeout: float) -> str:
    """Run `scaleclust run` on `job` (written to tmp_path/job.yaml) in a subprocess with a private Ray
    dir; assert it exits 2 with no Ray started and no run directory written; return its stderr."""
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with private_ray_env() as env:
        done = subprocess.run([sys.executable, "-m", "scaleclust.cli", "run", str(tmp_path / "job.yaml")],
                              capture_output=True, text=True, timeout=timeout, env=env)
        ray_dirs = list(Path(env["RAY_TMPDIR"]).iterdir())
    assert done.returncode == 2, done.stderr[-2000:]
    assert ray_dirs == [], "Ray started before the config was rejected"
    assert not Path(job["run_dir"]).exists()
    return done.stderr


def kill_when_present(proc: subprocess.Popen, folder: Path, pattern: str, timeout: float = 300,
                      settle: float = 0.0) -> None:
    """SIGKILL a CLI subprocess's process group (started with start_new_session) as soon as `folder`
    holds a file matching `pattern` (then `settle` seconds later): a kill that lands mid-stage."""
    deadline = time.time() + timeout
    while time.time() < deadline and not list(folder.glob(pattern)):
        assert proc.poll() is None, f"the command ended before {pattern} appeared, so it could not be killed"
        time.sleep(0.1)
    time.sleep(settle)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) bound to 127.0.0.1 on a free port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


# A 60-noun vocabulary for the label stage: WordNet's 67,893 prompts through even the tiny text tower take
# minutes on a CPU. Every test config that runs the label stage with an open_clip model should use it.
NOUNS = str(Path(__file__).parent / "nouns.txt")


def tiny_config(run_dir: str, shards: list[str] | str, **sections: Any) -> Config:
    """A config for the tiny random-weight open_clip model, sized for 2 CPUs."""
    data: dict[str, Any] = {
        "run_dir": run_dir,
        "input": {"shards": shards, "label_field": "label"},
        "embed": {"model": {"arch": "scaleclust-tiny"}, "batch_size": 32, "cpus_per_actor": 0.5,
                  "decode_cpus": 0.5, "decode_batch": 16},
        "cluster": {"method": "kmeans", "k": 3, "sample_size": 1000, "restarts": 2},
        "label": {"vocabulary": NOUNS},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return from_dict(data)


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    return write_synthetic_shards(tmp_path / "shards", n_shards=3, per_shard=12)


@pytest.fixture
def make_config() -> Callable[..., Config]:
    return tiny_config
