"""Cost of a nightly `scaleclust update` that brings 1% new data, as a fraction of a full run.

Both sides run in one process on one local Ray (started before either is timed), on the same photo
shards (see _embed_bench.py): the full run is the first update of a fresh run directory (embed every
shard, fit, assign, summary, novelty calibration, version 1); the nightly update then finds `--new`
more shards (1% of the rows by default) and embeds, assigns, measures drift and writes version 2.
Embedding is counted on both sides. Repetitions use fresh run directories. Prints the stage seconds of
each side and the ratio update / full (goal: <= 0.05). With --refit the nightly update refits
(update.refit every_n, every_n 1) whatever the drift: the cost of a refit night (goal: <= 0.3), for the
method the config names (--set cluster.method=scan: a warm refit of update.refit_steps steps).

    .venv/bin/python benchmarks/update_cost.py --model tiny --shards 100 --per-shard 100 --new 1
    .venv/bin/python benchmarks/update_cost.py --model tiny --shards 100 --per-shard 100 --new 1 --refit \
        --set cluster.method=scan
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from _embed_bench import MODELS, start_ray, stage_config, write_photo_shards

from scaleclust.sources.shard_writer import tar_bytes

from scaleclust.config import apply_override, from_dict
from scaleclust.update import update


def photo_shards(folder: Path, n_shards: int, per_shard: int, unique: int) -> list[str]:
    """n_shards photo shards: `unique` written from photos, the others copies of those under new keys (the
    same decoding and encoding cost; writing 20,000 photos takes longer than embedding them here)."""
    written = write_photo_shards(folder, min(unique, n_shards), per_shard)
    paths = list(written)
    for shard in range(len(written), n_shards):
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(written[shard % len(written)]) as tar:
            for member in tar.getmembers():
                old, ext = member.name.split(".", 1)
                key = f"{shard:05d}{old[5:]}"
                payload = tar.extractfile(member).read()
                if ext == "json":
                    payload = json.dumps({**json.loads(payload), "key": key}).encode()
                samples.setdefault(key, {})[ext] = payload
        path = folder / f"{shard:05d}.tar"
        path.write_bytes(tar_bytes(samples.items()))
        paths.append(str(path))
    return paths


def config(run_dir: Path, shards: list[str], args: argparse.Namespace):
    base = stage_config(run_dir, shards, args.model, "cpu", args.ray_cpus, []).model_dump(mode="json")
    base["cluster"].update(method="kmeans", k=args.k, sample_size=100_000)
    base["update"] = {"refit": "every_n", "every_n": 1} if args.refit else {"refit": "never"}
    for assignment in args.set:
        apply_override(base, assignment)
    return from_dict(base)


def timed(cfg) -> tuple[float, dict]:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = update(cfg)
    seconds = time.perf_counter() - started
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    return seconds, {"manifest_rows": manifest["rows"], "stages": metrics.get("seconds", {}),
                     "steps": manifest.get("steps", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--shards", type=int, default=100, help="shards of the full run")
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--new", type=int, default=1, help="shards the nightly update brings")
    parser.add_argument("--unique", type=int, default=10, help="shards written from photos; the rest are re-keyed copies")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ray-cpus", type=int, default=None)
    parser.add_argument("--refit", action="store_true", help="the nightly update refits (goal <= 0.3)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="update-cost-"))
    try:
        old = photo_shards(work / "shards", args.shards + args.new, args.per_shard, args.unique)
        old, new = old[: args.shards], old[args.shards:]
        ray_seconds = start_ray(config(work / "probe", old, args))
        print(json.dumps({"model": args.model, "rows_full": args.shards * args.per_shard,
                          "rows_new": args.new * args.per_shard, "ray_start_s": round(ray_seconds, 1)}))
        ratios = []
        for rep in range(args.repeats):
            run_dir = work / f"run{rep}"
            full_s, full = timed(config(run_dir, old, args))
            update_s, nightly = timed(config(run_dir, old + new, args))
            ratios.append(update_s / full_s)
            # the label stage's semantic space is built once per run (minutes for WordNet): a fixed cost of
            # the full side that an update without a refit does not pay, shown apart
            label_s = full["stages"].get("label", 0.0)
            # metrics.json keeps the full run's seconds for the stages the update did not run
            ran = ("embed", "assign", "summary") + (("label",) if args.refit else ())
            print(json.dumps({"repeat": rep, "full_s": round(full_s, 2), "full_stages": full["stages"],
                              "update_s": round(update_s, 2),
                              "ratio_without_full_label": round(update_s / max(full_s - label_s, 1e-9), 4),
                              "update_stages": {k: v for k, v in nightly["stages"].items() if k in ran},
                              "update_steps": nightly["steps"],
                              "ratio": round(ratios[-1], 4)}))
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"update / full run, {args.new * args.per_shard} new rows on {args.shards * args.per_shard} "
              f"({args.new / args.shards:.1%}), model {args.model}: median ratio {statistics.median(ratios):.3f} "
              f"over {len(ratios)} repeat(s) (goal <= {0.3 if args.refit else 0.05})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
