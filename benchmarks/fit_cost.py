"""Cost of one MLC loss step (forward + backward) at batch 1024: our exact chunked Rc vs the literal formula.

    python benchmarks/fit_cost.py [--batch 1024] [--dims 128 512] [--repeats 2]

On a shared machine run it with OMP_NUM_THREADS=1: oversubscribed torch thread pools make wall-clock
figures swing several-fold between runs.

Each (variant, d) runs in its own subprocess so memory figures do not mix. Time: best wall-clock of
`repeats` + 1 steps. Memory: the child's peak resident set (Linux VmHWM, reset through
/proc/self/clear_refs once a tiny step has loaded kernels and thread pools) minus its resident set at
that moment: what the steps themselves added (tracemalloc cannot see torch's allocations).
The step is the loss on given Z and C (coding rate + Sinkhorn + Rc + ||Pi||^2, and the backward
into Z and C); the head's MLP is left out because it costs the same in both variants.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from scaleclust.cluster.rate_reduction import coding_rate, compression_rate, compression_rate_naive
from scaleclust.cluster.sinkhorn import sinkhorn_membership

VARIANTS = {"ours": compression_rate, "naive": compression_rate_naive}


def memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status: VmRSS (now) or VmHWM (peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(variant: str, batch: int, dim: int, repeats: int) -> dict[str, float]:
    """Run in a child: time and peak memory of the loss step of one variant."""
    compress = VARIANTS[variant]
    gen = torch.Generator().manual_seed(0)

    def unit(n: int, d: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1).requires_grad_()

    def step(z: torch.Tensor, c: torch.Tensor) -> float:
        started = time.perf_counter()
        pi = sinkhorn_membership(c, eta=0.175, iters=5)
        loss = -coding_rate(z, 0.1) + compress(z, pi, 0.1) + 0.025 * pi.square().sum()
        loss.backward()
        return time.perf_counter() - started

    step(unit(16, 8), unit(16, 8))  # load kernels and thread pools before the baseline is taken
    z, c = unit(batch, dim), unit(batch, dim)
    reset_peak()
    before = memory_kib("VmRSS")
    seconds = min(step(z, c) for _ in range(repeats + 1))
    return {"seconds": seconds, "peak_mib": (memory_kib("VmHWM") - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.batch, int(args.child[1]), args.repeats)))
        return
    print(f"one MLC loss step, b={args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'d':>5} {'variant':>7} {'seconds':>9} {'peak MiB':>9}")
    for dim in args.dims:
        result = {}
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--repeats", str(args.repeats),
                                  "--child", variant, str(dim)], check=True, capture_output=True, text=True)
            result[variant] = json.loads(out.stdout)
            print(f"{dim:>5} {variant:>7} {result[variant]['seconds']:>9.2f} {result[variant]['peak_mib']:>9.0f}")
        print(f"{dim:>5} {'naive/ours':>7} time x{result['naive']['seconds'] / result['ours']['seconds']:.1f}, "
              f"peak memory x{result['naive']['peak_mib'] / max(result['ours']['peak_mib'], 1.0):.1f}")


if __name__ == "__main__":
    main()
