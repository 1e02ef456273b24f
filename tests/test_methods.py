"""The SIC, SCL and TURTLE recipes (issue 10): each recipe's own term on a hand-computed tiny case, the
semantic space's reduction, the TURTLE assigner, and planted fits through the single-process loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scaleclust.cli import main
from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.heads import HeadAssigner, OneHead
from scaleclust.cluster.scan import SCAN
from scaleclust.cluster.scl import SCL, ProjectedHeads
from scaleclust.cluster.settings import ScanConfig, SclConfig, SicConfig, TurtleConfig
from scaleclust.cluster.sic import space_nouns
from scaleclust.cluster.sic import SIC
from scaleclust.cluster.turtle import TaskEncoder
from scaleclust.config import ClusterConfig
from tests.test_cli_mistakes import config


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, more threads only contend (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """180 unit rows around 3 orthogonal centres, their labels and 5 exact nearest neighbours each."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 60)
    x = np.eye(3, 16)[labels] * 3 + rng.normal(size=(180, 16)) * 0.5
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    near = np.argsort(-(x @ x.T), axis=1)[:, 1:6]  # exact kNN of 180 planted rows (the test's own truth)
    return x, labels, near


def recovered(cluster: np.ndarray, labels: np.ndarray) -> bool:
    """Every planted class lies whole in one cluster, and the clusters differ."""
    table = np.zeros((3, 3), int)
    np.add.at(table, (cluster, labels), 1)
    return bool((table.max(axis=0) == 60).all() and len(set(cluster)) == 3)


def identity_head(method: SCAN, d: int) -> torch.nn.Module:
    head = method.head(d)
    with torch.no_grad():
        head.heads.weight.copy_(torch.eye(d))
        head.heads.bias.zero_()
    return head


def test_sic_adds_beta_times_cross_entropy_on_semantic_labels() -> None:
    # rows 0, 1 lean to noun 0, rows 2, 3 to noun 1; the head's logits are the rows themselves, so the
    # image centres, semantic centres and labels are [0, 0, 1, 1]: CE = mean_i -log softmax(x_i)[y_i]
    x = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.3, 1.0]])
    near = x[[1, 0, 3, 2]].unsqueeze(1)
    nouns = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    config = dict(heads=1, hidden=0, neighbors=1, centre_rows=1.0, centre_nouns=1)
    scan = SCAN(ScanConfig(heads=1, hidden=0, neighbors=1), k=2)
    sic = SIC(SicConfig(semantic_weight=0.5, **config), k=2, vectors=nouns)
    head = identity_head(scan, 2)
    base, _ = scan.loss(head, x, 0, near)
    got, stats = sic.loss(head, x, 0, near)
    z = x.numpy()
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    ce = -np.mean(log_p[np.arange(4), [0, 0, 1, 1]])
    assert float((got - base).detach()) == pytest.approx(0.5 * ce, rel=1e-5)
    assert stats["semantic"] == pytest.approx(0.5 * ce, rel=1e-5)
    with pytest.raises(ValueError, match="semantic space"):
        SIC(SicConfig(**config), k=2).loss(head, x, 0, near)


def test_sic_space_keeps_the_nouns_nearest_each_centre() -> None:
    vectors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert space_nouns(centres, vectors, 2).tolist() == [0, 1, 2, 3]
    assert space_nouns(centres, vectors, 1).tolist() == [0, 2]


def test_sic_recovers_planted_clusters_named_by_planted_nouns() -> None:
    x, labels, near = planted()
    rng = np.random.default_rng(1)
    nouns = np.eye(3, 16).repeat(5, 0) + rng.normal(size=(15, 16)) * 0.05   # 5 nouns near each concept
    method = SIC(SicConfig(heads=2, hidden=32, steps=80, batch_size=60, neighbors=5, centre_nouns=3), k=3,
                 vectors=torch.from_numpy(nouns.astype(np.float32)))
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), method, seed=0, neighbors=torch.from_numpy(x[near]), log=lambda s, st: stats.append(st))
    cluster, confidence, _ = HeadAssigner(head, 0).assign(x)
    assert recovered(cluster, labels) and confidence.mean() > 0.5
    assert stats[-1]["semantic"] < stats[0]["semantic"]


