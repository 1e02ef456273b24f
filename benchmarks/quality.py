"""Clustering quality of every method on several real labelled embedding sets: one table of ACC / NMI /
ARI (mean ± std over seeds) and seconds per fit, methods x data sets.

Each data set is a run directory whose embed stage has committed embeddings with a `label` column
(benchmarks/datasets.py prepares them: MNIST-5k as in `make demo`, and more sets that ship in packages,
embedded with ImageNet EfficientNet-Lite0). k = the number of classes. Every method runs at its
defaults, the same on every set; no label is used for any choice, labels only score.

- kmeans: faiss spherical k-means, 10 restarts (as `make demo` configured it before SCAN).
- mlc: MLCConfig() defaults, fitted with the same Method object the Ray Train loop drives, every row
  assigned by the nearest-subspace rule fitted on a 2,000-row sample.
- scan, spice: ScanConfig() / SpiceConfig() defaults; each row's neighbours come from an IVF index
  chosen and searched as the index stage does (IVF-Flat, nlist ~4 sqrt(n), nprobe 16), never from
  exact all-pairs kNN; the head with the lowest loss over the last steps assigns.

Every finished fit is appended to --results (JSON lines, keyed by set, method, seed and the method's
defaults), and a fit already recorded there with the same defaults is not run again: a killed run
resumes, and the table is always printed from every recorded fit of the current defaults. The verdict
lines test the quality bar of issue 10: a neighbour method ahead of both kmeans and mlc in mean ACC
by more than the largest spread over seeds (of any method on that set) on every set, and ahead of
CPP's ACC 0.720 on mnist5k.

    .venv/bin/python benchmarks/quality.py OUT/mnist5k OUT/animals OUT/digits8 --agreement 5 10 20 50
    .venv/bin/python benchmarks/quality.py OUT/mnist5k OUT/animals OUT/digits8 [--methods kmeans mlc scan spice] [--seeds 0 1 2] [--jobs N] [--results FILE]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load  # noqa: E402  (benchmarks/ is not a package)

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.cluster.mlc import MLC, MLCConfig, fit_assigner
from scaleclust.cluster.heads import HeadAssigner, select_head
from scaleclust.cluster.scan import SCAN, ScanConfig
from scaleclust.cluster.spice import SPICE, SpiceConfig
from scaleclust.config import IndexConfig
from scaleclust.index.build import add, train
from scaleclust.index.choose import choose_index
from scaleclust.index.search import search_vectors


def index_neighbors(x: np.ndarray, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's m nearest other rows: their row numbers (n, m) and embeddings (n, m, d) float16, from
    an IVF index as the index stage builds it (kind auto, default nlist) searched at the default nprobe."""
    spec = choose_index(len(x), x.shape[1])
    sample = x[np.random.default_rng(seed).choice(len(x), size=min(spec.train_rows, len(x)), replace=False)]
    index = add(train(sample.astype(np.float16), spec), x.astype(np.float16), 0)
    parts = [search_vectors([index], x[i:i + 2048].astype(np.float16), m + 1, IndexConfig().nprobe)
             for i in range(0, len(x), 2048)]
    return np.concatenate([p[1][:, 1:] for p in parts]), np.concatenate([p[2][:, 1:] for p in parts])


def neighbor_agreement(run_dir: str, ms: list[int]) -> str:
    """Share of each row's m index neighbours that carry its label, for every m (a diagnostic: the
    ceiling a kNN-consistency method starts from; labels only score)."""
    x, labels = load(Path(run_dir).parent, Path(run_dir).name)
    ids, _ = index_neighbors(x, max(ms), 0)
    same = labels[ids] == labels[:, None]
    return f"{Path(run_dir).name}: " + ", ".join(f"m={m} {same[:, :m].mean():.3f}" for m in ms)


def run_kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    centroids, _ = spherical_kmeans(x, k, niter=25, restarts=10, seed=seed)
    return np.argmax(x @ centroids.T, axis=1)


def run_mlc(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    config = MLCConfig()
    head = fit(torch.from_numpy(x), MLC(config), seed)
    sample = np.random.default_rng(seed).choice(len(x), size=min(2000, len(x)), replace=False)
    assigner, _ = fit_assigner(head, x[sample], k, config, seed, rank=1, space="c")
    return assigner.assign(x)[0]


def run_with_neighbors(method: SCAN | SPICE, x: np.ndarray, seed: int) -> np.ndarray:
    """Train a neighbour method on all rows (neighbours from the IVF index), assign with its lowest-loss head."""
    _, near = index_neighbors(x, method.neighbors, seed)
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), method, seed, log=lambda step, s: stats.append(s), neighbors=torch.from_numpy(near))
    return HeadAssigner(head, select_head(stats[-method.config.select_steps:], method.config.heads)).assign(x)[0]


def run_scan(x: np.ndarray, k: int, seed: int, config: ScanConfig | None = None) -> np.ndarray:
    return run_with_neighbors(SCAN(config or ScanConfig(), k), x, seed)


def run_spice(x: np.ndarray, k: int, seed: int, config: SpiceConfig | None = None) -> np.ndarray:
    return run_with_neighbors(SPICE(config or SpiceConfig(), k), x, seed)


METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "kmeans": run_kmeans, "mlc": run_mlc, "scan": run_scan, "spice": run_spice}


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())


DEFAULTS: dict[str, Callable[..., object]] = {
    "kmeans": lambda: {"niter": 25, "restarts": 10}, "mlc": MLCConfig, "scan": ScanConfig, "spice": SpiceConfig}
