"""Connect to Ray the same way on a laptop and on Kubernetes: the config's address decides."""
from __future__ import annotations

import os

import ray

from scaleclust.config import Config


def ensure_ray(cfg: Config) -> None:
    """Join the configured cluster, else the one named by RAY_ADDRESS (set for a Ray job's entrypoint,
    so a submitted job runs on the cluster it was submitted to), else start a local one; a no-op when Ray
    is already up.

    A local Ray gets at least 4 logical CPUs: on a 2-core laptop, an encoder actor and Train workers
    at 1 CPU each would otherwise take every slot and leave the read tasks waiting forever.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    joined = os.environ.get("RAY_ADDRESS", "")
    # An http(s) RAY_ADDRESS names a Job API (as for `scaleclust submit`), not a cluster to join.
    address = cfg.ray.address or (None if joined.startswith(("http://", "https://")) else joined)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("SCALECLUST_PROGRESS_BARS", "0") == "1"
