"""A seeded fault campaign: the whole pipeline and nightly updates on a real S3 server, under faults.

    PYTHONPATH=. python benchmarks/chaos.py            # full form: 50 faults of every kind, 4 nights
    PYTHONPATH=. python benchmarks/chaos.py --short    # a handful of faults (the suite runs this)

What it runs: moto's S3 server on 127.0.0.1 behind a small TCP proxy, one private Ray head (its own
RAY_TMPDIR, torn down at the end), small synthetic shards (tests/shards.py) and the tiny random-weight
model. Night 0 is `scaleclust run`; every later night uploads new shards and runs `scaleclust update`
(the full form's three: version 1, an update without a refit, one with; update.every_n is 2). Each
command is a CLI subprocess (so a SIGKILL of the driver is real) and is re-run until it exits 0.

How faults are aimed: each night takes an even share of the faults left, and every attempt of the
night gets one fault of each kind with some share left. The driver kill's target stage is drawn first
(the attempt ends there), then the other kinds' at or before it, each kind's least-hit stages likeliest
(so short stages such as summary, label and report get their share); two outages in three go just
before the kill, in its stage (one earlier stalls the attempt and, outlasting the lease, ends it before
the kill lands: another attempt). A fault fires a seeded delay after the attempt's output first names
its stage (commands run unbuffered; every stage prints a line as it starts), the delay drawn within
that stage's duration in the last attempt that ran it. Kind, stage, delay, target and duration all come
from --seed; where a fault lands still depends on the machine's speed, and it is counted in the stage
it landed in. The only pair never aimed at is worker_kill @ start: before its first stage a command
runs no Ray task (nor is update's fit, which only finds the model `run` committed).
- driver_kill: SIGKILL of the command's process group;
- worker_kill: SIGKILL of a busy Ray worker (a `ray::` process under the head's raylet);
- s3_outage: the proxy refuses new connections (listener closed) or drops them (accepted, then reset)
  and cuts the open ones, for 5-30 s, mostly short (5 + 25 u^6 s, mean 8.6 s; restarting moto would
  wipe its in-memory state);
- delete_restore: an input shard or a committed object of the run directory deleted, and put back
  1-5 s later unless something wrote it meanwhile;
- second_writer: another command writing the same run directory (`update`, `run`, `embed`, `assign`),
  started while the first holds the lease.
Nothing waits a fixed time: the Ray head stays up for the whole campaign, a re-run starts as soon as
its attempt exits (or, after an outage, when less is left of it than half a command's start), but
after any second writer still running: with the attempt gone it takes the lease over, and a re-run
beside it would only be refused. It prints each fault as it lands and, at the end, faults injected
(and lost) per stage and kind.

What it checks, after each night, reading the bucket itself with boto3 and pyarrow (never scaleclust's
verify, except `scaleclust verify --deep` run as a command):
- every input key exactly once in embeddings ∪ errors (and, the shards being clean, no key in errors);
- every embedded key exactly once in the current assignments, and in the latest version's files;
- every complete version whole: its assignment files exist with the rows it names, its model exists;
- `scaleclust verify RUN --deep` exits 0;
- no two writers inside one lease period: lease.json is polled, and a new owner seen while the previous
  owner's process is still alive (and not stopping for the lost lease) is an overlap;
- no traceback in any command's output.
A fault is lost when its attempt printed a traceback, when it let a second writer in, or when the
night it hit broke an invariant or never completed; survived otherwise. Exit 1 when an invariant failed.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers: synthetic shards, the TCP proxy, a private Ray

import boto3  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from tests.conftest import free_port, private_ray_env, tiny_config  # noqa: E402
from tests.shards import write_synthetic_shards  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

KINDS = ("driver_kill", "worker_kill", "s3_outage", "delete_restore", "second_writer")
BUCKET = "chaos"
RUN_PREFIX = "run"
TRACEBACK = "Traceback (most recent call last)"
# What a command prints as it enters each stage (the stage registry's names, and update's drift and refit
# steps): each stage's first line or progress bar starts with `STAGE:`; an update's refit starts after
# `update: refit yes`.
STAGE_LINE = re.compile(r"(?:^|[\r\n])(?:(embed|index|neighbors|fit|assign|summary|label|report|drift|refit):"
                        r"|update: (refit) yes)")
EVERY_N = 2  # update.every_n of the campaign's config: every second update night refits
# The one kind that cannot hit a stage: before the first stage (connecting to Ray, taking the lease) the
# command has no Ray task, so there is no busy worker to kill.
CANNOT = {("worker_kill", "start")}


# ------------------------------------------------------------------------------------------- processes
@dataclass
class Command:
    """One CLI subprocess: its output goes to a file, its process group can be killed."""
    label: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None
    rc: int | None = None

    def start(self) -> "Command":
        self.started = time.time()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self

    def poll(self) -> int | None:
        if self.rc is None and self.proc is not None and self.proc.poll() is not None:
            self.rc, self.ended = self.proc.returncode, time.time()
        return self.rc

    def alive_at(self, t: float) -> bool:
        return self.started <= t and (self.ended is None or self.ended > t)

    def kill(self) -> None:
        if self.proc is not None and self.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process of this machine."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        yield int(entry.name), ppid, cmdline


# Processes under the raylet that are not the job's workers: its agents (the raylet exits when one dies),
# idle workers and Ray's own internal actors (`ray::_StatsActor`, ...).
NOT_WORKERS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_")


def busy_workers(ray_dir: str) -> list[int]:
    """Pids of the head's Ray workers running one of the job's tasks or actors (`ray::NAME`): descendants
    of the raylet started under ray_dir, less NOT_WORKERS."""
    table = list(processes())
    roots = {pid for pid, _, cmd in table if ray_dir in cmd and "raylet" in cmd.split(" ")[0]}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, ppid, _ in table:
        children[ppid].append(pid)
    below, todo = set(), list(roots)
    while todo:
        for child in children[todo.pop()]:
            if child not in below:
                below.add(child)
                todo.append(child)
    return [pid for pid, _, cmd in table if pid in below and cmd.startswith("ray::") and not cmd.startswith(NOT_WORKERS)]


def start_head(env: dict[str, str], tries: int = 6) -> str:
    """`ray start --head` under env's RAY_TMPDIR on loopback; returns its address. Ray gives its raylet
    30 s to register, which a loaded 2-CPU machine can miss: what a failed try started is killed and it
    is tried again."""
    for attempt in range(tries):
        port = free_port()
        ports = {"--port": port, "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--metrics-export-port": free_port(), "--node-manager-port": free_port(),
                 "--object-manager-port": free_port()}
        done = subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head",
                               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--num-cpus=4",
                               "--object-store-memory=200000000", f"--temp-dir={env['RAY_TMPDIR']}",
                               "--disable-usage-stats", *[f"{flag}={value}" for flag, value in ports.items()]],
                              env=env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            return f"127.0.0.1:{port}"
        print(f"chaos: `ray start --head` failed, try {attempt + 1} of {tries}: {last_line(done.stderr)}", flush=True)
        for pid, _, cmd in processes():
            if env["RAY_TMPDIR"] in cmd:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    raise SystemExit(f"chaos: could not start a Ray head in {tries} tries")


# ------------------------------------------------------------------------------------------- the bucket
class Bucket:
    """Direct boto3 access to the S3 server (never through the proxy)."""

    def __init__(self, endpoint: str) -> None:
        self.client = boto3.client("s3", endpoint_url=endpoint)

    def listing(self, prefix: str) -> dict[str, tuple[str, float]]:
        """key -> (ETag, last modified) of every object under prefix."""
        found, token = {}, None
        while True:
            page = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix,
                                               **({"ContinuationToken": token} if token else {}))
            for item in page.get("Contents", []):
                found[item["Key"]] = (item["ETag"], item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def json(self, key: str) -> Any:
        data = self.get(key)
        return None if data is None else json.loads(data)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def exists(self, key: str) -> bool:
        return bool(self.client.list_objects_v2(Bucket=BUCKET, Prefix=key, MaxKeys=1).get("KeyCount"))


def run_key(*parts: str) -> str:
    return "/".join((RUN_PREFIX, *parts))


# ----------------------------------------------------------------------------------------- the campaign
@dataclass
class Fault:
    kind: str
    night: int
    stage: str
    at: float
    attempt: str  # label of the command it hit
    detail: str = ""
    lost: list[str] = field(default_factory=list)  # why, when lost


@dataclass
class Target:
    """A fault aimed at an attempt: fired `delay` seconds after the attempt's output first names `stage`
    (it lands in a later stage when the stage ends sooner, and is counted there)."""
    kind: str
    stage: str
    delay: float
    retry: float = 0.0  # when it could not land yet (no busy worker, lease not yet held): not before this


class LeaseWatch(threading.Thread):
    """Polls lease.json and keeps every owner change: (time seen, owner, command)."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(daemon=True)
        self.bucket, self.changes, self.stop = bucket, [], threading.Event()

    def run(self) -> None:
        last = None
        while not self.stop.wait(0.25):
            try:
                held = self.bucket.json(run_key("lease.json"))
            except Exception:  # noqa: BLE001 - a torn read: poll again
                continue
            owner = held.get("owner") if held else None
            if owner != last:
                self.changes.append((time.time(), owner, held.get("command") if held else None))
                last = owner


