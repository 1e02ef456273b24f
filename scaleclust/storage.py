"""Filesystems for local paths, s3:// and gs:// through fsspec; shard listing; atomic commits; retries.

Every write that another stage may read goes through `write_bytes_atomic`: one PUT of the whole object on
object stores (which make it visible atomically), a temporary name renamed into place on local and POSIX
file systems, so a killed stage never leaves a half-written file behind a name that readers trust.

One retry policy: the storage client's. On S3 that is botocore's (`storage.retry_mode`, `storage.retries`
as max_attempts, set through s3fs's config_kwargs) for every request, Parquet reads through Ray Data
included; s3fs's own retry loop is switched off so the two do not multiply. The project's loop
(`read_bytes`) is kept only for what no client covers: an S3 response body that breaks off mid-read
(botocore retries a request until its headers arrive, not the body after), and backends without a
policy of their own. `arrow_source` and `ParquetObject` read through it, so the run directory's Parquet
reads are covered.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import posixpath
import time
import uuid
from typing import Any, Callable, TypeVar

import aiohttp
import fsspec
import fsspec.asyn
import numpy as np
import pyarrow
import pyarrow.fs
import pyarrow.parquet as pq
from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from braceexpand import braceexpand
from fsspec.core import url_to_fs
from s3fs import S3FileSystem

from scaleclust.config import ConfigError, StorageConfig

GLOB_CHARS = "*?["
S3 = ("s3", "s3a")
S3_PREFIXES = ("s3://", "s3a://")
# Stores that make a whole-object PUT visible atomically (and rename by copy + delete): commit with one PUT.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
SINGLE_PUT_MAX = 5 * 2**30  # S3's limit for one PUT; s3fs's pipe_file uploads in parts above 2 x chunksize
# Errors of an S3 response body that broke off after its headers (a timeout, a dropped connection, a
# short body): botocore retried the request, not the read, so read_bytes re-reads the object.
# (ReadTimeoutError also covers a request that botocore already retried: at most `retries` more.)
S3_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, aiohttp.ClientPayloadError)
FOOTER_BYTES = 64 * 1024  # the first read from the end of a Parquet object: its footer, whole as a rule
T = TypeVar("T")


def storage_options(url: str, storage: StorageConfig, timeout: float | None = None) -> dict[str, Any]:
    """fsspec options for `url`: the S3 endpoint and region from config or the AWS environment;
    `timeout` (seconds) bounds an S3 request's connection and read (botocore's default: 60 s each)."""
    if not url.startswith(S3_PREFIXES):
        return {}
    options: dict[str, Any] = {"anon": storage.anon, "config_kwargs": {
        "retries": {"mode": storage.retry_mode, "max_attempts": storage.retries}}}
    if timeout is not None:
        options["config_kwargs"].update(connect_timeout=timeout, read_timeout=timeout)
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    if storage.profile:
        options["profile"] = storage.profile
    if storage.region:
        options["client_kwargs"] = {"region_name": storage.region}
    return options


class S3Client(S3FileSystem):
    """s3fs with its own retry loop cut to one attempt, so botocore's policy (config_kwargs) is the only
    one. A class rather than an instance setting: a copy pickled to a Ray worker (Ray Data's Parquet
    reads) is rebuilt from its class and keeps it."""

    retries = 1


@functools.cache
def quiet_orphaned_transport_errors() -> None:
    """When a server drops a connection mid-request, aiohttp's task writing the request body fails too,
    and nobody awaits it: the request's own failure is retried, or raised, through botocore, but asyncio
    prints the orphan's traceback ("Task exception was never retrieved") beside it. On fsspec's I/O loop
    (s3fs runs there) such orphans of a connection error are dropped; every other loop error is reported
    as before."""
    loop = fsspec.asyn.get_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not ("future" in context and isinstance(context.get("exception"), aiohttp.ClientConnectionError)):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def filesystem(url: str, storage: StorageConfig,
               timeout: float | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding `url` and the path inside it (`timeout`: see storage_options)."""
    if url.startswith(S3_PREFIXES):
        quiet_orphaned_transport_errors()
        return S3Client(**storage_options(url, storage, timeout)), S3Client._strip_protocol(url)
    return url_to_fs(url, **storage_options(url, storage))


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(set(_protocols(fs)) & set(S3))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in _protocols(fs)


