"""Specification of the regime study: grid, per-run metrics, table, heat maps, command."""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from clitools import run_cli

from asynccorr.backends.registry import run
from asynccorr.config import ConfigError, ExperimentConfig, with_overrides
from asynccorr.studies.regimes import (
    RegimeConfig,
    cells,
    load_regimes,
    mark_reaches_sync,
    read_rows,
    run_metrics,
    staleness_tolerance,
)

REPO = Path(__file__).resolve().parents[2]

REDUCED = """
name = "reduced"
workers = [1, 2]
learning_rates = [[3e-4, 1e-3]]
delays = ["homogeneous"]
schemes = ["sync", "async", "modify-safe"]
seeds = [0, 1]
target_loss = 20.0
smooth = 3
[experiment.learner]
policy_hidden = [8]
value_hidden = [8]
rollout_states = 8
reset_states = 8
horizon = 5
[experiment.train]
iterations = 8
eval_every = 8
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the shipped study


def test_the_shipped_study_is_the_default_experiment_on_a_grid_with_the_protocol_axis():
    study = load_regimes(REPO / "experiments" / "regimes.toml")
    base = with_overrides(ExperimentConfig(), learner={"rollout_states": 64, "reset_states": 64},
                          train={"iterations": 150, "eval_every": 150})
    assert study.experiment == base
    assert min(study.workers) == 1 and max(study.workers) == 64 and len(study.seeds) >= 3
    # the oracle (an upper bound), the best realisable protocol, the actor-learner split, the baselines
    assert {"sync", "async", "learner", "modify@oracle", "modify@server", "modify-safe@server"} <= set(study.schemes)
    assert len(cells(study)) == len(study.workers) * len(study.learning_rates) * len(study.delays)


# ----------------------------------------------------------------------------- metrics, on literal numbers


def _cell(reached=3, at_target=3, time=1.0, final=2.2, seeds=3):
    from asynccorr.runs.summary import MeanStd

    return {"seeds": seeds, "reached": reached, "at_target": at_target, "final_loss": MeanStd(final, 0.1, seeds),
            "time_to_target": MeanStd(time, 0.1, at_target) if at_target else MeanStd(math.nan, math.nan, 0)}


def test_the_cell_winner_is_the_fastest_realisable_scheme_reaching_sync_and_the_target_on_every_seed():
    from asynccorr.studies.regimes import cell_winner

    w = cell_winner({"sync": _cell(time=0.6), "learner": _cell(reached=2, time=0.2), "modify@server": _cell(time=1.7),
                     "modify@oracle": _cell(time=0.1)})
    # learner is faster but misses sync's loss on one seed; the oracle is faster but not realisable
    assert w.schemes == ("sync",) and w.time.mean == 0.6 and w.note == ""
    assert w.bound is not None and w.bound[0] == "modify@oracle" and w.bound[1].mean == 0.1


def test_schemes_within_five_percent_of_the_winner_tie_with_it():
    from asynccorr.studies.regimes import cell_winner, winner_text

    w = cell_winner({"sync": _cell(time=0.382), "async": _cell(time=0.382), "learner": _cell(time=0.381),
                     "modify@server": _cell(time=1.25)})
    assert w.schemes == ("learner", "sync", "async") and w.bound is None
    assert winner_text(w) == "learner = sync = async 0.381 ± 0.1 s"


def test_without_a_qualifying_scheme_the_winner_reaches_sync_on_the_most_seeds_and_an_oracle_never_wins():
    from asynccorr.studies.regimes import cell_winner

    w = cell_winner({"async": _cell(reached=1, at_target=0), "learner": _cell(reached=2, at_target=2),
                     "modify@oracle": _cell(reached=3, at_target=3, time=0.1)})
    assert w.schemes == ("learner",) and w.time is None and w.note.startswith("2/3 reach sync")
    assert cell_winner({"modify@oracle": _cell()}).schemes == ()


def fake_result(loss, params_finite=True, status="completed"):
    n = len(loss)
    summary = SimpleNamespace(rms_lateral=0.2, left_road=False)
    metrics = {"iteration": np.arange(1, n + 1), "time": 0.5 * np.arange(1, n + 1), "policy_loss": np.array(loss),
               "value_loss": np.zeros(n), "staleness": np.array([0, 1, 2, 3] * (n // 4)),
               "grad_error": np.full(n, 0.1)}
    params = np.ones(3) if params_finite else np.array([1.0, np.inf, 0.0])
    return SimpleNamespace(metrics=metrics, params=params, evals=[SimpleNamespace(summary=summary)],
                           status=status, dropped=2)


def test_run_metrics_follow_their_definitions():
    study = RegimeConfig(target_loss=3.0, smooth=2, tail_fraction=0.25)
    m = run_metrics(study, fake_result([6.0, 4.0, 3.0, 2.0, 2.0, 2.0, 1.0, 3.0]))
    # 2-update means: 5, 3.5, 2.5 (ends at update 4) -> 4 updates, simulated time 2.0
    assert m["iters_to_target"] == 4.0 and m["time_to_target"] == 2.0
    assert m["final_loss"] == 2.0  # last 25 % = the last 2 updates: (1 + 3) / 2
    assert not m["diverged"] and m["dropped"] == 2 and m["mean_staleness"] == 1.5 and m["max_staleness"] == 3


@pytest.mark.parametrize("result", [fake_result([6.0, 1.0, float("nan"), 1.0]),
                                    fake_result([6.0, 1.0, 1.0, 1.0], params_finite=False),
                                    fake_result([6.0, 1.0, 1.0, 1.0], status="diverged"),
                                    fake_result([6.0, -2e3, 1.0, 1.0]),  # a runaway critic: |J| > 1000
                                    fake_result([6.0, 1.0, -0.5, 1.0])])  # or J < 0
def test_a_diverged_run_reaches_nothing(result):
    m = run_metrics(RegimeConfig(target_loss=3.0, smooth=1), result)
    assert m["diverged"] and math.isnan(m["final_loss"]) and math.isnan(m["iters_to_target"])


def row(scheme, seed, final, workers=4, diverged=False):
    return {"delay": "homogeneous", "policy_lr": 3e-4, "value_lr": 1e-3, "workers": workers, "scheme": scheme,
            "seed": seed, "final_loss": final, "diverged": diverged}


def test_reaching_sync_means_within_the_tolerance_of_sync_with_the_same_cell_and_seed():
    study = RegimeConfig(reach_tolerance=0.1)
    rows = [row("sync", 0, 2.0), row("sync", 1, 2.4), row("async", 0, 2.09), row("async", 1, 2.51),
            row("async", 0, 2.05, workers=8), row("modify", 1, float("nan"), diverged=True),
            row("sync", 0, 5.0, workers=8), row("modify", 0, 5.05, workers=8)]
    mark_reaches_sync(study, rows)
    assert [r["sync_final_loss"] for r in rows[:4]] == [2.0, 2.4, 2.0, 2.4]
    assert [r["reaches_sync"] for r in rows] == [True, True, True, False, True, False, True, True]
    ran_away = [row("sync", 0, 2.0), {**row("async", 0, -5e6), "iters_to_target": 20.0, "time_to_target": 0.1},
                {**row("modify", 0, -12.0), "iters_to_target": 20.0, "time_to_target": 0.1}]
    mark_reaches_sync(study, ran_away)  # no max_abs_loss column (an older CSV): judged by the final loss
    assert ran_away[1]["diverged"] and math.isnan(ran_away[1]["final_loss"]) and not ran_away[1]["reaches_sync"]
    assert math.isnan(ran_away[1]["iters_to_target"]) and math.isnan(ran_away[1]["time_to_target"])
    assert ran_away[2]["diverged"] and not ran_away[2]["reaches_sync"]  # a negative final loss
    lone = [row("async", 3, 1.0)]  # no sync run for that seed: no baseline
    mark_reaches_sync(study, lone)
    assert math.isnan(lone[0]["sync_final_loss"]) and not lone[0]["reaches_sync"]


def test_staleness_tolerance_is_the_largest_n_reached_on_every_seed_without_a_gap():
    study = RegimeConfig(workers=(1, 4, 16), learning_rates=((3e-4, 1e-3),), delays=("homogeneous",),
                         schemes=("sync", "async"), seeds=(0, 1))
    rows = []
    for n, reached in ((1, (True, True)), (4, (True, False)), (16, (True, True))):
        for seed, ok in enumerate(reached):
            rows.append({**row("async", seed, 0.0, workers=n), "reaches_sync": ok})
            rows.append({**row("sync", seed, 0.0, workers=n), "reaches_sync": True})
    tol = staleness_tolerance(study, rows)
    assert tol[("homogeneous", 3e-4, "async")] == 1  # N = 4 failed on a seed; N = 16 does not count
    assert tol[("homogeneous", 3e-4, "sync")] == 16


# ----------------------------------------------------------------------------- the command


@pytest.mark.parametrize(("text", "message"), [
    ('schemes = ["sync", "async", "nope"]', "regimes.schemes"),
    ("workers = []", "regimes.workers must list at least one value"),
    ('schemes = ["async", "modify"]', "must include sync"),
    ("learning_rates = [[0.001]]", "regimes.learning_rates"),
    ('delays = ["slow"]', "regimes.delays"),
    ("colour = 1", "unknown config key regimes.colour"),
    ("[experiment.train]\niterations = 0", "train.iterations must be >= 1"),
])
def test_bad_study_input_is_one_line_and_exit_status_2(capsys, tmp_path, text, message):
    code, _, err = run_cli(capsys, "regimes", "--config", str(write(tmp_path, text)), "--results",
                           str(tmp_path / "r"), "--quiet")
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_missing_study_file_and_a_bad_jobs_count_are_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "regimes", "--config", str(tmp_path / "none.toml"), "--quiet")
    assert code == 2 and "not found" in err
    code, _, err = run_cli(capsys, "regimes", "--config", str(write(tmp_path, REDUCED)), "--jobs", "0", "--quiet")
    assert code == 2 and "--jobs" in err


def test_redrawing_needs_an_earlier_study(capsys, tmp_path):
    code, _, err = run_cli(capsys, "regimes", "--config", str(write(tmp_path, REDUCED)), "--results",
                           str(tmp_path / "r"), "--redraw")
    assert code == 2 and "no regimes.csv" in err


def test_an_existing_study_is_never_replaced_without_overwrite(capsys, tmp_path):
    folder = tmp_path / "r" / "reduced"
    folder.mkdir(parents=True)
    (folder / "regimes.csv").write_text("earlier results\n")
    code, _, err = run_cli(capsys, "regimes", "--config", str(write(tmp_path, REDUCED)), "--results",
                           str(tmp_path / "r"), "--quiet")
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert (folder / "regimes.csv").read_text() == "earlier results\n"


@pytest.mark.slow
def test_a_reduced_grid_runs_end_to_end_and_its_numbers_follow_the_definitions(capsys, tmp_path):
    config = write(tmp_path, REDUCED)
    code, out, _ = run_cli(capsys, "regimes", "--config", str(config), "--results", str(tmp_path / "r"),
                           "--jobs", "1", "--quiet")
    assert code == 0 and "12 runs" in out
    folder = tmp_path / "r" / "reduced"
    rows = read_rows(folder / "regimes.csv")
    assert len(rows) == 2 * 3 * 2  # workers x schemes x seeds
    study = load_regimes(config)
    for r in rows:
        (sync,) = [s["final_loss"] for s in rows
                   if s["scheme"] == "sync" and s["workers"] == r["workers"] and s["seed"] == r["seed"]]
        assert r["sync_final_loss"] == sync
        assert r["reaches_sync"] == (not r["diverged"] and r["final_loss"] <= sync + study.reach_tolerance)
        assert r["iterations"] == 8 and not r["diverged"]
        if not math.isnan(r["iters_to_target"]):
            assert study.smooth <= r["iters_to_target"] <= 8 and 0 < r["time_to_target"] <= r["sim_time"]
    # one worker: every scheme is the sequential trainer, so every scheme has sync's numbers
    for seed in (0, 1):
        one = [r for r in rows if r["workers"] == 1 and r["seed"] == seed]
        assert len({r["final_loss"] for r in one}) == 1 and all(r["mean_staleness"] == 0 for r in one)
    two = [r for r in rows if r["workers"] == 2 and r["scheme"] != "sync"]
    assert all(r["mean_staleness"] > 0 for r in two)
    # the per-run loss curve gives the same final loss and target update as the table
    from asynccorr.studies.regimes import Cell, cell_config

    result = run(cell_config(study, Cell("homogeneous", 3e-4, 1e-3, 2), 1), "async")
    loss = result.metrics["policy_loss"]
    (r,) = [r for r in rows if r["workers"] == 2 and r["scheme"] == "async" and r["seed"] == 1]
    assert r["final_loss"] == pytest.approx(float(loss[-1]))  # last 10 % of 8 updates = the last one
    means = np.convolve(loss, np.ones(3) / 3, mode="valid")
    hits = np.flatnonzero(means < study.target_loss)
    assert (r["iters_to_target"] == hits[0] + 3) if hits.size else math.isnan(r["iters_to_target"])

    table = (folder / "regimes.md").read_text()
    # cell x scheme rows, the cells' winners, the tolerance row
    assert table.count("| homogeneous | 0.0003 |") == 2 * 3 + 2 + 1
    assert "±" in table and "Staleness tolerance" in table
    figures = {p.name for p in (folder / "figures").iterdir()}
    for name in ("reach_homogeneous", "updates_homogeneous", "time_homogeneous", "tracking_homogeneous",
                 "best_scheme"):
        assert {f"{name}.png", f"{name}.pdf"} <= figures
    with open(folder / "regimes.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    # a second run refuses to replace it; --redraw redraws the same table from regimes.csv
    code, _, err = run_cli(capsys, "regimes", "--config", str(config), "--results", str(tmp_path / "r"), "--quiet")
    assert code == 2 and "--overwrite" in err
    (folder / "regimes.md").unlink()
    code, _, _ = run_cli(capsys, "regimes", "--config", str(config), "--results", str(tmp_path / "r"), "--redraw")
    assert code == 0 and (folder / "regimes.md").read_text() == table
    # --resume: the runs an interrupted study finished are reused, the others run; the same table
    lines = (folder / "regimes.csv").read_text().splitlines(keepends=True)
    (folder / "regimes.csv").write_text("".join(lines[:5]))  # as if stopped after 4 runs
    (folder / "regimes.md").unlink()
    code, _, err = run_cli(capsys, "regimes", "--config", str(config), "--results", str(tmp_path / "r"), "--resume",
                           "--quiet")
    assert code == 0 and "resume: 4 finished runs reused" in err
    assert (folder / "regimes.md").read_text() == table
    code, _, err = run_cli(capsys, "regimes", "--config", str(config), "--results", str(tmp_path / "r"), "--resume",
                           "--set", "seeds=[0]")
    assert code == 2 and "differs in seeds" in err and (folder / "regimes.md").read_text() == table
    # the figures, checked mechanically: nothing outside the canvas; the best-scheme legend names
    # only the winners drawn
    from figcheck import legend_entries, texts_outside, unmarked_upper_bounds

    from asynccorr.figures.regimes import best_figure, metric_figure
    from asynccorr.studies.regimes import winners

    for metric in ("reach", "updates", "time", "tracking"):
        assert texts_outside(metric_figure(study, rows, "homogeneous", metric)) == [], metric
    fig = best_figure(study, rows)
    assert texts_outside(fig) == []
    won = {s for w in winners(study, rows).values() for s in w.schemes}
    assert {e for e in legend_entries(fig) if e in study.schemes} == won
    assert unmarked_upper_bounds(legend_entries(fig)) == []


@pytest.mark.slow  # cheap after the end-to-end test above, whose compiled code it reuses
def test_on_a_cluster_every_run_is_one_task_and_the_study_is_written_here(capsys, tmp_path, monkeypatch):
    """``regimes --cluster``: every run goes through ``studies.cluster.run_tasks`` (a one-CPU Ray task each) and
    its row comes back to this process, which writes the study. Here the tasks run in this process;
    a real two-node cluster is in studies/test_cluster.py."""
    from asynccorr.studies import cluster

    submitted = []

    def in_this_process(address, fn, calls, on_result):
        submitted.append((address, [task.scheme for _, task in calls]))
        for i, args in enumerate(calls):
            on_result(i, fn(*args), "node")

    monkeypatch.setattr(cluster, "check_reachable", lambda address: None)
    monkeypatch.setattr(cluster, "connected", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(cluster, "run_tasks", in_this_process)
    # the reduced grid's runs with 2 workers, one seed (what the end-to-end test compiled is reused)
    study = REDUCED.replace("workers = [1, 2]", "workers = [2]").replace(', "modify-safe"]', "]")
    study = study.replace("seeds = [0, 1]", "seeds = [0]")
    code, out, err = run_cli(capsys, "regimes", "--config", str(write(tmp_path, study)), "--results",
                             str(tmp_path / "r"), "--cluster", "127.0.0.1:6379", "--quiet")
    assert code == 0, err
    assert "2 runs" in out and "on the Ray cluster at 127.0.0.1:6379" in out
    assert [(a, sorted(s)) for a, s in submitted] == [("127.0.0.1:6379", ["async", "sync"])]
    rows = read_rows(tmp_path / "r" / "reduced" / "regimes.csv")
    assert sorted(r["scheme"] for r in rows) == ["async", "sync"] and all(r["iterations"] == 8 for r in rows)
    assert (tmp_path / "r" / "reduced" / "regimes.md").is_file()


def test_study_names_are_checked_like_experiment_names():
    with pytest.raises(ConfigError, match="name"):
        RegimeConfig(name="../up")
