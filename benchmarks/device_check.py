"""The prepared GPU check: every GPU code path of scaleclust run once and timed on a machine with one
NVIDIA GPU, within 8 minutes, one JSON line per figure (benchmarks/device_check.sh starts it).

Steps, each in its own process with its own time limit, so that one that fails or hangs is reported
(with its traceback) and the next still runs:

  env       the GPU, driver, torch/CUDA, faiss (GPUs it sees), Ray
  embed     benchmarks/embed_gpu.py for ViT-B-32 and ViT-L-14 (random weights; the encoder's ceiling,
            the DataLoader baseline and the embed stage: nvJPEG decode, bf16 weights, the chunk pipeline)
  kmeans    spherical k-means of 1M x 512 into 20k centroids (cluster.kmeans, faiss-gpu when the
            packed faiss-gpu is there; else on the CPU at 1/5 of the rows and 1/10 of the centroids,
            and the line says so)
  ivf       an IVF-Flat index of 1M x 512 built with the index stage's functions, then searched
  scan      a SCAN fit of 300 steps through Ray Train on CUDA, on 200k precomputed 512-d embeddings
            (the stages of a laion_embeddings dump in one process: ingest, index, fit, assign)
  pipeline  a tiny `scaleclust run` on JPEG shards with embed.gpus_per_actor 1

--dry-run runs the same steps on the CPU at toy sizes (the suite runs it: tests/test_device_check.py).

    benchmarks/device_check.sh            # on the GPU machine (see the .sh for the packed site)
    python benchmarks/device_check.py --dry-run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# (rows, dim, centroids) per form; the CPU fallback on a GPU machine divides them (see module docstring)
KMEANS = {"gpu": (1_000_000, 512, 20_000), "dry": (4_000, 32, 20)}
NOUNS = str(HERE.parent / "tests" / "nouns.txt")  # 60 nouns: naming runs, without WordNet's 68k prompts
IVF = {"gpu": (1_000_000, 512, 10_000), "dry": (4_000, 32, 500)}  # (rows, dim, queries)
SCAN = {"gpu": (200_000, 512, 300, 100), "dry": (600, 64, 10, 6)}  # (rows, dim, steps, clusters)


def child_env() -> dict[str, str]:
    """The environment of a step's process: the project and benchmarks/ ahead of PYTHONPATH (which holds
    the packed site on the GPU machine)."""
    path = [str(HERE.parent), str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def emit(**fields: Any) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}), flush=True)


def clustered(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """n unit rows around k random unit centres (cosine about 0.7 to their centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, k, n)] + rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def step_env(form: str) -> None:
    import faiss
    import ray
    import torch

    cuda = torch.cuda.is_available()
    emit(figure="env", form=form, cuda=cuda, gpu=torch.cuda.get_device_name(0) if cuda else None,
         torch=torch.__version__, cuda_runtime=torch.version.cuda, faiss=faiss.__version__,
         faiss_gpus=faiss.get_num_gpus(), ray=ray.__version__, cpus=os.cpu_count())


