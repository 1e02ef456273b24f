"""Input formats behind one interface: plan the shards (the units of exactly-once work), then read a
shard's samples. `webdataset`: one tar per shard; `image_folder`: a folder cut into shards of files;
`laion_embeddings`: precomputed embedding dumps (img_emb/img_emb_N.npy + metadata/metadata_N.parquet),
one shard per part, which skip the encoder."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.sources.decode import output_key
from scaleclust.sources.image_folder import plan_folder, read_folder_samples
from scaleclust.sources.laion import LaionPart, list_parts, part_keys, read_metadata
from scaleclust.sources.webdataset import Sample, read_tar_samples
from scaleclust.storage import expand_shards, shard_names


@dataclass(frozen=True)
class ShardSpec:
    """What one shard reads. tar: its URL; folder: its files and their folder; laion: the part's
    .npy, metadata (and text .npy) URLs and the dump root."""

    urls: tuple[str, ...]
    root: str = ""
    kind: Literal["tar", "folder", "laion"] = "tar"


def plan(input_cfg: InputConfig, storage: StorageConfig) -> dict[str, ShardSpec]:
    """Shard name -> spec, for every shard of the input. Raises ConfigError when nothing matches."""
    if input_cfg.format == "webdataset":
        urls = expand_shards(input_cfg.shards, storage)
        return {name: ShardSpec((url,)) for url, name in shard_names(urls).items()}
    roots = expand_shards(input_cfg.shards, storage, dirs=True)
    shards: dict[str, ShardSpec] = {}
    for root in roots:
        if input_cfg.format == "image_folder":
            for name, files in plan_folder(root, input_cfg, storage).items():
                shards[name] = ShardSpec(tuple(files), root, "folder")
            continue
        prefix = f"{posixpath.basename(root.rstrip('/'))}__" if len(roots) > 1 else ""
        for part in list_parts(root, storage):
            urls = (part.npy_url, part.metadata_url) + ((part.text_url,) if part.text_url else ())
            shards[prefix + part.name] = ShardSpec(urls, root, "laion")
    return shards


def laion_part(name: str, spec: ShardSpec) -> LaionPart:
    return LaionPart(name, spec.urls[0], spec.urls[1], spec.urls[2] if len(spec.urls) > 2 else None)


def read_samples(shard: str, spec: ShardSpec, storage: StorageConfig) -> list[Sample]:
    if spec.kind == "folder":
        return read_folder_samples(shard, list(spec.urls), spec.root, storage)
    if spec.kind == "laion":
        raise ValueError(f"shard {shard}: a LAION embedding part holds embeddings, not images")
    return read_tar_samples(shard, list(spec.urls), storage)


def describe(spec: ShardSpec) -> str:
    """Where a shard comes from, for markers and messages."""
    return spec.urls[0] if spec.kind != "folder" else f"{spec.root} ({len(spec.urls)} files)"


def shard_keys(shard: str, spec: ShardSpec, input_cfg: InputConfig, storage: StorageConfig) -> list[str]:
    """The keys a shard contributes (error pseudo-keys included), without decoding images: for verify."""
    if spec.kind == "laion":
        part = laion_part(shard, spec)
        return part_keys(read_metadata(part, input_cfg.key_column, storage), part, input_cfg.key_column)
    return [output_key(s.key, shard, input_cfg) for s in read_samples(shard, spec, storage)]
