"""A confidence calibrated without labels, for the trained heads (plain numpy/faiss).

A head's softmax is overconfident: trained to make neighbours agree and then on its own confident
rows, it puts most rows above 0.98 while far fewer are right. The fix is one temperature T, as in
temperature scaling, chosen without labels: the mean confidence softmax(logits / T).max() over a
sample equals how often a row's near neighbours fall in its cluster (unless it is already lower: below).
The neighbours are a fixed share of a cluster's size within a fixed-size sample (NEIGHBOR_SHARE of
rows / k), so what "near" means does not shrink as the data grows (a billion rows' 50 nearest are all
duplicates) and does not cross many clusters when k is large. Neighbour agreement still overrates accuracy where two classes
overlap in the features, which no label-free signal can see; it is the estimate that transfers.
NEIGHBOR_SHARE was chosen on three labelled sets together (docs/measurements.md#calibrated-confidence).

The temperature only cools (T >= 1): a head less sure than its rows' neighbours agree keeps its own
softmax. Agreement measures how smooth a partition is, not whether it is right, and a poor partition
can be smooth: SCL's and TURTLE's heads were right on 0.35-0.46 of the rows with a raw mean confidence
of 0.14-0.44, while their neighbours agreed on 0.58-0.74, so warming them to agreement made their error
worse on every set.
"""
from __future__ import annotations

import faiss
import numpy as np

ROWS = 5000           # the calibration sample (all rows when there are fewer)
NEIGHBOR_SHARE = 0.2  # neighbours per row: this share of the sample's mean cluster size


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature."""
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def neighbor_agreement(x: np.ndarray, clusters: np.ndarray, k: int, share: float = NEIGHBOR_SHARE,
                       block: int = 1024) -> tuple[float, int]:
    """Share of each row's m nearest other rows of x (unit rows, cosine) in its own cluster, and m
    (share * len(x) / k, at least 1). Exact search within x: its cost is fixed by ROWS, not the data."""
    x = np.ascontiguousarray(x, np.float32)
    clusters = np.asarray(clusters)
    m = int(min(len(x) - 1, max(1, round(share * len(x) / k))))
    if m < 1:  # a single row: nothing to agree with
        return 1.0, 0
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    same = 0
    for start in range(0, len(x), block):
        _, ids = index.search(x[start:start + block], m + 1)
        mine = np.arange(start, min(start + block, len(x)))[:, None]
        is_self = ids == mine  # the row itself is no neighbour; where a tie hid it, the last hit goes
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), m)
        keep = ids[np.arange(m + 1)[None, :] != drop[:, None]].reshape(len(ids), m)
        same += int((clusters[keep] == clusters[mine]).sum())
    return same / (len(x) * m), m


def temperature(logits: np.ndarray, target: float, iters: int = 60) -> float:
    """The T at which the mean of softmax(logits / T).max() is `target` (bisection on log T: the mean
    falls from its value at T -> 0, 1, to 1/k as T grows). A target no T reaches gives the nearest end."""
    k = logits.shape[1]
    target = float(np.clip(target, 1.0 / k + 1e-6, 1.0 - 1e-6))
    lo, hi = -8.0, 12.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if softmax(logits, float(np.exp(mid))).max(axis=1).mean() > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp((lo + hi) / 2))


def describe(found: dict[str, float]) -> str:
    """One line on calibrate's result, for the fit's output."""
    said = (f"so that the mean confidence ({found['mean_confidence_raw']:.3f} raw) is" if found["temperature"] > 1
            else f"as the mean confidence {found['mean_confidence_raw']:.3f} is already at most")
    return (f"confidence: temperature {found['temperature']:.3f}, {said} the rows' neighbour agreement "
            f"{found['agreement']:.3f} ({found['neighbors']} nearest of {found['rows']} sampled rows)")


def calibrate(x: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """The temperature for a head from its logits on sample rows x (unit rows), with the evidence:
    rows, neighbours per row, neighbour agreement, mean confidence before and after. At least 1 (the
    module docstring): the mean confidence becomes the agreement, or stays below it."""
    clusters = np.argmax(logits, axis=1)
    agreement, m = neighbor_agreement(x, clusters, logits.shape[1])
    t = max(1.0, temperature(logits, agreement))
    return {"temperature": round(t, 6), "rows": int(len(x)), "neighbors": m, "agreement": round(agreement, 5),
            "mean_confidence_raw": round(float(softmax(logits).max(axis=1).mean()), 5),
            "mean_confidence": round(float(softmax(logits, t).max(axis=1).mean()), 5)}
