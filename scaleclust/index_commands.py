"""Commands `dedup` and `search` over a run directory's index."""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from scaleclust.config import Config, ConfigError

THRESHOLDS = (0.9, 0.95, 0.98, 0.99)


def _recorded(run_dir: str) -> tuple[Config, Any]:
    from scaleclust.ray_setup import ensure_ray
    from scaleclust.stage import recorded

    ctx = recorded(run_dir.rstrip("/"))
    cfg, run = ctx.cfg, ctx.run
    ensure_ray(cfg)
    return cfg, run


def cmd_dedup(args: argparse.Namespace) -> int:
    from scaleclust.index.dedup import dedup
    from scaleclust.ray_setup import ensure_ray
    from scaleclust.stage import leased, recorded

    ctx = recorded(args.run_dir.rstrip("/"))
    cfg = ctx.cfg
    with leased(cfg, "dedup", ctx.run) as lease:  # it writes duplicates.parquet
        run = ctx.run.held(lease.holder)
        ensure_ray(cfg)
        table, counts = dedup(run, args.threshold, args.thresholds, args.scope, args.nprobe or cfg.index.nprobe,
                              cfg.index.shards_per_searcher)
    groups = int(np.sum(table["is_keeper"].to_numpy(zero_copy_only=False)))
    print(f"dedup ({args.scope}): {groups} groups, {table.num_rows - groups} rows to remove at cosine >= "
          f"{args.threshold}; written to {run.path('duplicates.parquet')}")
    print(f"{'threshold':>9} {'remove':>8}")
    for threshold, removed in counts.items():
        print(f"{threshold:>9.3f} {removed:>8}")
    return 0


def query_vector(cfg: Config, run: Any, args: argparse.Namespace) -> np.ndarray:
    """The query as one embedding: a key's stored row, a caption through the text tower, or an image file."""
    import pyarrow.compute as pc

    from scaleclust.tables import embedding_matrix
    from scaleclust.index.manifest import load_manifest

    if args.key is not None:
        for shard in sorted(load_manifest(run)["shards"]):
            table = run.read_table(run.embeddings(shard), ["key", "embedding"])
            hit = table.filter(pc.equal(table["key"], args.key))
            if hit.num_rows:
                return embedding_matrix(hit["embedding"])[:1]
        raise ConfigError(f"--key {args.key!r}: no such key in the index of {run.url}")
    from scaleclust.embed.actor import EncodeBatch

    encoder = EncodeBatch(cfg.embed, cfg.storage)
    if args.text is not None:
        if encoder.encoder.encode_text is None:
            raise ConfigError(f"--text: the run's model {cfg.embed.model.kind}:{cfg.embed.model.arch} has no text "
                              f"tower; search by --key or --image, or use an open_clip (CLIP) model")
        import torch

        with torch.inference_mode():
            return encoder.encoder.encode_text([args.text]).float().cpu().numpy()
    from scaleclust.sources.decode import decode_image

    prep = encoder.encoder.preprocess
    with open(args.image, "rb") as handle:
        image, _, _ = decode_image(handle.read(), prep.image_size, prep.crop_pct)
    return encoder.embed(image[None].copy()).astype(np.float32)


def cmd_search(args: argparse.Namespace) -> int:
    from scaleclust.index.actors import search_run

    cfg, run = _recorded(args.run_dir)
    keys, sims = search_run(run, query_vector(cfg, run, args), args.k, args.nprobe or cfg.index.nprobe,
                            cfg.index.shards_per_searcher)[0]
    print(f"{'rank':>4} {'cosine':>7}  key")
    for rank, (key, sim) in enumerate(zip(keys, sims), 1):
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
                   help="pairs within each cluster (exact) or over the whole index (range search)")
    p.add_argument("--nprobe", type=int, help="scope all: lists probed (default index.nprobe)")
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
