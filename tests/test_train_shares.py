"""Each Ray Train worker's share of the sample holds rows of every shard: shards are often ordered by
source or class, and workers that each see some shards only train one shared head on different data."""
from __future__ import annotations

import numpy as np
import pytest
import ray

from scaleclust.train.loop import worker_shares

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(120)]


def rows_of(share: ray.data.Dataset) -> np.ndarray:
    """A share's rows, in order."""
    return np.concatenate([b["x"] for b in share.iter_batches(batch_size=None, batch_format="numpy")])


def test_every_share_samples_every_shard_and_together_they_are_the_sample() -> None:
    # three "shards" of sampled rows, as the sampler hands them over: one block each, rows tagged by shard
    blocks = [np.full((n, 2), shard, np.float16) + np.arange(n, dtype=np.float16)[:, None] / 1000
              for shard, n in enumerate((40, 25, 31))]
    dataset = ray.data.from_numpy_refs([ray.put(b) for b in blocks]).map_batches(lambda b: {"x": b["data"]})
    dataset.context.execution_options.preserve_order = True  # as embeddings_dataset sets it
    rows = [rows_of(share) for share in worker_shares(dataset, 2)]
    for share in rows:
        assert set(np.floor(share[:, 0]).astype(int)) == {0, 1, 2}
    together = np.concatenate(rows)
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, np.concatenate(blocks).tolist()))
    again = worker_shares(dataset, 2)  # a re-run of the fit: each rank gets the same rows
    assert all(np.array_equal(rows_of(share), r) for share, r in zip(again, rows))