def arrow_filesystem(url: str, storage: StorageConfig) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem over the same fsspec filesystem, for Ray Data reads and Ray Train storage."""
    fs, path = filesystem(url, storage)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def join(url: str, *parts: str) -> str:
    return posixpath.join(url, *parts) if "://" in url else os.path.join(url, *parts)


def protocol_prefix(url: str) -> str:
    return url.split("://", 1)[0] + "://" if "://" in url else ""


def expand_shards(patterns: list[str], storage: StorageConfig, dirs: bool = False) -> list[str]:
    """Expand brace patterns and globs into a sorted, de-duplicated list of existing URLs: files, or
    folders when `dirs` (image-folder roots).

    Raises ConfigError naming what matched nothing: a typo in a path must fail up front.
    """
    wanted = "isdir" if dirs else "isfile"
    urls: list[str] = []
    for pattern in patterns:
        found: list[str] = []
        missing: list[str] = []
        for candidate in braceexpand(pattern):
            fs, path = filesystem(candidate, storage)
            prefix = protocol_prefix(candidate)
            if any(ch in path for ch in GLOB_CHARS):
                fs.invalidate_cache()  # a process that lists again (the next update) must see new shards
                found += [prefix + p for p in sorted(fs.glob(path)) if getattr(fs, wanted)(p)]
            elif getattr(fs, wanted)(path):
                found.append(candidate)
            else:
                missing.append(candidate)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ConfigError(f"input.shards: {len(missing)} shard(s) from {pattern!r} do not exist: {shown}")
        if not found:
            raise ConfigError(f"input.shards: {pattern!r} matches no file")
        urls += found
    return sorted(dict.fromkeys(urls))


def shard_names(urls: list[str]) -> dict[str, str]:
    """A short, unique, stable output name per input shard: the file stem, with parent folders
    prepended (joined by '__') only where two shards share a stem."""
    stems = {url: [p for p in url.split("://")[-1].split("/") if p] for url in urls}
    depth = 1
    while True:
        names = {url: "__".join(parts[-depth:]) for url, parts in stems.items()}
        names = {url: name.rsplit(".", 1)[0] if "." in name.split("__")[-1] else name for url, name in names.items()}
        if len(set(names.values())) == len(names) or depth > max(len(p) for p in stems.values()):
            return names
        depth += 1


def write_bytes_atomic(url: str, data: bytes, storage: StorageConfig) -> None:
    """Commit `data` under `url` so that readers see the old object or the whole new one, never a part.

    Object stores: one PUT of the whole object, which the store makes visible atomically (a temporary
    name would cost a PUT, a copy and a delete, and leave the temporary behind when killed between them).
    Local disk: a temporary file in the same folder, fsynced, os.replace, then an fsync of the folder.
    Other (POSIX-like) file systems: a temporary name, then the file system's rename."""
    fs, path = filesystem(url, storage)
    if set(_protocols(fs)) & OBJECT_STORES:
        fs.pipe_file(path, data, **({"chunksize": SINGLE_PUT_MAX} if is_s3(fs) else {}))
        return
    parent = posixpath.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    if is_local(fs):
        _replace_local(tmp, path, data)
        return
    with fs.open(tmp, "wb") as handle:
        handle.write(data)
    fs.mv(tmp, path)


def _replace_local(tmp: str, path: str, data: bytes) -> None:
    """Write `tmp` whole and durably (fsync of the file), rename it over `path` (atomic on POSIX), then
    fsync the folder so that the rename itself survives a power loss: without it a marker written last
    could vanish while the files before it stay. Readers of `path` see the old file or the new one. A
    failed write removes its temporary; a killed one may leave it (a dot-name no reader lists), never a
    partial `path`."""
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_folder(os.path.dirname(path))


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(url: str, payload: Any, storage: StorageConfig) -> None:
    write_bytes_atomic(url, json.dumps(payload, indent=2, sort_keys=True).encode(), storage)


def _read(fs: fsspec.AbstractFileSystem, storage: StorageConfig, call: Callable[[], T]) -> T:
    """call(), a read of `fs`. Local files are read once (an error there does not pass). On S3 each request
    already carries botocore's retries, so only a body that broke off mid-read is read again; other
    backends retry any failure but a missing file or a permission error. Backoff: exponential."""
    if is_local(fs):
        return call()
    transient = S3_BODY_ERRORS if is_s3(fs) else Exception
    attempt = 0
    while True:
        try:
            return call()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except transient:
            if attempt >= storage.retries:
                raise
            time.sleep(storage.retry_backoff * 2**attempt)
            attempt += 1


def read_bytes(url: str, storage: StorageConfig) -> bytes:
    """Read a whole object (retried as `_read` says)."""
    fs, path = filesystem(url, storage)
    return _read(fs, storage, lambda: fs.cat_file(path))


