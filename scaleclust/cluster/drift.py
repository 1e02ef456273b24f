"""Drift of new rows against a fitted clustering, and novelty (rows far from every cluster); numpy only.

Novelty is calibrated per cluster on the rows the clusters were fitted on: a cluster's prototype is the
normalised mean of its rows, and it accepts a row whose cosine to the prototype is at least the
`quantile` of its own rows' cosines (0.01: all but the farthest 1%). A row that no cluster accepts is
novel. This adapts to each encoder's scale of cosines (a random-weight model puts everything above 0.99,
CLIP spreads classes over 0.2-0.9), where a fixed cosine cut-off would not.

Novelty misses a concept that lands inside an old cluster's reach (a digit 9 among the 4s and 7s). Its
rows still live where only new data puts rows: fresh_neighbourhoods marks a new row whose nearest rows,
among old and new rows together, are new more often than chance allows (a k-nearest-neighbour two-sample
test, per row). Rows of an old concept have old rows among their neighbours in proportion to the mix.

The drift score is the total variation distance between the new rows' cluster shares and the fitted
shares, plus the share of new rows of new concepts (novel, or accepted by a cluster yet fresh): 0 when
new data looks like old data, up to 2. A cluster grew when its share of the new rows is `growth` times
its fitted share; the largest such excess of share (grown_excess) tells of a concept an old cluster
absorbed, which the novelty test cannot see.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

FRESH_NEIGHBOURS = 10  # fresh_neighbourhoods: neighbours per row, more where new rows are the majority (up to 30)
FRESH_ALPHA = 1e-3  # ... chance that an old concept's row has as many new neighbours (binomial tail)
FRESH_ROWS = 12_000  # ... rows searched at most (a seeded subsample beyond): a flat search, bounded
REFERENCE_ROWS = 10_000  # rows of a model's calibration sample kept as the old rows new ones are compared with
FRESH_QUERIES = 2_000  # new rows of a night sampled (over its shards) for the neighbourhood test


@dataclass
class Novelty:
    ids: np.ndarray          # (k,) cluster ids
    prototypes: np.ndarray   # (k, d) unit rows
    thresholds: np.ndarray   # (k,) cosine each cluster needs to accept a row
    reference: np.ndarray | None = None  # (r, d) float16: rows the model knew (None in files made before)

    def novel(self, x: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        """Boolean mask of rows of x that no cluster accepts (a batch at a time: memory O(batch x k))."""
        out = np.empty(len(x), bool)
        for i in range(0, len(x), batch_size):
            sims = np.asarray(x[i:i + batch_size], np.float32) @ self.prototypes.T
            out[i:i + len(sims)] = (sims - self.thresholds).max(axis=1) < 0
        return out

    def to_bytes(self) -> bytes:
        sink = io.BytesIO()
        extra = {} if self.reference is None else {"reference": self.reference}
        np.savez(sink, ids=self.ids, prototypes=self.prototypes, thresholds=self.thresholds, **extra)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Novelty":
        with np.load(io.BytesIO(data)) as npz:
            return cls(npz["ids"], npz["prototypes"], npz["thresholds"],
                       npz["reference"] if "reference" in npz.files else None)


def calibrate(x: np.ndarray, clusters: np.ndarray, ids: np.ndarray, quantile: float,
              reference_rows: int = REFERENCE_ROWS) -> Novelty:
    """Prototypes and acceptance thresholds of each cluster id from rows x with their cluster ids, and
    up to `reference_rows` of the rows (seeded) as the reference that new rows' neighbourhoods are tested
    against."""
    x = np.asarray(x, np.float32)
    keep = np.random.default_rng(0).choice(len(x), min(reference_rows, len(x)), replace=False)
    protos = np.zeros((len(ids), x.shape[1]), np.float32)
    thresholds = np.full(len(ids), np.inf, np.float32)  # a cluster without rows accepts nothing
    order = np.argsort(clusters, kind="stable")  # each cluster's rows in one slice, in their order: one pass, not k
    ordered = np.asarray(clusters)[order]
    for slot, cid in enumerate(ids):
        rows = x[order[np.searchsorted(ordered, cid):np.searchsorted(ordered, cid, side="right")]]
        if len(rows) == 0:
            continue
        mean = rows.mean(axis=0)
        protos[slot] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        thresholds[slot] = np.quantile(rows @ protos[slot], quantile)
    return Novelty(np.asarray(ids, np.int32), protos, thresholds, x[np.sort(keep)].astype(np.float16))


def fresh_threshold(share: float, alpha: float = FRESH_ALPHA) -> tuple[int, int]:
    """(neighbours m, count t): where a share `share` of the rows is new, an old concept's row has t or more new rows
    among its m nearest with probability at most alpha (binomial tail). m is FRESH_NEIGHBOURS, or more
    (up to 30) when share is so high that even m of m would be chance; t is m + 1 when no count is rare."""
    m = FRESH_NEIGHBOURS
    if 0.0 < share < 1.0:
        m = min(30, max(m, math.ceil(math.log(alpha) / math.log(share))))
    tail = 0.0
    for t in range(m, -1, -1):
        tail += math.comb(m, t) * share ** t * (1.0 - share) ** (m - t)
        if tail > alpha:
            return m, t + 1
    return m, 0


def fresh_neighbourhoods(x: np.ndarray, is_new: np.ndarray, seed: int = 0, rows: int = FRESH_ROWS) -> np.ndarray:
    """Mask of the new rows of x (unit rows; is_new flags them) whose nearest rows of x are new more often
    than chance allows at the share of new rows (fresh_threshold): the rows of a concept the old rows lack.
    Searched exactly among at most `rows` rows of x (a seeded subsample; rows outside it are not marked)."""
    import faiss  # imported where used: scaleclust/cluster/__init__.py

    is_new = np.asarray(is_new, bool)
    fresh = np.zeros(len(is_new), bool)
    picked = np.arange(len(is_new))
    if len(picked) > rows:
        picked = np.sort(np.random.default_rng(seed).choice(len(picked), rows, replace=False))
    flags = is_new[picked]
    if flags.all() or not flags.any():
        return fresh
    m, t = fresh_threshold(float(flags.mean()))
    if t > m or len(picked) <= m:
        return fresh
    base = np.ascontiguousarray(x[picked], np.float32)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    queries = np.flatnonzero(flags)
    _, near = index.search(base[queries], m + 1)
    own = near == queries[:, None]  # the row itself, wherever a duplicate put it
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(m + 1) < m)  # m neighbours, self left out
    counts = (flags[near] & keep & (near >= 0)).sum(axis=1)
    fresh[picked[queries[counts >= t]]] = True
    return fresh


def evenly(n: int, k: int) -> np.ndarray:
    """Indices of min(k, n) of n rows, evenly spaced (first and last included): a sample without a seed."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


