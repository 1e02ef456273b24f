"""Read img2dataset-layout WebDataset shards: KEY.jpg (or .png, .webp), KEY.txt, KEY.json.

A shard is parsed into samples (members grouped by key). Shard-level failures (unreadable or truncated
tar, empty shard) become error samples, so each input is accounted for in embeddings ∪ errors.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field

from scaleclust.config import StorageConfig
from scaleclust.failures import Failure, ReadFailed, transient_read
from scaleclust.storage import read_bytes


@dataclass
class Sample:
    """One WebDataset sample: its key and member bytes by extension, or why it cannot be read (`error`,
    and whether that may pass on a later run: `retryable`)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    error: str = ""
    retryable: bool = False

    def fail(self, failure: Failure) -> None:
        """Record a typed failure: its row text, and whether it may pass, from its class."""
        self.error, self.retryable = failure.row(), failure.retryable


def split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def parse_tar(data: bytes, shard: str) -> list[Sample]:
    """Group a tar's members into samples in file order.

    A truncated or corrupt tar yields the samples read before the damage, the damaged sample with an
    error, and, when the damage hides further members, one error sample `SHARD#tar` saying so.
    """
    samples: dict[str, Sample] = {}
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, EOFError, OSError) as err:
        return [Sample(f"{shard}#tar", error=f"UnreadableShard: {type(err).__name__}: {err}")]
    with tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, OSError) as err:
                samples[f"{shard}#tar"] = Sample(f"{shard}#tar", error=f"TruncatedShard: {type(err).__name__}: {err}")
                break
            if info is None:
                # tarfile reads a cut header, or a cut between members, as the end of the archive;
                # a whole tar ends with a zero block.
                ending = data[tar.offset : tar.offset + tarfile.BLOCKSIZE]
                if len(ending) < tarfile.BLOCKSIZE or ending.strip(b"\0"):
                    samples[f"{shard}#tar"] = Sample(f"{shard}#tar", error=f"TruncatedShard: no end-of-archive "
                                                     f"block at byte {tar.offset} of {len(data)}; later samples lost")
                break
            if not info.isfile():
                continue
            key, ext = split_member(info.name)
            if not ext or key.rsplit("/", 1)[-1].startswith(("_", ".")):
                continue
            sample = samples.setdefault(key, Sample(key))
            if sample.error:
                continue
            if ext in sample.members:
                sample.error = f"DuplicateMember: {info.name} appears twice in the shard"
                continue
            try:
                handle = tar.extractfile(info)
                payload = handle.read() if handle else b""
                if len(payload) != info.size:
                    raise EOFError(f"{info.name}: {len(payload)} of {info.size} bytes")
                sample.members[ext] = payload
            except (tarfile.TarError, EOFError, OSError) as err:
                sample.error = f"TruncatedMember: {type(err).__name__}: {err}"
    if not samples:
        return [Sample(f"{shard}#empty", error="EmptyShard: the shard holds no samples")]
    return list(samples.values())


def read_tar_samples(shard: str, urls: list[str], storage: StorageConfig) -> list[Sample]:
    """The samples of one tar shard (its single URL); a read that fails after retries is one retryable
    error sample. Anything else raised here is a bug and fails the stage."""
    try:
        data = read_bytes(urls[0], storage)
    except Exception as err:
        if not transient_read(err):
            raise
        sample = Sample(f"{shard}#tar")
        sample.fail(ReadFailed(f"{type(err).__name__}: {err}"))
        return [sample]
    return parse_tar(data, shard)
