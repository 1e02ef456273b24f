"""The encoder alone in fp32 and in bf16 on this machine's device, side by side: images/s of each and the
cosine between the two embeddings of the same inputs. It is what `embed.precision: auto` decides on:
bf16 only where the device computes it natively (scaleclust.embed.encoders.native_bf16).

    .venv/bin/python benchmarks/precision.py --model effnet vitb32 [--seconds 15] [--batch 64]

Models: effnet (EfficientNet-Lite0, its real ImageNet weights from a package), vitb32 (open_clip ViT-B-32,
random weights: the same compute as pretrained ones). Inputs are uniform noise images, already
normalised, so only the encoder is timed; torch threads = the cores this process may use.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from scaleclust.config import ModelConfig, StorageConfig
from scaleclust.embed.encoders import load_encoder, native_bf16

MODELS = {"effnet": ModelConfig(kind="timm", arch="efficientnet_lite0", pretrained="package:efficientnet_lite0"),
          "vitb32": ModelConfig(arch="ViT-B-32")}


def rate(model: ModelConfig, precision: str, x: torch.Tensor, seconds: float) -> tuple[float, torch.Tensor]:
    """Images/s of the encoder in `precision` on batches x, encoded again and again for `seconds`; and its
    unit embeddings of x."""
    encoder = load_encoder(model, StorageConfig(), "cpu", precision)
    batch = x.to(encoder.dtype)
    with torch.inference_mode():
        encoder.encode(batch[:4])  # warm-up: oneDNN picks its kernels on the first call
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            features = encoder.encode(batch)
            done += len(batch)
    return done / (time.perf_counter() - started), torch.nn.functional.normalize(features.float(), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", choices=sorted(MODELS), default=["effnet", "vitb32"])
    parser.add_argument("--seconds", type=float, default=15.0, help="encoding time per model and precision")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(f"{torch.get_num_threads()} threads; native bf16 on this CPU: {native_bf16('cpu')}", flush=True)
    for name in args.model:
        x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        fp32, a = rate(MODELS[name], "fp32", x, args.seconds)
        bf16, b = rate(MODELS[name], "bf16", x, args.seconds)
        cosine = (a * b).sum(-1)
        print(json.dumps({"model": name, "fp32_images_per_s": round(fp32, 1), "bf16_images_per_s": round(bf16, 1),
                          "bf16_over_fp32": round(bf16 / fp32, 2), "cosine_min": round(cosine.min().item(), 5),
                          "cosine_median": round(cosine.median().item(), 5)}), flush=True)


if __name__ == "__main__":
    main()
