"""What the CLI prints when something goes wrong: one line for a user's mistake (missing credentials, a
Ray head that wants a token, a folder that is no run directory, a --set value that is no YAML), the
traceback too with --verbose, and a full traceback with exit 4 for anything else, which is a bug."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml

from scaleclust import cli
from scaleclust.cli import main
from tests.conftest import REPO, free_port
from tests.shards import write_synthetic_shards


def ours(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("scaleclust")]


def test_a_bug_shows_its_traceback_and_exit_4(tmp_path: Path, monkeypatch, capsys) -> None:
    """OSError, ValueError, LookupError and RuntimeError used to count as expected: a bug raising one
    printed one line and no traceback."""
    for bug in (KeyError("shard"), OSError("[Errno 9] Bad file descriptor"), RuntimeError("index out of step")):
        def broken(args, bug=bug) -> int:
            raise bug

        monkeypatch.setattr(cli, "cmd_versions", broken)
        assert main(["versions", str(tmp_path)]) == 4
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in broken\n    raise bug" in err
        assert ours(err) == [f"scaleclust: internal error {type(bug).__name__}: a bug in scaleclust, not in the "
                             "input: please report it with the traceback above"]


def test_a_file_deleted_while_a_command_read_it_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """The fault campaign deleted a committed embeddings file while `update` assigned it: the read's
    FileNotFoundError, under the stage's wrapping, printed as a bug. It is one line and exit 1: running the
    command again (once the object is back, or from the stage that writes it) ends it."""
    def reads_a_deleted_file(args) -> int:
        try:
            raise FileNotFoundError("bucket/run/embeddings/00003.parquet")
        except FileNotFoundError as err:
            raise RuntimeError("UDF failed to process a data block") from err

    monkeypatch.setattr(cli, "cmd_versions", reads_a_deleted_file)
    assert main(["versions", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ours(err) == ["scaleclust: a file it reads is gone (bucket/run/embeddings/00003.parquet); run the command "
                         "again (scaleclust verify RUN says what a run directory lacks)  (--verbose shows the traceback)"]


SHARD_TASK_DELETION = """
from scaleclust.cli import as_user_error
from scaleclust.parallel import map_shards
import ray

ray.init(address="auto")

def reads_a_deleted_file(item):
    raise FileNotFoundError(f"bucket/run/embeddings/{item['shard']}.parquet")

try:
    list(map_shards(reads_a_deleted_file, [{"shard": "00002"}], num_cpus=0.5))
except Exception as err:
    explained = as_user_error(err)
    print(type(explained).__name__, explained)
"""


@pytest.mark.ray
@pytest.mark.subprocess
@pytest.mark.usefixtures("ray_local")
def test_a_file_deleted_under_a_shard_task_is_explained() -> None:
    """The same deletion inside a Ray worker (assign's and summary's per-shard tasks): what the worker
    raised must still be found behind the task's error once it is back in the driver, or the CLI prints
    a bug's traceback (the fault campaign's summary stage did, with a file deleted mid-read); and Ray
    Data must not log a traceback of its own beside the CLI's one line. A driver process of its own, on
    the session's Ray, so its output is what a command's is."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SHARD_TASK_DELETION], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip().splitlines()[-1] == (
        "Vanished a file it reads is gone (bucket/run/embeddings/00002.parquet); run the command again "
        "(scaleclust verify RUN says what a run directory lacks)")
    assert "Traceback" not in done.stderr + done.stdout


