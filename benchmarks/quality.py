"""Clustering quality of every method on several real labelled embedding sets: one table of ACC / NMI /
ARI (mean ± std over seeds) and seconds per fit, methods x data sets.

Each data set is a run directory whose embed stage has committed embeddings with a `label` column
(benchmarks/datasets.py prepares them: MNIST-5k as in `make demo`, and more sets that ship in packages,
embedded with ImageNet EfficientNet-Lite0). k = the number of classes, or with `--k auto` the k that the
fit's `k: auto` chooses (scaleclust.cluster.choose_k on a seeded sample of choose_k.ROWS rows; ACC then
matches clusters to classes one to one, the many-to-one ACC is recorded too). Every method runs at its
defaults, the same on every set; no label is used for any choice, labels only score.

- kmeans: faiss spherical k-means, 10 restarts (as `make demo` configured it before SCAN).
- mlc: MLCConfig() defaults, fitted with the same Method object the Ray Train loop drives, every row
  assigned by the nearest-subspace rule fitted on a 2,000-row sample.
- scan, spice, sic, scl: their config's defaults; each row's neighbours come from an IVF index chosen
  and searched as the index stage does (IVF-Flat, nlist ~4 sqrt(n), nprobe 16), never from exact
  all-pairs kNN; the head with the lowest loss over the last steps assigns. sic's semantic space is the
  demo encoder's nouns reduced as the fit stage does; turtle trains its task encoder, no neighbours.

A set may be a variant of benchmarks/datasets.py (`OUT/animals@4`, `OUT/animals+digits8`): the same
embeddings at another class count.

Every finished fit is appended to --results (JSON lines, keyed by set, method, seed and the method's
defaults), and a fit already recorded there with the same defaults is not run again: a killed run
resumes, and the table is always printed from every recorded fit of the current defaults. The verdict
lines say, per method, whether its mean ACC beats k-means's on every set (a shipped method that does
not is marked experimental).

    .venv/bin/python benchmarks/quality.py OUT/mnist5k OUT/animals OUT/digits8 --agreement 5 10 20 50
    .venv/bin/python benchmarks/quality.py OUT/mnist5k OUT/animals OUT/digits8 [--methods kmeans scan ...] [--seeds 0 1 2] [--jobs N] [--results FILE]
    .venv/bin/python benchmarks/quality.py OUT/mnist5k OUT/animals@4 ... --methods scan --k auto
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose_k import on_fit_sample  # noqa: E402  (benchmarks/ is not a package)
from datasets import load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# SIC's semantic space depends on the encoder only (the demo's, for every set): built once, reused
SEMANTIC_RUN = Path(tempfile.gettempdir()) / "scaleclust-quality-semantic"

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.cluster.mlc import MLC, fit_assigner
from scaleclust.cluster.heads import HeadAssigner, HeadsMethod, OneHead, select_head
from scaleclust.cluster.method import Method
from scaleclust.cluster.scan import SCAN
from scaleclust.cluster.scl import SCL
from scaleclust.cluster.settings import MLCConfig, ScanConfig, SclConfig, SicConfig, SpiceConfig, TurtleConfig
from scaleclust.cluster.sic import SIC, space_nouns
from scaleclust.cluster.spice import SPICE
from scaleclust.cluster.turtle import Turtle
from scaleclust.config import ClusterConfig, IndexConfig, load as load_config
from scaleclust.rundir import RunDir
from scaleclust.semantic import SemanticSpace, build_space
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


@dataclass(frozen=True)
class Result:
    """A fit's clusters per row; for head methods also every head's logits (H, n, K) and the chosen head."""

    clusters: np.ndarray
    logits: np.ndarray | None = None
    chosen: int = 0


def run_kmeans(x: np.ndarray, k: int, seed: int) -> Result:
    centroids, _ = spherical_kmeans(x, k, niter=25, restarts=10, seed=seed)
    return Result(np.argmax(x @ centroids.T, axis=1))


def run_mlc(x: np.ndarray, k: int, seed: int) -> Result:
    config = MLCConfig()
    head = fit(torch.from_numpy(x), MLC(config), seed)
    sample = np.random.default_rng(seed).choice(len(x), size=min(2000, len(x)), replace=False)
    assigner, _ = fit_assigner(head, x[sample], k, config, seed, rank=1, space="c")
    return Result(assigner.assign(x)[0])


def run_heads(method: Method, x: np.ndarray, seed: int) -> Result:
    """Train a head method on all rows (each row's neighbours from the IVF index when it uses them) and
    assign with its lowest-loss head, as the fit stage does; with every head's logits."""
    near = torch.from_numpy(index_neighbors(x, method.neighbors, seed)[1]) if method.neighbors else None
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), method, seed, log=lambda step, s: stats.append(s), neighbors=near)
    model, chosen = OneHead(head, method.k), 0
    if isinstance(method, HeadsMethod):
        model, chosen = head, select_head(stats[-method.config.select_steps:], method.config.heads)
    logits = np.stack([HeadAssigner(model, h).logits(x) for h in range(len(model(torch.from_numpy(x[:2]))))])
    return Result(logits[chosen].argmax(1), logits, chosen)


