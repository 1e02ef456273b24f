"""Peak memory of the embed stage at 1x and 4x the shards (same shard size), side by side with 4x/1x.

The claim checked: memory per process stays flat as the number of shards grows (a decode task holds one
shard, the encoder actor one batch, the driver a few counters per shard), so only the run time grows.

Each scale runs in a fresh subprocess with its own local Ray, so no peak carries over. A thread in that
driver samples every 0.1 s the processes descending from it (the Ray daemons it started, and their
children, the Ray workers) from /proc/PID/status: VmHWM is the kernel's exact peak RSS of a process (read
while it lives), VmRSS summed over all workers gives their peak total, RssAnon the private part (VmRSS also
counts shared object-store pages a worker has touched). Workers are grouped by their process title
(`ray::...`): the encoder actor(s), the task workers (decode, write, commit, the key check) and Ray Data's
own bookkeeping actors. The driver's peak is its own VmHWM.

    .venv/bin/python benchmarks/embed_memory.py                     # 4 vs 16 shards of 128 photos, tiny model
    .venv/bin/python benchmarks/embed_memory.py --model effnet --shards 8 --per-shard 256
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from _embed_bench import MODELS, run_stage, stage_config, start_ray, write_photo_shards

GROUPS = ("driver", "encoder actor", "task workers", "Ray Data actors", "Ray daemons")
DATA_ACTORS = ("_StatsActor", "AutoscalingCoordinator", "ActorLocationTracker", "SplitCoordinator")


def status(pid: int) -> dict[str, int]:
    """KiB fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...); empty when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v.strip().endswith("kB")}


def descendants(root: int) -> dict[int, str]:
    """PID -> command line of every live process below `root`."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                children[int(stat.rpartition(")")[2].split()[1])].append(int(entry.name))
        except OSError:
            continue
    found: dict[int, str] = {}
    stack = list(children[root])
    while stack:
        pid = stack.pop()
        try:
            found[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
        stack.extend(children[pid])
    return found


def group(titles: set[str]) -> str:
    """Which group a process belongs to, from every title it had."""
    if any("EncodeBatch" in t for t in titles):
        return "encoder actor"
    if any(name in t for t in titles for name in DATA_ACTORS):
        return "Ray Data actors"
    return "task workers" if any(t.startswith("ray::") for t in titles) else "Ray daemons"


class Sampler(threading.Thread):
    """Samples the memory of this process's descendants until stopped."""

    def __init__(self, root: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.stop = root, every, threading.Event()
        self.titles: dict[int, set[str]] = defaultdict(set)
        self.hwm: dict[int, int] = defaultdict(int)
        self.anon: dict[int, int] = defaultdict(int)
        self.total_peak: dict[str, int] = defaultdict(int)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            total: dict[str, int] = defaultdict(int)
            for pid, cmdline in descendants(self.root).items():
                fields = status(pid)
                if not fields:
                    continue
                self.titles[pid].add(cmdline)
                self.hwm[pid] = max(self.hwm[pid], fields.get("VmHWM", 0))
                self.anon[pid] = max(self.anon[pid], fields.get("RssAnon", 0))
                total[group(self.titles[pid])] += fields.get("VmRSS", 0)
            for name, kib in total.items():
                self.total_peak[name] = max(self.total_peak[name], kib)

    def report(self) -> dict[str, dict[str, float]]:
        """Per group: processes, largest per-process peak RSS and RssAnon, peak total RSS (MiB)."""
        out: dict[str, dict[str, float]] = {}
        for pid, titles in self.titles.items():
            g = out.setdefault(group(titles), {"processes": 0, "peak": 0.0, "anon": 0.0})
            g["processes"] += 1
            g["peak"] = max(g["peak"], self.hwm[pid] / 1024)
            g["anon"] = max(g["anon"], self.anon[pid] / 1024)
        for name, kib in self.total_peak.items():
            out[name]["total"] = kib / 1024
        return out


def child(args: argparse.Namespace) -> None:
    """Run the stage once over the first --child-shards shards; print the memory report as JSON."""
    shards = sorted(str(p) for p in Path(args.folder).glob("*.tar"))[: args.child_shards]
    cfg = stage_config(Path(args.folder).parent / f"run-{args.child_shards}", shards, args.model, "cpu", None, args.set)
    start_ray(cfg)
    sampler = Sampler(os.getpid())
    sampler.start()
    result = run_stage(cfg)
    sampler.stop.set()
    sampler.join()
    report = sampler.report()
    report["driver"] = {"processes": 1, "peak": status(os.getpid())["VmHWM"] / 1024,
                        "anon": status(os.getpid())["RssAnon"] / 1024}
    print(json.dumps({"groups": report, "seconds": result["seconds"], "rows": result["rows"]}))


def measure(args: argparse.Namespace, folder: Path, shards: int) -> dict:
    """One child run over the first `shards` shards of `folder`."""
    command = [sys.executable, __file__, "--model", args.model, "--per-shard", str(args.per_shard),
               "--child", str(folder), str(shards), *[f"--set={s}" for s in args.set]]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--shards", type=int, default=4, help="shards at 1x (4x runs four times as many)")
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each scale, interleaved; the largest peak is kept")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override the stage config")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.folder, args.child_shards = args.child[0], int(args.child[1])
        return child(args)
    scales = (args.shards, 4 * args.shards)
    with tempfile.TemporaryDirectory(prefix="embed-memory-") as tmp:
        folder = Path(tmp) / "shards"
        write_photo_shards(folder, scales[1], args.per_shard)
        runs: dict[int, list[dict]] = {n: [] for n in scales}
        for _ in range(args.repeats):
            for n in scales:
                runs[n].append(measure(args, folder, n))
    print(f"embed stage, model {args.model}, {args.per_shard} photos per shard, defaults "
          f"{' '.join(args.set) or '(project config)'}; peak memory in MiB (largest over {args.repeats} run(s))")
    print(f"{'':<42}{f'{scales[0]} shards':>12}{f'{scales[1]} shards':>12}{'4x/1x':>8}")

    def row(label: str, value: Callable[[dict], float]) -> None:
        small, large = (max(value(r) for r in runs[n]) for n in scales)
        print(f"{label:<42}{small:>12.0f}{large:>12.0f}{large / small if small else float('nan'):>8.2f}")

    row("images embedded", lambda r: r["rows"])
    row("stage seconds", lambda r: r["seconds"])
    for name in GROUPS:
        if not all(name in r["groups"] for n in scales for r in runs[n]):
            continue
        for key, label in (("processes", "processes"), ("peak", "peak RSS, largest process"),
                           ("anon", "peak RssAnon, largest process"), ("total", "peak RSS, all processes")):
            if key in runs[scales[0]][0]["groups"][name]:
                row(f"{name}: {label}", lambda r, n=name, k=key: r["groups"][n][k])


if __name__ == "__main__":
    main()
