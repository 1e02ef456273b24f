"""A labelled set replayed as five nights of `scaleclust update`, under three refit policies side by side.

The set's embeddings (benchmarks/datasets.py: the demo encoder over the developers' real labelled
images) are written as precomputed-embedding parts (img_emb/ + metadata/, one part per shard)
into one dump that grows night by night. Two classes are held out of night 1:

    night 1   share --first of the known classes' rows; fitted with k = the classes present
    night 2   more rows of the known classes only
    night 3   more known rows + every row of held-out class A
    night 4   more known rows + every row of held-out class B
    night 5   the rest of the known rows

Each night runs `update` under each policy in its own run directory (night 1 is fitted once and copied
to the policies' directories, the same first version for all):

    warm   update.refit on_drift (the default): drift decides; a refit trains from the committed model
    cold   a cold full re-run of the same method and config in a fresh run directory every night
    never  update.refit never: new rows are only assigned

Printed per night and policy: ACC/NMI of the version against the labels (all rows present), id
stability (share of the rows present the night before that kept their cluster id), for each held-out
class that has arrived whether one cluster holds >= 0.8 of its rows with purity >= 0.8 under an id the
night-1 model did not have (with that cluster's share of the class and purity), how many known classes
meet the same 0.8/0.8 bar (what the features allow), whether the night refitted, and its seconds against
the cold re-run's. Last, per set, the ceiling: one cold fit at the true class count on every night's rows,
and which held-out classes get a cluster at the 0.8/0.8 bar there (a class that fails it there is not
separated by these features at the method's own k, so no nightly policy can be expected to find it).

    .venv/bin/python benchmarks/datasets.py --out OUT --sets digits8 mnist5k
    .venv/bin/python benchmarks/nightly_stream.py --data OUT --sets digits8 mnist5k [--rows 2000]
        [--set cluster.scan.steps=300 ...]

Goals: warm within 0.02 ACC of cold every night; id stability >= 0.95 on nights without a new class;
every held-out class gets its own new id; a refit night <= 0.3 of a cold run; a night without a refit
<= 0.05 of one.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import SETS, load  # noqa: E402

from scaleclust.cluster.metrics import scores  # noqa: E402
from scaleclust.config import StorageConfig, apply_override, from_dict  # noqa: E402
from scaleclust.ray_setup import ensure_ray  # noqa: E402
from scaleclust.rundir import RunDir  # noqa: E402
from scaleclust import update as update_module  # noqa: E402
from scaleclust.update import update  # noqa: E402

POLICIES = ("warm", "cold", "never")
PART_ROWS = 250  # rows per part (shard)


def nights(labels: np.ndarray, held_out: tuple[int, int], first: float, seed: int) -> list[np.ndarray]:
    """Row indices of each of the five nights (see the module docstring)."""
    rng = np.random.default_rng(seed)
    known = rng.permutation(np.flatnonzero(~np.isin(labels, held_out)))
    cut = int(first * len(known))
    rest = np.array_split(known[cut:], 4)
    a, b = (rng.permutation(np.flatnonzero(labels == c)) for c in held_out)
    return [known[:cut], rest[0], np.concatenate([rest[1], a]), np.concatenate([rest[2], b]), rest[3]]


def write_parts(dump: Path, x: np.ndarray, rows: np.ndarray, start: int) -> int:
    """Rows `rows` of x as parts start, start + 1, ... of the dump (keys r<row>); returns the next part."""
    (dump / "img_emb").mkdir(parents=True, exist_ok=True)
    (dump / "metadata").mkdir(parents=True, exist_ok=True)
    for chunk in np.array_split(rows, max(1, round(len(rows) / PART_ROWS))):
        np.save(dump / "img_emb" / f"img_emb_{start}.npy", x[chunk].astype(np.float16))
        pq.write_table(pa.table({"key": [f"r{i:06d}" for i in chunk]}), dump / "metadata" / f"metadata_{start}.parquet")
        start += 1
    return start


def config(run_dir: Path, dump: Path, k: int, policy: str, sets: list[str]):
    data: dict[str, Any] = {
        "run_dir": str(run_dir),
        "input": {"shards": [str(dump)], "format": "laion_embeddings", "key_column": "key"},
        "embed": {"model": {"kind": "timm", "arch": "efficientnet_lite0", "pretrained": "package:efficientnet_lite0"}},
        "cluster": {"method": "scan", "k": k, "sample_size": 5000, "seed": 0},
        "report": {"image_clusters": 0},
        "update": {"refit": "never" if policy == "never" else None},
    }
    for assignment in sets:
        apply_override(data, assignment)
    return from_dict(data)


def clusters(run_dir: Path) -> dict[str, int]:
    """key -> cluster id in the latest version."""
    run = RunDir(str(run_dir), StorageConfig())
    latest = json.loads((run_dir / "versions" / "LATEST.json").read_text())["version"]
    manifest = json.loads((run_dir / "versions" / latest / "manifest.json").read_text())
    found: dict[str, int] = {}
    for entry in manifest["shards"].values():
        table = run.read_table(run.path("assignments", entry["file"]), ["key", "cluster"])
        found.update(zip(table["key"].to_pylist(), table["cluster"].to_pylist()))
    return found


def _without_label(run_stage):
    """run_stage less the label stage: naming needs the encoder's classifier norms, which precomputed
    parts lack; every policy skips it alike (it runs only on refit nights and first versions)."""
    def run(name, *args, **kwargs):
        return {} if name == "label" else run_stage(name, *args, **kwargs)
    return run


update_module.run_stage = _without_label(update_module.run_stage)


def timed_update(cfg) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = update(cfg)
    return time.perf_counter() - started, manifest


def best_cluster(c: np.ndarray, y: np.ndarray, cls: int) -> tuple[int, float, float]:
    """The cluster holding most of class cls's rows: (id, share of the class it holds, its purity)."""
    top, count = np.unique(c[y == cls], return_counts=True)
    best = int(top[np.argmax(count)])
    return best, float(count.max() / (y == cls).sum()), float(count.max() / (c == best).sum())


