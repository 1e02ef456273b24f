"""How the names of a run's clusters relate to a label column: per cluster, its name and score, the
label most of its rows carry and that label's share. Reads clusters.parquet, then one shard at a time
of assignments/ and embeddings/ (key, label), so it runs on a finished run of any size.

    .venv/bin/python benchmarks/names_vs_labels.py runs/demo [--labels label]
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from scaleclust.config import StorageConfig, absolute_url
from scaleclust.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--labels", default="label", help="column of embeddings/*.parquet with the labels")
    args = parser.parse_args()
    run = RunDir(absolute_url(args.run_dir), StorageConfig())
    counts: dict[int, Counter] = defaultdict(Counter)
    for shard, marker in sorted(run.committed("assignments").items()):
        labels = dict(zip(*run.read_table(run.embeddings(shard), ["key", args.labels]).to_pydict().values()))
        assigned = run.read_table(run.assigned(shard, marker), ["key", "cluster"]).to_pydict()
        for key, cluster in zip(assigned["key"], assigned["cluster"]):
            counts[cluster][labels[key]] += 1
    rows = sorted(run.read_table(run.clusters, ["cluster", "size", "name", "name_score"]).to_pylist(),
                  key=lambda r: -r["size"])
    print(f"| cluster | size | name | score | most common {args.labels} | its share |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        label, n = counts[row["cluster"]].most_common(1)[0] if counts[row["cluster"]] else ("-", 0)
        score = "" if row["name_score"] is None else f"{row['name_score']:.2f}"
        print(f"| {row['cluster']} | {row['size']} | {row['name']} | {score} | {label} | "
              f"{n / max(row['size'], 1):.2f} |")


if __name__ == "__main__":
    main()
