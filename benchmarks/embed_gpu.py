"""Embedding at GPU speed: the encoder's ceiling, a competent DataLoader script and scaleclust's embed
stage, side by side on the same shards and model, one run; every result is printed as a JSON line as
soon as it is measured (a run cut short still reports), then the ratios.

  ceiling   the encoder alone: uint8 batches already on the device, normalised there, weights in
            `--precision` (bf16 on cuda), no decode, no copies; images/s.
  loader    a torch DataLoader script: one worker process per free core, each reading whole shards and
            decoding with scaleclust's CPU decode (decode_shard), pinned memory, batches moved
            non_blocking, the same model and dtype; model load included.
  stage     scaleclust.stages.embed.run on a fresh run directory (decode tasks -> encoder actors -> per-shard
            commit) with `embed.decode` auto (JPEG decode on the device on cuda); whole-stage images/s
            and steady-state images/s (after the first encoder actor was ready).
GPU busy %: NVML utilisation sampled every 0.2 s during each side (cuda only).

The model's random weights are saved once as a checkpoint, and every side loads that checkpoint (the
path a pretrained model takes: built on the meta device, weights assigned, cast once).

    python benchmarks/embed_gpu.py --device cuda --model vitb32 vitl14 --shards 128 --per-shard 512
    python benchmarks/embed_gpu.py --device cpu --model tiny --shards 2 --per-shard 64   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from _embed_bench import MODELS, gpu_busy, run_stage, stage_config, start_ray, write_photo_shards

from scaleclust.config import Config, InputConfig, ModelConfig, StorageConfig
from scaleclust.embed.actor import EncodeBatch, encoder_threads
from scaleclust.embed.encoders import load_encoder
from scaleclust.sources.decode import decode_shard
from scaleclust.sources.webdataset import read_tar_samples


def report(result: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    return result


def save_checkpoint(model: str, folder: Path) -> dict[str, Any]:
    """The model config with its seeded random weights saved as a local checkpoint."""
    spec = dict(MODELS[model])
    if spec.get("pretrained"):
        return spec
    encoder = load_encoder(ModelConfig(**spec), StorageConfig(), "cpu")
    path = folder / f"{model}.pt"
    torch.save(encoder.model.state_dict(), path)
    return {**spec, "pretrained": str(path)}


def ceiling(cfg: Config, device: str, seconds: float) -> dict[str, Any]:
    """Images/s of the encoder actor's own encode on uint8 batches already on the device."""
    actor = EncodeBatch(cfg.embed, cfg.storage)
    size = actor.encoder.preprocess.image_size
    batch = torch.randint(0, 256, (cfg.embed.batch_size, 3, size, size), dtype=torch.uint8, device=device)
    actor.encode_uint8(batch, nchw=True)  # warm-up: kernels, allocator
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        actor.encode_uint8(batch, nchw=True)
        done += len(batch)
    return {"images_per_s": done / (time.perf_counter() - started)}


class ShardImages(torch.utils.data.IterableDataset):
    """Each DataLoader worker reads its share of the shards and yields decoded uint8 batches."""

    def __init__(self, shards: list[str], size: int, crop_pct: float, batch: int) -> None:
        self.shards, self.size, self.crop_pct, self.batch = shards, size, crop_pct, batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = self.shards[info.id :: info.num_workers] if info else self.shards
        for url in mine:
            shard = Path(url).stem
            samples = read_tar_samples(shard, [url], StorageConfig())
            for rows in decode_shard(shard, samples, self.size, self.crop_pct, InputConfig(shards=[url]), self.batch):
                yield {"image": torch.from_numpy(rows["image"]), "ok": torch.from_numpy(rows["error"] == "")}


def loader(cfg: Config, shards: list[str], device: str, workers: int) -> dict[str, Any]:
    """The DataLoader script: decode in `workers` processes, encode in this one; model load included."""
    started = time.perf_counter()
    encoder = load_encoder(cfg.embed.model, cfg.storage, device, cfg.embed.precision)
    prep = encoder.preprocess
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    data = torch.utils.data.DataLoader(ShardImages(shards, prep.image_size, prep.crop_pct, cfg.embed.batch_size),
                                       batch_size=None, num_workers=workers, pin_memory=device == "cuda",
                                       prefetch_factor=4 if workers else None, persistent_workers=False)
    rows, out = 0, []
    with torch.inference_mode():
        for batch in data:
            x = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2)
            feats = encoder.encode(((x.float() - mean) / std).to(encoder.dtype))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).half().to("cpu", non_blocking=True))
            rows += int(batch["ok"].sum())
    if device == "cuda":
        torch.cuda.synchronize()
    return {"images_per_s": rows / (time.perf_counter() - started), "rows": rows}


