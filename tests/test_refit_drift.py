"""The numpy pieces of the nightly update on small arrays: id matching, warm k-means with a new
concept, novelty calibration, the drift report, and a summary partial's round trip."""
from __future__ import annotations

import numpy as np
import pytest

from scaleclust.cluster.drift import DriftCounts, Novelty, calibrate, fresh_neighbourhoods, fresh_threshold, report
from scaleclust.cluster.refit import (fresh_rows, keep_fresh, match_ids, match_similar, novel_groups,
                                      prototypes, subspace_similarity, typical_tightness, warm_kmeans, warm_subspaces)
from scaleclust.cluster.subspaces import SubspaceAssigner, fit_subspaces
from scaleclust.stages.summary import Partial


def blobs(centres: np.ndarray, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, len(centres), n)
    x = centres[label] + noise * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


def unit(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    c = rng.standard_normal((k, d))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def test_match_ids_keeps_matched_ids_and_gives_new_ones_fresh_ids() -> None:
    rng = np.random.default_rng(0)
    old = unit(rng, 4, 16)
    old_ids = np.array([0, 1, 2, 7])  # 3..6 were used by clusters retired earlier
    new = np.concatenate([old[[2, 0, 3]] + 0.05 * rng.standard_normal((3, 16)), unit(rng, 1, 16)])
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    ids, mapping = match_ids(old, old_ids, new, floor=0.8, next_id=8)
    assert ids.tolist() == [2, 0, 7, 8]
    assert mapping["retired"] == [1] and [n["id"] for n in mapping["new"]] == [8] and mapping["next_id"] == 9
    assert all(m["cosine"] >= 0.8 for m in mapping["matched"])


def test_warm_kmeans_seeded_on_novel_rows_finds_the_new_concept() -> None:
    rng = np.random.default_rng(1)
    centres = unit(rng, 4, 32)
    x_old, _ = blobs(centres[:3], 600, 0.1, 2)
    x_new, label = blobs(centres, 800, 0.1, 3)
    start = warm_kmeans(x_old, centres[:3].astype(np.float32), 10, 0)
    novelty = calibrate(x_old, np.argmax(x_old @ start.T, axis=1), np.arange(3), 0.01)
    novel = novelty.novel(x_new)
    assert novel[label == 3].mean() > 0.95 and novel[label != 3].mean() < 0.05
    groups = novel_groups(x_new[novel], 1, 10, 0, 20)
    seeds = prototypes(x_new[novel][groups >= 0], groups[groups >= 0], 1).astype(np.float32)
    refit = warm_kmeans(x_new, np.concatenate([start, seeds]), 10, 0)
    ids, mapping = match_ids(start, np.arange(3), refit, 0.8, 3)
    assert ids.tolist() == [0, 1, 2, 3] and mapping["retired"] == []
    assert (np.argmax(x_new @ refit.T, axis=1) == label).mean() > 0.99


def test_novel_groups_come_at_the_old_clusters_granularity() -> None:
    """Rows of one new concept asked into four groups come back as one (their union is as tight as an old
    cluster); two distinct new concepts stay two; a clump of outliers smaller than min_rows is left out
    (-1), and so is, by keep_fresh, a group that old and new shards hold alike."""
    rng = np.random.default_rng(5)
    centres = unit(rng, 6, 32)
    x_old, slots = blobs(centres[:4], 400, 0.15, 4)
    tight = typical_tightness(x_old, slots, 20)
    one, _ = blobs(centres[4:5], 200, 0.15, 6)
    two, label = blobs(centres[4:6], 400, 0.15, 7)
    clump, _ = blobs(centres[5:6], 5, 0.05, 8)  # a tight clump of five rows
    groups = novel_groups(np.concatenate([one, clump]), 4, 10, 0, 20, tight)
    assert groups[:200].min() == 0 and groups[:200].max() == 0 and (groups[200:] == -1).all()
    groups = novel_groups(two, 4, 10, 0, 20, tight)
    assert groups.max() == 1 and all(len(np.unique(groups[label == c])) == 1 for c in (0, 1))
    assert novel_groups(one, 4, 10, 0, 20).max() >= 1  # without the old clusters' scale, no merging
    # groups whose rows old and new shards hold alike (outliers of old concepts) are left out, the others kept
    groups = novel_groups(two, 4, 10, 0, 20, tight)
    kept = keep_fresh(groups, label == 1, 0.5)  # concept 1 comes only from new shards, concept 0 from both
    assert (kept[label == 0] == -1).all() and (kept[label == 1] == 0).all()


def test_fresh_rows_find_a_new_concept_inside_a_grown_cluster_and_only_there() -> None:
    """Cluster 0 took in a new concept (rows of centre 1, all from new shards) beside its old one (centre
    0, from old and new shards): those rows are fresh, the old concept's are not. Cluster 2 grew with its
    own concept only, and cluster 3 (centres 3 and 4, both from old and new shards) is two old concepts:
    nothing there is fresh. A cluster that did not grow is not looked into."""
    rng = np.random.default_rng(11)
    centres = unit(rng, 6, 32)
    parts, is_new, slots, concept = [], [], [], []
    for centre, slot, old_rows, new_rows in ((0, 0, 150, 50), (1, 0, 0, 120), (2, 2, 100, 100), (3, 3, 80, 40),
                                             (4, 3, 80, 40), (5, 5, 0, 60)):
        x, _ = blobs(centres[centre:centre + 1], old_rows + new_rows, 0.1, centre)
        parts.append(x)
        is_new += [False] * old_rows + [True] * new_rows
        slots += [slot] * (old_rows + new_rows)
        concept += [centre] * (old_rows + new_rows)
    x, is_new, slots, concept = np.concatenate(parts), np.array(is_new), np.array(slots), np.array(concept)
    fresh = fresh_rows(x, slots, is_new, [0, 2, 3], 20, 10, 0)
    assert fresh[concept == 1].all() and not fresh[concept != 1].any()
    assert fresh_rows(x, slots, np.zeros(len(x), bool), [0, 2, 3], 20, 10, 0).sum() == 0


def test_fresh_threshold_is_a_binomial_tail_below_alpha() -> None:
    """t of m new neighbours is rarer than alpha for an old concept's row at that share of new rows; t - 1
    is not. Where even m of m would be chance, m grows; beyond 30 neighbours nothing can be fresh."""
    from math import comb

    for share in (0.01, 0.12, 0.25, 0.5, 0.6):
        m, t = fresh_threshold(share, 1e-3)
        tail = [sum(comb(m, j) * share ** j * (1 - share) ** (m - j) for j in range(c, m + 1)) for c in (t, t - 1)]
        assert tail[0] <= 1e-3 < tail[1] and t <= m
    assert fresh_threshold(0.25) == (10, 8) and fresh_threshold(0.6)[0] > 10
    m, t = fresh_threshold(0.9)
    assert t > m


def test_fresh_neighbourhoods_mark_a_concept_inside_an_old_cluster_and_nothing_else() -> None:
    """A new concept close to an old one (a novelty test accepts it) whose rows come only from new shards:
    its rows are fresh; new rows of the old concepts, mixed with old rows, are not, at any mix."""
    rng = np.random.default_rng(12)
    centres = unit(rng, 4, 32)
    near = centres[0] + 0.3 * unit(rng, 1, 32)[0]  # a concept inside cluster 0's reach
    old, _ = blobs(centres[:3], 900, 0.06, 1)
    for new_rows in (150, 600, 1800):
        known, _ = blobs(centres[:3], new_rows, 0.06, 2)
        concept, _ = blobs((near / np.linalg.norm(near))[None], 60, 0.03, 3)
        x = np.concatenate([old, known, concept])
        is_new = np.r_[np.zeros(len(old), bool), np.ones(len(known) + len(concept), bool)]
        fresh = fresh_neighbourhoods(x, is_new)
        assert fresh[-60:].mean() > 0.9 and fresh[len(old):-60].mean() < 0.01 and not fresh[:len(old)].any()
        novelty = calibrate(old, np.argmax(old @ centres[:3].T, axis=1), np.arange(3), 0.01)
        assert novelty.novel(x[-60:]).mean() < 0.5  # the novelty test alone misses it
    assert not fresh_neighbourhoods(x, np.zeros(len(x), bool)).any()


def test_drift_counts_fresh_share_against_the_models_reference() -> None:
    """The drift's neighbourhood test: the novelty file keeps reference rows of the model's sample; a
    night whose rows hold a concept that cluster 0 accepts gets that concept's share as fresh, and it
    adds to the score; a night of old concepts gets none. Without a reference there is no test."""
    rng = np.random.default_rng(13)
    centres = unit(rng, 3, 32)
    old, label = blobs(centres, 3000, 0.06, 4)
    novelty = Novelty.from_bytes(calibrate(old, label, np.arange(3), 0.01, reference_rows=1000).to_bytes())
    assert novelty.reference is not None and novelty.reference.shape == (1000, 32)
    near = centres[0] + 0.3 * unit(rng, 1, 32)[0]
    for planted in (0, 100):
        known, known_label = blobs(centres, 400 - planted, 0.06, 5)
        concept, _ = blobs((near / np.linalg.norm(near))[None], planted, 0.03, 6)
        x = np.concatenate([known, concept]) if planted else known
        counts = DriftCounts()
        counts.add(np.r_[known_label, np.zeros(planted, int)], np.ones(len(x)), novelty.novel(x),
                   [f"k{i}" for i in range(len(x))], 0.5, 3, x, sample_rows=200)
        fresh = counts.fresh_share(novelty.reference)
        out = report({0: 1000, 1: 1000, 2: 1000}, counts, 2.0, 5, 0.1, 0.25, fresh)
        assert len(counts.sample) == 200 and out["fresh_share"] == round(fresh, 5)
        assert (0.2 <= fresh <= 0.25) if planted else fresh == 0.0  # a quarter of the rows, less any novel
        fewer = counts.fresh_share(novelty.reference, queries=100)  # a night of many shards: 100 of the rows
        assert (0.15 <= fewer <= 0.3) if planted else fewer == 0.0
        assert abs(out["score"] - (out["total_variation"] + out["novel_share"] + fresh)) < 1e-4
    assert counts.fresh_share(None) is None


def test_subspace_similarity_is_the_cosine_of_principal_angles() -> None:
    rng = np.random.default_rng(4)
    a = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    other = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    rotated = a @ np.array([[0.6, -0.8], [0.8, 0.6]])  # another basis of the same plane
    tilted = np.stack([a[:, 0], np.cos(0.5) * a[:, 1] + np.sin(0.5) * np.linalg.qr(np.c_[a, other])[0][:, 2]], 1)
    sims = subspace_similarity(np.stack([rotated, tilted]), np.stack([a, np.zeros((8, 2))]))
    # same plane: 1; one principal angle of 0.5 rad: sqrt((1 + cos^2 0.5) / 2); an empty basis: 0
    assert np.allclose(sims[:, 0], [1.0, np.sqrt((1 + np.cos(0.5) ** 2) / 2)]) and np.allclose(sims[:, 1], 0)


def test_warm_subspaces_keep_ids_and_give_a_new_concept_a_new_id() -> None:
    """The MLC refit on features: k-subspaces from the old bases plus one fitted on the novel rows' group;
    the old clusters match their old bases (ids kept), the new concept gets the next id."""
    rng = np.random.default_rng(5)
    centres = unit(rng, 4, 32)
    x_old, old_label = blobs(centres[:3], 600, 0.1, 6)
    x_new, label = blobs(centres, 800, 0.1, 7)
    old = fit_subspaces(x_old, old_label, 3, 1).bases
    novelty = calibrate(x_old, old_label, np.arange(3), 0.01)
    novel = novelty.novel(x_new)
    assert novel[label == 3].mean() > 0.95 and novel[label != 3].mean() < 0.05
    groups = novel_groups(x_new[novel], 1, 10, 0, 5)
    seeds = fit_subspaces(x_new[novel][groups >= 0], groups[groups >= 0], 1, 1).bases
    bases = warm_subspaces(x_new, np.concatenate([old, seeds]), 10)
    ids, mapping = match_similar(subspace_similarity(bases, old), np.arange(3), 0.8, 3)
    assert ids.tolist() == [0, 1, 2, 3] and mapping["retired"] == [] and mapping["new"][0]["id"] == 3
    assert (np.argmax(SubspaceAssigner(bases).scores(x_new), axis=1) == label).mean() > 0.99


def test_drift_report_counts_shares_growth_and_novelty() -> None:
    counts = DriftCounts()
    clusters = np.array([0] * 60 + [1] * 30 + [2] * 10)
    novel = np.zeros(100, bool)
    novel[:5] = True
    counts.add(clusters, np.linspace(0, 1, 100), novel, [f"k{i}" for i in range(100)], low=0.2, examples=3)
    out = report({0: 250, 1: 250, 2: 500}, counts, growth=2.0, min_expected=5, warn=0.1, refit=0.25)
    assert out["grown"] == [0] and out["shrunk"] == [2] and out["grown_excess"] == 0.35  # 0.6 of the rows, 0.25 fitted
    assert out["total_variation"] == 0.4 and out["novel_share"] == 0.05 and out["score"] == 0.45
    assert out["status"] == "refit" and out["novel_examples"] == ["k0", "k1", "k2"]
    assert out["low_confidence_share"] == 0.2


def test_merged_counts_do_not_depend_on_the_order_of_the_parts() -> None:
    """Shards' parts merge as their tasks finish: the counts and the examples come out the same."""
    def part(shard: str, seed: int) -> DriftCounts:
        rng = np.random.default_rng(seed)
        counts = DriftCounts()
        counts.add(rng.integers(0, 3, 50), rng.random(50), rng.random(50) < 0.3, [f"{shard}-{i:02d}" for i in range(50)],
                   low=0.2, examples=4)
        return counts

    merged = []
    for order in (["a", "b", "c"], ["c", "a", "b"]):
        total = DriftCounts()
        for shard in order:
            total.merge(part(shard, ord(shard)), 4)
        merged.append((total.per_cluster, total.novel_per_cluster, total.novel, total.novel_examples))
    assert merged[0] == merged[1] and merged[0][3][0].startswith("a-")


def test_a_grown_cluster_alone_can_trigger_a_refit() -> None:
    """on_drift refits when one grown cluster took update.grown_refit of the new rows beyond its share,
    even with the drift score below update.drift_refit; never and a smaller excess do not."""
    from scaleclust.config import UpdateConfig
    from scaleclust.update import decide

    upd = UpdateConfig(drift_refit=0.25, grown_refit=0.1)
    quiet = {"score": 0.2, "grown": [], "grown_excess": 0.0}
    absorbed = {"score": 0.2, "grown": [8], "grown_excess": 0.18}
    assert decide(upd, "on_drift", {}, quiet) == (False, "drift score 0.200 < update.drift_refit 0.25")
    hit, why = decide(upd, "on_drift", {}, absorbed)
    assert hit and "clusters [8] grew by 0.180" in why
    assert not decide(upd.model_copy(update={"grown_refit": 0.2}), "on_drift", {}, absorbed)[0]
    assert not decide(upd, "never", {}, absorbed)[0]


def test_summary_partial_round_trip() -> None:
    part = Partial(2, 3)
    part.sizes += [3, 1]
    part.sums += 0.5
    part.contingency.update([0, 0, 1], ["cat", "dog", "cat"])
    part.exemplars = [[(0.9, "a"), (0.8, "b")], [(0.7, "c")]]
    back = Partial.from_bytes(part.to_bytes())
    assert back.sizes.tolist() == [3, 1] and np.array_equal(back.sums, part.sums)
    assert back.contingency.counts == part.contingency.counts and back.exemplars == part.exemplars


def test_every_method_refits_on_drift_by_default(tmp_path) -> None:
    """Every method has a warm refit: an unset update.refit is on_drift for each, and `check` accepts
    every policy for each."""
    from scaleclust.config import from_dict
    from scaleclust.update import check, refit_policy

    base = {"run_dir": str(tmp_path / "run"), "input": {"shards": str(tmp_path / "shards" / "*.tar")}}
    for method in ("kmeans", "mlc", "scan", "spice", "sic", "scl", "turtle"):
        assert refit_policy(from_dict({**base, "cluster": {"method": method}})) == "on_drift"
        for policy in ("on_drift", "every_n", "never"):
            check(from_dict({**base, "cluster": {"method": method}, "update": {"refit": policy}}))
    assert not (tmp_path / "run").exists()


def test_prototypes_are_normalised_means_and_empty_slots_match_nothing() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    protos = prototypes(x, np.array([0, 0, 2]), 3)
    assert np.allclose(protos, [[2 ** -0.5, 2 ** -0.5], [0, 0], [1, 0]])
    ids, mapping = match_ids(protos, np.array([5, 6, 7]), protos[[2, 0, 1]], floor=0.8, next_id=8)
    assert ids.tolist() == [7, 5, 8] and mapping["retired"] == [6]  # the empty slot matches nothing


def test_grown_heads_keep_old_rows_and_seed_new_outputs_on_novel_groups() -> None:
    """A trained head grown by two outputs from two groups of novel rows: before any training, the
    known rows keep their clusters, and each novel group prefers its own new output (the heads on a
    trunk or on the embeddings, SCL's heads beside their projection, and TURTLE's encoder)."""
    import torch

    from scaleclust.cluster.grow import grow_state
    from scaleclust.cluster.heads import ClusterHeads, HeadAssigner, OneHead
    from scaleclust.cluster.scl import ProjectedHeads
    from scaleclust.cluster.turtle import TaskEncoder

    rng = np.random.default_rng(8)
    centres = unit(rng, 5, 16)
    x_old, old_label = blobs(centres[:3], 300, 0.1, 9)
    x_new, new_label = blobs(centres[3:], 100, 0.1, 10)
    for make in (lambda k: ClusterHeads(16, k, 2, 32), lambda k: ClusterHeads(16, k, 3, 0),
                 lambda k: ProjectedHeads(16, k, 2, 32, 8), lambda k: TaskEncoder((8, 8), k)):
        torch.manual_seed(0)
        head = make(3)
        view = (lambda m: OneHead(m, m.maps[0].out_features)) if isinstance(head, TaskEncoder) else (lambda m: m)
        optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
        for _ in range(200):  # a head that separates the three old concepts
            logits = view(head)(torch.from_numpy(x_old))
            loss = sum(torch.nn.functional.cross_entropy(h, torch.from_numpy(old_label)) for h in logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        grown = make(5)
        grown.load_state_dict(grow_state(head, torch.from_numpy(x_new), torch.from_numpy(new_label), 2,
                                         torch.from_numpy(x_old)))
        grown.eval()
        for index in range(len(view(head)(torch.from_numpy(x_old[:2])))):
            before = HeadAssigner(view(head), index).assign(x_old)[0]
            assert (HeadAssigner(view(grown), index).assign(x_old)[0] == before).mean() >= 0.95
            novel = HeadAssigner(view(grown), index).assign(x_new)[0]
            assert (novel == new_label + 3).mean() >= 0.9, type(head).__name__


def test_the_refit_pieces_a_batch_at_a_time_equal_their_whole_matrix_definitions() -> None:
    """A refit runs these on a whole sample of millions of rows, so each works a batch (or one cluster) at
    a time; on rows spread over several batches and blocks each equals its definition on the whole matrix:
    novelty (no cluster's threshold met), every assigner's argmax, softmax confidence and runner-up
    (choice.top_two, under a head's logits, k-means's cosines and MLC's subspace energies), the prototypes
    (normalised float64 means), the calibration's thresholds (a quantile of each cluster's cosines; none
    for an id without rows, and rows of a cluster not in ids ignored), the tightness (median float64
    cosine to the normalised mean) and the typical tightness with the rows of slot -1 left out."""
    import torch

    from scaleclust.cluster.choice import top_two
    from scaleclust.cluster.heads import ClusterHeads, HeadAssigner
    from scaleclust.cluster.kmeans import soft_assign
    from scaleclust.cluster.refit import tightness

    rng = np.random.default_rng(11)
    x, label = blobs(unit(rng, 7, 16), 9_000, 0.3, 12)  # over choice.BATCH and refit.BLOCK rows
    novelty = calibrate(x[:400], label[:400], np.arange(7), 0.3)
    sims = x @ novelty.prototypes.T
    assert np.array_equal(novelty.novel(x, batch_size=300), (sims - novelty.thresholds).max(axis=1) < 0)
    assert 0 < novelty.novel(x).sum() < len(x)

    def whole(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best = scores.argmax(axis=1)
        return best, np.where(np.arange(scores.shape[1]) == best[:, None], -np.inf, scores).argmax(axis=1)

    torch.manual_seed(0)
    assigner = HeadAssigner(ClusterHeads(16, 7, heads=2, hidden=8), 1, temperature=0.5)
    z = assigner.logits(x) / assigner.temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cluster, confidence, second = top_two(assigner.logits, x, assigner.temperature, batch_size=300)
    assert all(map(np.array_equal, (cluster, second), whole(assigner.logits(x))))
    assert np.allclose(confidence, p.max(axis=1), rtol=1e-5) and (second != cluster).all()
    assert all(np.array_equal(a, b) for a, b in zip(assigner.assign(x), (cluster, confidence, second)))
    centroids = unit(rng, 5, 16).astype(np.float32)
    out = soft_assign(x, centroids, 0.1)
    assert all(map(np.array_equal, (out["cluster"], out["cluster2"]), whole(x @ centroids.T)))
    bases = np.linalg.qr(rng.standard_normal((4, 16, 2)))[0].astype(np.float32)
    subspaces = SubspaceAssigner(bases)
    got = subspaces.assign(x)
    assert all(map(np.array_equal, (got[0], got[2]), whole(subspaces.scores(x))))
    nan = top_two(lambda rows: np.where(np.arange(3) == 0, np.nan, rows[:, :3]), x[:10], 1.0)
    assert (nan[0] != 0).all() and (nan[2] != 0).all() and (nan[0] != nan[2]).all()  # a NaN score never wins

    sums = np.stack([x[cluster == s].astype(np.float64).sum(axis=0) for s in range(7)])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    want = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)  # an empty slot: a zero row
    assert 0 < (norms[:, 0] > 0).sum() and np.allclose(prototypes(x, cluster, 7), want, atol=1e-12)

    found = calibrate(x, label, np.arange(8), 0.1)  # id 7 has no rows
    assert found.thresholds[7] == np.inf and not found.prototypes[7].any()
    for s in range(7):
        assert found.thresholds[s] == np.quantile(x[label == s] @ found.prototypes[s], 0.1)
    fewer = calibrate(x, label, np.arange(6), 0.1)  # the rows of cluster 6 are not any id's
    assert np.array_equal(fewer.thresholds, found.thresholds[:6])

    rows = x[label == 2].astype(np.float64)
    mean = rows.mean(axis=0)
    assert tightness(x[label == 2]) == pytest.approx(float(np.median(rows @ (mean / np.linalg.norm(mean)))), abs=1e-12)
    left_out = label == 3
    assert (typical_tightness(x, np.where(left_out, -1, label), 20)
            == typical_tightness(x[~left_out], label[~left_out], 20))