class Campaign:
    def __init__(self, args: argparse.Namespace, work: Path, bucket: Bucket, proxy: TcpProxy, env: dict[str, str],
                 ray_address: str) -> None:
        self.args, self.work, self.bucket, self.proxy = args, work, bucket, proxy
        self.rng = random.Random(args.seed)
        self.env = env
        self.left = Counter({kind: args.faults for kind in KINDS})
        self.share: Counter = Counter()  # faults of each kind left for the current night
        self.durations: dict[str, float] = {}  # COMMAND:STAGE -> its duration in the last attempt that left it
        self.aimed: list[str] = []  # COMMAND:STAGE of every stage faults were aimed at, in order
        self.faults: list[Fault] = []
        self.commands: list[Command] = []
        self.night_results: list[dict[str, Any]] = []
        self.pending_restores: list[tuple[float, str, bytes]] = []
        self.outage_until = 0.0
        self.config = work / "chaos.yaml"
        cfg = tiny_config(f"s3://{BUCKET}/{RUN_PREFIX}", f"s3://{BUCKET}/shards/*.tar",
                          storage={"endpoint_url": proxy.url},
                          ray={"address": ray_address},
                          update={"lease_seconds": args.lease_seconds, "refit": "every_n", "every_n": 2})
        # Only the fields set: a dumped default `index:` section would make the index stage wanted.
        self.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True)))
        self.night = 0
        self.deadline = float("inf")
        self.shards_written = 0

    # ------------------------------------------------------------------ helpers
    def cli(self, label: str, *args: str) -> Command:
        command = Command(label, [sys.executable, "-m", "scaleclust.cli", *args],
                          self.work / f"{len(self.commands):04d}-{label}.log", self.env)
        self.commands.append(command)
        return command.start()

    def upload_shards(self, n: int) -> None:
        folder = self.work / "shards"
        for path in write_synthetic_shards(folder, n, self.args.per_shard, first=self.shards_written):
            self.bucket.put(f"shards/{Path(path).name}", Path(path).read_bytes())
        self.shards_written += n

    def stage_now(self, attempt: Command) -> str:
        """The stage the attempt is in: the last stage its output names; `start` before the first
        (connecting to Ray, taking the lease)."""
        named = [stage or refit for stage, refit in STAGE_LINE.findall(attempt.output())]
        return named[-1] if named else "start"

    def command(self) -> str:
        return "run" if self.night == 0 else "update"

    def night_stages(self) -> tuple[str, ...]:
        """The stages the next attempt goes through, in order, `start` first: what faults aim at. The
        first update (version 1, which a second writer's `update` may already have made) runs the
        registry's stages over what `run` committed, so its fit only finds the model committed and is not
        aimed at; later updates drift, and refit and relabel every EVERY_N updates."""
        if self.night == 0:
            return ("start", "embed", "fit", "assign", "summary", "label", "report")
        pointer = self.bucket.json(run_key("versions", "LATEST.json"))
        if pointer is None:
            return ("start", "embed", "assign", "summary", "label", "report")
        latest = self.bucket.json(run_key("versions", pointer["version"], "manifest.json"))
        refit = ("refit",) if latest.get("updates_since_refit", 0) + 1 >= EVERY_N else ()
        return ("start", "embed", "assign", "drift", *refit, "summary", *(("label",) if refit else ()), "report")

    def record(self, kind: str, attempt: Command, detail: str) -> Fault:
        self.left[kind] -= 1
        self.share[kind] -= 1
        fault = Fault(kind, self.night, f"{self.command()}:{self.stage_now(attempt)}", time.time(), attempt.label,
                      detail)
        self.faults.append(fault)
        print(f"  {time.strftime('%H:%M:%S')} {kind:<14} {fault.stage:<16} {detail}", flush=True)
        return fault

    def due_restores(self, force: bool = False) -> None:
        for item in list(self.pending_restores):
            when, key, data = item
            if force or time.time() >= when:
                if not self.bucket.exists(key):
                    self.bucket.put(key, data)
                self.pending_restores.remove(item)

    def end_outage(self, force: bool = False) -> None:
        if not self.proxy.open and (force or time.time() >= self.outage_until):
            self.proxy.restore()

    # ------------------------------------------------------------------ faults
    def plan(self) -> list[Target]:
        """The faults aimed at the next attempt: one of each kind with some left in this night's share (two of
        a kind behind the driver kills). The
        driver kill's stage is drawn first (the attempt ends there) and the others' at or before it, each
        kind's least-hit stages likeliest; each fires a seeded delay after its stage is first named, within
        the stage's last seen duration. Two outages in three go just before the kill, in its stage: an
        outage earlier than the kill stalls the attempt for its whole length and, outlasting the lease,
        ends it before the kill lands (another attempt); the third keeps that case covered."""
        if time.time() >= self.deadline:
            return []
        stages, targets = self.night_stages(), []
        hits = Counter((f.kind, f.stage) for f in self.faults)
        reach, kill = len(stages), None
        kinds = sorted((k for k in KINDS if self.share[k] > 0), key=lambda k: k != "driver_kill")
        # a kind that has fallen behind the kills (a worker kill finds no busy worker, a fault aimed past
        # where an outage ended the attempt) gets a second fault in the attempt, to catch up
        kinds += [k for k in kinds if k not in ("driver_kill", "s3_outage") and self.share[k] > 1
                  and self.left[k] > self.left["driver_kill"]]
        for kind in kinds:
            options = [s for s in stages[:reach] if (kind, s) not in CANNOT]
            if not options:
                continue
            if kind == "s3_outage" and kill is not None and self.rng.random() < 2 / 3:
                targets.append(Target(kind, kill.stage, self.rng.uniform(0, kill.delay)))
                continue
            weights = [1 / (1 + hits[kind, f"{self.command()}:{s}"]) ** 2 for s in options]
            stage = self.rng.choices(options, weights)[0]
            lasts = self.durations.get(f"{self.command()}:{stage}", 1.0)
            targets.append(Target(kind, stage, self.rng.uniform(0, 0.8 * lasts)))
            if kind == "driver_kill":
                reach, kill = stages.index(stage) + 1, targets[-1]
        if targets:
            self.aimed += [f"{self.command()}:{s}" for s in stages if f"{self.command()}:{s}" not in self.aimed]
        return sorted(targets, key=lambda t: t.kind == "driver_kill")  # due together: the kill last

    def inject(self, kind: str, attempt: Command) -> bool:
        """Inject one fault of `kind` into the running attempt; False when it cannot land yet."""
        rng = self.rng
        if kind == "driver_kill":
            self.record(kind, attempt, f"SIGKILL of {attempt.label} (pid {attempt.proc.pid})")
            attempt.kill()
            return True
        if kind == "worker_kill":
            workers = busy_workers(self.env["RAY_TMPDIR"])
            if not workers:
                return False
            pid = rng.choice(sorted(workers))
            self.record(kind, attempt, f"SIGKILL of Ray worker {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return True
        if kind == "s3_outage":
            if not self.proxy.open:
                return False  # one outage at a time
            # 5-30 s, mostly short (mean 8.6 s): an outage stalls the attempt it hits for its whole length;
            # with the 8 s lease, about a third outlast it and stop the command with a lost lease
            seconds, mode = 5 + 25 * rng.random() ** 6, rng.choice(("refuse", "drop"))
            self.record(kind, attempt, f"S3 {mode}s connections for {seconds:.0f} s")
            self.proxy.cut(refuse=mode == "refuse")
            self.outage_until = time.time() + seconds
            return True
        if kind == "delete_restore":
            inputs = sorted(self.bucket.listing("shards/"))
            outputs = sorted(k for k in self.bucket.listing(run_key("")) if k.split("/")[1] in
                             ("embeddings", "errors", "assignments", "model", "clusters.parquet"))
            pool = outputs if outputs and rng.random() < 0.5 else inputs
            key = rng.choice(pool)
            data = self.bucket.get(key)
            if data is None:
                return False
            back = rng.uniform(1, 5)
            self.record(kind, attempt, f"deleted {key} for {back:.1f} s")
            self.bucket.delete(key)
            self.pending_restores.append((time.time() + back, key, data))
            return True
        if kind == "second_writer":
            held = self.bucket.json(run_key("lease.json"))
            if not held or f":{attempt.proc.pid}:" not in held.get("owner", ""):
                return False  # only while the attempt holds the lease
            command = rng.choice(("update", "run", "embed", "assign"))
            writer = self.cli(f"n{self.night}-second-{command}", command, str(self.config))
            self.record(kind, attempt, f"`scaleclust {command}` as {writer.label} (pid {writer.proc.pid})")
            self.faults[-1].detail += f" [{writer.label}]"
            return True
        raise ValueError(kind)

    # ------------------------------------------------------------------ nights
    def writers(self) -> list[Command]:
        """The second writers still running."""
        return [c for c in self.commands if "-second-" in c.label and c.poll() is None]

    def finish(self, writer: Command, limit: float = 120) -> None:
        """Wait for a second writer to exit (restoring deleted objects meanwhile); killed after `limit` s."""
        deadline = time.time() + limit
        while writer.poll() is None and time.time() < deadline:
            self.due_restores()
            time.sleep(0.1)
        writer.kill()

    def run_night(self, argv: list[str]) -> None:
        nights_left = max(1, self.args.nights + 1 - self.night)
        self.share = Counter({k: -(-n // nights_left) for k, n in self.left.items()})  # this night's share
        attempts, completed = 0, False
        while attempts < self.args.max_attempts:
            attempts += 1
            attempt = self.cli(f"n{self.night}-{argv[0]}-{attempts}", *argv, str(self.config))
            targets = self.plan()
            stage, since = "start", attempt.started
            named = {stage: since}  # stage -> when this attempt's output first named it
            while attempt.poll() is None:
                for command in self.commands:  # exit times of second writers as they happen
                    command.poll()
                self.due_restores()
                self.end_outage()
                now, current = time.time(), self.stage_now(attempt)
                if current != stage:
                    self.durations[f"{self.command()}:{stage}"] = now - since
                    stage, since = current, now
                    named.setdefault(stage, now)
                due = [t for t in targets if t.stage in named and now >= max(named[t.stage] + t.delay, t.retry)]
                for target in due:
                    if not self.inject(target.kind, attempt):
                        target.retry = now + 0.5
                        continue
                    targets.remove(target)
                    if target.kind == "driver_kill":
                        break
                time.sleep(0.05)
            if attempt.rc == 0:
                completed = True
                break
            print(f"  {time.strftime('%H:%M:%S')} {attempt.label} exited {attempt.rc} after "
                  f"{attempt.ended - attempt.started:.0f} s: {last_line(attempt.output())}", flush=True)
            if not any("raylet" in cmd.split(" ")[0] and self.env["RAY_TMPDIR"] in cmd for _, _, cmd in processes()):
                raise SystemExit("chaos: the campaign's Ray head is gone (its raylet died); stopping")
            # The re-run starts once the outage has less left than half the command's last start (imports,
            # before its first request): its start overlaps the outage's end.
            lead = self.durations.get(f"{self.command()}:start", 0.0) / 2
            while not self.proxy.open and time.time() < self.outage_until - lead:
                self.due_restores()
                time.sleep(0.1)
            for writer in self.writers():  # started before the attempt ended, it takes the lease over (or
                self.finish(writer)  # already has): a re-run beside it would only be refused
        self.end_outage(force=True)
        self.due_restores(force=True)
        for writer in self.writers():
            self.finish(writer)
        if not completed:  # one clean attempt, so the checks see the night's end state
            clean = self.cli(f"n{self.night}-{argv[0]}-clean", *argv, str(self.config))
            clean.proc.wait()
            clean.poll()
            completed = clean.rc == 0
        result = {"night": self.night, "command": argv[0], "attempts": attempts, "completed": completed,
                  **check_invariants(self.bucket, self)}
        self.night_results.append(result)
        print(f"night {self.night} ({argv[0]}): {attempts} attempt(s), completed {completed}; "
              f"{', '.join(f'{k} {v}' for k, v in result['invariants'].items())}", flush=True)

    def run(self, deadline: float) -> None:
        """Night 0 (`run`), then update nights until --nights have run and every fault is injected, or
        until `deadline` (after at least one update night); no fault is injected after it."""
        self.deadline = deadline
        self.upload_shards(self.args.shards)
        while True:
            if self.night:
                self.upload_shards(self.args.new_shards)
            self.run_night(["run"] if self.night == 0 else ["update"])
            if time.time() >= deadline and self.night >= 1 or self.night >= self.args.nights and not any(self.left.values()):
                break
            self.night += 1
        self.verify_deep()

    def verify_deep(self) -> None:
        """`scaleclust verify RUN --deep` on the final state (a minute on a busy 2-CPU machine, so once),
        recorded as the last night's invariant."""
        verify = self.cli(f"n{self.night}-verify", "verify", f"s3://{BUCKET}/{RUN_PREFIX}", "--deep",
                          "--endpoint-url", self.args.direct_endpoint)
        verify.proc.wait()
        result = self.night_results[-1]
        result["invariants"]["verify_deep"] = "ok" if verify.poll() == 0 else "FAILED"
        if verify.rc != 0:
            result["problems"]["verify_deep"] = [last_line(verify.output())]
        print(f"verify --deep: {result['invariants']['verify_deep']}", flush=True)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


# --------------------------------------------------------------------------------------- the invariants
def parquet_keys(bucket: Bucket, key: str) -> list[str]:
    data = bucket.get(key)
    return [] if data is None else pq.read_table(io.BytesIO(data), columns=["key"])["key"].to_pylist()


def check_invariants(bucket: Bucket, campaign: Campaign) -> dict[str, Any]:
    """The night's invariants, read from the bucket directly (see the module docstring)."""
    problems: dict[str, list[str]] = defaultdict(list)
    counts: Counter = Counter()
    inputs = {}
    for key in sorted(bucket.listing("shards/")):
        with tarfile.open(fileobj=io.BytesIO(bucket.get(key))) as tar:
            inputs[key.rsplit("/", 1)[1][:-4]] = {m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()}
    objects = bucket.listing(run_key(""))
    seen: Counter = Counter()
    embedded: Counter = Counter()
    for shard in inputs:
        if run_key("embeddings", f"{shard}.done.json") not in objects:
            problems["keys_once"].append(f"shard {shard} not committed")
            continue
        keys = parquet_keys(bucket, run_key("embeddings", f"{shard}.parquet"))
        embedded.update(keys)
        errors = parquet_keys(bucket, run_key("errors", f"{shard}.parquet")) \
            if run_key("errors", f"{shard}.parquet") in objects else []
        counts["good_rows_in_errors"] += len(errors)
        seen.update(keys + errors)
    every = set().union(*inputs.values()) if inputs else set()
    counts["input_keys"] = len(every)
    counts["rows_lost"] = sum(1 for k in every if seen[k] == 0)
    counts["rows_duplicated"] = sum(seen[k] - 1 for k in every if seen[k] > 1) + sum(
        n for k, n in seen.items() if k not in every)
    if counts["rows_lost"] or counts["rows_duplicated"]:
        problems["keys_once"].append(f"{counts['rows_lost']} input keys missing, {counts['rows_duplicated']} extra")
    assigned: Counter = Counter()
    for shard in inputs:
        marker = bucket.json(run_key("assignments", f"{shard}.done.json"))
        if marker is None:
            problems["assigned_once"].append(f"shard {shard} has no assignments marker")
            continue
        assigned.update(parquet_keys(bucket, run_key("assignments", marker["file"])))
    missing = sum(1 for k in embedded if assigned[k] == 0)
    extra = sum(n - 1 for n in assigned.values() if n > 1) + sum(n for k, n in assigned.items() if k not in embedded)
    counts["assign_lost"], counts["assign_duplicated"] = missing, extra
    if missing or extra:
        problems["assigned_once"].append(f"{missing} embedded keys unassigned, {extra} extra assignments")
    versions = sorted({k.split("/")[2] for k in objects if k.startswith(run_key("versions", "")) and
                       k.endswith("/manifest.json")})
    for version in versions:
        manifest = bucket.json(run_key("versions", version, "manifest.json"))
        for shard, entry in manifest["shards"].items():
            keys = parquet_keys(bucket, run_key("assignments", entry["file"]))
            if len(keys) != entry["rows"]:
                problems["versions_whole"].append(f"{version}: {entry['file']} holds {len(keys)} rows, "
                                                  f"manifest says {entry['rows']}")
        if run_key(manifest["model_dir"], "model.json") not in objects:
            problems["versions_whole"].append(f"{version}: {manifest['model_dir']}/model.json missing")
    pointer = bucket.json(run_key("versions", "LATEST.json"))
    if campaign.night > 0:
        if pointer is None:
            problems["versions_whole"].append("no versions/LATEST.json after an update")
        else:
            latest = bucket.json(run_key("versions", pointer["version"], "manifest.json"))
            keys: Counter = Counter()
            for entry in latest["shards"].values():
                keys.update(parquet_keys(bucket, run_key("assignments", entry["file"])))
            if keys != Counter(embedded.keys()):
                problems["versions_whole"].append(f"latest version {pointer['version']}: its assignments hold "
                                                  f"{sum(keys.values())} keys for {len(embedded)} embedded")
    return {"invariants": {name: "FAILED" if problems.get(name) else "ok" for name in
                           ("keys_once", "assigned_once", "versions_whole")},
            "problems": dict(problems), "counts": dict(counts)}


def lease_overlaps(changes: list[tuple[float, str | None, str | None]], commands: list[Command]) -> list[str]:
    """Owner changes seen while the previous owner's process was still alive and went on: two writers.
    A holder that exits 3 within a lease period of losing is stopping for it, not writing on."""
    by_pid = {str(c.proc.pid): c for c in commands if c.proc is not None}
    found = []
    holder = None
    for t, owner, what in changes:
        if owner is None:
            holder = None
            continue
        if holder is not None:
            previous = by_pid.get(holder.split(":")[1])
            if previous is not None and previous.alive_at(t) and previous.rc not in (3, -9) \
                    and owner.split(":")[1] != holder.split(":")[1]:
                found.append(f"{time.strftime('%H:%M:%S', time.gmtime(t))} {what} ({owner.split(':')[1]}) "
                             f"took the lease while {previous.label} (pid {holder.split(':')[1]}) was alive; "
                             f"{previous.label} exited {previous.rc}")
        holder = owner
    return found


# ------------------------------------------------------------------------------------------- reporting
def judge(campaign: Campaign, overlaps: list[str]) -> dict[str, Any]:
    """Mark each fault lost or survived; return the campaign's figures."""
    by_label = {c.label: c for c in campaign.commands}
    tracebacks = {c.label for c in campaign.commands if TRACEBACK in c.output()}
    failed_nights = {r["night"] for r in campaign.night_results
                     if not r["completed"] or "FAILED" in r["invariants"].values()}
    overlap_pids = {re.search(r"\((\d+)\)", o).group(1) for o in overlaps}
    for fault in campaign.faults:
        hit = by_label[fault.attempt]
        if fault.kind == "second_writer":
            writer = re.search(r"\[(.+)\]$", fault.detail).group(1)
            if writer in tracebacks:
                fault.lost.append(f"traceback in {writer}")
            if str(by_label[writer].proc.pid) in overlap_pids:
                fault.lost.append(f"{writer} wrote beside {hit.label}")
        if hit.label in tracebacks:
            fault.lost.append(f"traceback in {hit.label}")
        if fault.night in failed_nights:
            fault.lost.append(f"night {fault.night} broke an invariant or did not complete")
        if fault.kind == "s3_outage" and str(hit.proc.pid) in {o.split("pid ")[1].split(")")[0] for o in overlaps}:
            fault.lost.append(f"{hit.label} went on writing without its lease")
    table: dict[str, Counter] = defaultdict(Counter)
    for fault in campaign.faults:
        for key in (fault.kind, f"{fault.kind} @ {fault.stage}"):
            table[key]["injected"] += 1
            table[key]["lost" if fault.lost else "survived"] += 1
    totals = Counter()
    for result in campaign.night_results:
        totals.update(result["counts"])
    second = [c for c in campaign.commands if "-second-" in c.label]
    attempts = [c for c in campaign.commands if c not in second and not c.label.endswith("-verify")]
    stages = campaign.aimed + sorted({f.stage for f in campaign.faults} - set(campaign.aimed))
    missed = [f"{kind} @ {stage}" for stage in campaign.aimed for kind in KINDS
              if (kind, stage.split(":")[1]) not in CANNOT and f"{kind} @ {stage}" not in table]
    return {"kinds": list(KINDS), "faults": {k: dict(v) for k, v in sorted(table.items())},
            "stages": stages, "missed": missed, "attempts": len(attempts), "second_writers": len(second),
            "seconds_per_attempt": sum(c.ended - c.started for c in attempts) / max(1, len(attempts)),
            "tracebacks": sorted(tracebacks), "overlaps": overlaps,
            "rows_lost": totals["rows_lost"] + totals["assign_lost"],
            "rows_duplicated": totals["rows_duplicated"] + totals["assign_duplicated"],
            "good_rows_in_errors": totals["good_rows_in_errors"],
            "nights": [{k: v for k, v in r.items() if k != "counts"} for r in campaign.night_results],
            "lost": [{"kind": f.kind, "stage": f.stage, "detail": f.detail, "why": f.lost}
                     for f in campaign.faults if f.lost]}


def print_figures(figures: dict[str, Any], seconds: float) -> None:
    print(f"\nchaos campaign: {seconds:.0f} s")
    faults, kinds = figures["faults"], figures["kinds"]
    print(f"faults injected (lost) per stage and kind; {figures['attempts']} attempts "
          f"({figures['seconds_per_attempt']:.1f} s each), {figures['second_writers']} second writers")
    print(f"{'stage':<16} " + " ".join(f"{kind:>14}" for kind in kinds))
    for name in [*figures["stages"], "all"]:
        rows = [faults.get(kind if name == "all" else f"{kind} @ {name}", {}) for kind in kinds]
        cells = (f"{row.get('injected', 0)} ({row.get('lost', 0)})" for row in rows)
        print(f"{name:<16} " + " ".join(f"{cell:>14}" for cell in cells))
    print("not aimed at: worker_kill @ start (no Ray task before the first stage); update's fit (the model "
          "committed by `run`)")
    print(f"kind and stage pairs aimed at and never hit: {len(figures['missed'])} {', '.join(figures['missed'][:12])}")
    print(f"rows lost {figures['rows_lost']}, duplicated {figures['rows_duplicated']}; good rows recorded as "
          f"errors {figures['good_rows_in_errors']}")
    print(f"tracebacks: {len(figures['tracebacks'])} command(s) {', '.join(figures['tracebacks'][:8])}")
    print(f"two writers inside one lease period: {len(figures['overlaps'])}")
    for line in figures["overlaps"][:8]:
        print(f"  {line}")
    for night in figures["nights"]:
        print(f"night {night['night']} {night['command']}: {night['attempts']} attempt(s), completed "
              f"{night['completed']}; " + ", ".join(f"{k} {v}" for k, v in night["invariants"].items()))
        for name, lines in night["problems"].items():
            for line in lines[:3]:
                print(f"  {name}: {line}")
    for lost in figures["lost"][:12]:
        print(f"lost: {lost['kind']} @ {lost['stage']}: {lost['detail']}: {'; '.join(lost['why'])}")


def invariants_failed(figures: dict[str, Any]) -> bool:
    return bool(figures["tracebacks"] or figures["overlaps"] or any(
        not n["completed"] or "FAILED" in n["invariants"].values() for n in figures["nights"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="a handful of faults (under 90 s): the suite's form")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--faults", type=int, help="faults of each kind (full: 50, short: 1)")
    parser.add_argument("--nights", type=int, help="update nights after the first run (full: 3, short: 1): "
                        "version 1, a night without and one with a refit")
    parser.add_argument("--lease-seconds", type=float, default=8.0)
    parser.add_argument("--shards", type=int, default=3, help="shards of the first run")
    parser.add_argument("--new-shards", type=int, default=1, help="shards arriving each night")
    parser.add_argument("--per-shard", type=int, default=8, help="images per shard")
    parser.add_argument("--max-attempts", type=int, default=40, help="attempts per night before a clean one")
    parser.add_argument("--work", type=Path, help="folder for the shards and every command's log (default: a temp dir)")
    parser.add_argument("--budget", type=float, help="seconds from the Ray head's start after which no fault is "
                        "injected and no night starts once an update night has run (full: 1140, so that with the "
                        "head's start, the night's end and verify the campaign ends within 20 minutes; short: 180)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.faults = args.faults if args.faults is not None else (1 if args.short else 50)
    args.nights = args.nights if args.nights is not None else (1 if args.short else 3)
    args.budget = args.budget if args.budget is not None else (180.0 if args.short else 1140.0)
    return campaign(args)


def campaign(args: argparse.Namespace) -> int:
    import tempfile

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)  # the S3 server's request lines

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed campaign still tears down its Ray and S3
    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    args.direct_endpoint = f"http://127.0.0.1:{port}"
    proxy = TcpProxy(args.direct_endpoint)
    bucket = Bucket(args.direct_endpoint)
    bucket.client.create_bucket(Bucket=BUCKET)
    watch = LeaseWatch(bucket)
    try:
        with private_ray_env() as env:
            # unbuffered: a command's lines reach its log as it prints them, so faults can aim at its stages
            env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONUNBUFFERED": "1"}
            env.pop("RAY_ADDRESS", None)
            address = start_head(env)
            print(f"chaos: seed {args.seed}, {args.faults} fault(s) of each kind, Ray head {address}, logs in {work}",
                  flush=True)
            watch.start()
            chaos = Campaign(args, work, bucket, proxy, env, address)
            try:
                chaos.run(time.time() + args.budget)
            finally:  # also when the campaign itself is stopped: no command outlives it
                watch.stop.set()
                for command in chaos.commands:
                    command.kill()
    finally:
        proxy.close()
        server.stop()
    figures = judge(chaos, lease_overlaps(watch.changes, chaos.commands))
    figures["seconds"] = round(time.time() - started, 1)
    figures["not_injected"] = {k: n for k, n in chaos.left.items() if n > 0}
    print_figures(figures, time.time() - started)
    if figures["not_injected"]:
        print(f"not injected (no room in the nights run): {figures['not_injected']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 1 if invariants_failed(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