def read_ranges(url: str, storage: StorageConfig, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes [start, end) of an object per range: one ranged GET each, concurrent on S3 (retried as
    `_read` says)."""
    fs, path = filesystem(url, storage)
    starts, ends = [start for start, _ in ranges], [end for _, end in ranges]
    return _read(fs, storage, lambda: fs.cat_ranges([path] * len(ranges), starts, ends, on_error="raise"))


def arrow_source(url: str, storage: StorageConfig) -> pyarrow.NativeFile:
    """A file Arrow reads natively: the OS file when local, else the object's bytes (read with retries).

    Never an fsspec file object: Arrow's reader threads would call back into Python through it, and one
    still holding it at interpreter exit aborts the process ("terminate called without an active
    exception", exit 134) when it reaches for the GIL of a finalizing interpreter."""
    fs, path = filesystem(url, storage)
    if is_local(fs):
        return pyarrow.OSFile(path)
    return pyarrow.BufferReader(read_bytes(url, storage))


class ParquetObject:
    """A Parquet file read by the bytes it needs. On local disk that is the OS file. Elsewhere the footer
    is read first (one ranged GET from the end), then each read fetches only the column chunks of the row
    groups and columns it asks for, adjacent ones in one GET. The fetched bytes are laid at their offsets
    into a zeroed buffer the size of the object, so Arrow reads them natively (see `arrow_source` for
    why not through an fsspec file); the pages never written are never touched, so the process's memory
    grows by what was fetched, not by the object's size."""

    def __init__(self, url: str, storage: StorageConfig) -> None:
        self.url, self.storage = url, storage
        fs, path = filesystem(url, storage)
        self.local = is_local(fs)
        if self.local:
            self._file = pyarrow.OSFile(path)
            self.metadata = pq.ParquetFile(self._file).metadata
            return
        self.size = int(_read(fs, storage, lambda: fs.size(path)))
        start = max(0, self.size - FOOTER_BYTES)
        tail = read_ranges(url, storage, [(start, self.size)])[0]
        if tail[-4:] != b"PAR1" or len(tail) < 8:
            raise ValueError(f"{url}: not a Parquet file (no PAR1 footer)")
        need = int.from_bytes(tail[-8:-4], "little") + 8
        if need > len(tail):
            start = self.size - need
            tail = read_ranges(url, storage, [(start, self.size)])[0]
        self._tail = (start, tail)
        self.metadata = pq.read_metadata(pyarrow.BufferReader(tail))

    def chunks(self, groups: list[int], columns: list[str]) -> list[tuple[int, int]]:
        """Byte ranges of the column chunks of `groups` whose top-level column is in `columns`, sorted,
        adjacent ones merged."""
        spans = []
        for g in groups:
            group = self.metadata.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".")[0] not in columns:
                    continue
                start = chunk.data_page_offset
                if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
                    start = min(start, chunk.dictionary_page_offset)
                spans.append((start, start + chunk.total_compressed_size))
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def read_row_groups(self, groups: list[int], columns: list[str]) -> pyarrow.Table:
        """`columns` of the row groups `groups`, as ParquetFile.read_row_groups gives them."""
        if self.local:
            return pq.ParquetFile(self._file).read_row_groups(groups, columns=columns)
        spans = self.chunks(groups, columns)
        sparse = np.zeros(self.size, np.uint8)
        start, tail = self._tail
        sparse[start:] = np.frombuffer(tail, np.uint8)
        for (start, _), data in zip(spans, read_ranges(self.url, self.storage, spans)):
            sparse[start:start + len(data)] = np.frombuffer(data, np.uint8)
        return pq.ParquetFile(pyarrow.BufferReader(pyarrow.py_buffer(sparse))).read_row_groups(groups, columns=columns)

    def close(self) -> None:
        if self.local:
            self._file.close()

    def __enter__(self) -> "ParquetObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_json(url: str, storage: StorageConfig) -> Any:
    return json.loads(read_bytes(url, storage))


def exists(url: str, storage: StorageConfig) -> bool:
    fs, path = filesystem(url, storage)
    return fs.exists(path)


def stamp(url: str, storage: StorageConfig) -> str | None:
    """A file's version as the store reports it (size and ETag or modification time), None when absent:
    enough to tell a cached result derived from the file that the file was rewritten since."""
    fs, path = filesystem(url, storage)
    try:
        info = fs.info(path, refresh=True) if is_s3(fs) else fs.info(path)
    except FileNotFoundError:
        return None
    version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{info.get('size')}:{version}"


def listdir(url: str, storage: StorageConfig) -> list[str]:
    """File names (not paths) directly under `url`; empty when the folder does not exist."""
    fs, path = filesystem(url, storage)
    try:
        entries = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries)


def remove(url: str, storage: StorageConfig, recursive: bool = False) -> None:
    """Delete a file or folder if it exists."""
    fs, path = filesystem(url, storage)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def copy_file(src: str, dst: str, storage: StorageConfig) -> None:
    """Copy one file (read whole, written atomically): for small files such as models and tables."""
    write_bytes_atomic(dst, read_bytes(src, storage), storage)