def measure(now: dict[str, int], before: dict[str, int] | None, labels: np.ndarray, held_out: tuple[int, int],
            first_ids: set[int]) -> dict[str, Any]:
    """ACC/NMI, id stability, for each arrived held-out class whether it has its own new id (one cluster
    holds >= 0.8 of its rows at purity >= 0.8, under an id night 1 lacked) with that cluster's share and
    purity, and how many known classes meet the same 0.8/0.8 bar (what the features allow)."""
    keys = sorted(now)
    y = labels[[int(k[1:]) for k in keys]]
    c = np.array([now[k] for k in keys])
    ids, classes = np.unique(c), np.unique(y)
    table = np.array([[int(((c == i) & (y == j)).sum()) for j in classes] for i in ids])
    got = scores(table)
    stable = None if before is None else float(np.mean([now[k] == before[k] for k in before]))
    own, held = {}, {}
    for cls in held_out:
        if not (y == cls).any():
            continue
        best, share, purity = best_cluster(c, y, int(cls))
        own[int(cls)] = bool(share >= 0.8 and purity >= 0.8 and best not in first_ids)
        held[int(cls)] = {"share": round(share, 3), "purity": round(purity, 3), "new_id": best not in first_ids}
    known = [cls for cls in classes if cls not in held_out]
    bar = sum(min(best_cluster(c, y, int(cls))[1:]) >= 0.8 for cls in known)
    return {"acc": got["acc"], "nmi": got["nmi"], "stable": stable, "own_new_id": own, "held_out": held,
            "known_at_bar": f"{bar}/{len(known)}", "k": int(len(ids))}


