"""Choose the index type and size from the row count, dimension and a memory budget.

The returned :class:`IndexSpec` keeps the bytes-per-vector arithmetic so that a manifest can show
why an index was chosen. The metric is always inner product on L2-normalised vectors (cosine).
IVF-PQ may add an OPQ rotation (learned so that PQ's sub-vectors carry equal variance) and exact
re-ranking: ``refine_factor * k`` PQ candidates re-scored against the stored fp16 vectors, which lie
memory-mapped on disk beside the index (bytes on disk, not held in RAM).

index.nlist defaults to ~4 sqrt(rows) (faiss's guideline) until lists would hold more than
ROWS_PER_LIST rows (from ~1M rows on), then to rows / ROWS_PER_LIST up to NLIST_CAP: a search or a
near-duplicate range search scans nprobe lists per query, so keeping lists short keeps that work per
row flat as the data grows. The nested quantizer of coarse.py keeps assigning a row to its lists cheap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from scaleclust.index.coarse import NESTED_MIN, QUANTIZER_NPROBE, quantizer_factory, top_count

Kind = Literal["ivf_flat", "ivf_fp16", "ivf_pq"]

ID_BYTES = 8  # faiss stores one int64 id next to every code in the inverted lists
PQ_NBITS = 8  # one byte per sub-quantizer code: 256 centroids each
MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that k-means is under-trained
ROWS_PER_LIST = 256  # default nlist keeps lists at most this long on average, up to NLIST_CAP
NLIST_CAP = 1 << 20  # faiss's choice for a billion rows; 3.2 GB of centroids at 768-d in every search actor
SMALL_ROWS = 65_536  # rows that train OPQ, PQ codebooks and the top level (faiss itself uses at most 256 x 256)
PQ_M_CHOICES = (96, 64, 48, 32, 24, 16, 8)


@dataclass(frozen=True)
class IndexSpec:
    """What to build and its cost; ``code_bytes`` is per vector, ids are stored beside codes."""

    kind: Kind
    d: int
    n: int
    nlist: int
    code_bytes: int
    pq_m: int = 0
    budget_bytes: int | None = None
    metric: str = "inner_product"
    opq: bool = False
    refine_factor: int = 0

    @property
    def stored_bytes_per_vector(self) -> int:
        """fp16 vectors kept on disk (memory-mapped, not in RAM) for re-ranking: 2*d, or 0 without it."""
        return 2 * self.d if self.refine_factor else 0

    @property
    def bytes_per_vector(self) -> int:
        """Code plus id: d*4 (flat), d*2 (fp16) or M (PQ, 8-bit codes), + 8."""
        return self.code_bytes + ID_BYTES

    @property
    def fixed_bytes(self) -> int:
        """Coarse centroids (nlist*d*4; nested: + an id and a direct-map entry each, + the top level's
        centroids) plus PQ codebooks (256*d*4) and the OPQ matrix (d*d*4) when used."""
        codebooks = (1 << PQ_NBITS) * self.d * 4 if self.kind == "ivf_pq" else 0
        rotation = self.d * self.d * 4 if self.opq else 0
        nested = 16 * self.nlist + top_count(self.nlist) * self.d * 4 if quantizer_factory(self.nlist) else 0
        return self.nlist * self.d * 4 + nested + codebooks + rotation

    @property
    def total_bytes(self) -> int:
        """Estimated resident size of the whole index: n * bytes_per_vector + fixed_bytes."""
        return self.n * self.bytes_per_vector + self.fixed_bytes

    @property
    def factory(self) -> str:
        """faiss.index_factory string for this spec."""
        codes = {  # np: skip polysemous training (slow, and Hamming filtering is unused)
            "ivf_flat": "Flat", "ivf_fp16": "SQfp16", "ivf_pq": f"PQ{self.pq_m}x{PQ_NBITS}np"}
        rotation = f"OPQ{self.pq_m}," if self.opq else ""
        return f"{rotation}IVF{self.nlist}{quantizer_factory(self.nlist)},{codes[self.kind]}"

    @property
    def train_rows(self) -> int:
        """Rows streamed to train the coarse centroids: ~64 per centroid, at least SMALL_ROWS, at most n."""
        return min(self.n, max(64 * self.nlist, SMALL_ROWS))

    @property
    def small_rows(self) -> int:
        """Rows held to train OPQ, the PQ codebooks and the centroids' top level, at most n."""
        return min(self.n, SMALL_ROWS)

    def train_memory_bytes(self, block_rows: int) -> int:
        """Peak bytes of the training task's arrays: the small sample (read fp16, float32 and a unit
        copy), one streamed block of ``block_rows`` rows, then with the nested quantizer one top cell
        (~2x its mean share of the training rows, fp16 and float32), else the whole stream (its blocks
        and their concatenation), and the centroids with their nested quantizer."""
        nested = quantizer_factory(self.nlist)
        held = 2 * self.train_rows // top_count(self.nlist) * 6 if nested else self.train_rows * 8
        return self.d * (self.small_rows * 10 + block_rows * 10 + held + self.nlist * 12)

    def to_dict(self) -> dict:
        """Fields plus the derived figures and the arithmetic as text, for manifest.json."""
        return asdict(self) | {
            "factory": self.factory,
            "id_bytes": ID_BYTES,
            "bytes_per_vector": self.bytes_per_vector,
            "fixed_bytes": self.fixed_bytes,
            "total_bytes": self.total_bytes,
            "train_rows": self.train_rows,
            "small_rows": self.small_rows,
            "stored_bytes_per_vector": self.stored_bytes_per_vector,
            "arithmetic": f"{self.n} * ({self.code_bytes} + {ID_BYTES}) + {self.fixed_bytes}"
            f" = {self.total_bytes} bytes",
        }


