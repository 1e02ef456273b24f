"""Commands `dedup` and `search` over a run directory's index (search through the Python API, scaleclust.api)."""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np

THRESHOLDS = (0.9, 0.95, 0.98, 0.99)


def cmd_dedup(args: argparse.Namespace) -> int:
    from scaleclust.config import ConfigError
    from scaleclust.index.build import LIST_CHOICES
    from scaleclust.index.dedup import dedup
    from scaleclust.ray_setup import ensure_ray
    from scaleclust.stage import leased, recorded

    if args.nprobe is not None and not 1 <= args.nprobe <= LIST_CHOICES:
        raise ConfigError(f"dedup --nprobe {args.nprobe}: a row is compared in 1 to {LIST_CHOICES} of its nearest lists")
    ctx = recorded(args.run_dir.rstrip("/"))
    cfg = ctx.cfg
    with leased(cfg, "dedup", ctx.run) as lease:  # it writes duplicates.parquet
        run = ctx.run.held(lease.holder)
        ensure_ray(cfg)
        table, counts = dedup(run, args.threshold, args.thresholds, args.scope, args.nprobe or LIST_CHOICES)
    groups = int(np.sum(table["is_keeper"].to_numpy(zero_copy_only=False)))
    print(f"dedup ({args.scope}): {groups} groups, {table.num_rows - groups} rows to remove at cosine >= "
          f"{args.threshold}; written to {run.path('duplicates.parquet')}")
    print(f"{'threshold':>9} {'remove':>8}")
    for threshold, removed in counts.items():
        print(f"{threshold:>9.3f} {removed:>8}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from scaleclust import api

    found = api.open(args.run_dir).search(text=args.text, image=args.image, key=args.key, k=args.k, nprobe=args.nprobe)
    print(f"{'rank':>4} {'cosine':>7}  key")
    for rank, key, sim in zip(*(found[c].to_pylist() for c in ("rank", "key", "cosine"))):
        print(f"{rank:>4} {sim:>7.4f}  {key}")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register dedup and search on the scaleclust parser (the index and neighbors stages have the
    commands of every stage)."""
    p = subparsers.add_parser("dedup", help="near-duplicate groups with one keeper each -> duplicates.parquet")
    p.add_argument("run_dir")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine at or above which two rows are duplicates")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                   help="also print how many rows would go at each of these")
    p.add_argument("--scope", choices=("cluster", "all"), default="cluster",
                   help="pairs within each cluster, or within the index's lists (each row in its nearest ones)")
    p.add_argument("--nprobe", type=int, help="scope all: nearest lists each row is compared in (1-3, default 3)")
    p.set_defaults(func=cmd_dedup)
    p = subparsers.add_parser("search", help="nearest keys of a key, a text or an image")
    p.add_argument("run_dir")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--key", help="a key of the run")
    query.add_argument("--text", help="a caption, through the CLIP text tower of the run's model")
    query.add_argument("--image", help="an image file, through the run's image encoder")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, help="lists probed (default index.nprobe)")
    p.set_defaults(func=cmd_search)
