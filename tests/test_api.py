"""The Python API (scaleclust.run, scaleclust.open): README's example runs verbatim and finishes a run, its
reads agree with the run's own files, the CLI's read commands print what it returns, and it reads a run
on S3 while another process holds the run's lease."""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

import scaleclust
from scaleclust.api import as_config
from scaleclust.cli import main
from scaleclust.config import ConfigError, StorageConfig
from scaleclust.lease import Lease
from tests.conftest import FinishedRun, SharedRun, tiny_config


@pytest.mark.slow  # the session's finished run (its first user pays for it): about 50 s on 2 busy CPUs
def test_readme_example_runs_verbatim_and_reads_the_run(finished_run: FinishedRun, shared_run: SharedRun) -> None:
    folder, names, printed = finished_run.shared.folder, finished_run.names, finished_run.printed
    run, clusters, top = names["run"], names["clusters"], names["top"]
    assert run.url == str(folder / "run") and "Run(" in repr(run)
    committed = pq.read_table(folder / "run" / "clusters.parquet")
    assert sorted(clusters["cluster"]) == sorted(committed["cluster"].to_pylist())
    assert list(clusters["size"]) == sorted(committed["size"].to_pylist(), reverse=True)  # largest first
    assert clusters["size"].sum() == shared_run.rows == names["rows"] and clusters["name"].notna().all()
    # members: the most confident rows of the largest cluster, in order, all of them assigned to it
    assigned = pa.concat_tables(run.assignments())
    assert assigned.num_rows == shared_run.rows
    assert set(assigned["shard"].to_pylist()) == set(run.dir.committed("assignments"))
    largest = int(clusters["cluster"][0])
    mine = assigned.filter(pc.equal(assigned["cluster"], largest)).sort_by([("confidence", "descending")])
    assert top["key"].to_pylist() == mine["key"].to_pylist()[:5]
    assert np.all(np.diff(top["confidence"].to_numpy()) <= 0)
    with pytest.raises(LookupError, match="cluster 999: not a cluster of"):
        run.members(999)
    # search by a key finds that key first, at cosine 1
    found = names["nearest"]
    assert found["key"][0].as_py() == top["key"][0].as_py() and found["cosine"][0].as_py() == pytest.approx(1, abs=1e-3)
    assert found["rank"].to_pylist() == [1, 2, 3]
    # eval gives what the summary stage measured against the same column; no versions before an update
    measured = json.loads((folder / "run" / "metrics.json").read_text())["labels"]
    scores = names["scores"]
    assert scores["column"] == "label" and scores["acc"] == pytest.approx(measured["acc"])
    assert scores["nmi"] == pytest.approx(measured["nmi"]) and names["history"] == []
    assert "name_score" in printed
    assert not (folder / "run" / "lease.json").exists()  # the run released its lease; reads take none


@pytest.mark.slow
def test_cli_read_commands_print_what_the_api_returns(finished_run: FinishedRun,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """info, versions and eval here; search prints through the same Run in tests/test_index_stage.py."""
    folder, names = finished_run.shared.folder, finished_run.names
    run_dir, run = str(folder / "run"), names["run"]
    assert main(["info", run_dir, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == run.info()
    assert {stage for stage, state in info["stages"].items() if not state["done"]} == {"neighbors"}  # on request
    assert main(["eval", run_dir, "--labels", "label"]) == 0
    assert json.loads(capsys.readouterr().out) == names["scores"]
    assert main(["versions", run_dir]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("* latest")  # no version rows before an update


@pytest.mark.slow
def test_a_run_on_s3_is_read_while_another_process_holds_its_lease(finished_run: FinishedRun, s3_endpoint: str) -> None:
    folder, names = finished_run.shared.folder, finished_run.names
    storage = StorageConfig(endpoint_url=s3_endpoint)
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("api-read")
    fs.put(str(folder / "run"), "api-read/run", recursive=True)
    url = "s3://api-read/run"
    with Lease(url, storage, "update") as writer:
        held = fs.cat_file("api-read/run/lease.json")
        run = scaleclust.open(url, {"endpoint_url": s3_endpoint})
        assert run.url == url and run.dir.storage.endpoint_url == s3_endpoint
        assert run.clusters()["size"].to_pylist() == list(names["clusters"]["size"])
        assert [t.num_rows for t in run.assignments()] == [t.num_rows for t in names["run"].assignments()]
        largest = int(names["clusters"]["cluster"][0])
        assert run.members(largest, 5)["key"].to_pylist() == names["top"]["key"].to_pylist()
        assert fs.cat_file("api-read/run/lease.json") == held and writer.lost is None  # untouched by the reads


def test_config_forms_and_bad_arguments(tmp_path: Path) -> None:
    cfg = tiny_config(str(tmp_path / "out" / "run"), str(tmp_path / "in" / "x.tar"))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    as_dict = cfg.model_dump(mode="json")
    for form in (str(tmp_path / "job.yaml"), tmp_path / "job.yaml", as_dict, cfg):
        assert as_config(form, ["cluster.k=7"]).cluster.k == 7
        assert as_config(form, []).model_dump() == cfg.model_dump()
    assert as_dict["cluster"]["k"] == 3  # the caller's dict is not changed by overrides
    with pytest.raises(TypeError, match="config: give a YAML path, a dict or a Config, not int"):
        as_config(3, [])
    with pytest.raises(ConfigError, match="cluster.kk"):
        as_config(as_dict, ["cluster.kk=2"])
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        scaleclust.open(tmp_path)
