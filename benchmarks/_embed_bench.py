"""Shared by embed_throughput.py and embed_memory.py: realistic photo shards, the models, the local Ray
and one run of scaleclust's embed stage on a fresh run directory.

Shards hold real photographs (the two JPEG photos that ship in scikit-learn), randomly cropped, flipped,
colour-shifted and resized to 256-512 px, re-encoded as JPEG: decoding them costs what web images cost,
unlike MNIST's 28 px PNGs.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from PIL import Image

from scaleclust.config import Config, apply_override, from_dict
from scaleclust.stages import embed as stage
from scaleclust.pipeline import prepare
from scaleclust.sources.shard_writer import jpeg_bytes, sample_members, tar_bytes

MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"kind": "open_clip", "arch": "scaleclust-tiny"},
    "effnet": {"kind": "timm", "arch": "efficientnet_lite0", "pretrained": "package:efficientnet_lite0"},
    "vitb32": {"kind": "open_clip", "arch": "ViT-B-32"},
    "vitl14": {"kind": "open_clip", "arch": "ViT-L-14"},  # random weights: the same compute as pretrained
}


def photo(base: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random crop of a photograph (30-100% of its area), flipped, colour-shifted, 256-512 px on its long side."""
    h, w, _ = base.shape
    area = rng.uniform(0.3, 1.0) * h * w
    aspect = rng.uniform(0.75, 1.33)
    ch, cw = min(h, int(np.sqrt(area / aspect))), min(w, int(np.sqrt(area * aspect)))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = base[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.clip(crop * rng.uniform(0.7, 1.3, size=3), 0, 255).astype(np.uint8)
    long_side = int(rng.integers(256, 513))
    scale = long_side / max(ch, cw)
    return Image.fromarray(crop).resize((max(1, int(cw * scale)), max(1, int(ch * scale))), Image.BICUBIC)


def write_photo_shards(folder: Path, n_shards: int, per_shard: int, seed: int = 0) -> list[str]:
    """Write n_shards WebDataset tars of per_shard photo samples (KEY.jpg, KEY.txt, KEY.json); their paths."""
    from sklearn.datasets import load_sample_images

    bases = load_sample_images().images
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        rng = np.random.default_rng(seed * 100_003 + shard)
        samples = []
        for i in range(per_shard):
            key = f"{shard:05d}{i:05d}"
            image = jpeg_bytes(photo(bases[i % len(bases)], rng), quality=int(rng.integers(80, 96)))
            samples.append((key, sample_members(key, image, "a photograph", {"url": f"http://example.invalid/{key}.jpg"})))
        path = folder / f"{shard:05d}.tar"
        path.write_bytes(tar_bytes(samples))
        paths.append(str(path))
    return paths


def stage_config(run_dir: Path, shards: list[str], model: str, device: str, ray_cpus: int | None,
                 overrides: list[str]) -> Config:
    """The embed config: project defaults, the model, GPU settings for cuda, then `--set` overrides."""
    data: dict[str, Any] = {"run_dir": str(run_dir), "input": {"shards": shards},
                            "ray": {"num_cpus": ray_cpus}, "embed": {"model": MODELS[model]}}
    if device == "cuda":
        data["embed"].update(gpus_per_actor=1, precision="bf16")
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(data)


def start_ray(cfg: Config) -> float:
    """Start the local Ray the way scaleclust does (num_cpus: the config's, else max(4, cores)); seconds taken."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per dataset executed
    logging.getLogger("ray._private.state").setLevel(logging.ERROR)  # ray.timeline()'s notice of an API change
    return time.perf_counter() - started


def run_stage(cfg: Config) -> dict[str, float]:
    """prepare + embed stage on cfg.run_dir (fresh, local), progress lines silenced. Returns seconds, rows
    embedded, `ready`: seconds until the first encoder actor finished loading its model (Ray's task
    timeline), and `check`: seconds after the last shard's commit marker (the stage's key de-duplication)."""
    started, wall = time.perf_counter(), time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        ctx = prepare(cfg)
        run, shards = ctx.run, ctx.shards
        stats = stage.run(cfg, run, shards)
    seconds, ended = time.perf_counter() - started, time.time()
    last_commit = max(p.stat().st_mtime for p in Path(cfg.run_dir, "embeddings").glob("*.done.json"))
    inits = [(e["ts"] + e["dur"]) / 1e6 for e in ray.timeline() if e.get("ph") == "X"
             and e["cat"].endswith("(MapBatches(EncodeBatch)).__init__") and e["ts"] / 1e6 >= wall]
    return {"seconds": seconds, "rows": stats["embedded"], "ready": min(inits) - wall if inits else float("nan"),
            "check": ended - last_commit}


def gpu_utilization() -> float:
    """Current GPU utilisation in percent (NVML through torch, else nvidia-smi)."""
    try:
        return float(torch.cuda.utilization())
    except (ModuleNotFoundError, RuntimeError):
        line = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=True).stdout
        return float(line.split()[0])


@contextlib.contextmanager
def gpu_busy(enabled: bool, every: float = 0.2) -> Iterator[list[float]]:
    """Sample GPU utilisation in a thread while the block runs; the yielded list holds the samples (%)."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            samples.append(gpu_utilization())

    thread = threading.Thread(target=sample, daemon=True)
    if enabled:
        thread.start()
    try:
        yield samples
    finally:
        stop.set()
        if enabled:
            thread.join()