def step_kmeans(form: str) -> None:
    import faiss

    from scaleclust.cluster.kmeans import spherical_kmeans

    gpus = faiss.get_num_gpus()
    n, d, k = KMEANS["dry" if form == "dry" else "gpu"]
    if form != "dry" and not gpus:
        n, k = n // 5, k // 10
    x = clustered(n, d, max(1, k // 4))
    started = time.time()
    centroids, objective = spherical_kmeans(x, k, niter=10, restarts=1, seed=0, gpus=gpus)
    emit(figure="kmeans", device="gpu" if gpus else "cpu", rows=n, dim=d, k=k, niter=10,
         seconds=time.time() - started, mean_cos=objective / n,
         note=None if gpus or form == "dry" else "faiss-gpu absent: the CPU, at 1/5 of the rows and 1/10 of k")
    assert centroids.shape == (k, d)


def step_ivf(form: str) -> None:
    import faiss

    from scaleclust.index import build
    from scaleclust.index.choose import choose_index
    from scaleclust.index.search import search

    n, d, nq = IVF["dry" if form == "dry" else "gpu"]
    x = clustered(n, d, max(4, n // 1000), seed=1)
    spec = choose_index(n, d, kind="ivf_flat")
    started = time.time()
    empty = build.train(x[: spec.small_rows], spec, [x[: spec.train_rows]])
    trained = time.time()
    index = build.add(empty, x, 0)
    added = time.time()
    queries = x[:: max(1, n // nq)][:nq]
    sims, ids = search([index], queries, 10, nprobe=16)
    searched = time.time()
    emit(figure="ivf", device="gpu" if faiss.get_num_gpus() else "cpu", rows=n, dim=d, nlist=spec.nlist,
         train_s=trained - started, add_s=added - trained, queries=len(queries),
         queries_per_s=len(queries) / max(searched - added, 1e-9),
         self_found=float(np.mean(ids[:, 0] == np.arange(0, n, max(1, n // nq))[:nq])))


def step_scan(form: str) -> None:
    """The stages a SCAN fit needs, in this process (one Ray): ingest of a precomputed dump, index and
    neighbours, the fit through Ray Train (on CUDA unless dry), assign. Naming and the report are the
    pipeline step's."""
    gpu = form != "dry"
    n, d, steps, k = SCAN["dry" if form == "dry" else "gpu"]
    with tempfile.TemporaryDirectory(prefix="device-scan-", ignore_cleanup_errors=True) as folder:
        _scan(Path(folder), gpu, n, d, steps, k)


def _scan(work: Path, gpu: bool, n: int, d: int, steps: int, k: int) -> None:
    """step_scan in the folder `work`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scaleclust.config import from_dict
    from scaleclust.pipeline import prepare, run_stage
    from scaleclust.ray_setup import ensure_ray

    x = clustered(n, d, k, seed=2).astype(np.float16)
    for folder in ("img_emb", "metadata"):
        (work / "dump" / folder).mkdir(parents=True)
    for p, rows in enumerate(np.array_split(np.arange(n), 4)):
        np.save(work / "dump" / "img_emb" / f"img_emb_{p}.npy", x[rows])
        pq.write_table(pa.table({"key": [f"{p}-{i}" for i in range(len(rows))]}),
                       work / "dump" / "metadata" / f"metadata_{p}.parquet")
    cfg = from_dict({
        "run_dir": str(work / "run"), "input": {"format": "laion_embeddings", "shards": [str(work / "dump")]},
        "embed": {"model": {"arch": "ViT-B-32" if d == 512 else "scaleclust-tiny"}},
        "cluster": {"method": "scan", "k": k, "sample_size": n, "scan": {"steps": steps, "self_label_steps": 0},
                    "train": {"workers": 1, "use_gpu": gpu, "checkpoint_every": max(1, steps // 3)}},
        "index": {"queries": min(n, 20_000), "recall_queries": 200}})
    ctx = prepare(cfg)
    ensure_ray(cfg)
    seconds = {}
    for stage in ("embed", "index", "fit", "assign"):
        started = time.time()
        run_stage(stage, ctx)
        seconds[stage] = time.time() - started
    model = json.loads((work / "run" / "model" / "model.json").read_text())
    emit(figure="scan_fit", device="cuda" if gpu else "cpu", rows=n, dim=d, steps=steps, k=k,
         fit_s=seconds["fit"], steps_per_s=steps / seconds["fit"], stage_seconds={k: round(v, 2) for k, v in seconds.items()},
         train_rows_per_s=model.get("train", {}).get("rows_per_second"))


def step_pipeline(form: str) -> None:
    """A tiny `scaleclust run` from image shards, the encoder on one GPU unless dry."""
    with tempfile.TemporaryDirectory(prefix="device-run-", ignore_cleanup_errors=True) as folder:
        _pipeline(Path(folder), form)


def _pipeline(work: Path, form: str) -> None:
    """step_pipeline in the folder `work`."""
    import yaml

    from tests.shards import write_synthetic_shards

    shards = write_synthetic_shards(work / "shards", n_shards=2, per_shard=32)
    job = {"run_dir": str(work / "run"), "input": {"shards": shards, "label_field": "label"},
           "embed": {"model": {"arch": "scaleclust-tiny"}, "gpus_per_actor": 0 if form == "dry" else 1},
           "cluster": {"method": "kmeans", "k": 3}, "label": {"vocabulary": NOUNS}}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "scaleclust.cli", "run", str(work / "job.yaml")],
                          capture_output=True, text=True, env=child_env())
    if done.returncode:
        raise RuntimeError(f"scaleclust run exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    emit(figure="pipeline", gpus_per_actor=job["embed"]["gpus_per_actor"], run_s=time.time() - started,
         assigned=metrics.get("counts", {}).get("assigned"), acc=metrics.get("labels", {}).get("acc"),
         last_line=done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None)


def embed_args(form: str, model: str) -> list[str]:
    if form == "dry":
        return ["--device", "cpu", "--model", "tiny", "--shards", "1", "--per-shard", "16", "--ceiling-seconds", "0.5"]
    size = {"vitb32": ("32", "512"), "vitl14": ("16", "256")}[model]
    return ["--device", "cuda", "--model", model, "--shards", size[0], "--per-shard", size[1], "--ceiling-seconds", "5"]


STEPS: dict[str, Callable[[str], None]] = {"env": step_env, "kmeans": step_kmeans, "ivf": step_ivf,
                                           "scan": step_scan, "pipeline": step_pipeline}
# (step, seconds allowed on the GPU machine); the dry run allows each 300 s
PLAN = [("env", 30), ("embed:vitb32", 100), ("embed:vitl14", 100), ("kmeans", 60), ("ivf", 60),
        ("scan", 60), ("pipeline", 50)]


def run_step(name: str, form: str, limit: float) -> bool:
    """One step in a child process within `limit` seconds: its JSON lines pass through; a failure or a
    timeout is one JSON line with the traceback (the child's stderr)."""
    if name.startswith("embed:"):
        command = [sys.executable, str(HERE / "embed_gpu.py"), *embed_args(form, name.split(":")[1])]
    else:
        command = [sys.executable, __file__, "--step", name, "--form", form]
    started = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit,
                              env=child_env())
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        print(out, end="", flush=True)
        emit(step=name, ok=False, seconds=time.time() - started, error=f"timed out after {limit:.0f} s")
        return False
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    print("\n".join(lines), flush=True)
    if done.returncode:
        emit(step=name, ok=False, seconds=time.time() - started, error=f"exit {done.returncode}",
             traceback=done.stderr[-6000:])
        return False
    emit(step=name, ok=True, seconds=time.time() - started, figures=len(lines))
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU at toy sizes (what the suite runs)")
    parser.add_argument("--only", nargs="+", help="run only these steps (names as in the plan)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--form", default="gpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a child: one step, a traceback on failure
        try:
            STEPS[args.step](args.form)
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    form = "dry" if args.dry_run else "gpu"
    plan = [(name, 300 if args.dry_run else limit) for name, limit in PLAN if not args.only or name in args.only]
    if args.dry_run:
        plan = [(name, limit) for name, limit in plan if name != "embed:vitl14"]  # one tiny embed is enough
    results = [run_step(name, form, limit) for name, limit in plan]
    emit(summary="device_check", form=form, steps=len(results), failed=results.count(False))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
