"""Typed failures: the class of an error, never its message, decides whether it is retried and how a
command exits.

- `ReadFailed`: a read that failed after its retries (a missing object, a timeout, a server error).
  It may pass: the row is recorded in errors/ with `retryable` true, so every key is accounted for, and
  the next run of the embed stage redoes that shard.
- `BadData`: a fact about the data (a corrupt image, a bad tar member, an empty shard, an image over the
  pixel limit). Recorded once, never retried: the same bytes give the same answer.
- `UserError`: a mistake a person can fix (a stage run before the one it needs; `SetupError`, found
  before any work: a bad config, a missing run directory, missing credentials): one line on stderr, no
  traceback unless --verbose.
- Anything else is a bug (`INTERNAL_EXIT`): it fails the stage with its traceback and is never recorded
  as data.

errors/ rows keep 'Type: message' for people; whether a row may pass is its `retryable` column. Run
directories written before that column existed are read by their type name (`LEGACY_RETRYABLE`).
"""
from __future__ import annotations

import struct
import zlib
from collections import Counter
from typing import Any, ClassVar, Iterable
from urllib.parse import urlsplit

import aiohttp
import pyarrow as pa
from botocore.exceptions import BotoCoreError, NoCredentialsError, NoRegionError, PartialCredentialsError

INTERNAL_EXIT = 4  # an unexpected exception: a bug, shown with its traceback
LEGACY_RETRYABLE = ("ReadFailed",)  # errors/ files without a `retryable` column


class Failure(Exception):
    """A failure whose class says what it is; `row()` is how errors/ records it."""

    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = INTERNAL_EXIT

    def row(self) -> str:
        """'Type: message', the errors/ text people read."""
        return f"{type(self).__name__}: {self}"


class ReadFailed(Failure):
    """A read that failed after its retries and may pass on a later run: rows recorded as retryable, and
    the command exits 1 so that a scheduler runs it again."""

    retryable = True
    exit_code = 1


class BadData(Failure):
    """A fact about the input's bytes: recorded, never retried (one that escapes unrecorded is a bug)."""


class UserError(Failure):
    """A mistake the user can fix, found while working (a stage run before the one it needs): one line,
    exit 1."""

    exit_code = 1


class SetupError(UserError):
    """A user's mistake found before any work: a bad config or command line, a RUN that is no run
    directory, missing credentials, an endpoint that does not answer. One line, exit 2."""

    exit_code = 2


class NotARunDirectory(SetupError, FileNotFoundError):
    """A RUN argument that names no run directory."""


class Vanished(UserError, FileNotFoundError):
    """A file or object the command reads is gone: deleted while it ran, or by hand. Running the command
    again redoes what needs it (`scaleclust verify` says what a run directory lacks)."""


class NotReady(UserError, RuntimeError):
    """A stage or command run before the stage whose output it needs."""


class MissingCredentials(SetupError):
    """The storage or the Ray cluster needs credentials that the environment does not hold."""


class Unreachable(SetupError, ConnectionError):
    """An endpoint (S3, the Ray Job API) that does not answer."""


# What a transient read raises once the storage client's retries are spent: OSError covers missing
# objects, refused connections and timeouts (s3fs translates S3's error codes into OSError subclasses).
READ_ERRORS = (OSError, BotoCoreError, aiohttp.ClientError)
# Errors of the storage client that are setup mistakes, not transient: never recorded as data.
SETUP_ERRORS = (NoCredentialsError, PartialCredentialsError, NoRegionError)
# What decoding corrupt or hostile image bytes raises in PIL (its fuzzers see these); a TypeError,
# KeyError, AttributeError or IndexError is our bug, not the image's.
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def transient_read(err: BaseException) -> bool:
    """Whether `err`, from reading an input, may pass on a later run (and so is recorded, not raised)."""
    return isinstance(err, READ_ERRORS) and not isinstance(err, SETUP_ERRORS)


def storage_mistake(err: BaseException) -> UserError | None:
    """A storage client's exception that is the user's to fix, as a UserError naming what is missing;
    None for anything else."""
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return MissingCredentials(
            f"no usable AWS credentials ({err}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
            "with a credentials file (AWS_SHARED_CREDENTIALS_FILE), or pass --set storage.anon=true for a public "
            "bucket")
    if isinstance(err, NoRegionError):
        return MissingCredentials(f"{err}: set AWS_REGION or storage.region")
    if isinstance(err, BotoCoreError) and "endpoint_url" in getattr(err, "kwargs", {}):
        endpoint = urlsplit(str(err.kwargs["endpoint_url"]))  # the request's URL (aiobotocore: a yarl URL)
        return Unreachable(f"cannot reach the storage endpoint {endpoint.scheme}://{endpoint.netloc} "
                           f"({type(err).__name__}); check storage.endpoint_url (or AWS_ENDPOINT_URL) and that the "
                           "server is up")
    return None


def retryable_rows(errors: pa.Table) -> list[bool]:
    """Per errors/ row: whether it may pass, from its `retryable` column (older files: its type name)."""
    if "retryable" in errors.column_names:
        return [bool(flag) for flag in errors["retryable"].to_pylist()]
    return [error_type(error) in LEGACY_RETRYABLE for error in errors["error"].to_pylist()]


def reasons(errors: pa.Table, limit: int = 3) -> str:
    """The commonest retryable errors, one example each, for a summary line."""
    found = Counter(error for error, flag in zip(errors["error"].to_pylist(), retryable_rows(errors)) if flag)
    return "; ".join(f"{error} (x{n})" if n > 1 else str(error) for error, n in found.most_common(limit))


def needs_retry(marker: dict[str, Any]) -> bool:
    """A committed shard whose marker counts failures that may pass."""
    return bool(marker.get("retryable"))


def error_type(message: str | None) -> str:
    """'TruncatedShard: no end-of-archive ...' -> 'TruncatedShard' (errors/ rows are 'Type: message'),
    for counting rows by type in `info` and the report; decides nothing."""
    return (message or "").split(":", 1)[0].strip() or "Unknown"


def error_types(errors: Iterable[str | None]) -> dict[str, int]:
    return dict(Counter(error_type(e) for e in errors))
