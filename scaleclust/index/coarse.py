"""The IVF coarse quantizer: centroids trained in two levels on a streamed sample, and the index that
assigns rows to them.

Flat k-means of nlist centroids on ~64*nlist rows costs rows x nlist per iteration and holds the whole
sample in one process, and both grow with the data when nlist does. From NESTED_MIN lists on the
centroids are learned by hierarchical k-means: sqrt(nlist) top centroids on a small sample; each
streamed block of the training sample is assigned to its top cell and appended, fp16, to that cell's
file on local disk; then each cell's rows are clustered into a share of the nlist centroids
proportional to its rows. The process holds the small sample, one block and one cell at a time; a
pass costs rows x 2*sqrt(nlist) x d. Below NESTED_MIN one flat k-means runs on the (short) stream.

From NESTED_MIN lists on, the quantizer that assigns a row to its lists is itself an IVF over the
centroids (sqrt(nlist) lists, QUANTIZER_NPROBE probed), so assigning a row costs ~(1 + nprobe) *
sqrt(nlist) dot products instead of nlist: with index.nlist growing with the rows, the work per row
of adding and searching grows as sqrt(nlist), not nlist.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.index.device import usable_gpus

NESTED_MIN = 2048  # lists from which the quantizer is an IVF over the centroids
QUANTIZER_NPROBE = 8  # top cells the nested quantizer scans per row (a row found its own list 100% at 4M)
NITER = 20  # k-means iterations at each level


def top_count(nlist: int) -> int:
    """Top-level cells: ceil(sqrt(nlist))."""
    return max(1, math.isqrt(max(nlist - 1, 0)) + 1)


def quantizer_factory(nlist: int) -> str:
    """The quantizer's part of a faiss factory string after IVF{nlist}: nothing (flat) or (IVF{top},Flat)."""
    return f"(IVF{top_count(nlist)},Flat)" if nlist >= NESTED_MIN else ""


def shares(sizes: np.ndarray, total: int) -> np.ndarray:
    """Centroids per cell: proportional to its rows (largest remainders), at least one per non-empty cell
    and at most its rows, summing to ``total``. Raises when the cells hold fewer rows than ``total`` or
    more cells than ``total`` hold rows."""
    sizes = np.asarray(sizes, np.int64)
    if sizes.sum() < total:
        raise ValueError(f"index.nlist: {total} lists need at least as many training rows, the sample has "
                         f"{int(sizes.sum())}; lower index.nlist")
    if (sizes > 0).sum() > total:
        raise ValueError(f"{int((sizes > 0).sum())} cells hold rows, more than the {total} centroids to share")
    exact = total * sizes / sizes.sum()
    k = np.minimum(sizes, np.maximum(sizes > 0, np.floor(exact))).astype(np.int64)
    while k.sum() < total:  # at most one step per cell: floor() loses < 1 per cell
        gain = np.where(k < sizes, exact - k, -np.inf)
        k[np.argmax(gain)] += 1
    while k.sum() > total:  # the at-least-one rule overshot: take from the most over-served
        over = np.where(k > 1, k - exact, -np.inf)
        k[np.argmax(over)] -= 1
    return k


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k unit centroids of the unit rows x (spherical k-means, on the GPU when this process has one);
    the rows themselves when there are no more than k."""
    if len(x) <= k:
        return np.array(x, np.float32)
    return spherical_kmeans(x, k, NITER, restarts=1, seed=seed, gpus=usable_gpus())[0]


def train_centroids(small: np.ndarray, blocks: Iterable[np.ndarray], nlist: int, seed: int) -> np.ndarray:
    """nlist unit centroids of the unit rows streamed as ``blocks`` (top level learned on ``small``).
    Below NESTED_MIN lists the stream is short (~64*nlist rows): one flat k-means over all of it."""
    if nlist < NESTED_MIN:
        return kmeans(np.concatenate(list(blocks)), nlist, seed)
    d = small.shape[1]
    top = kmeans(small, top_count(nlist), seed)
    assigner = faiss.IndexFlatIP(d)
    assigner.add(top)
    sizes = np.zeros(len(top), np.int64)
    with tempfile.TemporaryDirectory(prefix="scaleclust-ivf-train-") as spill:
        cell_file = [Path(spill, f"{c}.f16") for c in range(len(top))]
        for block in blocks:
            cells = assigner.search(np.ascontiguousarray(block, np.float32), 1)[1][:, 0]
            order = np.argsort(cells, kind="stable")
            present, starts = np.unique(cells[order], return_index=True)
            for c, rows in zip(present, np.split(order, starts[1:])):
                with cell_file[c].open("ab") as out:
                    out.write(np.asarray(block[rows], np.float16).tobytes())
                sizes[c] += len(rows)
        parts = [kmeans(np.fromfile(cell_file[c], np.float16).reshape(-1, d).astype(np.float32), int(k), seed + c)
                 for c, k in enumerate(shares(sizes, nlist)) if k]
    centroids = np.ascontiguousarray(np.concatenate(parts), np.float32)
    faiss.normalize_L2(centroids)
    return centroids


def fill_quantizer(quantizer: faiss.Index, centroids: np.ndarray) -> None:
    """Put the centroids into an IVF index's (empty) quantizer: flat, or nested (trained on them)."""
    inner = faiss.downcast_index(quantizer)
    if isinstance(inner, faiss.IndexIVF):
        inner.train(centroids)
        inner.add(centroids)
        inner.nprobe = QUANTIZER_NPROBE
        inner.make_direct_map()  # IVF-PQ reconstructs a list's centroid to code residuals against it
    else:
        inner.add(centroids)
