"""Run a function once per shard on the cluster through Ray Data and stream back small results.

The function gets one item (a dict) and returns a small picklable result; bulk data stays in the run
directory. Used by stages whose unit of work is a committed shard (assign, summary).
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Iterator

import numpy as np
import ray
from ray.exceptions import UserCodeException


class ShardTaskError(UserCodeException):
    """What fn raised in a worker, carried back whole. Ray Data would wrap it in a UserCodeException
    raised `from` it, a link that does not survive the trip back to the driver, leaving the CLI nothing
    to explain; and any other exception type it logs with a second traceback beside the CLI's one line.
    This one is a UserCodeException (logged in one line), and unpickles with `original` as its cause."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original

    def __reduce__(self) -> tuple[Callable[[BaseException], "ShardTaskError"], tuple[BaseException]]:
        return _carried, (self.original,)


def _carried(original: BaseException) -> ShardTaskError:
    err = ShardTaskError(original)
    err.__cause__ = original
    return err


def _apply(batch: dict[str, np.ndarray], fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    items = [dict(zip(batch, values)) for values in zip(*batch.values())]
    try:
        return {"result": np.asarray([pickle.dumps(fn(item, **kwargs)) for item in items], dtype=object)}
    except Exception as err:
        raise _carried(err) from err


def map_shards(fn: Callable[..., Any], items: list[dict[str, Any]], num_cpus: float = 1.0,
               **kwargs: Any) -> Iterator[Any]:
    """Yield fn(item, **kwargs) for every item, in completion order, one Ray task per item."""
    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds.context.raise_original_map_exception = True  # a ShardTaskError as it is, not wrapped once more
    ds = ds.map_batches(_apply, batch_size=1, num_cpus=num_cpus, fn_kwargs={"fn": fn, "kwargs": kwargs})
    for row in ds.iter_rows():
        yield pickle.loads(row["result"])
