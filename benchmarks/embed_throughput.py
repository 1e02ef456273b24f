"""Embed throughput: scaleclust's embed stage (b) against a plain single-process loop (a), side by side.

Same shards (realistic 256-512 px JPEG photos), same model, same torch threads, one run:
  (a) one process reads each shard, decodes + resizes with scaleclust's own functions (read_tar_samples,
      decode_shard), normalises and encodes in batches with load_encoder's encoder, writes one Parquet
      per shard: what a simple script does;
  (b) scaleclust.stages.embed.run on a fresh run directory (Ray Data decode tasks -> encoder actor pool ->
      parts -> per-shard commit), on a local Ray started once (its start-up is reported, not counted).
Both times include loading the model. Repetitions interleave (a, b, a, b, ...) and medians are reported,
because the machine is shared. Where the time goes: `a ready s` = model load of (a); `b ready s` = stage
start until the first encoder actor has loaded its model (Ray's task timeline; the actor's worker process
starts, imports torch/open_clip/timm, builds the model); `b check s` = after the last shard's commit marker
(the stage's key de-duplication). With --device cuda: gpus_per_actor=1, bf16, and the GPU busy fraction
(NVML utilisation sampled in a thread) of each side.

    .venv/bin/python benchmarks/embed_throughput.py --model tiny --shards 16 --per-shard 1000 --repeats 2
    .venv/bin/python benchmarks/embed_throughput.py --model effnet --shards 4 --per-shard 500 --repeats 2
        # the figures of docs/measurements.md; the defaults (4 x 128 photos) finish fast but measure mostly the stage's
        # fixed start-up (an encoder actor's process and model load, ~4-6 s), not its throughput
    .venv/bin/python benchmarks/embed_throughput.py --model effnet --set embed.cpus_per_actor=2
    .venv/bin/python benchmarks/embed_throughput.py --device cuda --model all --shards 32 --per-shard 500
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _embed_bench import MODELS, gpu_busy, run_stage, stage_config, start_ray, write_photo_shards

from scaleclust.config import Config, InputConfig, StorageConfig
from scaleclust.embed.actor import encoder_threads
from scaleclust.embed.encoders import load_encoder
from scaleclust.tables import embedding_array
from scaleclust.sources.decode import decode_shard
from scaleclust.sources.webdataset import read_tar_samples


def plain_loop(cfg: Config, out: Path, device: str) -> dict[str, float]:
    """(a): read, decode, normalise, encode and write each shard in turn, in this process.
    Returns seconds, rows and `ready`: seconds to load the model."""
    started = time.perf_counter()
    encoder = load_encoder(cfg.embed.model, StorageConfig(), device, cfg.embed.precision)
    ready = time.perf_counter() - started
    prep = encoder.preprocess
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    out.mkdir(parents=True)
    rows = 0
    with torch.inference_mode():
        for url in cfg.input.shards:
            shard = Path(url).stem
            samples = read_tar_samples(shard, [url], StorageConfig())
            keys, feats = [], []
            for batch in decode_shard(shard, samples, prep.image_size, prep.crop_pct, InputConfig(shards=[url]),
                                      cfg.embed.batch_size):
                x = torch.from_numpy(batch["image"]).to(device).permute(0, 3, 1, 2).float()
                f = encoder.encode(((x - mean) / std).to(encoder.dtype))
                feats.append(torch.nn.functional.normalize(f.float(), dim=-1).half().cpu().numpy())
                keys.extend(batch["key"].tolist())
            pq.write_table(pa.table({"key": keys, "embedding": embedding_array(np.concatenate(feats))}),
                           out / f"{shard}.parquet")
            rows += len(keys)
    return {"seconds": time.perf_counter() - started, "rows": rows, "ready": ready}


def bench_model(model: str, shards: list[str], work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Interleaved repetitions of (a) and (b) for one model; prints each and returns the medians."""
    cuda = args.device == "cuda"
    columns = ["a img/s", "b img/s", "b/a", "a ready s", "b ready s", "b check s"]
    columns += ["a GPU busy", "b GPU busy"] if cuda else []
    print(f"\n== {model}: {MODELS[model]}\n{'rep':>4}" + "".join(f" {c:>10}" for c in columns), flush=True)
    rows: list[list[float]] = []
    for rep in range(1, args.repeats + 1):
        cfg = stage_config(work / f"run-{model}-{rep}", shards, model, args.device, args.ray_cpus, args.set)
        with gpu_busy(cuda) as a_busy:
            a = plain_loop(cfg, work / f"plain-{model}-{rep}", args.device)
        with gpu_busy(cuda) as b_busy:
            b = run_stage(cfg)
        shutil.rmtree(work / f"plain-{model}-{rep}")
        shutil.rmtree(cfg.run_dir)
        a_rate, b_rate = a["rows"] / a["seconds"], b["rows"] / b["seconds"]
        rows.append([a_rate, b_rate, b_rate / a_rate, a["ready"], b["ready"], b["check"]]
                    + ([statistics.fmean(a_busy) / 100, statistics.fmean(b_busy) / 100] if cuda else []))
        print(f"{rep:>4}" + "".join(f" {v:>10.2f}" for v in rows[-1]), flush=True)
    medians = [statistics.median(column) for column in zip(*rows)]
    print(f"{'med':>4}" + "".join(f" {v:>10.2f}" for v in medians), flush=True)
    return dict(zip(columns, medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*MODELS, "all"], nargs="+", default=["tiny", "effnet"])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each side, interleaved")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the plain loop (default: the stage's encoder threads, "
                        "max_actors * scaleclust.embed.actor.encoder_threads)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default max(4, cores))")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override the stage config, e.g. embed.cpus_per_actor=2 (repeatable)")
    args = parser.parse_args()
    models = list(MODELS) if "all" in args.model else args.model
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        shards = write_photo_shards(work / "shards", args.shards, args.per_shard)
        size = sum(os.path.getsize(s) for s in shards) / len(shards) / 2**20
        probe = stage_config(work / "probe", shards, models[0], args.device, args.ray_cpus, args.set)
        args.threads = args.threads or probe.embed.max_actors * encoder_threads(probe.embed, args.device)
        torch.set_num_threads(args.threads)
        print(f"{args.shards} shards x {args.per_shard} JPEG photos (256-512 px, {size:.1f} MiB/shard), written in "
              f"{time.perf_counter() - started:.1f} s; device {args.device}; {os.cpu_count()} cores; torch threads "
              f"{args.threads} (a) = those of all encoder actors (b)")
        print(f"stage: embed {probe.embed.model_dump(exclude={'model', 'text'})}, ray num_cpus "
              f"{probe.ray.num_cpus or max(4, os.cpu_count() or 1)}")
        print(f"Ray start-up (once, not in b): {start_ray(probe):.1f} s")
        results = {model: bench_model(model, shards, work, args) for model in models}
    print("\nmedians")
    print(f"{'model':>8} {'a plain img/s':>14} {'b stage img/s':>14} {'b/a':>6} {'b fixed s':>10}")
    for model, r in results.items():
        print(f"{model:>8} {r['a img/s']:>14.1f} {r['b img/s']:>14.1f} {r['b/a']:>6.2f} {r['b ready s'] + r['b check s']:>10.1f}")


if __name__ == "__main__":
    main()
