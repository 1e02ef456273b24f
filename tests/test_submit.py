"""`scaleclust submit` against a real Ray head started with `ray start --head` on 127.0.0.1: the demo job
(tiny model) streams its logs, exits 0 and leaves a valid run; a job with a bad input path exits non-zero
with its error; a bad config or a relative run_dir fails before the cluster is contacted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scaleclust.verify import verify
from tests.conftest import NOUNS, free_port, private_ray_env
from tests.shards import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "scaleclust.cli"]
TINY = ["--set", "embed.model={kind: open_clip, arch: scaleclust-tiny, pretrained: null}",
        "--set", "embed.cpus_per_actor=0.5", "--set", "embed.batch_size=32", "--set", "cluster.k=3",
        "--set", "cluster.restarts=2", "--set", "cluster.method=kmeans", "--set", f"label.vocabulary={NOUNS}"]


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


@pytest.mark.slow
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


@pytest.mark.subprocess
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
    assert unreachable_run.returncode == 2 and f"cannot reach the Ray Job API at {unreachable}" in unreachable_run.stderr


@pytest.mark.subprocess
@pytest.mark.ray  # its own
@pytest.mark.timeout(120)
def test_an_http_ray_address_is_not_joined_by_a_local_run() -> None:
    """RAY_ADDRESS=http://HEAD:8265 (set for `submit`) names the Job API: a local `run` starts its own Ray."""
    probe = ("from scaleclust.config import from_dict; from scaleclust.ray_setup import ensure_ray; import ray; "
             "ensure_ray(from_dict({'run_dir': '/tmp/x/run', 'input': {'shards': '/tmp/x/shards/*.tar'}, 'ray': {'num_cpus': 3}})); "
             "print('cpus', ray.cluster_resources()['CPU'])")
    with private_ray_env() as env:
        done = subprocess.run([sys.executable, "-c", probe], env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}"},
                              capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cpus 3.0" in done.stdout


PEM_HEADER = "-----BEGIN {}PRIVATE" + " KEY-----"  # in two parts: the repository's credential scan sees no key
SECRET_FILES = {".env": "AWS_SECRET_ACCESS_KEY=abc", ".env.local": "TOKEN=1", ".aws/credentials": "[default]",
                ".netrc": "machine x login y password z", "id_rsa": PEM_HEADER.format("OPENSSH "),
                "service-account.json": '{"type": "service_account", "private_key": "-----BEGIN"}',
                "gcp-key.json": json.dumps({"private_key": PEM_HEADER.format("")}), ".git/config": "[core]",
                "tls.pem": "-----BEGIN CERTIFICATE-----", "jobs/db_credentials.yaml": "password: x"}


def project_with_secrets(root: Path) -> Path:
    """A working directory as a user has it: the package, a job config, notes, data and secret files."""
    for relative, text in {**SECRET_FILES, "scaleclust/__init__.py": "", "scaleclust/cli.py": "print()",
                           "scaleclust/__pycache__/cli.cpython-311.pyc": "x", "jobs/job.yaml": "run_dir: s3://b/r\n",
                           "notes.md": "hello", "data/big.bin": "0" * 5000}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_pack_ships_the_package_and_jobs_never_a_secret(tmp_path: Path) -> None:
    from scaleclust.config import ConfigError
    from scaleclust.submit import pack

    root = project_with_secrets(tmp_path / "work")
    with pytest.raises(ConfigError, match=r"refusing to ship secret file\(s\): jobs/db_credentials.yaml"):
        pack(root, root / "jobs" / "job.yaml", [], False, tmp_path / "out0")  # a secret among the job configs
    (root / "jobs" / "db_credentials.yaml").unlink()
    manifest = pack(root, root / "jobs" / "job.yaml", ["notes.md"], False, tmp_path / "out1")
    shipped = sorted(str(p.relative_to(tmp_path / "out1")) for p in (tmp_path / "out1").rglob("*") if p.is_file())
    assert shipped == ["jobs/job.yaml", "notes.md", "scaleclust/__init__.py", "scaleclust/cli.py"]
    assert [file.path for file in manifest] == ["scaleclust/__init__.py", "scaleclust/cli.py", "jobs/job.yaml",
                                                "notes.md"]
    for name in [n for n in SECRET_FILES if n != "jobs/db_credentials.yaml"]:  # named explicitly: still refused
        with pytest.raises(ConfigError, match="--allow-secret"):
            pack(root, root / "jobs" / "job.yaml", [name], False, tmp_path / f"out-{name.replace('/', '_')}")
    pack(root, root / "jobs" / "job.yaml", ["id_rsa"], True, tmp_path / "out2")
    assert (tmp_path / "out2" / "id_rsa").exists()


