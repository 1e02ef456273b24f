"""The whole pipeline at growing sizes, from LAION-layout synthetic embeddings: per-stage seconds and
every process's peak RSS, so growth in time and in memory per process is measured, not assumed.

For each --rows N (in order, each in a fresh run directory and a fresh local Ray):
1. write N clustered unit vectors as a LAION dump (img_emb/img_emb_I.npy fp16 + metadata/metadata_I.parquet,
   --part-rows rows per part, 1% of rows near-copies of another so dedup has something to find);
2. run the stages: ingest (the embed stage on laion_embeddings), fit kmeans, assign, index, neighbors,
   dedup (--scope all: exact pairs within the index's lists), fit mlc (Ray Train, then the sparse spectral
   step on --assign-sample rows), assign with the MLC model.
A sampler thread reads /proc of the driver and every process under it (Ray's GCS, raylet, workers)
every 0.25 s and keeps, per stage, the largest RSS of each process role (driver, raylet, gcs, or the
Ray task / actor name a worker runs). The sizes' fit samples, index queries and parts are fixed, so a
pipeline that scales shows time growing at most linearly and flat memory per process.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/scale.py --rows 1000000 4000000

Prints one JSON line per stage and size, then a table with the ratios of the last size to the first.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

from scaleclust.stages import assign, fit  # noqa: E402
from scaleclust.config import Config, from_dict  # noqa: E402
from scaleclust.stages import embed  # noqa: E402
from scaleclust.stages import neighbors  # noqa: E402
from scaleclust.stages import index as index_stage  # noqa: E402
from scaleclust.index.build import LIST_CHOICES, unit_float32  # noqa: E402
from scaleclust.index.choose import default_nlist, row_work  # noqa: E402
from scaleclust.index.dedup import dedup  # noqa: E402
from scaleclust.pipeline import prepare  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
NPROBE = 8  # index.nprobe of the runs here


def write_dump(root: Path, rows: int, dim: int, part_rows: int, clusters: int, seed: int) -> int:
    """A LAION dump of `rows` clustered unit vectors (fp16) in parts of `part_rows`; returns the parts.
    Generated part by part (the centres are shared), so the writer never holds more than one part."""
    rng = np.random.default_rng(seed)
    centres = unit_float32(rng.standard_normal((clusters, dim), dtype=np.float32))
    (root / "img_emb").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    parts = (rows + part_rows - 1) // part_rows
    for part in range(parts):
        n = min(part_rows, rows - part * part_rows)
        prng = np.random.default_rng([seed, part])
        label = prng.integers(0, clusters, n)
        x = unit_float32(centres[label] + prng.standard_normal((n, dim), dtype=np.float32) * np.float32(1.2 / np.sqrt(dim)))
        copies = prng.choice(n, size=n // 100, replace=False)  # near-duplicates of other rows of the part
        x[copies] = unit_float32(x[prng.integers(0, n, len(copies))] + np.float32(0.01 / np.sqrt(dim))
                                 * prng.standard_normal((len(copies), dim), dtype=np.float32))
        np.save(root / "img_emb" / f"img_emb_{part}.npy", x.astype(np.float16))
        keys = [f"{part:05d}{i:07d}" for i in range(n)]
        pq.write_table(pa.table({"key": keys, "caption": [f"synthetic {c}" for c in label],
                                 "url": [f"https://example.com/{k}.jpg" for k in keys]}),
                       root / "metadata" / f"metadata_{part}.parquet")
    return parts


def role(pid: int) -> str | None:
    """A process's role from its command line: driver, gcs, raylet, a Ray task/actor name, or None."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = " ".join(c.decode(errors="replace") for c in cmd if c)
    if pid == os.getpid():
        return "driver"
    if text.startswith("ray::"):
        name = text.split()[0][5:]
        return None if name == "IDLE" else name.split(".")[0]
    for key in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if key in text:
            return key
    return "other" if "python" in text else None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class PeakRSS:
    """Samples the RSS of this process and all its descendants; peaks per role since the last reset."""

    def __init__(self, every: float = 0.25) -> None:
        self.every, self.peaks, self.lock = every, {}, threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            seen = {}
            for pid in descendants(os.getpid()):
                name = role(pid)
                if name:
                    seen[name] = max(seen.get(name, 0), rss(pid))
            with self.lock:
                for name, value in seen.items():
                    self.peaks[name] = max(self.peaks.get(name, 0), value)

    def take(self) -> dict[str, int]:
        with self.lock:
            peaks, self.peaks = self.peaks, {}
        return peaks

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def config(run_dir: Path, dump: Path, args: argparse.Namespace, method: str) -> Config:
    return from_dict({
        "run_dir": str(run_dir), "input": {"format": "laion_embeddings", "shards": [str(dump)]},
        "embed": {"model": {"arch": "scaleclust-tiny"}},
        "cluster": {"method": method, "k": args.k if method == "kmeans" else args.mlc_k, "sample_size": args.sample,
                    "restarts": 1, "assign_sample": args.assign_sample,
                    "mlc": {"steps": args.mlc_steps, "warmup_steps": args.mlc_steps // 4, "batch_size": 256},
                    "train": {"workers": 2, "cpus_per_worker": 1, "checkpoint_every": 10_000}},
        "index": {"kind": "ivf_flat", "queries": args.queries, "recall_queries": 200, "nprobe": NPROBE,
                  "shards_per_searcher": args.shards_per_searcher},
        "ray": {"num_cpus": 4}})


def start_ray() -> None:
    """A fresh local Ray, as every scaleclust command starts its own."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")  # a loaded shared machine starts slowly
    # On a machine shared with other jobs Ray's memory monitor kills (and retries, without end) the task
    # that happens to be largest when *their* memory use crosses its threshold: measure without it.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    for attempt in range(3):  # the GCS of a local Ray can miss its start-up deadline on a loaded machine
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False,
                     dashboard_host="127.0.0.1")
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for a start-up timeout
            ray.shutdown()
            if attempt == 2:
                raise
    ray.data.DataContext.get_current().enable_progress_bars = False


def measure(rows: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    dump, run_dir = work / f"dump{rows}", work / f"run{rows}"
    started = time.perf_counter()
    parts = write_dump(dump, rows, args.dim, args.part_rows, args.clusters, args.seed)
    print(json.dumps({"rows": rows, "stage": "write dump", "parts": parts,
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    cfg_k, cfg_m = config(run_dir, dump, args, "kmeans"), config(run_dir, dump, args, "mlc")
    with contextlib.redirect_stdout(io.StringIO()):
        ctx = prepare(cfg_k)
        run, shards = ctx.run, ctx.shards
    start_ray()
    probe = PeakRSS()
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("ingest", lambda: embed.run(cfg_k, run, shards)),
        ("fit kmeans", lambda: fit.run(cfg_k, run)),
        ("assign kmeans", lambda: assign.run(cfg_k, run)),
        ("index", lambda: index_stage.run(cfg_k, run)),
        ("neighbors", lambda: neighbors.run(cfg_k, run)),
        ("dedup", lambda: dedup(run, 0.98, [0.95, 0.98], "all")),
        ("fit mlc", lambda: fit.run(cfg_m, run)),
        ("assign mlc", lambda: assign.run(cfg_m, run)),
    ]
    result: dict[str, Any] = {"rows": rows, "stages": {}}
    try:
        probe.take()
        for name, step in stages:
            if name in args.skip:
                continue
            if args.ray_per_stage and name != stages[0][0]:
                ray.shutdown()  # Ray reuses worker processes, whose RSS keeps what earlier stages' tasks left
                start_ray()
                probe.take()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                step()
            seconds = time.perf_counter() - t0
            time.sleep(2 * probe.every)  # let the sampler see the stage's last moments
            peaks = probe.take()
            result["stages"][name] = {"seconds": round(seconds, 1),
                                      "peak_rss_mib": {r: round(v / 2**20) for r, v in sorted(peaks.items())}}
            print(json.dumps({"rows": rows, "stage": name, **result["stages"][name]}), flush=True)
    finally:
        probe.close()
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(dump, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


def compare(first: dict[str, Any], last: dict[str, Any]) -> None:
    """Per stage: time ratio against the rows ratio, and every role's peak RSS ratio (goal <= 1.25)."""
    scale = last["rows"] / first["rows"]
    print(f"\n{first['rows']:,} -> {last['rows']:,} rows (x{scale:g}): time ratio (goal <= x{scale:g}), "
          "largest per-process peak RSS ratio (goal <= 1.25)")
    print(f"{'stage':<14} {'s@' + str(first['rows']):>12} {'s@' + str(last['rows']):>12} {'time x':>7} "
          f"{'MiB@first':>10} {'MiB@last':>9} {'rss x':>6}  worst role")
    worst_all = 0.0
    shared = [stage for stage in first["stages"] if stage in last["stages"]]  # a cut-short run lacks the last
    for stage in shared:
        a, b = first["stages"][stage], last["stages"][stage]
        ratios = {r: b["peak_rss_mib"][r] / max(a["peak_rss_mib"].get(r, 0), 1)
                  for r in b["peak_rss_mib"] if a["peak_rss_mib"].get(r, 0) >= 50}
        role_worst = max(ratios, key=ratios.get) if ratios else "-"
        worst_all = max(worst_all, ratios.get(role_worst, 0))
        print(f"{stage:<14} {a['seconds']:>12.1f} {b['seconds']:>12.1f} {b['seconds'] / max(a['seconds'], 0.1):>7.2f} "
              f"{max(a['peak_rss_mib'].values(), default=0):>10} {max(b['peak_rss_mib'].values(), default=0):>9} "
              f"{ratios.get(role_worst, 0):>6.2f}  {role_worst}")
    total_a = sum(first["stages"][stage]["seconds"] for stage in shared)
    total_b = sum(last["stages"][stage]["seconds"] for stage in shared)
    print(json.dumps({"rows": [first["rows"], last["rows"]], "total_seconds": [round(total_a, 1), round(total_b, 1)],
                      "time_ratio": round(total_b / total_a, 2), "rows_ratio": scale,
                      "worst_rss_ratio": round(worst_all, 2)}))


PER_ROW = ("ingest", "assign kmeans", "index", "dedup", "assign mlc")  # work grows with the rows, split by shard
IVF_STAGES = ("index", "dedup")  # a row's cost follows ivf_work(): assigning it to lists, or comparing it in lists


def ivf_work(stage: str, rows: float) -> float:
    """Work per row of an IVF stage at index.nlist's default, in d-dimensional dot products: the index
    assigns the row to its lists (index.choose.row_work); dedup compares it with the members of its
    LIST_CHOICES nearest lists, rows / nlist rows each (the lists were found when the index added it)."""
    if stage == "dedup":
        return LIST_CHOICES * rows / default_nlist(int(rows))
    return row_work(rows, scan=False)


def project(first: dict[str, Any], last: dict[str, Any], rows: float, dim: int, measured_dim: int,
            nodes: list[int]) -> None:
    """Hours for `rows` rows of `dim` dimensions on N nodes like this one. A per-row stage costs its
    marginal seconds per row (between the first and the last measured size; the last size's average when
    only one was measured or the difference is not positive), times rows x dim / measured dim, divided
    over the nodes (its tasks are per shard), plus its fixed start-up cost as measured; for the IVF stages
    (IVF_STAGES) the last size's seconds per row times the ratio of ivf_work at `rows` and at the last
    size. The fits (fixed samples) and the neighbours graph (fixed queries) are taken as measured,
    scaled by dim only."""
    scale_dim = dim / measured_dim
    print(f"\nprojection to {rows:,.0f} rows x {dim} dims from {first['rows']:,} and {last['rows']:,} rows x "
          f"{measured_dim} dims, on N nodes of this machine's size")
    print(f"{'stage':<14} {'s/Mrow':>8} " + " ".join(f"{'N=' + str(n) + ' h':>10}" for n in nodes))
    totals = [0.0] * len(nodes)
    for stage, facts in first["stages"].items():
        facts = last["stages"].get(stage, facts)  # a stage the last size did not reach: the first's figures
        t1, t0 = facts["seconds"], first["stages"][stage]["seconds"]
        marginal = (t1 - t0) / (last["rows"] - first["rows"]) if last["rows"] > first["rows"] else 0.0
        if marginal <= 0:
            marginal = t1 / last["rows"]
        fixed = max(t1 - marginal * last["rows"], 0.0)
        if stage in IVF_STAGES:
            marginal, fixed = t1 / last["rows"] * ivf_work(stage, rows) / ivf_work(stage, last["rows"]), 0.0
        if stage in PER_ROW:
            hours = [(fixed + marginal * rows * scale_dim / n) / 3600 for n in nodes]
        else:
            hours = [t1 * scale_dim / 3600 for _ in nodes]
        totals = [t + h for t, h in zip(totals, hours)]
        print(f"{stage:<14} {marginal * 1e6 if stage in PER_ROW else float('nan'):>8.1f} "
              + " ".join(f"{h:>10.2f}" for h in hours))
    print(f"{'total':<14} {'':>8} " + " ".join(f"{t:>10.2f}" for t in totals))


def from_log(path: str) -> list[dict[str, Any]]:
    """The results of a run from the JSON lines it printed (to re-print the comparison and projection)."""
    results: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.startswith("{"):
            continue
        fact = json.loads(line)
        if "stage" in fact and fact["stage"] != "write dump":
            entry = results.setdefault(fact["rows"], {"rows": fact["rows"], "stages": {}})
            entry["stages"][fact["stage"]] = {k: fact[k] for k in ("seconds", "peak_rss_mib")}
    return [results[r] for r in sorted(results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--part-rows", type=int, default=50_000, help="rows per LAION part (per ingest task)")
    parser.add_argument("--clusters", type=int, default=200, help="planted clusters of the synthetic data")
    parser.add_argument("--k", type=int, default=100, help="k-means clusters")
    parser.add_argument("--mlc-k", type=int, default=20)
    parser.add_argument("--sample", type=int, default=100_000, help="cluster.sample_size (fixed across sizes)")
    parser.add_argument("--assign-sample", type=int, default=20_000, help="cluster.assign_sample (sparse spectral)")
    parser.add_argument("--mlc-steps", type=int, default=40)
    parser.add_argument("--queries", type=int, default=20_000, help="index.queries (neighbours graph rows)")
    parser.add_argument("--shards-per-searcher", type=int, default=20,
                        help="index.shards_per_searcher: parts one search actor holds (bounds its memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-per-stage", action="store_true",
                        help="a fresh local Ray for each stage, as separate `scaleclust stage` commands run, so a "
                             "stage's reused worker processes carry no memory of an earlier stage's tasks")
    parser.add_argument("--skip", nargs="*", default=[], help="stages to leave out (their outputs are not "
                        "needed by later stages: dedup)")
    parser.add_argument("--keep", action="store_true", help="keep the dumps and run directories")
    parser.add_argument("--work", help="folder for dumps and runs (default: a temporary folder)")
    parser.add_argument("--from-log", help="re-print the comparison and projection from a run's printed lines")
    parser.add_argument("--project-rows", type=float, default=2.3e9, help="rows to project to (LAION-2B-en)")
    parser.add_argument("--project-dim", type=int, default=768, help="dimension to project to (ViT-L/14)")
    parser.add_argument("--project-nodes", type=int, nargs="+", default=[1, 16, 64, 256])
    args = parser.parse_args()
    if args.from_log:
        results = from_log(args.from_log)
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="scale-"))
        work.mkdir(parents=True, exist_ok=True)
        results = [measure(rows, work, args) for rows in args.rows]
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if len(results) > 1:
        compare(results[0], results[-1])
    if results:
        project(results[0], results[-1], args.project_rows, args.project_dim, args.dim, args.project_nodes)


if __name__ == "__main__":
    main()
