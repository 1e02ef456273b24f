"""The label stage in a tiny pipeline on a local Ray (a copy of the session's embedded run): every cluster gets a name from the vocabulary (or
'?'), its voters are its most confident rows, and `scaleclust label RUN` renames from the recorded config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaleclust.stages import label
from scaleclust.cli import main
from scaleclust.cluster.naming import UNNAMED
from scaleclust.pipeline import run_all
from scaleclust.rundir import RunDir
from scaleclust.semantic.vocab import parse_noun_list
from tests.conftest import SharedRun

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]


def test_label_stage_names_every_cluster_from_its_most_confident_rows(tmp_path: Path, shared_run: SharedRun,
                                                                      make_config, capsys) -> None:
    folder = shared_run.copy(tmp_path)  # embedded already: the stages after embed run here
    cfg = make_config(str(folder / "run"), str(folder / "shards" / "*.tar"), label={"votes": 4})
    run_all(cfg)
    run = RunDir(cfg.run_dir, cfg.storage)
    nouns = set(parse_noun_list((Path(__file__).parent / "nouns.txt").read_text(), "nouns.txt").names)
    space = run.marker(run.semantic("space.json"))
    assert space["kind"] == "text" and space["nouns"] + space["generic_dropped"] == len(nouns)
    clusters = pq.read_table(run.clusters).to_pylist()
    for c in clusters:
        assert len(c["top_names"]) == 5 and set(c["top_names"]) <= nouns and 0 < c["name_score"] <= 1
        assert (c["name"], c["name_id"]) == (UNNAMED, "") if c["name_score"] < cfg.label.min_score else c["name_id"]

    # The voters are each cluster's 4 most confident rows across all shards.
    voters = label.select_voters(run, 4)
    assignments = pa.concat_tables(run.read_table(run.assigned(s, m)) for s, m in run.committed("assignments").items())
    confidence = dict(zip(assignments["key"].to_pylist(), assignments["confidence"].to_pylist()))
    for c in range(cfg.cluster.k):
        mine = sorted((confidence[key] for rows in voters.values() for key, k in rows.items() if k == c), reverse=True)
        best = sorted(assignments.filter(pa.compute.equal(assignments["cluster"], c))["confidence"].to_pylist(),
                      reverse=True)[:4]
        assert np.allclose(mine, best)

    # Renaming from the recorded config: only label.* may change; the space is reused.
    built = space["space_id"]
    assert main(["label", cfg.run_dir, "--set", "label.min_score=1.0"]) == 0
    assert "runners-up" in capsys.readouterr().out
    assert {c["name"] for c in pq.read_table(run.clusters).to_pylist()} == {UNNAMED}
    assert run.marker(run.semantic("space.json"))["space_id"] == built
    assert main(["label", cfg.run_dir, "--set", "cluster.k=5"]) == 2
    assert "only label.* fields" in capsys.readouterr().err
    assert main(["label", str(tmp_path / "nothing")]) == 2  # not a run directory: found before any work
    assert "not a run directory" in capsys.readouterr().err