def bench(model: str, shards: list[str], work: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cuda = args.device == "cuda"
    sets = [f"embed.model.{k}={v}" for k, v in save_checkpoint(model, work).items()]
    sets += [f"embed.batch_size={args.batch}", f"embed.precision={args.precision}"] + args.set
    cfg = stage_config(work / f"run-{model}", shards, model, args.device, args.ray_cpus, sets)
    out: dict[str, dict[str, Any]] = {}
    with gpu_busy(cuda) as busy:
        out["ceiling"] = ceiling(cfg, args.device, args.ceiling_seconds)
    out["ceiling"]["gpu_busy"] = statistics.fmean(busy) if busy else None
    report({"model": model, "side": "ceiling", **out["ceiling"]})
    for rep in range(args.repeats):  # alternate: the machine's load changes over a run
        with gpu_busy(cuda) as busy:
            got = loader(cfg, shards, args.device, args.workers)
        got["gpu_busy"] = statistics.fmean(busy) if busy else None
        report({"model": model, "side": "loader", "rep": rep, **got})
        out.setdefault("loader", []).append(got)
        with gpu_busy(cuda) as busy:
            stage = run_stage(cfg)
        stage = {"images_per_s": stage["rows"] / stage["seconds"], "rows": stage["rows"],
                 "steady_images_per_s": stage["rows"] / max(stage["seconds"] - stage["ready"], 1e-9),
                 "ready_s": stage["ready"], "gpu_busy": statistics.fmean(busy) if busy else None}
        report({"model": model, "side": "stage", "rep": rep, **stage})
        out.setdefault("stage", []).append(stage)
        Path(cfg.run_dir).rename(work / f"done-{model}-{rep}")
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """The ratios, one line per model (medians over repetitions)."""
    lines = ["model      ceiling img/s  loader img/s  stage img/s  steady img/s  stage/loader  steady/ceiling  "
             "GPU busy stage"]
    for model, r in results.items():
        loader_rate = statistics.median(x["images_per_s"] for x in r["loader"])
        stage_rate = statistics.median(x["images_per_s"] for x in r["stage"])
        steady = statistics.median(x["steady_images_per_s"] for x in r["stage"])
        busy = [x["gpu_busy"] for x in r["stage"] if x["gpu_busy"] is not None]
        lines.append(f"{model:<10} {r['ceiling']['images_per_s']:>13.1f} {loader_rate:>13.1f} {stage_rate:>12.1f} "
                     f"{steady:>13.1f} {stage_rate / loader_rate:>13.2f} {steady / r['ceiling']['images_per_s']:>15.2f} "
                     f"{(f'{statistics.fmean(busy):.0f}%' if busy else 'n/a'):>15}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), nargs="+", default=["tiny"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="embed.batch_size (default: 256 on cuda, 64 on cpu)")
    parser.add_argument("--precision", default=None, help="embed.precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1)")
    parser.add_argument("--repeats", type=int, default=1, help="loader/stage pairs, alternating")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default max(4, cores))")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="stage config override")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.batch = args.batch or (256 if cuda else 64)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory(prefix="embed-gpu-") as tmp:
        work = Path(tmp)
        shards = write_photo_shards(work / "shards", args.shards, args.per_shard)
        probe = stage_config(work / "probe", shards, args.model[0], args.device, args.ray_cpus, args.set)
        torch.set_num_threads(encoder_threads(probe.embed, args.device))
        report({"shards": args.shards, "per_shard": args.per_shard, "device": args.device, "cores": os.cpu_count(),
                "loader_workers": args.workers, "batch": args.batch, "precision": args.precision,
                "ray_start_s": start_ray(probe)})
        results = {model: bench(model, shards, work, args) for model in args.model}
    print("\n" + table(results))


if __name__ == "__main__":
    main()
