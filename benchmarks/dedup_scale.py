"""dedup --scope all at growing sizes: recall of planted near-duplicate pairs against exact range search,
and seconds per row at each size, measured side by side in one process (one local Ray).

For each --rows N: a LAION-layout dump of N clustered unit vectors (d = --dim, fp16, --part-rows rows per
part, one cluster per --rows-per-cluster rows, so the data keeps its density as it grows) in which 0.5% of
the rows are near-copies of another row of their part at a cosine drawn uniformly from [threshold + 0.003,
0.995]; the embed stage ingests it and the index stage builds its IVF-Flat index (index.nlist's default).
Then `dedup --scope all` runs on every size in turn, --repeats times (1M, 4M, 1M, 4M, ...: a shared,
noisy machine's load falls on both sizes alike), and the best time per size gives the seconds per row.
Recall: the pairs dedup finds (its pair search, scaleclust.index.dedup.find_pairs) among the pairs an
exact range search finds around --recall-pairs planted originals (drawn at random; each against every
row, exact dot products over the stored vectors), and how many of those pairs lie within each row's m nearest lists
(m = 1..3: what comparing a row in fewer lists would keep). Also: the largest RSS of any process of the
dedup (its Ray tasks: one shard, one bucket each) and of the index training task, per size.

    PYTHONPATH=. .venv/bin/python benchmarks/dedup_scale.py --rows 1000000 4000000 --dim 64

Prints one JSON line per measurement, then the ratios of the last size to the first.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small products: threads only contend on 2 busy CPUs
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scale import PeakRSS, start_ray  # noqa: E402  (benchmarks/scale.py, beside this file)

from scaleclust.config import from_dict  # noqa: E402
from scaleclust.index.build import LIST_CHOICES, unit_float32  # noqa: E402
from scaleclust.index.dedup import dedup, find_pairs  # noqa: E402
from scaleclust.index.manifest import load_manifest, shard_vectors  # noqa: E402
from scaleclust.pipeline import prepare, run_stage  # noqa: E402
from scaleclust.rundir import RunDir  # noqa: E402

SERVICES = ("driver", "raylet", "gcs", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "other")


def write_dump(root: Path, rows: int, dim: int, part_rows: int, clusters: int, threshold: float,
               seed: int, write: bool = True) -> list[tuple[int, int, int]]:
    """Write the dump part by part (unless ``write`` is false: an earlier run wrote it, and only the
    planted pairs are drawn again); return the planted pairs as (part, original row, copy row)."""
    rng = np.random.default_rng(seed)
    centres = unit_float32(rng.standard_normal((clusters, dim), dtype=np.float32))
    if write:
        (root / "img_emb").mkdir(parents=True)
        (root / "metadata").mkdir(parents=True)
    planted = []
    for part in range((rows + part_rows - 1) // part_rows):
        n = min(part_rows, rows - part * part_rows)
        prng = np.random.default_rng([seed, part])
        x = unit_float32(centres[prng.integers(0, clusters, n)]
                         + prng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim)))
        chosen = prng.choice(n, size=2 * (n // 200), replace=False)
        originals, copies = chosen[::2], chosen[1::2]
        cos = prng.uniform(threshold + 0.003, 0.995, len(copies)).astype(np.float32)[:, None]
        u = prng.standard_normal((len(copies), dim), dtype=np.float32)
        u = unit_float32(u - (u * x[originals]).sum(1, keepdims=True) * x[originals])  # orthogonal to the original
        x[copies] = unit_float32(cos * x[originals] + np.sqrt(1 - cos ** 2) * u)
        planted += [(part, int(o), int(c)) for o, c in zip(originals, copies)]
        if not write:
            continue
        np.save(root / "img_emb" / f"img_emb_{part}.npy", x.astype(np.float16))
        pq.write_table(pa.table({"key": [f"{part:05d}{i:07d}" for i in range(n)]}),
                       root / "metadata" / f"metadata_{part}.parquet")
    return planted


def build(rows: int, work: Path, args: argparse.Namespace, probe: PeakRSS) -> dict[str, Any]:
    """Dump, ingest and index one size; the run, its planted pairs as global ids, and the build's figures.
    A dump and run already in ``work`` (an earlier --work run) are reused: the stages skip what is committed."""
    dump, run_dir = work / f"dump-{rows}", work / f"run-{rows}"
    planted = write_dump(dump, rows, args.dim, args.part_rows, max(1, rows // args.rows_per_cluster),
                         args.threshold, args.seed, write=not dump.exists())
    cfg = from_dict({"run_dir": str(run_dir), "input": {"format": "laion_embeddings", "shards": [str(dump)]},
                     "embed": {"model": {"arch": "scaleclust-tiny"}},
                     "index": {"kind": "ivf_flat", "nprobe": 8, "queries": 100, "recall_queries": 100},
                     "ray": {"num_cpus": 4}})
    built = not (run_dir / "index" / "manifest.json").exists()  # else its figures are an earlier run's
    ctx = prepare(cfg)
    run_stage("embed", ctx)
    probe.take()
    started = time.perf_counter()
    run_stage("index", ctx)
    index_seconds, peaks = time.perf_counter() - started, probe.take()
    run = RunDir(cfg.run_dir, cfg.storage)
    manifest = load_manifest(run)
    first = {}  # dump part -> the first global id of its shard (the keys say which part a shard holds)
    for shard, entry in manifest["shards"].items():
        key = run.read_table(run.embeddings(shard), ["key"])["key"][0].as_py()
        first[int(key[:5])] = entry["first_id"]
    pairs = np.array([(first[p] + o, first[p] + c) for p, o, c in planted], np.int64)
    return {"rows": rows, "run": run, "planted": pairs, "nlist": manifest["spec"]["nlist"],
            "index_seconds": round(index_seconds, 1) if built else None,
            "train_task_mib": round(peaks.get("_train", 0) / 2**20) if built else None,
            "index_peaks_mib": mib(peaks) if built else None}


def mib(peaks: dict[str, int]) -> dict[str, int]:
    return {name: round(value / 2**20) for name, value in sorted(peaks.items())}


def exact_pairs(run: RunDir, originals: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair (a < b) with cosine >= threshold that holds a planted original: exact dot products of
    the originals against every stored row, one shard at a time."""
    manifest = load_manifest(run)
    query = np.zeros((len(originals), manifest["spec"]["d"]), np.float32)
    for first, vectors in shard_vectors(run, manifest):  # the originals' rows: a first pass over the shards
        inside = (originals >= first) & (originals < first + len(vectors))
        query[inside] = vectors[originals[inside] - first]
    query = unit_float32(query)
    found = []
    for first, vectors in shard_vectors(run, manifest):
        q, j = np.nonzero(query @ unit_float32(vectors).T >= threshold)
        found += [(min(int(originals[a]), first + int(b)), max(int(originals[a]), first + int(b)))
                  for a, b in zip(q, j) if originals[a] != first + b]
    return set(found)


