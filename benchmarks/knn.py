"""Benchmark the sharded IVF index against exact search, side by side in one run.

For IVF-Flat and IVF-PQ on clustered synthetic unit vectors, or on a run's real embeddings (--run):
build time (train + add per shard), bytes per vector held in RAM (the spec's arithmetic and the
serialised size), queries/s and recall@10 at several nprobe, with exact search (IndexFlatIP over the
same shards) timed on a query subset. IVF-PQ is also searched with exact re-ranking (--refine: factor x
10 candidates re-scored against each shard's fp16 vectors, written to a temporary .npy per shard and
memory-mapped as the search actors do), and its nprobe chosen as `index.nprobe: auto` does: the
smallest reaching --target recall on a separate calibration sample of --calibrate rows.

    python benchmarks/knn.py            # 1M x 512 (several minutes)
    python benchmarks/knn.py --small    # 100k x 512 (about a minute)
    python benchmarks/knn.py --run runs/demo --queries 1000 --exact-queries 1000 --pq-m 64
        # a run's embeddings (after `make demo`: 5,000 MNIST digits by EfficientNet-Lite0, d = 1280);
        # a random --queries rows are held out as queries, the rest indexed
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from scaleclust.config import StorageConfig
from scaleclust.tables import embedding_matrix
from scaleclust.index.build import add, from_bytes, train, unit_float32
from scaleclust.index.calibrate import smallest_nprobe
from scaleclust.index.choose import choose_index
from scaleclust.index.knn import exact_search, recall_at_k
from scaleclust.index.search import Refine, search
from scaleclust.index.synthetic import clustered_vectors
from scaleclust.index.vectors import StoredVectors, npy_bytes
from scaleclust.rundir import RunDir

K = 10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--clusters", type=int, default=0, help="synthetic clusters (default n/1000)")
    p.add_argument("--noise", type=float, default=1.0, help="cos to centre ~1/sqrt(1+noise^2)")
    p.add_argument("--rank", type=int, default=0,
                   help="cluster spread in a rank-r subspace (0: isotropic, hardest for PQ)")
    p.add_argument("--queries", type=int, default=10_000, help="held-out queries for queries/s")
    p.add_argument("--exact-queries", type=int, default=1000, help="subset timed with exact search")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--nprobe", default="4,8,16,32,64")
    p.add_argument("--kinds", default="ivf_flat,ivf_pq")
    p.add_argument("--nlist", type=int, help="inverted lists (default ~4 sqrt(n), as the index stage)")
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--opq", action="store_true", help="IVF-PQ with an OPQ rotation (slow to train)")
    p.add_argument("--refine", default="0,20", help="ivf_pq: re-ranking factors to run (0: PQ alone)")
    p.add_argument("--target", type=float, default=0.9, help="recall@10 the calibrated nprobe must reach")
    p.add_argument("--calibrate", type=int, default=1000, help="held-out rows the nprobe calibration uses")
    p.add_argument("--threads", type=int, default=1, help="faiss threads, same for IVF and exact")
    p.add_argument("--small", action="store_true", help="n=100k, 2000 queries, 500 exact")
    p.add_argument("--run", help="use this run directory's committed embeddings instead of synthetic data")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out queries (--run)")
    args = p.parse_args()
    if args.small:
        args.n, args.queries, args.exact_queries, args.calibrate = 100_000, 2000, 500, 500
    args.clusters = args.clusters or max(10, args.n // 1000)
    return args


def timed(fn, *a):
    """(result, seconds) of fn(*a)."""
    t = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t


def run_embeddings(url: str, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indexed, held-out queries): a run's committed embeddings (float32, unit norm), shuffled."""
    run = RunDir(url, StorageConfig())
    x = np.concatenate([embedding_matrix(run.read_table(run.embeddings(s), ["embedding"])["embedding"])
                        for s, m in sorted(run.committed("embeddings").items()) if m["embedded"]])
    x = x[np.random.default_rng(seed).permutation(len(x))]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[queries:], x[:queries]