def test_scl_adds_the_contrastive_term_on_consistent_neighbours() -> None:
    # projection and heads fixed by hand: f = unit rows, logits = 10 x; rows 0, 1 in cluster 0, rows 2, 3 in 1;
    # row 0's second neighbour lies in cluster 1, so it is no positive (the consistency condition)
    method = SCL(SclConfig(heads=1, hidden=0, projection=2, neighbors=2, temperature=0.5, contrastive_weight=2.0,
                         label_confidence=0.0), k=2)
    head = method.head(2)
    with torch.no_grad():
        head.project.weight.copy_(torch.eye(2))
        head.project.bias.zero_()
        head.heads.weight.copy_(torch.eye(2) * 10)
        head.heads.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    near = torch.stack([x[[1, 2]], x[[0, 1]], x[[3, 2]], x[[2, 3]]])
    total, stats = method.loss(head, x, 0, near)
    base, _ = SCAN.loss(method, head, x, 0, near)
    s = lambda a, b: float(a @ b) / 0.5                                   # noqa: E731
    terms = []
    for i, positives, negatives in [(0, [x[1], x[1]], [x[2], x[3]]), (1, [x[0], x[0], x[1]], [x[2], x[3]]),
                                    (2, [x[3], x[3], x[2]], [x[0], x[1]]), (3, [x[2], x[2], x[3]], [x[0], x[1]])]:
        denom = np.log(sum(np.exp(s(x[i], c)) for c in positives + negatives))
        terms.append(-np.mean([s(x[i], p) - denom for p in positives]))
    assert float((total - base).detach()) == pytest.approx(2.0 * np.mean(terms), rel=1e-5)
    assert stats["consistent"] == pytest.approx(7 / 8)
    logits, f = head(x, features=True)
    assert logits.shape == (1, 4, 2) and torch.allclose(f.norm(dim=1), torch.ones(4))


def test_scl_heads_read_the_trunk_and_not_the_projection() -> None:
    head = SCL(SclConfig(heads=2, hidden=8, projection=4), k=3).head(6)
    head.eval()
    x = torch.randn(5, 6)
    before, f_before = head(x), head(x, features=True)[1]
    with torch.no_grad():
        head.project.weight.normal_()  # only the contrastive term reads the projection
    assert torch.equal(head(x), before) and not torch.allclose(head(x, features=True)[1], f_before)
    saved_before_the_change = {"project.0.weight": torch.zeros(8, 6), "clusters.heads.weight": torch.zeros(6, 4)}
    with pytest.raises(ValueError, match="earlier scaleclust.*model/ folder.*fit again"):
        head.load_state_dict(saved_before_the_change)


def test_scl_recovers_planted_clusters() -> None:
    x, labels, near = planted()
    method = SCL(SclConfig(heads=2, steps=80, batch_size=60, neighbors=5, projection=16, lr=0.01), k=3)
    head = fit(torch.from_numpy(x), method, seed=0, neighbors=torch.from_numpy(x[near]))
    assert isinstance(head, ProjectedHeads)
    cluster, confidence, _ = HeadAssigner(head, 0).assign(x)
    assert recovered(cluster, labels) and confidence.mean() > 0.5


def test_turtle_assigner_gives_the_labelling_argmax_and_its_probability() -> None:
    encoder = TaskEncoder((2,), 2)
    with torch.no_grad():
        encoder.maps[0].parametrizations.weight.original0.fill_(1.0)  # weight-norm magnitude g
        encoder.maps[0].parametrizations.weight.original1.copy_(torch.eye(2))
        encoder.maps[0].bias.zero_()
    x = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    cluster, confidence, second = HeadAssigner(OneHead(encoder, 2), 0).assign(x)
    assert cluster.tolist() == [0, 1] and second.tolist() == [1, 0]
    s = np.sqrt(2.0)  # the encoder reads each space times sqrt(its width)
    np.testing.assert_allclose(confidence, [1 / (1 + np.exp(-2.0 * s)), 1 / (1 + np.exp(-1.0 * s))], rtol=1e-5)
    saved_before_the_scale = {k: v for k, v in encoder.state_dict().items() if k != "scale"}
    with pytest.raises(ValueError, match="earlier scaleclust.*unscaled.*model/ folder"):
        TaskEncoder((2,), 2).load_state_dict(saved_before_the_scale)


@pytest.mark.parametrize("section, values, field", [
    ("sic", {"semantic_weight": -1}, "semantic_weight"), ("sic", {"centre_rows": 1.5}, "centre_rows"),
    ("scl", {"temperature": 0}, "temperature"), ("scl", {"projections": 3}, "projections"),
    ("turtle", {"dims": [0, 4]}, "dims"), ("turtle", {"inner_steps": 0}, "inner_steps")])
def test_bad_method_fields_are_named(section: str, values: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ClusterConfig.model_validate({"method": section, section: values})
    assert TurtleConfig().steps > 0


def test_a_bad_method_field_stops_the_cli_before_any_work(tmp_path, capsys) -> None:
    job = config(tmp_path, input={"shards": str(tmp_path / "none-*.tar")},
                 cluster={"method": "turtle", "turtle": {"gamma": -1}})
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "cluster.turtle.gamma" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
