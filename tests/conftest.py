"""Shared fixtures: one local Ray for the session, a real S3 server on loopback, headless Chromium,
tiny-model configs; and the markers that say what a test needs.

Markers (registered in pyproject.toml): `ray`, `s3` and `browser` are added here to every test that uses
the fixture implying them (ray_local, s3_endpoint, chromium; ray_head adds ray and subprocess). A test
that starts a process itself carries `subprocess` (or `ray`/`browser`, which start processes); one
without these markers that starts a process fails, so `make test-fast` (not ray, subprocess, browser)
never starts one. `slow`: about 30 s or more on 2 CPUs.

Fake AWS credentials are set before Ray starts so that Ray workers inherit them; they only ever reach
the moto server on 127.0.0.1.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0",
                    # Ray Train's preemption watcher only logs node drains, and the suite's one node never drains:
                    # without it every fit starts one actor process fewer
                    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
    os.environ[name] = value

# Ray's loggers (ray.data's too) bind their stream when first imported. Imported here, at collection, that is the
# session's stream, not the capsys stream of whichever test imports ray first, which is closed after it.
import ray.data  # noqa: E402,F401

from scaleclust.config import Config, from_dict  # noqa: E402
from tests.browser import CHROMIUM  # noqa: E402
from tests.shards import write_duplicate_shard, write_synthetic_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# What a fixture implies a test needs.
FIXTURE_MARKERS = {"ray_local": ("ray",), "s3_endpoint": ("s3",), "chromium": ("browser",),
                   "ray_head": ("ray", "subprocess")}
# Markers under which a test may start processes (Ray's daemons and workers, Chromium, the CLI).
STARTS_PROCESSES = ("subprocess", "ray", "browser")
REQUIRE_BROWSER = "SCALECLUST_REQUIRE_BROWSER"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers from fixtures; then the modules that hold a slow test first, each module's tests together and in
    their order. Under pytest-xdist (`--dist worksteal`) the two processes then end on short tests and finish
    within seconds of each other, rather than one waiting minutes for the other's last slow test."""
    for item in items:
        for fixture, markers in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                for marker in markers:
                    item.add_marker(marker)
    slow = {item.nodeid.partition("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.partition("::")[0] not in slow)  # stable: the order within each group


def _started_by_us() -> bool:
    """Whether the process being started comes from the suite or the project (the nearest caller outside the
    standard library's subprocess module is under tests/, scaleclust/, benchmarks/ or jobs/), not from a
    library's own probe (joblib counting cores, matplotlib asking fontconfig)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == subprocess.__file__:
        frame = frame.f_back
    return frame is not None and any(Path(frame.f_code.co_filename).resolve().is_relative_to(REPO / folder)
                                     for folder in ("tests", "scaleclust", "benchmarks", "jobs"))


@pytest.fixture(autouse=True)
def _processes_only_where_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test without a marker that allows processes fails if it starts one or starts Ray (test-fast's
    promise): the suite's and the package's process starts are refused as they happen."""
    if any(request.node.get_closest_marker(name) for name in STARTS_PROCESSES):
        yield
        return
    import ray

    popen = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        if _started_by_us():
            raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}) but is not marked subprocess "
                                 "(or ray/browser): mark it, so that `make test-fast` leaves it out")
        popen(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    ray_was_up = ray.is_initialized()
    yield
    assert ray_was_up or not ray.is_initialized(), \
        f"{request.node.nodeid} started Ray but is not marked ray: use the ray_local fixture"


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
                      settle: float = 0.0, until: Callable[[list[Path]], Any] | None = None) -> None:
    """SIGKILL a CLI subprocess's process group (started with start_new_session) as soon as `folder`
    holds a file matching `pattern` (for which `until(files)` holds, when given; then `settle` seconds
    later): a kill that lands mid-stage."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ((found := list(folder.glob(pattern))) and (until is None or until(found))):
        assert proc.poll() is None, f"the command ended before {pattern} appeared, so it could not be killed"
        time.sleep(0.1)
    time.sleep(settle)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def joined_slow_train_env(poll_seconds: float = 6.0) -> dict[str, str]:
    """The environment of a CLI subprocess whose Ray Train fit a test kills mid-training: it joins the
    session's Ray (RAY_ADDRESS, as a job's driver joins its cluster; its death ends its job), and its Train
    controller polls the workers every `poll_seconds`. A worker uploads a checkpoint, then waits for the
    poll that takes its previous report (a queue of one), so the last of m checkpoints cannot be uploaded
    before (m - 3) polls after the first: the kill lands mid-training even when a loaded machine delays the
    test's watch by seconds (a refit of 4 checkpoints: one poll). At the fit's own
    0.5 s a small fit's steps take a second or two, and a kill that came after the last checkpoint left
    the re-run nothing to resume."""
    import ray

    from scaleclust.train.loop import POLL_ENV

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, POLL_ENV: str(poll_seconds)}


def checkpoint_steps(train_dir: Path, runs: str = "*") -> list[int]:
    """The steps of the checkpoints of the Train runs `runs` (a glob) under train_dir whose state file
    loads whole (a kill may cut one short), in order."""
    import torch

    from scaleclust.train.loop import UNREADABLE

    steps = []
    for state in train_dir.glob(f"{runs}/checkpoint_step_*/state.pt"):
        try:
            steps.append(int(torch.load(state, weights_only=True)["step"]))
        except UNREADABLE:
            continue
    return sorted(steps)


def a_state_loads(files: list[Path]) -> bool:
    """Whether one of the checkpoint state files loads whole: kill_when_present's `until` for a kill after a
    complete checkpoint (a state file appears when its upload starts, and a kill then can cut it short)."""
    import torch

    from scaleclust.train.loop import UNREADABLE

    for path in files:
        try:
            torch.load(path, weights_only=True)
            return True
        except UNREADABLE:
            continue
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's local Ray. Its workers' temp folder (TMPDIR) is the session's own, which it yields:
    what a worker leaves there is this session's, even with another pytest process beside it."""
    import ray

    workers_tmp = tmp_path_factory.mktemp("ray-workers-tmp")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TMPDIR": str(workers_tmp)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield workers_tmp
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


