"""GPU when this process may use one, CPU otherwise: the one place that choice is made.

faiss (the faiss-gpu build) sees every GPU that CUDA_VISIBLE_DEVICES leaves visible. Ray sets that
variable only for a task or actor that was given GPUs: one started with num_gpus=0 on a GPU node sees
all of the node's GPUs (Ray >= 2.4x no longer hides them), so inside a Ray worker faiss may use a GPU
only when Ray assigned one. Outside Ray (a driver, a benchmark) every GPU faiss sees is used.
"""

from __future__ import annotations

import faiss
import ray


def usable_gpus() -> int:
    """GPUs faiss may use in this process: 0 on faiss-cpu, on a CPU machine, or in a Ray task or actor
    given no GPU; else the GPUs faiss sees (in a Ray worker: the ones Ray assigned it)."""
    seen = faiss.get_num_gpus()
    if seen and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        return seen if ray.get_gpu_ids() else 0
    return seen


def to_device(index: faiss.Index) -> faiss.Index:
    """Clone a CPU index onto the usable GPUs, or return it unchanged when there are none. An IVF whose
    coarse quantizer is not flat (the nested one of large nlist, see coarse.py) stays on the CPU: the
    GPU IVF classes take a flat quantizer."""
    gpus = usable_gpus()
    if not gpus or not isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer), faiss.IndexFlat):
        return index
    return faiss.index_cpu_to_all_gpus(index, ngpu=gpus)


def to_host(index: faiss.Index) -> faiss.Index:
    """A CPU copy of an index on the GPU (for serialisation); a CPU index itself, unchanged."""
    return faiss.index_gpu_to_cpu(index) if faiss.get_num_gpus() else index
