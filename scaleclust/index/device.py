"""GPU when faiss sees one, CPU otherwise: the one place that choice is made."""

from __future__ import annotations

import faiss

USE_GPU: bool = faiss.get_num_gpus() > 0


def to_device(index: faiss.Index) -> faiss.Index:
    """Clone a CPU index onto all visible GPUs, or return it unchanged on a CPU-only machine."""
    return faiss.index_cpu_to_all_gpus(index) if USE_GPU else index


def to_host(index: faiss.Index) -> faiss.Index:
    """Bring an index back from the GPU (for serialisation); identity on CPU."""
    return faiss.index_gpu_to_cpu(index) if USE_GPU else index
