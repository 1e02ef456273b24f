"""Thumbnails read back from the source shards by key: only the images the report shows.

Wanted keys are grouped by shard and each shard is read once, by a bounded pool of threads in the
driver (reads are I/O; a few hundred images at most are decoded, so no Ray worker needs to start);
at most THREADS shards are in memory at once. A LAION embedding dump has no images, so its rows show
URL and caption instead.
"""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.failures import BAD_IMAGE_ERRORS
from scaleclust.sources import ShardSpec, read_samples
from scaleclust.sources.decode import output_key

THREADS = 4


def thumb_name(key: str, px: int) -> str:
    """File name of a key's thumbnail at px: a hash, so no key text ever becomes a path. A later report
    finds the thumbnails it can reuse by name."""
    return f"img/{hashlib.sha1(f'{px}:{key}'.encode()).hexdigest()[:20]}.jpg"


def thumbnail(data: bytes, px: int) -> bytes:
    """JPEG bytes whose longer side is at most px."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (px, px))  # JPEG: decode at a reduced scale
        rgb = image.convert("RGB")
    rgb.thumbnail((px, px))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=82)
    return out.getvalue()


def shard_thumbnails(item: dict[str, Any], input_cfg: InputConfig, storage: StorageConfig,
                     px: int) -> tuple[dict[str, bytes], int]:
    """Thumbnails of the wanted keys of one shard, and how many wanted keys got none (their image did not
    decode or could not be read again): left out of the page, counted."""
    spec = ShardSpec(tuple(item["urls"]), item["root"], item["kind"])
    wanted = set(item["keys"])
    extensions = [e.lower() for e in input_cfg.image_extensions]
    found: dict[str, bytes] = {}
    for sample in read_samples(item["shard"], spec, storage):
        key = output_key(sample.key, item["shard"], input_cfg)
        ext = next((e for e in extensions if e in sample.members), None)
        if key not in wanted or ext is None:
            continue
        try:
            found[key] = thumbnail(sample.members[ext], px)
        except (*BAD_IMAGE_ERRORS, Image.DecompressionBombError):
            continue
    return found, len(wanted) - len(found)


def read_thumbnails(wanted: dict[str, set[str]], shards: dict[str, ShardSpec], input_cfg: InputConfig,
                    storage: StorageConfig, px: int) -> tuple[dict[str, bytes], int]:
    """Key -> thumbnail JPEG for the wanted keys (shard -> keys), one read per shard; and how many wanted
    keys got no thumbnail."""
    items = [{"shard": shard, "keys": sorted(keys), "urls": list(shards[shard].urls), "root": shards[shard].root,
              "kind": shards[shard].kind}
             for shard, keys in sorted(wanted.items()) if shard in shards and shards[shard].kind != "laion"]
    found: dict[str, bytes] = {}
    failed = 0
    with ThreadPoolExecutor(THREADS) as pool:
        for part, missed in pool.map(lambda item: shard_thumbnails(item, input_cfg, storage, px), items):
            found.update(part)
            failed += missed
    return found, failed
