"""Peak memory of a searcher is set by the shards it loads (S), not by how many shards exist (T).

Builds two IVF-Flat indexes of T=4 and T=16 shards with the same rows per shard (shards are the
input embedding files, so T grows with the dataset), then in fresh subprocesses loads S of them
(S = 0, 1, 2, 4 and all T) and searches, reporting peak RSS. "eager" holds all S indexes at
once; "lazy" streams them through ``search`` one at a time, so its peak is about one shard.

    python benchmarks/index_memory.py              # 50k rows x 256 per shard
    python benchmarks/index_memory.py --rows 20000 # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import faiss

from scaleclust.index.build import add, from_bytes, train
from scaleclust.index.choose import choose_index
from scaleclust.index.search import search
from scaleclust.index.synthetic import clustered_vectors

TOTALS, LOADED, NLIST, CLUSTERS = (4, 16), (0, 1, 2, 4), 256, 200


def child(folder: Path, s: int, mode: str, d: int) -> None:
    """Load the first s shard files of folder, search 1000 queries, print peak RSS as JSON."""
    faiss.omp_set_num_threads(1)
    files = sorted(folder.glob("*.faiss"))[:s]
    queries, _ = clustered_vectors(1000, d, CLUSTERS, seed=99)
    loaded = [from_bytes(f.read_bytes()) for f in files] if mode == "eager" else (
        f.read_bytes() for f in files)
    search(loaded, queries, 10, 8)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    status = Path("/proc/self/status").read_text().splitlines()
    hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    peak_mib = hwm_kib / 1024
    loaded_mib = sum(f.stat().st_size for f in files) / 2**20
    print(json.dumps({"peak_rss_mib": peak_mib, "loaded_mib": loaded_mib}))


def build(folder: Path, shards: int, rows: int, d: int, seed: int) -> None:
    """Train once and write one index file per shard of ``rows`` rows."""
    x, _ = clustered_vectors(shards * rows, d, CLUSTERS, seed=seed)
    spec = choose_index(len(x), d, nlist=NLIST)
    empty = train(x[: spec.train_rows], spec)
    folder.mkdir()
    for i in range(shards):
        part = add(empty, x[i * rows:(i + 1) * rows], i * rows)
        (folder / f"shard-{i:05d}.faiss").write_bytes(part)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="rows per shard")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--child", nargs=3, metavar=("DIR", "S", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(Path(args.child[0]), int(args.child[1]), args.child[2], args.d)
    faiss.omp_set_num_threads(1)
    print(f"{args.rows} rows x {args.d} per shard, IVF{NLIST},Flat; peak RSS of a fresh process")
    print(f"{'T shards':>9}{'S loaded':>9}{'mode':>7}{'index MiB':>10}{'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for t in TOTALS:
            folder = Path(tmp) / f"T{t}"
            build(folder, t, args.rows, args.d, seed=t)
            for s in sorted({*LOADED, t}):  # and all T: eager grows with T, lazy does not
                for mode in ("eager", "lazy") if s > 1 else ("eager",):
                    out = subprocess.run(
                        [sys.executable, __file__, "--d", str(args.d),
                         "--child", str(folder), str(s), mode],
                        check=True, capture_output=True, text=True).stdout
                    r = json.loads(out.strip().splitlines()[-1])
                    print(f"{t:>9}{s:>9}{mode:>7}{r['loaded_mib']:>10.0f}"
                          f"{r['peak_rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()