def semantic_space() -> SemanticSpace:
    """The demo encoder's nouns (its classifier's rows), committed once under SEMANTIC_RUN."""
    cfg = load_config(REPO / "jobs" / "demo.yaml", [f"run_dir={SEMANTIC_RUN}"])
    return build_space(cfg, RunDir(str(SEMANTIC_RUN), cfg.storage), device="cpu")


def sic_vectors(x: np.ndarray, k: int, config: SicConfig, seed: int) -> torch.Tensor:
    """SIC's semantic space as the fit stage reduces it: the config's space_nouns nouns nearest each
    k-means centre of a ClusterConfig().assign_sample-row sample."""
    vectors = semantic_space().vectors
    rows = np.random.default_rng(seed).choice(len(x), size=min(ClusterConfig().assign_sample, len(x)), replace=False)
    centres, _ = spherical_kmeans(x[rows], k, niter=25, restarts=1, seed=seed)
    keep = space_nouns(torch.from_numpy(centres), torch.from_numpy(vectors), config.space_nouns)
    return torch.tensor(vectors[keep.numpy()])


def run_method(name: str) -> Callable[..., Result]:
    """(x, k, seed[, config]) -> Result for a head method at its defaults (or the given config)."""
    def run(x: np.ndarray, k: int, seed: int, config: object | None = None) -> Result:
        config = config or DEFAULTS[name]()
        if name == "sic":
            return run_heads(SIC(config, k, sic_vectors(x, k, config, seed)), x, seed)
        return run_heads(RECIPES[name](config, k), x, seed)
    return run


RECIPES: dict[str, Callable[[object, int], Method]] = {"scan": SCAN, "spice": SPICE, "scl": SCL, "turtle": Turtle}
METHODS: dict[str, Callable[..., Result]] = {
    "kmeans": run_kmeans, "mlc": run_mlc, **{name: run_method(name) for name in ("scan", "spice", "sic", "scl", "turtle")}}


def evaluate(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())


DEFAULTS: dict[str, Callable[..., object]] = {
    "kmeans": lambda: {"niter": 25, "restarts": 10}, "mlc": MLCConfig, "scan": ScanConfig, "spice": SpiceConfig,
    "sic": SicConfig, "scl": SclConfig, "turtle": TurtleConfig}
Overrides = dict[str, dict[str, str]]


def settings(method: str, overrides: Overrides) -> object:
    """The method's defaults with its --set overrides applied and validated."""
    return DEFAULTS[method](**overrides.get(method, {}))


def defaults(method: str, overrides: Overrides) -> str:
    """The method's settings as text: a recorded fit counts only while they are unchanged."""
    return repr(settings(method, overrides))


def one_fit(task: tuple[str, str, int, Overrides, Path | None, str]) -> dict[str, object]:
    """One (data set, method, seed) fit, scored; runs in its own process. With a logits folder, a head
    method's every head's logits, the chosen head and the labels go to FOLDER/SET-METHOD-SEED.npz
    (SET-METHOD-SEED-kauto.npz at the k that k: auto chose, so that the two runs keep apart) (to
    study head selection and confidence without refitting)."""
    torch.set_num_threads(1)  # comparable timings on a shared machine
    run_dir, method, seed, overrides, folder, k_mode = task
    x, labels = load(Path(run_dir).parent, Path(run_dir).name)
    k = int(on_fit_sample(x, seed)["k"]) if k_mode == "auto" else len(set(labels.tolist()))
    started = time.time()
    extra = (settings(method, overrides),) if method in overrides else ()
    fitted = METHODS[method](x, k, seed, *extra)
    seconds = time.time() - started
    result = evaluate(fitted.clusters, labels)
    if folder is not None and fitted.logits is not None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{Path(run_dir).name}-{method}-{seed}{'-kauto' if k_mode == 'auto' else ''}.npz"
        np.savez_compressed(folder / name, logits=fitted.logits,
                            chosen=fitted.chosen, labels=labels)
    print(f"  {Path(run_dir).name} {method} seed {seed} k {k}: ACC {result['acc']:.3f} NMI {result['nmi']:.3f} "
          f"ARI {result['ari']:.3f} ({seconds:.0f} s)", flush=True)
    return {"set": Path(run_dir).name, "method": method, "seed": seed, "defaults": defaults(method, overrides),
            "seconds": seconds, **({"k": "auto", "k_chosen": k} if k_mode == "auto" else {}), **result}


