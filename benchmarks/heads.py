"""Which head should assign? Label-free rules for choosing among a multi-head method's heads, scored on
the fits that benchmarks/quality.py kept with --logits (every head's logits of every row, the head
that the lowest loss chose, and the labels), so no rule needs a refit.

Rules (labels only score; each rule sees the heads' outputs on a 5,000-row sample, as the fit stage's
calibration sample, and assigns every row):
- loss: the head with the lowest loss over the last steps (what quality.py and the fit stage chose);
- consensus: the head whose partition agrees most with the other heads' (mean adjusted Rand index);
- fold: every head's softmax averaged after matching its clusters to the consensus head's;
- best / worst: the heads that labels would pick, the room any rule has.

Per set and method: mean ACC over seeds and the seed spread (max - min) under each rule.

`--across T` asks instead what several independent fits would give (T times the cost of one): for every
T of the kept seeds, the fits' chosen heads are folded as above, across fits (matched to the fit whose
partition agrees most with the others'), and the fold's ACC is scored against one fit's; printed per set
and method: mean, standard deviation and spread over the combinations.

    .venv/bin/python benchmarks/quality.py OUT/mnist5k ... --methods scan --logits LOGITS [--seeds 0 1 2 3 4 5]
    .venv/bin/python benchmarks/heads.py LOGITS [--across 2 3]
"""
from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from scaleclust.cluster.calibration import softmax
from scaleclust.cluster.metrics import Contingency, scores

SAMPLE = 5000
RULES = ("loss", "consensus", "fold", "best", "worst")


def head_agreement(clusters: np.ndarray) -> np.ndarray:
    """(H,) each head's mean adjusted Rand index with the other heads' partitions of the same rows
    (`clusters` (H, n), each head's argmax): how central a head is among the heads (label-free)."""
    heads = len(clusters)
    pairs = np.eye(heads)
    for a in range(heads):
        for b in range(a + 1, heads):
            pairs[a, b] = pairs[b, a] = adjusted_rand_score(clusters[a], clusters[b])
    return (pairs.sum(1) - 1) / max(heads - 1, 1)


def fold_heads(probabilities: np.ndarray, reference: int) -> np.ndarray:
    """(n, K) the heads' probabilities (H, n, K) averaged after matching each head's clusters to head
    `reference`'s (Hungarian on the overlap of their argmax partitions), so that ids stay the reference's."""
    target = probabilities[reference].argmax(1)
    k = probabilities.shape[2]
    folded = np.zeros(probabilities.shape[1:], np.float64)
    for p in probabilities:
        overlap = np.zeros((k, k))
        np.add.at(overlap, (target, p.argmax(1)), 1)
        rows, cols = linear_sum_assignment(-overlap)
        folded[:, rows] += p[:, cols]
    return folded / len(probabilities)


def acc(clusters: np.ndarray, labels: np.ndarray) -> float:
    table = Contingency()
    table.update(clusters, labels)
    return scores(table.matrix())["acc"]


def rule_accs(logits: np.ndarray, chosen: int, labels: np.ndarray, seed: int) -> dict[str, float]:
    """ACC of every rule's assignment of all rows, the rules seeing a SAMPLE-row sample."""
    rows = np.random.default_rng(seed).choice(len(labels), size=min(SAMPLE, len(labels)), replace=False)
    logits = logits.astype(np.float32)
    per_head = [acc(h.argmax(1), labels) for h in logits]
    central = int(np.argmax(head_agreement(logits[:, rows].argmax(2))))
    folded = fold_heads(np.stack([softmax(h) for h in logits]), central).argmax(1)
    return {"loss": per_head[chosen], "consensus": per_head[central], "fold": acc(folded, labels),
            "best": max(per_head), "worst": min(per_head)}


def across_fits(fits: list[np.ndarray], labels: np.ndarray, size: int) -> list[float]:
    """ACC of the fold of every `size` of the fits' chosen heads' probabilities (each (n, K)), matched to
    the fit that agrees most with the others (the agreement on a SAMPLE-row sample, as above)."""
    rows = np.random.default_rng(0).choice(len(labels), size=min(SAMPLE, len(labels)), replace=False)
    accs = []
    for combo in itertools.combinations(range(len(fits)), size):
        probabilities = np.stack([fits[i] for i in combo])
        central = int(np.argmax(head_agreement(probabilities[:, rows].argmax(2))))
        accs.append(acc(fold_heads(probabilities, central).argmax(1), labels))
    return accs


def print_across(chosen: dict[tuple[str, str], list[np.ndarray]], labels: dict[str, np.ndarray],
                 sizes: list[int]) -> None:
    """The --across table: one fit against folds of `sizes` fits, per set and method."""
    print("| set | method | fits | ACC mean / std / spread | " + " | ".join(f"fold of {t}: mean / std / spread" for t in sizes) + " |")
    print("|---|---|---|---|" + "---|" * len(sizes))
    for (name, method), fits in sorted(chosen.items()):
        single = [acc(p.argmax(1), labels[name]) for p in fits]
        cells = [single] + [across_fits(fits, labels[name], t) for t in sizes]
        print(f"| {name} | {method} | {len(fits)} | " + " | ".join(
            f"{np.mean(c):.3f} / {np.std(c):.3f} / {np.ptp(c):.3f}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logits", type=Path, help="the --logits folder of benchmarks/quality.py")
    parser.add_argument("--across", type=int, nargs="+", metavar="T", help="fold T independent fits (see above)")
    args = parser.parse_args()
    found: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    chosen: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    labels: dict[str, np.ndarray] = {}
    for path in sorted(p for p in args.logits.glob("*.npz") if not p.stem.endswith("-kauto")):  # at the true k
        name, method, seed = path.stem.rsplit("-", 2)
        fit = np.load(path)
        if args.across:
            chosen[(name, method)].append(softmax(fit["logits"][int(fit["chosen"])].astype(np.float32)))
            labels[name] = fit["labels"]
            continue
        for rule, value in rule_accs(fit["logits"], int(fit["chosen"]), fit["labels"], int(seed)).items():
            found[(name, method)][rule].append(value)
    if args.across:
        print_across(chosen, labels, args.across)
        return
    print("| set | method | seeds | " + " | ".join(f"{r} ACC (spread)" for r in RULES) + " |")
    print("|---|---|---|" + "---|" * len(RULES))
    for (name, method), accs in sorted(found.items()):
        cells = [f"{np.mean(accs[r]):.3f} ({np.ptp(accs[r]):.3f})" for r in RULES]
        print(f"| {name} | {method} | {len(accs['loss'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
