"""Image folders as input: every file under a root, grouped by key (relative path without extension,
so `cats/001.jpg` and its optional `cats/001.txt` / `cats/001.json` form one sample), cut into shards of
`input.files_per_shard` keys in sorted order. The unit of exactly-once work is such a shard.

Shard membership follows the sorted listing, so folders are for collections that do not change under a
run; growing corpora belong in WebDataset shards.
"""
from __future__ import annotations

import posixpath

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.failures import ReadFailed, transient_read
from scaleclust.sources.webdataset import Sample, split_member
from scaleclust.storage import filesystem, protocol_prefix, read_bytes


def plan_folder(root: str, input_cfg: InputConfig, storage: StorageConfig) -> dict[str, list[str]]:
    """Shard name (ROOTNAME-00000, ...) -> the URLs of the files of its keys, in key order."""
    fs, path = filesystem(root, storage)
    prefix = protocol_prefix(root)
    path = path.rstrip("/")
    by_key: dict[str, list[str]] = {}
    for file in sorted(fs.find(path)):
        relative = posixpath.relpath(file, path)
        key, ext = split_member(relative)
        if ext and not posixpath.basename(key).startswith((".", "_")):
            by_key.setdefault(key, []).append(prefix + file)
    keys = sorted(by_key)
    name = posixpath.basename(path) or "images"
    size = input_cfg.files_per_shard
    return {f"{name}-{i // size:05d}": [u for key in keys[i : i + size] for u in by_key[key]]
            for i in range(0, len(keys), size)}


def read_folder_samples(shard: str, urls: list[str], root: str, storage: StorageConfig) -> list[Sample]:
    """Read each file of the shard; a file that cannot be read (after retries) fails its sample only, as
    a retryable error. Anything else raised here is a bug and fails the stage."""
    samples: dict[str, Sample] = {}
    for url in urls:
        relative = posixpath.relpath(url.split("://", 1)[-1], root.split("://", 1)[-1])
        key, ext = split_member(relative)
        sample = samples.setdefault(key, Sample(key))
        if sample.error:
            continue
        try:
            sample.members[ext] = read_bytes(url, storage)
        except Exception as err:
            if not transient_read(err):
                raise
            sample.fail(ReadFailed(f"{url}: {type(err).__name__}: {err}"))
    return list(samples.values())
