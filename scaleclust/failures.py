"""Two kinds of failure, told apart by the kind that starts an error ("Kind: message").

Facts about the data (a corrupt image, a bad tar, an empty shard, an image over the pixel limit) are
recorded in errors/ once and never retried: reading the same bytes again gives the same answer.
A read that failed (still, after its retries: a missing object, a timeout, a server error) may pass: it
is recorded too, so every key is accounted for, but the shard's marker counts it as `retryable` and the
next run of the embed stage redoes that shard. A worker that dies takes no shard with it: its shards are
never committed, so the next run does them.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

RETRYABLE = ("ReadFailed",)


def kind(error: str) -> str:
    return error.split(":", 1)[0].strip()


def retryable(error: str | None) -> bool:
    """True when an error row's failure may pass on a later run."""
    return bool(error) and kind(error) in RETRYABLE


def count_retryable(errors: Iterable[str | None]) -> int:
    return sum(1 for error in errors if retryable(error))


def reasons(errors: Iterable[str | None], limit: int = 3) -> str:
    """The commonest retryable errors, one example each, for a summary line."""
    found = Counter(error for error in errors if retryable(error))
    return "; ".join(f"{error} (x{n})" if n > 1 else str(error) for error, n in found.most_common(limit))


def needs_retry(marker: dict[str, Any]) -> bool:
    """A committed shard whose marker counts failures that may pass."""
    return bool(marker.get("retryable"))


def error_type(message: str) -> str:
    """'TruncatedShard: no end-of-archive ...' -> 'TruncatedShard' (errors/ rows are 'Type: message')."""
    return (message or "").split(":", 1)[0].strip() or "Unknown"