def test_versions_of_a_folder_that_is_no_run(tmp_path: Path, capsys) -> None:
    assert main(["versions", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and ours(out.err) == [f"scaleclust: {tmp_path}: not a run directory (no config.yaml)  "
                                               "(--verbose shows the traceback)"]
    assert "Traceback" not in out.err
    assert main(["versions", str(tmp_path), "--verbose"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def job(tmp_path: Path) -> Path:
    write_synthetic_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                    "input": {"shards": str(tmp_path / "shards" / "00000.tar")}}))
    return path


def test_set_takes_a_plain_string_when_the_value_is_no_yaml(tmp_path: Path, capsys) -> None:
    """`*.tar` starts a YAML alias: it used to end in yaml's traceback."""
    path = job(tmp_path)
    assert main(["plan", str(path), "--json", "--set", f"input.shards={tmp_path / 'shards'}/*.tar"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 2
    for command in ("plan", "run"):
        assert main([command, str(path), "--set", "cluster.k=[3"]) == 2
        err = capsys.readouterr().err
        assert len(ours(err)) == 1 and "cluster.k" in err and "'[3'" in err and "Traceback" not in err


def test_a_config_read_from_a_pipe(tmp_path: Path, capsys) -> None:
    """`scaleclust plan <(cat job.yaml)`: the shell passes /dev/fd/N, a pipe, not a file."""
    text = job(tmp_path).read_bytes()
    read, write = os.pipe()
    os.write(write, text)
    os.close(write)
    try:
        assert main(["plan", f"/dev/fd/{read}"]) == 0
    finally:
        os.close(read)
    assert str(tmp_path / "run") in capsys.readouterr().out


@pytest.mark.parametrize("command", ["plan", "run"])
def test_missing_aws_credentials_are_one_line(tmp_path: Path, monkeypatch, capsys, command: str) -> None:
    """jobs/laion.yaml's s3:// URLs with no credentials anywhere (the endpoint on loopback: nothing is
    sent without credentials); botocore's NoCredentialsError used to print some 60 lines."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    argv = [command, str(REPO / "jobs" / "laion.yaml"), "--set", f"storage.endpoint_url=http://127.0.0.1:{free_port()}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ours(err) == ["scaleclust: no usable AWS credentials (Unable to locate credentials): set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a credentials file "
                         "(AWS_SHARED_CREDENTIALS_FILE), or pass --set storage.anon=true for a public bucket  "
                         "(--verbose shows the traceback)"], err
    assert "Traceback" not in err


def test_an_unreachable_storage_endpoint_is_one_line(capsys) -> None:
    port = free_port()  # nothing listens there
    assert main(["plan", str(REPO / "jobs" / "laion.yaml"), "--set", f"storage.endpoint_url=http://127.0.0.1:{port}",
                 "--set", "storage.retries=0"]) == 2
    err = capsys.readouterr().err
    assert ours(err) == [f"scaleclust: cannot reach the storage endpoint http://127.0.0.1:{port} "
                         "(EndpointConnectionError); check storage.endpoint_url (or AWS_ENDPOINT_URL) and that the "
                         "server is up  (--verbose shows the traceback)"], err


# The Job API's authentication as a token-auth Ray head serves it: Ray's own middleware, on loopback.
TOKEN_SERVER = """
import sys
import aiohttp
from aiohttp import web
from ray._private.authentication.http_token_authentication import get_token_auth_middleware

async def version(request):
    return web.json_response({"version": "4", "ray_version": "2.60.0", "ray_commit": "-"})

app = web.Application(middlewares=[get_token_auth_middleware(aiohttp)])
app.router.add_get("/api/version", version)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@pytest.mark.subprocess
def test_a_ray_head_that_wants_a_token_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    port = free_port()
    token = "0123456789abcdef0123456789abcdef"
    server = subprocess.Popen([sys.executable, "-c", TOKEN_SERVER, str(port)], stderr=subprocess.DEVNULL,
                              env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    try:
        address = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
            try:
                assert b'"version": "4"' in urllib.request.urlopen(request, timeout=5).read()  # with the token: in
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the token server did not start"
                time.sleep(0.3)
        monkeypatch.chdir(REPO)
        monkeypatch.setenv("RAY_ADDRESS", "")
        code = main(["submit", "jobs/demo.yaml", "--address", address, "--set", f"run_dir={tmp_path}/run",
                     "--set", f"input.shards={tmp_path}/shards/*.tar"])
    finally:
        server.kill()
        server.wait()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ours(err) == ["scaleclust: the Ray cluster requires a token (Authentication required: Unauthorized: "
                         "Missing authentication token): set RAY_AUTH_TOKEN, or put the token in ~/.ray/auth_token "
                         "(or the file RAY_AUTH_TOKEN_PATH names); see docs/operations.md, token authentication  "
                         "(--verbose shows the traceback)"], err
