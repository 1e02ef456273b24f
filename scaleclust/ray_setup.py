"""Connect to Ray the same way on a laptop and on Kubernetes: the config's address decides."""
from __future__ import annotations

import logging
import os

import ray

from scaleclust.config import Config, ConfigError
from scaleclust.console import quiet_ray_logs, verbose

GIB = 1 << 30


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
    loud = verbose()
    address = cluster_address(cfg)
    level = logging.INFO if loud else logging.WARNING
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=level)
    else:
        # The dashboard serves Ray's State API, which Ray Train's PlacementGroupCleaner polls every
        # second to see whether its controller is alive; without it each poll fails and logs "Failed to
        # query Ray Train Controller actor state" (hundreds of lines per fit). So a fit that trains with
        # Ray Train (every method but kmeans) gets the dashboard, bound to loopback (port from 8265 up);
        # kmeans runs skip its start-up cost.
        trains = cfg.cluster.method != "kmeans"
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1), include_dashboard=trains,
                 dashboard_host="127.0.0.1", log_to_driver=loud, logging_level=level)
    quiet_ray_logs()
    ray.data.DataContext.get_current().enable_progress_bars = loud


def cluster_address(cfg: Config) -> str | None:
    """The cluster the driver joins: ray.address, else RAY_ADDRESS; None starts a local Ray. An http(s)
    RAY_ADDRESS names a Job API (as for `scaleclust submit`), not a cluster to join."""
    joined = os.environ.get("RAY_ADDRESS", "")
    return cfg.ray.address or (None if joined.startswith(("http://", "https://")) else joined) or None


def check_task_memory(cfg: Config, need: int, field: str, what: str) -> None:
    """A task of 1 CPU that requests `need` bytes of Ray memory runs only on a node that has both. On a
    local Ray (one the config starts, or ray.address 'local'), which never grows, no such node is a
    ConfigError naming `field`, the setting that sizes the task, before the task waits forever. On a joined
    cluster an autoscaler may still add one, so it is a warning line that says what to lower if none comes."""
    largest = max((node["Resources"].get("memory", 0) for node in ray.nodes()
                   if node.get("Alive") and node["Resources"].get("CPU", 0) >= 1), default=0)
    if need <= largest:
        return
    said = (f"{field}: {what} needs about {need / GIB:.1f} GiB in one Ray task, more than the "
            f"{largest / GIB:.1f} GiB of Ray memory of any node with a CPU")
    if cluster_address(cfg) in (None, "local"):
        raise ConfigError(f"{said}; the task could never start")
    print(f"warning: {said} now; the task waits for such a node, forever if the cluster cannot add one "
          f"(then lower {field})", flush=True)