@pytest.fixture(scope="module")
def ray_head(s3_endpoint: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head (`ray start --head`) on loopback with the Job API, for `scaleclust submit`; its jobs reach
    the session's S3 server through AWS_ENDPOINT_URL, as pods do on Kubernetes. Torn down (every process
    under its temp dir) after the module."""
    with private_ray_env() as env:
        env = {**env, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
               "AWS_ENDPOINT_URL": s3_endpoint}
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


CHROMIUM_LINE = sys._getframe().f_lineno + 3  # where the browser tests' skip is reported


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the report's browser tests: skipped where it is absent, unless
    SCALECLUST_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM}, so the report's browser tests did not run (.ci/run installs Debian's chromium)"
    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{reason}; {REQUIRE_BROWSER}=1 requires them", pytrace=False)
    pytest.skip(f"{reason}; {REQUIRE_BROWSER}=1 makes this a failure")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Browser tests skipped for want of Chromium are reported at the fixture, so that the summary at the end
    (-ra) says why in one line for all of them."""
    report = yield
    if report.skipped and item.get_closest_marker("browser") and isinstance(report.longrepr, tuple):
        report.longrepr = (__file__, CHROMIUM_LINE, report.longrepr[2])
    return report


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


# The suite's one embedded and indexed run. A test that only needs committed embeddings (or an index) as its
# input copies it (copy_shared) instead of embedding its own: embedding starts Ray Data's decode tasks and
# encoder actors, which cost seconds per run on 2 CPUs.
SHARED_SHARDS, SHARED_PER_SHARD = 4, 30  # 00000..00003.tar: the three classes of tests/shards.py
SHARED_INDEX = {"nlist": 4, "nprobe": 2, "shards_per_searcher": 2, "k": 5, "queries": 60, "recall_queries": 40}


@dataclass(frozen=True)
class SharedRun:
    folder: Path  # shards/ (the tars and dups.tar's originals as JPEGs) and run/, never written after the fixture
    pairs: list[tuple[str, str]]  # dups.tar's (original, near-duplicate copy) keys
    index: dict[str, Any]  # what the index stage returned when it built the index
    rows: int  # embedded rows: every image of the shards

    def copy(self, dest: Path) -> Path:
        """The shards and the run under dest (dest/shards, dest/run); the run's config.yaml names the copies."""
        shutil.copytree(self.folder / "shards", dest / "shards")
        shutil.copytree(self.folder / "run", dest / "run")
        config = dest / "run" / "config.yaml"
        record = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump(_moved(record, f"{self.folder}/", f"{dest}/"), sort_keys=False))
        return dest


