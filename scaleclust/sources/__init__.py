"""Input formats behind one interface: plan the shards (the units of exactly-once work), then read a
shard's samples. `webdataset`: one tar per shard; `image_folder`: a folder cut into shards of files."""
from __future__ import annotations

from dataclasses import dataclass

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.sources.decode import output_key
from scaleclust.sources.image_folder import plan_folder, read_folder_samples
from scaleclust.sources.webdataset import Sample, read_tar_samples
from scaleclust.storage import expand_shards, shard_names


@dataclass(frozen=True)
class ShardSpec:
    """What one shard reads: a tar's URL, or an image-folder shard's files and the folder they are in."""

    urls: tuple[str, ...]
    root: str = ""


def plan(input_cfg: InputConfig, storage: StorageConfig) -> dict[str, ShardSpec]:
    """Shard name -> spec, for every shard of the input. Raises ConfigError when nothing matches."""
    if input_cfg.format == "image_folder":
        shards: dict[str, ShardSpec] = {}
        for root in expand_shards(input_cfg.shards, storage, dirs=True):
            for name, urls in plan_folder(root, input_cfg, storage).items():
                shards[name] = ShardSpec(tuple(urls), root)
        return shards
    return {name: ShardSpec((url,)) for url, name in shard_names(expand_shards(input_cfg.shards, storage)).items()}


def read_samples(shard: str, spec: ShardSpec, storage: StorageConfig) -> list[Sample]:
    if spec.root:
        return read_folder_samples(shard, list(spec.urls), spec.root, storage)
    return read_tar_samples(shard, list(spec.urls), storage)


def describe(spec: ShardSpec) -> str:
    """Where a shard comes from, for markers and messages."""
    return spec.urls[0] if not spec.root else f"{spec.root} ({len(spec.urls)} files)"


def shard_keys(shard: str, spec: ShardSpec, input_cfg: InputConfig, storage: StorageConfig) -> list[str]:
    """The keys a shard contributes (error pseudo-keys included), without decoding images: for verify."""
    return [output_key(s.key, shard, input_cfg) for s in read_samples(shard, spec, storage)]
