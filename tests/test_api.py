"""The Python API: the CLI's operations as functions that return values and print nothing."""

from __future__ import annotations

import pytest
from clitools import tiny_toml

from asynccorr import api
from asynccorr.config import ConfigError, ExperimentConfig
from asynccorr.runs.files import RunExistsError
from asynccorr.runs.run import RunFinished
from asynccorr.runs.summary import MeanStd


@pytest.fixture
def config(tmp_path) -> ExperimentConfig:
    path = tmp_path / "api.toml"
    path.write_text(tiny_toml("api", iterations=4))
    return api.experiment(path)


def test_an_experiment_is_a_toml_with_section_overrides_and_none_leaves_a_field_alone(tmp_path, config):
    cfg = api.experiment(config, train={"iterations": 6, "seed": None}, workers={"count": 3})
    assert (cfg.train.iterations, cfg.train.seed, cfg.workers.count, cfg.name) == (6, config.train.seed, 3, "api")
    assert api.experiment(None).name == "paper"  # the repository's default experiment
    with pytest.raises(ConfigError, match="train.iterations"):
        api.experiment(config, train={"iterations": -1})


def test_train_writes_one_run_and_returns_its_directory_result_and_summary(tmp_path, capsys, config):
    run = api.train(config, "async", results=tmp_path / "r")
    assert run.run_dir == tmp_path / "r" / "api" / "async-seed0" and (run.run_dir / "params.npy").is_file()
    assert run.result.status == "completed" and list(run.result.metrics["iteration"]) == [1, 2, 3, 4]
    assert run.summary["scheme"] == "async" and run.summary["iterations"] == 4
    assert capsys.readouterr().out == ""  # nothing printed
    with pytest.raises(RunExistsError):
        api.train(config, "async", results=tmp_path / "r")
    with pytest.raises(RunFinished):
        api.train(config, "async", results=tmp_path / "r", resume=True)


def test_compare_runs_every_scheme_and_seed_and_returns_the_table_the_cli_prints(tmp_path, config):
    comp = api.compare(config, schemes=["sync", "async"], seeds=[0, 1], results=tmp_path)
    assert comp.folder == tmp_path / "api" and (comp.folder / "summary.md").is_file()
    assert [(r["scheme"], r["seed"]) for r in comp.rows] == [("sync", 0), ("sync", 1), ("async", 0), ("async", 1)]
    [sync, async_] = comp.table
    assert sync["scheme"] == "sync" and isinstance(async_["final_policy_loss"], MeanStd)
    assert async_["final_policy_loss"].count == 2


def test_a_results_folder_loads_back_into_runs_and_the_summary(tmp_path, config):
    api.compare(config, schemes=["async"], seeds=[0, 1], results=tmp_path)
    res = api.load(tmp_path / "api")
    assert [(r.scheme, r.seed) for r in res.runs] == [("async", 0), ("async", 1)]
    assert len(res.runs[0].metrics["grad_error"]) == 4
    assert res.summary["scheme"] == ["async", "async"] and res.summary["status"] == ["completed", "completed"]


def test_compare_reports_time_to_target_and_a_new_target_resummarises_without_retraining(tmp_path, config):
    first = api.compare(config, schemes=["sync"], seeds=[0], results=tmp_path)
    loss = first.rows[0]  # a target above every loss is reached at the first full window
    high = api.experiment(config, report={"target_loss": 1e9, "target_window": 2})
    meta = (first.folder / "sync-seed0" / "meta.json").read_bytes()
    again = api.compare(high, schemes=["sync"], seeds=[0], results=tmp_path, resume=True)
    assert (first.folder / "sync-seed0" / "meta.json").read_bytes() == meta  # reused, not retrained
    assert again.rows[0]["updates_to_target"] == 2 and again.rows[0]["target_loss"] == 1e9
    assert loss["target_loss"] == 2.5
    text = (first.folder / "summary.md").read_text()
    assert "| updates to loss < 1e+09 (per seed) | sim time then [s] |" in text
    assert "| sync | 1 | 0/1 |" in text and " 2 (1/1) | " in text
    csv = api.load(first.folder).summary
    assert csv["updates_to_target"] == ["2"] and float(csv["time_to_target"][0]) > 0