def _moved(node: Any, old: str, new: str) -> Any:
    """node with every string that starts with `old` starting with `new` instead."""
    if isinstance(node, dict):
        return {key: _moved(value, old, new) for key, value in node.items()}
    if isinstance(node, list):
        return [_moved(value, old, new) for value in node]
    return new + node[len(old):] if isinstance(node, str) and node.startswith(old) else node


def build_shared_run(folder: Path) -> SharedRun:
    """The shared run's shards and run directory under folder: embedded and indexed here, on this process's Ray."""
    from scaleclust.pipeline import prepare, run_stage

    write_synthetic_shards(folder / "shards", SHARED_SHARDS, SHARED_PER_SHARD)
    pairs = write_duplicate_shard(folder / "shards")
    cfg = tiny_config(str(folder / "run"), str(folder / "shards" / "*.tar"), index=SHARED_INDEX)
    ctx = prepare(cfg)
    run = ctx.run
    run_stage("embed", ctx)
    index = run_stage("index", ctx)
    rows = sum(m["embedded"] for m in run.committed("embeddings").values())
    assert rows == SHARED_SHARDS * SHARED_PER_SHARD + 2 * len(pairs)
    return SharedRun(folder, pairs, index, rows)


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory: pytest.TempPathFactory, ray_local: Path) -> SharedRun:
    """SHARED_SHARDS x SHARED_PER_SHARD synthetic images and dups.tar (planted near-duplicates), embedded by
    the tiny model and indexed (SHARED_INDEX), once per `make test`: under pytest-xdist the first process to
    need it builds it in the folder above the processes' own (holding a lock there) and records it; the other
    waits for the lock and reads the record. Embedding it costs tens of seconds on 2 CPUs, which the second
    process spends running its other tests' share instead. The tiny model's weights are seeded, so both
    processes' encoders agree with it. Copy it (SharedRun.copy); never write to it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build_shared_run(tmp_path_factory.mktemp("shared"))
    root = tmp_path_factory.getbasetemp().parent  # this xdist run's, above each process's own basetemp
    record = root / "shared.json"
    with open(root / "shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, and when a process dies holding it
        if not record.exists():
            built = build_shared_run(Path(tempfile.mkdtemp(prefix="shared-", dir=root)))
            record.write_text(json.dumps({"folder": str(built.folder), "pairs": built.pairs, "index": built.index,
                                          "rows": built.rows}))
    data = json.loads(record.read_text())
    return SharedRun(Path(data["folder"]), [tuple(pair) for pair in data["pairs"]], data["index"], data["rows"])


def readme_example() -> str:
    """The code block of README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@dataclass(frozen=True)
class FinishedRun:
    shared: SharedRun  # its folder holds shards/, run/ (every stage done) and jobs/demo.yaml; never written after
    names: dict[str, Any]  # the README example's variables
    printed: str  # what the example printed

    def copy(self, dest: Path) -> Config:
        """The run and its shards copied under dest (SharedRun.copy); the config it was run with, naming the copy."""
        self.shared.copy(dest)
        return tiny_config(str(dest / "run"), str(dest / "shards" / "*.tar"), index=SHARED_INDEX)


@pytest.fixture(scope="session")
def finished_run(shared_run: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """The suite's one finished run: README's Python API example run verbatim (every stage the config needs,
    as `scaleclust run` does) in a folder whose jobs/demo.yaml is a tiny config (SHARED_INDEX) over a copy of
    the shared embedded run, once per session. A test that only reads a finished run reads this one; one that
    writes to it works on a copy (FinishedRun.copy), instead of fitting, assigning, naming and reporting
    a copy of the shared run of its own (5-10 s each on a busy 2-CPU machine)."""
    folder = shared_run.copy(tmp_path_factory.mktemp("finished"))
    cfg = tiny_config(str(folder / "run"), str(folder / "shards" / "*.tar"), index=SHARED_INDEX)
    (folder / "jobs").mkdir()
    (folder / "jobs" / "demo.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    names: dict[str, Any] = {}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(printed):
        patch.chdir(folder)
        exec(compile(readme_example(), str(README), "exec"), names)
    return FinishedRun(replace(shared_run, folder=folder), names, printed.getvalue())