def recorded(path: Path, overrides: Overrides, k_mode: str) -> list[dict[str, object]]:
    """Every fit in the results file whose method settings and k (true or auto) are the current ones."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["method"] in DEFAULTS and r["defaults"] == defaults(str(r["method"]), overrides)
            and r.get("k", "true") == k_mode]


def verdicts(table: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Per method: whether its mean ACC beats k-means's on every set, with the margin per set (the bar a
    shipped method must pass, else README marks it experimental)."""
    lines = []
    for method in [m for m in METHODS if m != "kmeans"]:
        sets = {name: acc for name, acc in table.items() if method in acc and "kmeans" in acc}
        if not sets:
            continue
        margins = {name: acc[method].mean() - acc["kmeans"].mean() for name, acc in sets.items()}
        verdict = "yes" if all(m > 0 for m in margins.values()) and len(sets) == len(table) else "no"
        lines.append(f"{method}: beats k-means on every set: {verdict} (ACC margin: "
                     + ", ".join(f"{name} {m:+.3f}" for name, m in margins.items()) + ")")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories with committed, labelled embeddings")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="fits run at once, one process each")
    parser.add_argument("--results", type=Path, default=Path("quality-results.jsonl"),
                        help="JSON lines of finished fits: appended to, and read back to skip recorded fits")
    parser.add_argument("--logits", type=Path, help="folder for every head's logits of each head-method fit")
    parser.add_argument("--agreement", type=int, nargs="+", metavar="M",
                        help="only print the label agreement of each row's M index neighbours per set")
    parser.add_argument("--k", choices=["true", "auto"], default="true",
                        help="k per set: its class count, or the one the fit's k: auto chooses (no labels)")
    parser.add_argument("--set", nargs="+", default=[], metavar="METHOD.FIELD=VALUE",
                        help="override a method's default (experiments; the table names them)")
    args = parser.parse_args()
    overrides: Overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, field = key.partition(".")
        if method not in DEFAULTS or method == "kmeans" or not field or not value:
            parser.error(f"--set {item}: expected METHOD.FIELD=VALUE for a method other than kmeans")
        overrides.setdefault(method, {})[field] = value
    for method in overrides:
        try:
            settings(method, overrides)
        except ValueError as error:  # pydantic's ValidationError names the field
            parser.error(f"--set: {error}")
    if args.agreement:
        print("\n".join(neighbor_agreement(r, args.agreement) for r in args.runs))
        return
    done = recorded(args.results, overrides, args.k)
    if "sic" in args.methods:  # build the semantic space before the fits read it
        semantic_space()
    have = {(r["set"], r["method"], r["seed"]) for r in done}
    tasks = [(r, m, s) for r in args.runs for m in args.methods for s in args.seeds if (Path(r).name, m, s) not in have]
    tasks = [(*t, overrides, args.logits, args.k) for t in tasks]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool, args.results.open("a") as out:
        for row in pool.imap_unordered(one_fit, tasks, chunksize=1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            done.append(row)
    if overrides:
        print("settings overridden: " + " ".join(args.set))
    if args.k == "auto":
        chosen = {(str(d["set"]), int(d["seed"])): d["k_chosen"] for d in done if d["seed"] in args.seeds}
        print("k chosen by k: auto: " + ", ".join(f"{name} seed {seed} {k}" for (name, seed), k in sorted(chosen.items())))
    print(f"\n| data set | method | ACC | NMI | ARI | ACC spread | s per fit |   (mean ± std, spread = max - min, "
          f"over seeds {args.seeds})")
    print("|---|---|---|---|---|---|---|")
    table: dict[str, dict[str, np.ndarray]] = {}
    for run_dir in args.runs:
        name = Path(run_dir).name
        for method in args.methods:
            mine = [d for d in done if d["set"] == name and d["method"] == method and d["seed"] in args.seeds]
            cells = {m: np.asarray([d[m] for d in mine], dtype=float) for m in ("acc", "nmi", "ari")}
            table.setdefault(name, {})[method] = cells["acc"]
            print(f"| {name} | {method} | " + " | ".join(f"{cells[m].mean():.3f} ± {cells[m].std():.3f}"
                                                      for m in ("acc", "nmi", "ari"))
                  + f" | {np.ptp(cells['acc']) if len(mine) else float('nan'):.3f}"
                  + f" | {np.mean([d['seconds'] for d in mine]):.0f} |")
    print("\n" + "\n".join(verdicts(table)))


if __name__ == "__main__":
    main()
