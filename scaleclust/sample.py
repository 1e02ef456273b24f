"""A uniform random sample of committed embeddings, read shard by shard: what fit stages train on.

Each shard contributes in proportion to its rows (largest-remainder rounding), chosen by a generator
seeded with (seed, shard name), so the same config draws the same sample on any cluster.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from scaleclust.embed.writer import embedding_matrix
from scaleclust.rundir import RunDir


def quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    exact = {s: n * m / total for s, m in sizes.items()}
    base = {s: int(v) for s, v in exact.items()}
    left = n - sum(base.values())
    for s in sorted(exact, key=lambda s: base[s] - exact[s])[:left]:
        base[s] += 1
    return base


def sample_embeddings(run: RunDir, markers: dict[str, dict[str, Any]], n: int, seed: int,
                      columns: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, list]]:
    """Up to `n` rows drawn uniformly over committed shards: (float32 matrix, requested extra columns)."""
    chosen = quotas({s: m["embedded"] for s, m in markers.items()}, n)
    blocks, extra = [], {c: [] for c in columns}
    for shard in sorted(chosen):
        if chosen[shard] == 0:
            continue
        table = run.read_table(run.embeddings(shard), ["embedding", *columns])
        rng = np.random.default_rng([seed, zlib.crc32(shard.encode())])
        pick = np.sort(rng.choice(len(table), size=chosen[shard], replace=False))
        table = table.take(pick)
        blocks.append(embedding_matrix(table["embedding"]))
        for c in columns:
            extra[c] += table[c].to_pylist()
    dim = next(iter(markers.values()))["dim"] if markers else 0
    return (np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)), extra