def stored_vectors(folder: Path, shards: list[tuple[int, np.ndarray]]) -> list[StoredVectors]:
    """Each shard's unit fp16 vectors in a .npy, memory-mapped back (what the index stage writes)."""
    out = []
    for first, v in shards:
        path = folder / f"shard-{first}.f16.npy"
        path.write_bytes(npy_bytes(unit_float32(v)))
        out.append(StoredVectors(str(path), StorageConfig(), first))
    return out


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(args.threads)
    held = args.queries + args.calibrate
    if args.run:
        (x, queries), gen_s = timed(run_embeddings, args.run, held, args.seed)
        args.n, args.d = x.shape
        source = f"embeddings of {args.run}"
    else:
        (x, _), gen_s = timed(clustered_vectors, args.n + held, args.d, args.clusters, args.noise, args.rank)
        x, queries = x[: args.n], x[args.n:]
        source = f"{args.clusters} clusters, noise {args.noise}, rank {args.rank or 'full'}"
    queries, calib = queries[: args.queries], queries[args.queries:]
    bounds = np.linspace(0, args.n, args.shards + 1).astype(np.int64)
    shards = [(int(lo), x[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    print(f"data: {args.n} x {args.d} ({source}) in {gen_s:.1f} s; {args.shards} shards, {len(queries)} queries "
          f"(+{len(calib)} to calibrate nprobe), {args.threads} faiss thread(s)")

    eq = queries[: args.exact_queries]
    (_, exact_ids), exact_s = timed(exact_search, shards, eq, K)
    exact_qps = len(eq) / exact_s
    print(f"exact IndexFlatIP: {len(eq)} queries in {exact_s:.1f} s = {exact_qps:.0f} queries/s\n")
    calib_ids = exact_search(shards, calib, K)[1] if len(calib) else None

    print(f"{'index':<24}{'refine':>7}{'train s':>8}{'add s':>8}{'RAM B/vec':>10}{'file B/vec':>11}"
          f"{'disk B/vec':>11}{'nprobe':>10}{'recall@10':>10}{'queries/s':>10}{'x exact':>9}")
    met: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            pq = kind == "ivf_pq"
            spec = choose_index(args.n, args.d, kind=kind, nlist=args.nlist, pq_m=args.pq_m if pq else None,
                                opq=args.opq)
            empty, train_s = timed(train, x[: spec.train_rows], spec)
            t = time.perf_counter()
            parts = [add(empty, v, first) for first, v in shards]
            add_s = time.perf_counter() - t
            file_bpv = sum(len(p) for p in parts) / args.n
            indexes = [from_bytes(p) for p in parts]
            del parts
            stored = stored_vectors(Path(tmp), shards) if pq and args.refine != "0" else []
            for factor in map(int, args.refine.split(",")) if pq else [0]:
                refine = Refine(stored, factor) if factor else None
                nprobes: list[int | str] = list(map(int, args.nprobe.split(",")))
                if calib_ids is not None and (factor or not pq):  # plain PQ never reaches it here
                    auto, _ = smallest_nprobe(
                        lambda p: recall_at_k(search(indexes, calib, K, p, refine)[1], calib_ids),
                        spec.nlist, args.target)
                    nprobes.append(f"auto={auto}")
                for nprobe in nprobes:
                    probe = int(str(nprobe).rpartition("=")[2])
                    (_, ids), s = timed(search, indexes, queries, K, probe, refine)
                    recall, qps = recall_at_k(ids[: len(eq)], exact_ids), len(queries) / s
                    row = (f"{spec.factory:<24}{factor or '-':>7}{train_s:>8.1f}{add_s:>8.1f}"
                           f"{spec.bytes_per_vector:>10}{file_bpv:>11.1f}{2 * args.d if factor else 0:>11}"
                           f"{nprobe:>10}{recall:>10.3f}{qps:>10.0f}{qps / exact_qps:>9.1f}")
                    print(row, flush=True)
                    if recall >= args.target and spec.bytes_per_vector <= 100:
                        met.append((qps, row))
            indexes = []  # freed before the next kind is built
            print(f"  bytes/vector arithmetic: {spec.to_dict()['arithmetic']}")
    # exact search timed again after the IVF rows: the faster of the two is the bar (load may change)
    _, again_s = timed(exact_search, shards, eq, K)
    bar = max(exact_qps, len(eq) / again_s)
    print(f"\nexact IndexFlatIP again: {len(eq) / again_s:.0f} queries/s; the goal uses the faster, {bar:.0f}")
    met = [f"{row} ({qps / bar:.1f}x the faster exact)" for qps, row in met if qps >= 20 * bar]
    print(f"goal recall@10 >= {args.target} at <= 100 bytes per vector in RAM and >= 20x exact: "
          + ("met by\n" + "\n".join(met) if met else "NOT MET"))


if __name__ == "__main__":
    main()
