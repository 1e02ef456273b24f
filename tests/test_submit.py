"""`scaleclust submit` against a real Ray head started with `ray start --head` on 127.0.0.1: the demo job
(tiny model) streams its logs, exits 0 and leaves a valid run; a job with a bad input path exits non-zero
with its error; a bad config or a relative run_dir fails before the cluster is contacted."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaleclust.verify import verify
from tests.conftest import free_port, private_ray_env
from tests.shards import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "scaleclust.cli"]
TINY = ["--set", "embed.model={kind: open_clip, arch: scaleclust-tiny, pretrained: null}",
        "--set", "embed.cpus_per_actor=0.5", "--set", "embed.batch_size=32", "--set", "cluster.k=3",
        "--set", "cluster.restarts=2"]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head on loopback with the Job API; torn down (every process under its temp dir) after."""
    with private_ray_env() as env:
        env = {**env, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
        env.pop("RAY_ADDRESS", None)
        dashboard = free_port()
        ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
        subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                        "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=4",
                        f"--temp-dir={env['RAY_TMPDIR']}", "--disable-usage-stats",
                        *[f"{flag}={port}" for flag, port in ports.items()]],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"http://127.0.0.1:{dashboard}", env


def submit(address: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "submit", "jobs/demo.yaml", "--address", address, *TINY, *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.timeout(600)
def test_submitted_demo_job_streams_logs_and_exits_with_its_status(ray_head, tmp_path: Path) -> None:
    address, env = ray_head
    write_synthetic_shards(tmp_path / "shards", n_shards=3, per_shard=12)
    done = submit(address, env, "--set", f"input.shards={tmp_path / 'shards'}/*.tar",
                  "--set", f"run_dir={tmp_path / 'run'}", "--job-id", "demo-ok")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submitted demo-ok" in done.stdout
    assert "rows 36: embedded 36, skipped 0" in done.stdout  # the job's own output, streamed back
    assert "job demo-ok: SUCCEEDED" in done.stdout
    assert verify(str(tmp_path / "run"), deep=True) == []

    status = subprocess.run([*CLI, "status", "demo-ok", "--address", address], env=env, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = subprocess.run([*CLI, "logs", "demo-ok", "--address", address], env=env, capture_output=True,
                          text=True, timeout=60)
    assert "rows 36: embedded 36" in logs.stdout


@pytest.mark.timeout(400)
def test_failing_job_exits_non_zero_with_its_error(ray_head, tmp_path: Path) -> None:
    address, env = ray_head
    done = submit(address, env, "--set", f"input.shards={tmp_path / 'missing'}/*.tar",
                  "--set", f"run_dir={tmp_path / 'run'}", "--job-id", "demo-bad-input")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "job demo-bad-input: FAILED" in done.stderr
    assert str(tmp_path / "missing") in done.stdout  # the job's error, naming the path, in the streamed logs
    status = subprocess.run([*CLI, "status", "demo-bad-input", "--address", address], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "FAILED" in status.stderr


def test_bad_configs_fail_before_contacting_the_cluster(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: reaching it would fail differently
    env = {**os.environ, "RAY_ADDRESS": ""}
    relative = subprocess.run([*CLI, "submit", "jobs/demo.yaml", "--address", unreachable], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    assert relative.returncode == 2 and "run_dir: 'runs/demo' is a relative local path" in relative.stderr
    unknown = subprocess.run([*CLI, "submit", "jobs/demo.yaml", "--address", unreachable, "--set", "cluster.kk=3"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "cluster.kk" in unknown.stderr
    outside = tmp_path / "job.yaml"
    outside.write_text((REPO / "jobs" / "demo.yaml").read_text())
    moved = subprocess.run([*CLI, "submit", str(outside), "--address", unreachable, "--set", f"run_dir={tmp_path}/run",
                            "--set", f"input.shards={tmp_path}/shards/*.tar"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60)
    assert moved.returncode == 2 and "outside the working directory" in moved.stderr
    unreachable_run = subprocess.run([*CLI, "submit", "jobs/demo.yaml", "--address", unreachable,
                                      "--set", f"run_dir={tmp_path}/run", "--set", f"input.shards={tmp_path}/shards/*.tar"],
                                     cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert unreachable_run.returncode == 1 and f"cannot reach the Ray Job API at {unreachable}" in unreachable_run.stderr


@pytest.mark.timeout(120)
def test_an_http_ray_address_is_not_joined_by_a_local_run() -> None:
    """RAY_ADDRESS=http://HEAD:8265 (set for `submit`) names the Job API: a local `run` starts its own Ray."""
    probe = ("from scaleclust.config import from_dict; from scaleclust.ray_setup import ensure_ray; import ray; "
             "ensure_ray(from_dict({'run_dir': '/tmp/x', 'input': {'shards': '/tmp/x/*.tar'}, 'ray': {'num_cpus': 3}})); "
             "print('cpus', ray.cluster_resources()['CPU'])")
    with private_ray_env() as env:
        done = subprocess.run([sys.executable, "-c", probe], env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}"},
                              capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cpus 3.0" in done.stdout