CPP_ACC = 0.720  # rate reduction trained 60 epochs on mnist5k (ALGORITHMS.md, "Measured here")
Overrides = dict[str, dict[str, str]]


def settings(method: str, overrides: Overrides) -> object:
    """The method's defaults with --set overrides (scan / spice fields) applied and validated."""
    return DEFAULTS[method](**overrides.get(method, {}))


def defaults(method: str, overrides: Overrides) -> str:
    """The method's settings as text: a recorded fit counts only while they are unchanged."""
    return repr(settings(method, overrides))


def one_fit(task: tuple[str, str, int, Overrides]) -> dict[str, object]:
    """One (data set, method, seed) fit, scored; runs in its own process."""
    torch.set_num_threads(1)  # comparable timings on a shared machine
    run_dir, method, seed, overrides = task
    x, labels = load(Path(run_dir).parent, Path(run_dir).name)
    started = time.time()
    extra = (settings(method, overrides),) if method in overrides else ()
    clusters = METHODS[method](x, len(set(labels.tolist())), seed, *extra)
    seconds = time.time() - started
    result = evaluate(clusters, labels)
    print(f"  {Path(run_dir).name} {method} seed {seed}: ACC {result['acc']:.3f} NMI {result['nmi']:.3f} "
          f"ARI {result['ari']:.3f} ({seconds:.0f} s)", flush=True)
    return {"set": Path(run_dir).name, "method": method, "seed": seed, "defaults": defaults(method, overrides),
            "seconds": seconds, **result}


def recorded(path: Path, overrides: Overrides) -> list[dict[str, object]]:
    """Every fit in the results file whose method settings are the current ones."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["method"] in DEFAULTS and r["defaults"] == defaults(str(r["method"]), overrides)]


def verdicts(table: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Per neighbour method: its ACC margin over the better of kmeans and mlc on every set, against the
    largest spread over seeds there, and against CPP on mnist5k."""
    lines = []
    for method in ("scan", "spice"):
        ok, parts = True, []
        for name, acc in table.items():
            if method not in acc or not {"kmeans", "mlc"} <= set(acc):
                ok, parts = False, parts + [f"{name}: not measured"]
                continue
            margin = acc[method].mean() - max(acc["kmeans"].mean(), acc["mlc"].mean())
            spread = max(np.ptp(v) for v in acc.values())
            ok &= bool(margin > spread)
            parts.append(f"{name} {margin:+.3f} vs spread {spread:.3f}")
        if "mnist5k" in table and method in table["mnist5k"]:
            cpp = table["mnist5k"][method].mean() - CPP_ACC
            ok &= bool(cpp > 0)
            parts.append(f"mnist5k vs CPP {cpp:+.3f}")
        if any(method in acc for acc in table.values()):
            lines.append(f"{method}: ACC over max(kmeans, mlc): " + "; ".join(parts) + f". Bar met: {'yes' if ok else 'no'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories with committed, labelled embeddings")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="fits run at once, one process each")
    parser.add_argument("--results", type=Path, default=Path("quality-results.jsonl"),
                        help="JSON lines of finished fits: appended to, and read back to skip recorded fits")
    parser.add_argument("--agreement", type=int, nargs="+", metavar="M",
                        help="only print the label agreement of each row's M index neighbours per set")
    parser.add_argument("--set", nargs="+", default=[], metavar="METHOD.FIELD=VALUE",
                        help="override a scan or spice default (experiments; the table names them)")
    args = parser.parse_args()
    overrides: Overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, field = key.partition(".")
        if method not in ("scan", "spice") or not field or not value:
            parser.error(f"--set {item}: expected scan.FIELD=VALUE or spice.FIELD=VALUE")
        overrides.setdefault(method, {})[field] = value
    for method in overrides:
        try:
            settings(method, overrides)
        except ValueError as error:  # pydantic's ValidationError names the field
            parser.error(f"--set: {error}")
    if args.agreement:
        print("\n".join(neighbor_agreement(r, args.agreement) for r in args.runs))
        return
    done = recorded(args.results, overrides)
    have = {(r["set"], r["method"], r["seed"]) for r in done}
    tasks = [(r, m, s) for r in args.runs for m in args.methods for s in args.seeds if (Path(r).name, m, s) not in have]
    tasks = [(*t, overrides) for t in tasks]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool, args.results.open("a") as out:
        for row in pool.imap_unordered(one_fit, tasks, chunksize=1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            done.append(row)
    if overrides:
        print("settings overridden: " + " ".join(args.set))
    print(f"\n| data set | method | ACC | NMI | ARI | s per fit |   (mean ± std over seeds {args.seeds})")
    print("|---|---|---|---|---|---|")
    table: dict[str, dict[str, np.ndarray]] = {}
    for run_dir in args.runs:
        name = Path(run_dir).name
        for method in args.methods:
            mine = [d for d in done if d["set"] == name and d["method"] == method and d["seed"] in args.seeds]
            cells = {m: np.asarray([d[m] for d in mine], dtype=float) for m in ("acc", "nmi", "ari")}
            table.setdefault(name, {})[method] = cells["acc"]
            print(f"| {name} | {method} | " + " | ".join(f"{cells[m].mean():.3f} ± {cells[m].std():.3f}"
                                                      for m in ("acc", "nmi", "ari"))
                  + f" | {np.mean([d['seconds'] for d in mine]):.0f} |")
    print("\n" + "\n".join(verdicts(table)))


if __name__ == "__main__":
    main()