def default_nlist(n: int) -> int:
    """~4*sqrt(n) inverted lists, or n/ROWS_PER_LIST when more; at least 1, at most n/39 (so k-means
    has data) and NLIST_CAP."""
    want = max(round(4 * math.sqrt(n)), n // ROWS_PER_LIST)
    return max(1, min(want, n // MIN_POINTS_PER_CENTROID, NLIST_CAP))


def code_bytes(kind: Kind, d: int, pq_m: int = 0) -> int:
    """Bytes of one vector's code for an index kind."""
    return {"ivf_flat": 4 * d, "ivf_fp16": 2 * d, "ivf_pq": pq_m}[kind]


def row_work(rows: float, scan: bool, nprobe: int = 8) -> float:
    """Work per row of an IVF stage at the default nlist, in dot products: assigning the row to its lists
    (flat quantizer: nlist; nested: (1 + QUANTIZER_NPROBE) x top cells), plus, for a search or a range
    search (``scan``), ``nprobe`` lists of rows / nlist rows each. What grows when the rows grow."""
    nlist = default_nlist(int(rows))
    assign = (1 + QUANTIZER_NPROBE) * top_count(nlist) if nlist >= NESTED_MIN else nlist
    return assign + (nprobe * rows / nlist if scan else 0)


def choose_index(
    n: int,
    d: int,
    budget_bytes: int | None = None,
    *,
    kind: Kind | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    fp16: bool = False,
    max_pq_m: int = 64,
    opq: bool = False,
    refine_factor: int = 0,
) -> IndexSpec:
    """Pick the index for n vectors of dimension d.

    With ``kind`` given (from config) it is used as is. Otherwise: IVF-Flat (IVF-fp16 when ``fp16``)
    if it fits ``budget_bytes`` (or no budget is given), else IVF-PQ with the largest M <= max_pq_m
    that divides d and fits. Raises ValueError, naming the smallest budget that would work, when
    even PQ8 does not fit. ``opq`` and ``refine_factor`` apply to IVF-PQ only (the flat kinds store
    the vectors themselves); the re-ranking vectors are on disk and do not count against the budget.
    """
    nlist = nlist or default_nlist(n)

    def spec(k: Kind, m: int = 0) -> IndexSpec:
        pq = k == "ivf_pq"
        return IndexSpec(k, d, n, nlist, code_bytes(k, d, m), m, budget_bytes, opq=opq and pq,
                         refine_factor=refine_factor if pq else 0)

    pq = [spec("ivf_pq", m) for m in ([pq_m] if pq_m else PQ_M_CHOICES) if m <= max_pq_m or pq_m]
    pq = [s for s in pq if d % s.pq_m == 0]
    if kind == "ivf_pq" or (kind is None and pq_m):
        if not pq:
            raise ValueError(f"index.pq_m: no sub-quantizer count divides d={d}; pick M dividing d")
        return pq[0]
    if kind is not None:
        return spec(kind)
    flat = spec("ivf_fp16" if fp16 else "ivf_flat")
    if budget_bytes is None or flat.total_bytes <= budget_bytes:
        return flat
    fitting = [s for s in pq if s.total_bytes <= budget_bytes]
    if not fitting:
        need = min((s.total_bytes for s in pq), default=flat.total_bytes)
        raise ValueError(f"index.memory_budget={budget_bytes} bytes is too small for {n} x {d}: "
                         f"the smallest candidate needs {need} bytes; raise it or shard more")
    return fitting[0]