@dataclass
class DriftCounts:
    """What the new rows of one or more shards contribute: rows per cluster id, low-confidence and
    novel rows, a few novel keys as examples, and a sample of the rows (with their novelty) for the
    neighbourhood test."""

    rows: int = 0
    low_confidence: int = 0
    novel: int = 0
    per_cluster: dict[int, int] = field(default_factory=dict)
    novel_per_cluster: dict[int, int] = field(default_factory=dict)
    novel_examples: list[str] = field(default_factory=list)
    sample: np.ndarray | None = None  # (s, d) float16
    sample_novel: np.ndarray | None = None  # (s,) bool

    def add(self, clusters: np.ndarray, confidence: np.ndarray, novel: np.ndarray, keys: list[str],
            low: float, examples: int, x: np.ndarray | None = None, sample_rows: int = 0) -> None:
        """Count rows with their clusters, confidences and novelty; with their embeddings x, keep
        `sample_rows` of them, evenly spaced, as the sample."""
        if x is not None and sample_rows > 0 and len(x):
            pick = evenly(len(x), sample_rows)
            self._keep(np.asarray(x)[pick].astype(np.float16), np.asarray(novel, bool)[pick])
        self.rows += len(clusters)
        self.low_confidence += int((confidence < low).sum())
        self.novel += int(novel.sum())
        for cid, n in zip(*np.unique(clusters, return_counts=True)):
            self.per_cluster[int(cid)] = self.per_cluster.get(int(cid), 0) + int(n)
        for cid, n in zip(*np.unique(clusters[novel], return_counts=True)):
            self.novel_per_cluster[int(cid)] = self.novel_per_cluster.get(int(cid), 0) + int(n)
        self.novel_examples += [keys[i] for i in np.flatnonzero(novel)[: max(0, examples - len(self.novel_examples))]]

    def _keep(self, sample: np.ndarray, novel: np.ndarray) -> None:
        if self.sample is None or self.sample_novel is None:
            self.sample, self.sample_novel = sample, novel
        else:
            self.sample = np.concatenate([self.sample, sample])
            self.sample_novel = np.concatenate([self.sample_novel, novel])

    def fresh_share(self, reference: np.ndarray | None, queries: int = FRESH_QUERIES) -> float | None:
        """Share of the sampled rows that a cluster accepts yet whose neighbourhoods, among the reference
        (rows the model knew) and the sample, are new (fresh_neighbourhoods): rows of a concept an old
        cluster took in. On `queries` of the sampled rows at most (a night of more shards than that
        samples a row of each). None without a reference or a sample."""
        if reference is None or self.sample is None or self.sample_novel is None or not len(self.sample):
            return None
        pick = evenly(len(self.sample), queries)
        sample, novel = self.sample[pick], self.sample_novel[pick]
        x = np.concatenate([reference, sample]).astype(np.float32)
        is_new = np.concatenate([np.zeros(len(reference), bool), np.ones(len(sample), bool)])
        fresh = fresh_neighbourhoods(x, is_new, rows=len(x))[len(reference):]
        return float((fresh & ~novel).mean())

    def merge(self, other: "DriftCounts", examples: int) -> None:
        """Add another part's counts and sample. The counts and the examples (the first `examples` keys in
        sort order) do not depend on the order of merging; the sample joins in merge order."""
        if other.sample is not None and other.sample_novel is not None:
            self._keep(other.sample, other.sample_novel)
        self.rows += other.rows
        self.low_confidence += other.low_confidence
        self.novel += other.novel
        for mine, theirs in ((self.per_cluster, other.per_cluster), (self.novel_per_cluster, other.novel_per_cluster)):
            for cid, n in theirs.items():
                mine[cid] = mine.get(cid, 0) + n
        self.novel_examples = sorted(self.novel_examples + other.novel_examples)[:examples]