def coverage(run: RunDir, pairs: set[tuple[int, int]]) -> dict[int, float]:
    """Share of the pairs whose rows meet in one block when each row is compared in its m nearest lists."""
    manifest = load_manifest(run)
    lists = np.full((manifest["next_id"], LIST_CHOICES), -1, np.int32)
    for entry in manifest["shards"].values():
        lists[entry["first_id"]:entry["first_id"] + entry["count"]] = np.load(
            io.BytesIO(run.read_bytes(run.path("index", entry["lists"]))))
    a, b = (np.array(side, np.int64) for side in zip(*pairs))
    return {m: round(float(np.mean((lists[a, :m] == lists[b, :1]).any(1) | (lists[b, :m] == lists[a, :1]).any(1))), 4)
            for m in range(1, LIST_CHOICES + 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--part-rows", type=int, default=50_000)
    p.add_argument("--rows-per-cluster", type=int, default=4_000)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--recall-pairs", type=int, default=2_000, help="planted originals the exact search starts from")
    p.add_argument("--bucket-mib", type=int, default=256, help="float32 bytes a dedup bucket task holds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="folder for the dumps and runs, kept and reused (default: a temporary one)")
    args = p.parse_args()
    print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    start_ray()
    probe = PeakRSS()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [build(rows, Path(args.work or tmp), args, probe) for rows in args.rows]
        for size in sizes:
            print(json.dumps({k: v for k, v in size.items() if k not in ("run", "planted")}), flush=True)
        best: dict[int, float] = {}
        workers: dict[int, int] = {}
        for repeat in range(args.repeats):
            for size in sizes:
                probe.take()
                started = time.perf_counter()
                table, _ = dedup(size["run"], args.threshold, [args.threshold], "all",
                                 bucket_bytes=args.bucket_mib << 20)
                seconds, peaks = time.perf_counter() - started, probe.take()
                worker = max((v for k, v in peaks.items() if k not in SERVICES), default=0)
                best[size["rows"]] = min(best.get(size["rows"], np.inf), seconds)
                workers[size["rows"]] = max(workers.get(size["rows"], 0), worker)
                print(json.dumps({"rows": size["rows"], "repeat": repeat, "dedup_seconds": round(seconds, 1),
                                  "us_per_row": round(seconds / size["rows"] * 1e6, 2),
                                  "duplicate_rows": table.num_rows, "largest_worker_mib": round(worker / 2**20),
                                  "peaks_mib": mib(peaks), "load_average": os.getloadavg()}), flush=True)
        for size in sizes:
            run = size["run"]
            rng = np.random.default_rng(args.seed)
            chosen = size["planted"][rng.choice(len(size["planted"]), min(args.recall_pairs, len(size["planted"])),
                                                replace=False)]
            exact = exact_pairs(run, np.unique(chosen[:, 0]), args.threshold)
            found = find_pairs(run, load_manifest(run), args.threshold, "all", LIST_CHOICES, args.bucket_mib << 20)
            got = set(zip(found.a.tolist(), found.b.tolist()))
            planted = {tuple(sorted(pair)) for pair in chosen.tolist()} & exact
            print(json.dumps({"rows": size["rows"], "exact_pairs": len(exact), "planted_pairs": len(planted),
                              "recall_exact": round(len(exact & got) / len(exact), 4),
                              "recall_planted": round(len(planted & got) / len(planted), 4),
                              "in_m_nearest_lists": coverage(run, exact)}), flush=True)
        a, b = sizes[0]["rows"], sizes[-1]["rows"]
        print(json.dumps({"rows_ratio": b / a, "dedup_us_per_row": [round(best[n] / n * 1e6, 2) for n in (a, b)],
                          "per_row_ratio": round((best[b] / b) / (best[a] / a), 3),
                          "largest_worker_mib": [round(workers[n] / 2**20) for n in (a, b)],
                          "train_task_mib": [s["train_task_mib"] for s in (sizes[0], sizes[-1])],
                          "load_average": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
