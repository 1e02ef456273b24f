"""How the names of a run's clusters relate to a label column: per cluster, its name and score, the
label most of its rows carry and that label's share. Reads clusters.parquet, then one shard at a time
of assignments/ and embeddings/ (key, label), so it runs on a finished run of any size.

With --classes (a set of benchmarks/datasets.py whose labels are nouns, e.g. animals), each cluster's
majority label is read as that class's WordNet synset (its noun's most frequent sense), and a name
agrees when its synset (name_id) is that synset, or a hypernym or hyponym of it within two steps; the
share of clusters whose name agrees is printed. With --rules, the run is renamed (`scaleclust label
RUN --set label.rule=... --set label.share=...`) for each setting in turn and the shares are compared;
the run keeps the last setting's names.

    .venv/bin/python benchmarks/names_vs_labels.py runs/demo [--labels label]
    .venv/bin/python benchmarks/names_vs_labels.py OUT/RUN --classes animals --rules leaf hierarchy:0.4
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from datasets import CLASS_NOUNS
from scaleclust.cli import main as scaleclust
from scaleclust.config import StorageConfig, absolute_url
from scaleclust.rundir import RunDir
from scaleclust.semantic import wordnet
from scaleclust.semantic.vocab import wordnet_nouns

STEPS = 2


def label_counts(run: RunDir, column: str) -> dict[int, Counter]:
    """cluster -> Counter of its rows' labels."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for shard, marker in sorted(run.committed("assignments").items()):
        labels = dict(zip(*run.read_table(run.embeddings(shard), ["key", column]).to_pydict().values()))
        assigned = run.read_table(run.assigned(shard, marker), ["key", "cluster"]).to_pydict()
        for key, cluster in zip(assigned["key"], assigned["cluster"]):
            counts[cluster][labels[key]] += 1
    return counts


def near(synsets: dict[str, wordnet.Synset], start: str, steps: int) -> set[str]:
    """start and its hypernyms up to `steps` steps above it."""
    found, frontier = {start}, {start}
    for _ in range(steps):
        frontier = {h for s in frontier if s in synsets for h in synsets[s].hypernyms}
        found |= frontier
    return found


def agrees(synsets: dict[str, wordnet.Synset], name_id: str | None, class_id: str) -> bool:
    """Whether name_id is class_id, or its hypernym or hyponym within STEPS steps."""
    return bool(name_id) and (name_id in near(synsets, class_id, STEPS) or class_id in near(synsets, name_id, STEPS))


def table(run: RunDir, counts: dict[int, Counter], column: str, classes: list[str] | None,
          class_ids: list[str], synsets: dict[str, wordnet.Synset]) -> tuple[int, int]:
    """Print the per-cluster table; returns (clusters whose name agrees with their majority class, clusters)."""
    rows = sorted(run.read_table(run.clusters, ["cluster", "size", "name", "name_id", "name_score"]).to_pylist(),
                  key=lambda r: -r["size"])
    print(f"| cluster | size | name | score | most common {column} | its share |" + (" agrees |" if classes else ""))
    print("|---|---|---|---|---|---|" + ("---|" if classes else ""))
    agreed = 0
    for row in rows:
        label, n = counts[row["cluster"]].most_common(1)[0] if counts[row["cluster"]] else ("-", 0)
        score = "" if row["name_score"] is None else f"{row['name_score']:.2f}"
        line = f"| {row['cluster']} | {row['size']} | {row['name']} | {score} | "
        if classes and label != "-":
            ok = agrees(synsets, row["name_id"], class_ids[int(label)])
            agreed += ok
            print(line + f"{classes[int(label)]} | {n / max(row['size'], 1):.2f} | {'yes' if ok else 'no'} |")
        else:
            print(line + f"{label} | {n / max(row['size'], 1):.2f} |")
    return agreed, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--labels", default="label", help="column of embeddings/*.parquet with the labels")
    parser.add_argument("--classes", choices=sorted(CLASS_NOUNS), help="read the labels as this set's class nouns")
    parser.add_argument("--rules", nargs="+", default=[],
                        help="rename with each: 'leaf' (the noun with most votes) or 'hierarchy:SHARE'")
    args = parser.parse_args()
    url = absolute_url(args.run_dir)
    run = RunDir(url, StorageConfig())
    counts = label_counts(run, args.labels)
    classes = CLASS_NOUNS.get(args.classes or "")
    synsets = {s.id: s for s in wordnet.packaged()}
    nouns = wordnet_nouns(list(synsets.values()))
    class_ids = [nouns.ids[nouns.names.index(c)] for c in classes or []]
    results = []
    for rule in args.rules or [None]:
        if rule is not None:
            name, _, share = rule.partition(":")
            settings = [f"label.rule={name}"] + ([f"label.share={share}"] if share else [])
            print(f"\n### {rule}\n", flush=True)
            if scaleclust(["label", url] + [a for s in settings for a in ("--set", s)]) != 0:
                raise SystemExit(f"scaleclust label failed for {rule}")
        results.append((rule or "as named", *table(run, counts, args.labels, classes, class_ids, synsets)))
    if classes:
        print(f"\nnames that are the majority class's synset, or its hypernym or hyponym within {STEPS} steps:")
        for rule, agreed, total in results:
            print(f"  {rule:<16} {agreed} of {total} clusters ({agreed / max(total, 1):.2f})")


if __name__ == "__main__":
    main()