def report(fitted: dict[int, int], counts: DriftCounts, growth: float, min_expected: float,
           warn: float, refit: float, fresh: float | None = None) -> dict:
    """The drift report of new rows against the fitted cluster sizes (id -> rows); `fresh`: the share of
    new rows that clusters accept yet whose neighbourhoods are new (DriftCounts.fresh_share)."""
    total = max(sum(fitted.values()), 1)
    n = max(counts.rows, 1)
    ids = sorted(set(fitted) | set(counts.per_cluster))
    clusters, grown, shrunk = [], [], []
    for cid in ids:
        p, q = fitted.get(cid, 0) / total, counts.per_cluster.get(cid, 0) / n
        ratio = q / p if p > 0 else None
        clusters.append({"cluster": cid, "fitted_share": round(p, 5), "new_share": round(q, 5),
                         "new_rows": counts.per_cluster.get(cid, 0), "ratio": None if ratio is None else round(ratio, 3),
                         "novel_rows": counts.novel_per_cluster.get(cid, 0)})
        if p * n >= min_expected or q * n >= min_expected:
            if ratio is None or ratio >= growth:
                grown.append(cid)
            elif ratio <= 1 / growth:
                shrunk.append(cid)
    tv = 0.5 * sum(abs(c["new_share"] - c["fitted_share"]) for c in clusters)
    excess = max((c["new_share"] - c["fitted_share"] for c in clusters if c["cluster"] in grown), default=0.0)
    novel_share = counts.novel / n
    score = tv + novel_share + (fresh or 0.0)
    return {
        "new_rows": counts.rows,
        "low_confidence_share": round(counts.low_confidence / n, 5),
        "novel_rows": counts.novel,
        "novel_share": round(novel_share, 5),
        "fresh_share": None if fresh is None else round(fresh, 5),
        "novel_examples": counts.novel_examples,
        "total_variation": round(tv, 5),
        "score": round(score, 5),
        "status": "refit" if score >= refit else "warn" if score >= warn else "ok",
        "thresholds": {"warn": warn, "refit": refit, "growth": growth},
        "grown": grown,
        "grown_excess": round(excess, 5),
        "shrunk": shrunk,
        "clusters": clusters,
    }
