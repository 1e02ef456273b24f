"""A job priced on a GPU cluster one would rent (`scaleclust plan CONFIG --gpu H100 --gpus-per-node 8
--nodes 8`): each stage's wall time and the GPU-hours it holds the cluster for, from per-stage rates.

Every rate says its card, its date and where it comes from, and whether it was measured or is assumed
(RATES; `benchmarks/device_check.sh` measures the GPU ones when a GPU machine is at hand). The model:
- embed: images/s per GPU of the encoder (scaleclust.plan.encode_rate: the measured table, or the
  reference model scaled by parameters), every GPU of the cluster encoding;
- stages that run on CPUs (ingest of a precomputed dump, index, neighbours, assign): per-core rates
  measured at 1M-4M rows and 128 dimensions (docs/measurements.md, "The whole pipeline at 1M and 4M
  rows"), scaled linearly in dimension and, for the IVF stages, by their work per row at this size
  (index.choose.row_work), spread over every CPU of the cluster (shard-parallel tasks);
- fit: a fixed sample, Train workers at steps/s per GPU worker.
A stage's GPU-hours are its wall hours times the cluster's GPUs: the whole cluster is held while it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaleclust.config import Config, ConfigError
from scaleclust.index.choose import row_work

MEASURED_DIM = 128  # the dimension of the CPU measurements below
MEASURED_ROWS = 4_000_000  # the size the IVF stages' per-row cost was measured at
_SCALE = "docs/measurements.md, the whole pipeline at 1M and 4M rows, 2 CPUs (2026-11-30)"


@dataclass(frozen=True)
class Rate:
    """Units of work per second (images per encoder actor, rows or queries per CPU core, steps per Train
    worker) with its provenance: where it comes from, and whether it was measured (else it is an estimate
    or an assumption) on which card and when. `plan` and `price` both read these."""

    per_second: float
    source: str
    measured: bool = True
    card: str = ""
    date: str = ""


RATES: dict[str, Rate] = {
    # rows/s per core at 128-d: the marginal cost per row between 1M and 4M rows, times 2 cores
    "ingest": Rate(1 / ((44.1 - 19.3) / 3e6 * 2), _SCALE, True, "2-CPU VM", "2026-11-30"),
    "assign": Rate(1 / ((22.6 - 14.1) / 3e6 * 2), _SCALE, True, "2-CPU VM", "2026-11-30"),
    # rows/s per core at 128-d and 4M rows (train + add); scaled by row_work to other sizes
    "index": Rate(MEASURED_ROWS / (82.2 * 2), _SCALE, True, "2-CPU VM", "2026-11-30"),
    # queries/s per core at 128-d and 4M rows (20,000 queries, k 10, nprobe 8)
    "neighbors": Rate(20_000 / (63.0 * 2), _SCALE, True, "2-CPU VM", "2026-11-30"),
    # Train steps/s of one GPU worker (SCAN's head on a 768-d sample with its neighbours): not measured yet
    "fit": Rate(20.0, "assumed: device_check.sh's scan_fit line will replace it", False, "any", "2026-12-06"),
}


@dataclass(frozen=True)
class GpuCluster:
    """What one would rent: `nodes` nodes of `gpus_per_node` GPUs of one card, `cpus_per_gpu` cores each."""

    card: str
    gpus_per_node: int
    nodes: int
    cpus_per_gpu: int = 24  # e.g. 8 x H100 nodes with 192 vCPUs

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def cpus(self) -> int:
        return self.gpus * self.cpus_per_gpu


def _line(stage: str, seconds: float, cluster: GpuCluster, rate: str, measured: bool) -> dict[str, Any]:
    hours = seconds / 3600
    return {"stage": stage, "wall_hours": hours, "gpu_hours": hours * cluster.gpus, "rate": rate, "measured": measured}


def _cpu(stage: str, work: float, dim: int, cluster: GpuCluster) -> dict[str, Any]:
    """A CPU stage of `work` units at 128-d equivalents spread over the cluster's cores."""
    r = RATES[stage]
    seconds = work * dim / MEASURED_DIM / (r.per_second * cluster.cpus)
    return _line(stage, seconds, cluster, f"{r.per_second:,.0f}/s per core at {MEASURED_DIM}-d, {r.card} "
                 f"({r.date})", r.measured)


def price(cfg: Config, plan: dict[str, Any], cluster: GpuCluster) -> dict[str, Any]:
    """Wall time and GPU-hours per stage of the plan's job on `cluster` (see the module docstring)."""
    if cfg.input.format != "laion_embeddings" and not cfg.embed.gpus_per_actor:
        raise ConfigError("plan --gpu: embed.gpus_per_actor is 0, so this job embeds on CPUs; price it with "
                         "--set embed.gpus_per_actor=1")
    rows, dim = plan["rows"], plan["dim"] or 0
    stages = {s["name"].split(" ")[0].split(":")[0] for s in plan["stages"]}
    lines = []
    embed = plan["embed"]
    if "images_per_second" in embed:
        measured = not embed["estimate"] and cluster.card in embed["source"]
        note = "" if cluster.card in embed["source"] else f"; assumed the same on {cluster.card}"
        lines.append(_line("embed", embed["rows"] / (embed["images_per_second"] * cluster.gpus), cluster,
                           f"{embed['images_per_second']:,.0f} images/s per GPU: {embed['source']}{note}", measured))
    elif cfg.input.format == "laion_embeddings":
        lines.append(_cpu("ingest", embed["rows"], dim, cluster))
    if "index" in stages:
        lines.append(_cpu("index", rows * row_work(rows, scan=False) / row_work(MEASURED_ROWS, scan=False), dim, cluster))
        queries = min(cfg.index.queries, rows)
        lines.append(_cpu("neighbors", queries * row_work(rows, scan=True) / row_work(MEASURED_ROWS, scan=True), dim,
                          cluster))
    if cfg.cluster.method != "kmeans":
        section = getattr(cfg.cluster, cfg.cluster.method, None)
        steps = sum(getattr(section, name, 0) or 0 for name in ("steps", "self_label_steps"))
        r = RATES["fit"]
        lines.append(_line("fit", steps / r.per_second, cluster, f"{r.per_second:g} steps/s per Train worker "
                           f"({r.source})", r.measured))
    lines.append(_cpu("assign", rows, dim, cluster))
    return {"cluster": vars(cluster) | {"gpus": cluster.gpus, "cpus": cluster.cpus}, "stages": lines,
            "wall_hours": sum(line["wall_hours"] for line in lines),
            "gpu_hours": sum(line["gpu_hours"] for line in lines)}


def format_price(priced: dict[str, Any]) -> str:
    """The priced stages as the lines `scaleclust plan --gpu` adds."""
    c = priced["cluster"]
    lines = [f"on {c['nodes']} node(s) x {c['gpus_per_node']} {c['card']} ({c['gpus']} GPUs, {c['cpus']} CPU cores):",
             f"{'stage':<10} {'wall h':>8} {'GPU-h':>9}  rate (M measured, A assumed)"]
    for s in priced["stages"]:
        lines.append(f"{s['stage']:<10} {s['wall_hours']:>8,.2f} {s['gpu_hours']:>9,.0f}  "
                     f"{'M' if s['measured'] else 'A'} {s['rate']}")
    lines.append(f"{'total':<10} {priced['wall_hours']:>8,.2f} {priced['gpu_hours']:>9,.0f}  (label, report and "
                 "dedup not priced)")
    return "\n".join(lines)