def replay(name: str, data: Path, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    x, labels = load(data, name)
    if args.rows and args.rows < len(x):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(x), args.rows, replace=False))
        x, labels = x[keep], labels[keep]
        labels_full = np.full(int(keep.max()) + 1, -1)
        labels_full[keep] = labels
        order = keep
    else:
        order, labels_full = np.arange(len(x)), labels
    classes = np.unique(labels)
    held_out = (int(classes[-2]), int(classes[-1]))
    plan = nights(labels, held_out, args.first, args.seed)
    dump, part = work / name / "dump", 0
    k = len(classes) - 2
    full = _rows(x, order)
    results, before = [], {p: None for p in POLICIES}
    first_ids: dict[str, set[int]] = {}
    for night, rows in enumerate(plan, start=1):
        part = write_parts(dump, full, order[rows], part)
        line: dict[str, Any] = {"set": name, "night": night, "new_rows": int(len(rows)),
                                "new_classes": sorted(int(c) for c in set(labels[rows]) & set(held_out))}
        cold_dir = work / name / f"cold{night}"
        cold_s, cold = timed_update(config(cold_dir, dump, k, "cold", args.set))
        for policy in POLICIES:
            run_dir = work / name / policy
            if policy == "cold":
                seconds, manifest, folder = cold_s, cold, cold_dir
            elif night == 1:  # the first version is the same cold fit for every policy
                shutil.copytree(cold_dir, run_dir)
                seconds, manifest, folder = cold_s, cold, run_dir
            else:
                seconds, manifest = timed_update(config(run_dir, dump, k, policy, args.set))
                folder = run_dir
            now = clusters(folder)
            if night == 1:
                first_ids[policy] = set(now.values())
            got = measure(now, before[policy], labels_full, held_out, first_ids[policy])
            before[policy] = now
            line[policy] = {**got, "refit": bool(manifest.get("refit")) and night > 1, "seconds": round(seconds, 1),
                            "vs_cold": round(seconds / cold_s, 3)}
        if night > 1:
            shutil.rmtree(work / name / f"cold{night - 1}", ignore_errors=True)
        print(json.dumps(line), flush=True)
        results.append(line)
    ceiling_dir = work / name / "ceiling"
    seconds, _ = timed_update(config(ceiling_dir, dump, len(classes), "cold", args.set))
    got = measure(clusters(ceiling_dir), None, labels_full, held_out, set())
    shutil.rmtree(ceiling_dir, ignore_errors=True)
    ceiling = {"set": name, "ceiling": {**got, "seconds": round(seconds, 1)}}
    print(json.dumps(ceiling), flush=True)
    return results + [ceiling]


def _rows(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """x indexed by original row number (rows outside the subsample are zeros and never written)."""
    full = np.zeros((int(order.max()) + 1, x.shape[1]), np.float32)
    full[order] = x
    return full


def table(results: list[dict[str, Any]]) -> str:
    """The printed table: one line per night and policy. `held-out` gives, per arrived held-out class,
    whether it has its own new id, then its best cluster's share of it / purity."""
    head = ("set      night new  policy  refit  k   ACC    NMI    stable  held-out: own new id (share/purity)   "
            "known at bar  s      /cold")
    lines = [head, "-" * len(head)]
    ceilings = []
    for r in results:
        if "ceiling" in r:
            c = r["ceiling"]
            at_bar = ", ".join(f"{cls}: {'yes' if ok else 'no'} ({c['held_out'][cls]['share']:.2f}/"
                               f"{c['held_out'][cls]['purity']:.2f})" for cls, ok in c["own_new_id"].items())
            ceilings.append(f"{r['set']:<8} k={c['k']:<3} ACC {c['acc']:.3f}  NMI {c['nmi']:.3f}  held-out at bar: {at_bar}"
                            f"  known at bar {c['known_at_bar']}")
            continue
        for policy in POLICIES:
            p = r[policy]
            stable = "   -  " if p["stable"] is None else f"{p['stable']:.3f} "
            own = ",".join(f"{c}:{'yes' if p['own_new_id'][c] else 'no'} ({h['share']:.2f}/{h['purity']:.2f})"
                           for c, h in p["held_out"].items()) or "-"
            lines.append(f"{r['set']:<8} {r['night']:<5} {','.join(map(str, r['new_classes'])) or '-':<4} {policy:<7} "
                         f"{'yes' if p['refit'] else 'no':<6} {p['k']:<3} {p['acc']:.3f}  {p['nmi']:.3f}  {stable}  "
                         f"{own:<37} {p['known_at_bar']:<13} {p['seconds']:<6} {p['vs_cold']:.3f}")
    if ceilings:
        lines += ["", "ceiling: a cold fit at the true class count on every night's rows (share/purity of the held-out "
                  "class's best cluster)"] + ceilings
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="datasets.py's --out folder")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["digits8", "mnist5k"])
    parser.add_argument("--rows", type=int, default=None, help="rows drawn from each set (all by default)")
    parser.add_argument("--first", type=float, default=0.4, help="share of the known rows that night 1 holds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    parser.add_argument("--work", default=None, help="folder for the run directories (a temporary one by default)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="nightly-stream-"))
    ensure_ray(config(work / "probe", work / "dump", 2, "warm", args.set))
    results = []
    for name in args.sets:
        results += replay(name, Path(args.data), work, args)
    print(table(results))


if __name__ == "__main__":
    main()
