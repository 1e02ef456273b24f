"""The report's plots as PNG bytes (matplotlib's Agg canvas; no pyplot, no display)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas. matplotlib is imported here: the stages that import this module run in
    Ray workers that mostly never draw, and it costs a quarter second of CPU each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def size_distribution(sizes: np.ndarray) -> bytes:
    """Cluster sizes: one bar per cluster, largest first, for up to 40 clusters; else a histogram (with
    log-spaced bins when sizes span more than a factor of 20)."""
    fig = _figure(5, 3)
    ax = fig.add_subplot()
    sizes = sizes[sizes > 0]
    if len(sizes) <= 40:
        ax.bar(np.arange(len(sizes)), np.sort(sizes)[::-1], color="#3b6ea5")
        ax.set_xlabel("clusters, largest first")
        ax.set_ylabel("rows")
        ax.set_title(f"{len(sizes)} non-empty clusters")
        return _png(fig)
    if sizes.max() > 20 * sizes.min():
        bins = np.geomspace(sizes.min(), sizes.max() + 1, 30)
        ax.set_xscale("log")
    else:
        bins = min(30, max(len(sizes), 1))
    ax.hist(sizes, bins=bins, color="#3b6ea5")
    ax.set_xlabel("cluster size (rows)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{len(sizes)} non-empty clusters")
    return _png(fig)


def confidence_histogram(counts: np.ndarray) -> bytes:
    """Histogram of every row's assignment confidence (counts over equal bins of [0, 1])."""
    fig = _figure(5, 3)
    ax = fig.add_subplot()
    edges = np.linspace(0, 1, len(counts) + 1)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#a5593b")
    ax.set_xlabel("confidence")
    ax.set_ylabel("rows")
    ax.set_title(f"{int(counts.sum()):,} rows")
    return _png(fig)


def project_2d(centroids: np.ndarray) -> np.ndarray:
    """PCA of the centroids to 2-D (their top two principal directions)."""
    x = centroids - centroids.mean(axis=0)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def cluster_map(centroids: np.ndarray, sizes: np.ndarray, confidence: np.ndarray, labels: list[str],
                annotate: int = 15) -> bytes:
    """Clusters at their centroids' 2-D projection; area by size, colour by mean confidence, the
    largest ones labelled."""
    fig = _figure(6.5, 5)
    ax = fig.add_subplot()
    keep = sizes > 0
    xy = project_2d(centroids[keep])
    area = 20 + 600 * sizes[keep] / max(sizes.max(), 1)
    points = ax.scatter(xy[:, 0], xy[:, 1], s=area, c=confidence[keep], cmap="viridis", vmin=0, vmax=1,
                        alpha=0.7, edgecolors="k", linewidths=0.3)
    fig.colorbar(points, ax=ax, label="mean confidence")
    shown = [labels[i] for i in np.flatnonzero(keep)]
    for i in np.argsort(-sizes[keep])[:annotate]:
        ax.annotate(shown[i], xy[i], fontsize=7, ha="center", va="center")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("clusters: centroids projected to 2-D (PCA)")
    return _png(fig)
