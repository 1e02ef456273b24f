"""Run a function once per shard on the cluster through Ray Data and stream back small results.

The function gets one item (a dict) and returns a small picklable result; bulk data stays in the run
directory. Used by stages whose unit of work is a committed shard (assign, summary).
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Iterator

import numpy as np
import ray


def _apply(batch: dict[str, np.ndarray], fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    items = [dict(zip(batch, values)) for values in zip(*batch.values())]
    return {"result": np.asarray([pickle.dumps(fn(item, **kwargs)) for item in items], dtype=object)}


def map_shards(fn: Callable[..., Any], items: list[dict[str, Any]], num_cpus: float = 1.0,
               **kwargs: Any) -> Iterator[Any]:
    """Yield fn(item, **kwargs) for every item, in completion order, one Ray task per item."""
    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # fn's own exception (a FileNotFoundError for a file deleted meanwhile, one of failures' types) reaches
    # the caller as the task's cause; Ray Data would wrap it in a UserCodeException raised `from` it, a
    # link that does not survive the trip back from the worker, leaving the CLI nothing to explain
    ds.context.raise_original_map_exception = True
    ds = ds.map_batches(_apply, batch_size=1, num_cpus=num_cpus, fn_kwargs={"fn": fn, "kwargs": kwargs})
    for row in ds.iter_rows():
        yield pickle.loads(row["result"])
