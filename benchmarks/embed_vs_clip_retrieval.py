"""scaleclust's embed stage against the real peer, clip-retrieval's `clip-retrieval inference`, on the same
WebDataset shards of realistic photos with the same ViT-B-32 checkpoint, runs alternating; prints each
run's wall time, the speed ratios (clip-retrieval seconds / scaleclust seconds: > 1 means scaleclust is
faster) and the cosine agreement of the two embeddings key by key.

The peer runs two ways (`--peer`): at its defaults, and tuned as an outside tester tuned it on these
2-CPU machines (`--batch_size 64 --use_jit False`: smaller batches and no TorchScript trace, 1.3-1.4x
faster than its defaults there). One ratio is printed against each.

clip-retrieval is installed with pip into its own virtual environment (`--venv`; `setuptools<81`, which
its dependencies still need), once. That environment sees this interpreter's packages behind its own
(a .pth file), so torch is not installed twice; clip-retrieval's own pins (numpy, pyarrow, open_clip)
win there. No model hub is contacted: the checkpoint is the state_dict of a seeded random-weight
ViT-B-32 saved locally, loaded by clip-retrieval as `open_clip:ViT-B-32/<absolute path>` and by
scaleclust as embed.model.pretrained (the same compute as pretrained weights).

Besides that, both sides run with their defaults, except where a side needs telling: clip-retrieval reads
webdataset input with `num_prepro_workers` = the machine's cores and no text; scaleclust runs
`scaleclust embed` with the project defaults and the model. Wall time of each command, model load and
start-up included. The sides take turns, in an order that rotates each repeat.

    python benchmarks/embed_vs_clip_retrieval.py --shards 4 --per-shard 500 --repeats 2
    python benchmarks/embed_vs_clip_retrieval.py --shards 40 --per-shard 500 --repeats 1 --peer tuned
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from _embed_bench import write_photo_shards

from scaleclust.config import ModelConfig, StorageConfig
from scaleclust.embed.encoders import load_encoder
from scaleclust.tables import embedding_matrix

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
ARCH = "ViT-B-32"
PEERS = {"defaults": [], "tuned": ["--batch_size", "64", "--use_jit", "False"]}  # clip-retrieval's extra flags


def ensure_venv(venv: Path) -> Path:
    """clip-retrieval's own virtual environment (made and filled once); its `clip-retrieval` command."""
    command = venv / "bin" / "clip-retrieval"
    if command.exists():
        return command
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_shared_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after its own packages
    done = subprocess.run([str(venv / "bin" / "pip"), "install", CLIP_RETRIEVAL, "setuptools<81"],
                          capture_output=True, text=True)
    if done.returncode != 0 or not command.exists():
        raise SystemExit(f"pip could not install {CLIP_RETRIEVAL} into {venv}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return command


def run_clip_retrieval(command: Path, shards: str, out: Path, per_shard: int, flags: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(command), "inference", "--input_dataset", shards,
                    "--output_folder", str(out), "--input_format", "webdataset", "--enable_text", "False",
                    "--enable_wandb", "False", "--clip_model", f"open_clip:{ARCH}/{out.parent / 'vitb32.pt'}",
                    "--num_prepro_workers", str(os.cpu_count() or 1), "--wds_number_file_per_input_file",
                    str(per_shard), "--output_partition_count", "1", *flags],
                   check=True, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return time.perf_counter() - started


def run_scaleclust(shards: str, run_dir: Path, checkpoint: Path) -> float:
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(run_dir), "input": {"shards": shards},
                                      "embed": {"model": {"arch": ARCH, "pretrained": str(checkpoint)}}}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scaleclust.cli", "embed", str(config)], check=True, capture_output=True,
                   text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return time.perf_counter() - started


def clip_retrieval_embeddings(out: Path) -> dict[str, np.ndarray]:
    keys = [k for part in sorted((out / "metadata").glob("*.parquet")) for k in pq.read_table(part)["image_path"].to_pylist()]
    emb = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))]).astype(np.float32)
    return dict(zip(keys, emb))


def scaleclust_embeddings(run_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for part in sorted((run_dir / "embeddings").glob("*.parquet")):
        table = pq.read_table(part, columns=["key", "embedding"])
        out.update(zip(table["key"].to_pylist(), embedding_matrix(table["embedding"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=125)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--peer", nargs="+", choices=sorted(PEERS), default=["defaults", "tuned"],
                        help="how clip-retrieval runs: at its defaults, tuned (%s), or both" % " ".join(PEERS["tuned"]))
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "scaleclust-clip-retrieval-venv")
    args = parser.parse_args()
    command = ensure_venv(args.venv)
    with tempfile.TemporaryDirectory(prefix="embed-vs-cr-") as tmp:
        work = Path(tmp)
        write_photo_shards(work / "shards", args.shards, args.per_shard)
        shards = f"{work}/shards/{{00000..{args.shards - 1:05d}}}.tar"  # both sides expand braces
        checkpoint = work / "vitb32.pt"
        torch.save(load_encoder(ModelConfig(arch=ARCH), StorageConfig(), "cpu").model.state_dict(), checkpoint)
        print(f"{args.shards} shards x {args.per_shard} JPEG photos (256-512 px), {ARCH} random-weight checkpoint, "
              f"{os.cpu_count()} cores, {CLIP_RETRIEVAL}", flush=True)
        sides = [f"clip-retrieval {peer}" for peer in args.peer] + ["scaleclust"]
        times: dict[str, list[float]] = {side: [] for side in sides}
        for rep in range(args.repeats):
            for side in sides[rep % len(sides):] + sides[: rep % len(sides)]:
                out = work / f"{side.replace(' ', '-')}-{rep}"
                seconds = (run_scaleclust(shards, out, checkpoint) if side == "scaleclust" else
                           run_clip_retrieval(command, shards, out, args.per_shard, PEERS[side.split()[1]]))
                times[side].append(seconds)
                print(json.dumps({"rep": rep, "side": side, "seconds": round(seconds, 1),
                                  "images_per_s": round(args.shards * args.per_shard / seconds, 2)}), flush=True)
        last = args.repeats - 1
        ours = scaleclust_embeddings(work / f"scaleclust-{last}")
        theirs = clip_retrieval_embeddings(work / f"{sides[0].replace(' ', '-')}-{last}")
        common = sorted(set(theirs) & set(ours))
        cos = np.asarray([float(theirs[k] @ ours[k] / np.linalg.norm(theirs[k]) / np.linalg.norm(ours[k])) for k in common])
    sc = statistics.median(times["scaleclust"])
    print(f"\nmedian seconds: scaleclust {sc:.1f} (runs: {', '.join(f'{b:.0f}' for b in times['scaleclust'])} s)")
    for side in sides[:-1]:
        cr = statistics.median(times[side])
        print(f"{side}: median {cr:.1f} s (runs: {', '.join(f'{a:.0f}' for a in times[side])} s); "
              f"speed ratio scaleclust / {side} {cr / sc:.2f}")
    print(f"keys: {len(theirs)} {sides[0]}, {len(ours)} scaleclust, {len(common)} both; cosine per key: "
          f"min {cos.min():.4f}, median {np.median(cos):.4f}")


if __name__ == "__main__":
    main()