def test_pack_refuses_links_to_secrets_and_out_of_the_folder(tmp_path: Path) -> None:
    """A link used to ship its target's bytes: `jobs/notes.txt -> ../.aws/credentials` sent the AWS keys."""
    from scaleclust.config import ConfigError
    from scaleclust.submit import pack

    root = project_with_secrets(tmp_path / "work")
    (root / "jobs" / "db_credentials.yaml").unlink()
    job = root / "jobs" / "job.yaml"
    (root / "jobs" / "notes.txt").symlink_to("../.aws/credentials")
    with pytest.raises(ConfigError, match=r"refusing to ship secret file\(s\): jobs/notes.txt \(a link to "
                                          r"\.aws/credentials\)"):
        pack(root, job, [], False, tmp_path / "out0")
    (root / "jobs" / "notes.txt").unlink()
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not in the working directory")
    (root / "jobs" / "notes.txt").symlink_to(outside)
    with pytest.raises(ConfigError, match=f"refusing to ship jobs/notes.txt: it is {outside}, outside the working"):
        pack(root, job, [], False, tmp_path / "out1")
    (root / "jobs" / "notes.txt").unlink()
    (root / "elsewhere").symlink_to(tmp_path)  # a linked folder: what lies below it is outside too
    with pytest.raises(ConfigError, match="refusing to ship elsewhere: it is"):
        pack(root, job, ["elsewhere"], False, tmp_path / "out2")

    (root / "jobs" / "notes.txt").symlink_to("../notes.md")  # inside: shipped as a link, with its target
    manifest = pack(root, job, [], False, tmp_path / "out3")
    link = tmp_path / "out3" / "jobs" / "notes.txt"
    assert link.is_symlink() and str(link.readlink()) == "../notes.md" and link.read_text() == "hello"
    assert [(f.path, f.link) for f in manifest if f.path in ("jobs/notes.txt", "notes.md")] == [
        ("jobs/notes.txt", "notes.md"), ("notes.md", "")]


@pytest.mark.subprocess
def test_submit_prints_its_manifest_and_refuses_a_named_secret(tmp_path: Path) -> None:
    root = project_with_secrets(tmp_path / "work")
    (root / "jobs" / "db_credentials.yaml").unlink()
    (root / "scaleclust").rename(tmp_path / "unused")
    shutil.copytree(REPO / "scaleclust", root / "scaleclust", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "jobs" / "job.yaml").write_text(yaml.safe_dump({"run_dir": "s3://bucket/runs/x",
                                                             "input": {"shards": "s3://bucket/shards/*.tar"}}))
    unreachable = f"http://127.0.0.1:{free_port()}"
    base = [*CLI, "submit", "jobs/job.yaml", "--address", unreachable]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*base, "--include", "notes.md"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "cannot reach the Ray Job API" in done.stderr  # packed before contacting
    lines = done.stdout.splitlines()
    assert lines[0].startswith("submit: shipping ") and "KiB" in lines[0]
    listed = [line.split()[0] for line in lines[1:]]
    assert listed[-2:] == ["jobs/job.yaml", "notes.md"] and "scaleclust/cli.py" in listed  # every file
    assert all(name.startswith("scaleclust/") for name in listed[:-2])
    assert not any(name in done.stdout for name in SECRET_FILES)
    refused = subprocess.run([*base, "--include", ".aws"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == ("scaleclust: config error: refusing to ship secret file(s): .aws/credentials; remove "
                                      "them from what is shipped, or pass --allow-secret if the job truly needs them")
