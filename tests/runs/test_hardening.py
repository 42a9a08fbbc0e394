"""Specification of the hardening: divergence, checkpoints and resume, Ctrl-C, results safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import run_cli, tiny_toml

from asynccorr.backends.checkpoint import CheckpointError
from asynccorr.backends.protocol import RunHooks, TrainingInterrupted, first_diverged_row
from asynccorr.backends.registry import run
from asynccorr.backends.sim import run_sim
from asynccorr.cli import main
from asynccorr.config import ExperimentConfig, with_overrides
from asynccorr.figures import experiment as plots
from asynccorr.runs import locks
from asynccorr.runs.checkpoints import checkpoint_files, load_latest_checkpoint, read_checkpoint
from asynccorr.runs.files import CsvLog, csv_text, read_csv, write_csv, write_json
from asynccorr.runs.run import config_record as runs_config_record
from asynccorr.runs.run import train_run
from asynccorr.runs.summary import diverged_text, per_scheme

REPO = Path(__file__).resolve().parents[2]
RESULT_FILES = ("params.npy", "metrics.csv", "eval.csv", "trajectory.csv")


def tiny(**sections) -> ExperimentConfig:
    """The small network of tests/backends/test_sim.py (shares its compiled code), 3 workers."""
    base = with_overrides(
        ExperimentConfig(),
        name="hard",
        learner={"policy_hidden": (8,), "value_hidden": (8,), "rollout_states": 8, "reset_states": 8, "horizon": 5},
        train={"iterations": 12, "eval_every": 2, "checkpoint_every": 4},
        workers={"count": 3},
    )
    return with_overrides(base, **sections)


# The tiny comparison of the Ctrl-C and `compare --resume` tests (checkpoints every 4 updates).
COMPARE_TOML = ('name = "tiny"\n[learner]\npolicy_hidden = [8]\nvalue_hidden = [8]\nrollout_states = 8\n'
                "reset_states = 8\nhorizon = 5\n[train]\niterations = 12\neval_every = 2\ncheckpoint_every = 4\n"
                "[workers]\ncount = 3\n")

# A step size at which, on the tiny config with 4 workers, the exact correction blows up
# within 20 updates while the sequential trainer and naive async stay finite.
UNSTABLE = {"optim": {"policy_lr": 0.1, "value_lr": 0.3}, "workers": {"count": 4},
            "train": {"iterations": 20, "eval_every": 10}}


def same_files(a: Path, b: Path) -> None:
    for name in RESULT_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ----------------------------------------------------------------------------- divergence


def test_a_row_is_diverged_when_a_loss_or_norm_is_not_finite_or_a_loss_exceeds_the_bound():
    ok = {"policy_loss": np.array([1.0, -2.0, 3.0]), "value_loss": np.array([5.0, 6.0, 7.0]),
          "direction_norm": np.ones(3), "update_norm": np.ones(3), "grad_error": np.array([np.nan] * 3)}
    assert first_diverged_row(ok, 10.0) is None  # other columns (the gradient error) do not count
    for column, row, value in (("policy_loss", 1, np.nan), ("value_loss", 2, np.inf), ("update_norm", 1, np.nan),
                               ("direction_norm", 0, -np.inf), ("policy_loss", 2, -11.0), ("value_loss", 1, 10.5)):
        bad = {k: v.copy() for k, v in ok.items()}
        bad[column][row] = value
        assert first_diverged_row(bad, 10.0) == row, (column, value)
    assert first_diverged_row({**ok, "value_loss": np.array([5.0, 1e300, 7.0])}, float("inf")) is None


def test_a_diverging_sequential_run_stops_at_its_first_bad_update_with_the_parameters_before_it():
    cfg = tiny(**{**UNSTABLE, "optim": {"policy_lr": 0.3, "value_lr": 0.9}})
    result = run(cfg, "sequential")
    assert result.status == "diverged"
    k = result.diverged_at
    assert 1 < k <= cfg.train.iterations
    # metrics up to and including update k; every earlier row healthy, row k not
    assert list(result.metrics["iteration"]) == list(range(1, k + 1))
    assert first_diverged_row(result.metrics, cfg.train.divergence_loss) == k - 1
    # the parameters are the trainer's before update k (found again inside the scan chunk), evaluated
    before = run(with_overrides(cfg, train={"iterations": k - 1}), "sequential")
    assert before.status == "completed"
    np.testing.assert_array_equal(result.params, before.params)
    assert result.evals[-1].iteration == k - 1 and result.evals[-1].summary == before.evals[-1].summary


def test_compare_carries_on_after_a_diverged_scheme_and_reports_it(capsys, tmp_path, monkeypatch):
    """On the sim backend: modify diverges at some update k; the row k is kept, the parameters
    are the server's before update k, and the sequential run after it still completes."""
    monkeypatch.setenv("COLUMNS", "200")  # the CLI's table unwrapped
    config = tmp_path / "unstable.toml"
    config.write_text("""
name = "unstable"
[learner]
policy_hidden = [8]
value_hidden = [8]
rollout_states = 8
reset_states = 8
horizon = 5
[optim]
policy_lr = 0.1
value_lr = 0.3
[train]
iterations = 20
eval_every = 10
[workers]
count = 4
""")
    main(["compare", "--config", str(config), "--schemes", "modify,sequential", "--seeds", "0",
          "--results", str(tmp_path / "r"), "--quiet"])
    out = capsys.readouterr().out
    folder = tmp_path / "r" / "unstable"
    summary = {r["scheme"]: r for r in _csv_rows(folder / "summary.csv")}
    assert summary["sequential"]["status"] == "completed" and summary["sequential"]["diverged_at"] == ""
    assert summary["modify@server"]["status"] == "diverged"
    assert summary["modify@server"]["final_policy_loss"] == "nan"  # a blow-up has no final loss
    k = int(summary["modify@server"]["diverged_at"])
    assert f"| modify@server | 1 | 1/1 (at {k}) |" in (folder / "summary.md").read_text()
    assert "| sequential | 1 | 0/1 |" in (folder / "summary.md").read_text()
    assert "1/1 (at" in out  # the compare table printed by the CLI
    meta = json.loads((folder / "modify@server-seed0" / "meta.json").read_text())
    assert meta["status"] == "diverged" and meta["diverged_at"] == k
    metrics = read_csv(folder / "modify@server-seed0" / "metrics.csv")
    assert list(metrics["iteration"]) == list(range(1, k + 1))
    assert first_diverged_row(metrics, 1e6) == k - 1
    before = run(with_overrides(tiny(**UNSTABLE), train={"iterations": k - 1}), "modify")
    assert before.status == "completed"
    np.testing.assert_array_equal(np.load(folder / "modify@server-seed0" / "params.npy"), before.params)
    evals = read_csv(folder / "modify@server-seed0" / "eval.csv")
    assert evals["iteration"][-1] == k - 1 and evals["rms_lateral"][-1] == np.float32(before.evals[-1].summary.rms_lateral)
    # the figures mark it: an x at update k on the loss and gradient-error figures
    runs = plots.load_runs(folder)
    (diverged,) = [r for r in runs if r.scheme == "modify@server"]
    assert diverged.diverged and diverged.diverged_at == k and diverged.valid_rows == k - 1
    for figure in (plots.loss_vs_iteration(runs, smooth=1), plots.gradient_error_vs_iteration(runs, smooth=1)):
        marks = [line for line in figure.axes[0].get_lines() if line.get_marker() == "x"]
        assert [float(m.get_xdata()[0]) for m in marks] == [float(k)]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_diverged_tail_of_a_finite_run_never_sets_the_axis(tmp_path: Path):
    """A run declared diverged at update 30 whose loss then grows to 1e12 while staying finite."""
    folder = tmp_path / "exp"
    n = 40
    it = np.arange(1, n + 1)
    for scheme, loss, meta in (("sync", 5 + np.exp(-it / 10), {"status": "completed"}),
                               ("async", np.where(it < 30, 6 + np.exp(-it / 10), 1e12),
                                {"status": "diverged", "diverged_at": 30})):
        run = folder / f"{scheme}-seed0"
        write_csv(run / "metrics.csv", {"iteration": it, "time": it * 0.01, "policy_loss": loss,
                                        "value_loss": loss, "grad_error": np.full(n, 0.1)})
        write_json(run / "meta.json", meta)
    runs = plots.load_runs(folder)
    assert runs[1].scheme == "async" and runs[1].valid_rows == 29 and runs[1].diverged
    ax = plots.loss_vs_iteration(runs, smooth=1).axes[0]
    assert ax.get_ylim()[1] < 100
    (mark,) = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert float(mark.get_xdata()[0]) == 30.0


# ----------------------------------------------------------------------------- checkpoints and resume


@pytest.mark.parametrize("scheme", ["sync", "async", "sequential", "modify@server", "modify@deferred",
                                    "modify@look-ahead", "sync-pipelined-modify", "modify-safe@secant",
                                    "modify@secant:applied"])
def test_checkpoints_do_not_change_results_and_a_resumed_run_equals_the_uninterrupted_one(tmp_path, scheme):
    """Whatever a checkpoint catches in flight -- the server's queue and its busy update (server),
    jobs past their mid-job pull (deferred), the workers' previous pulls (look-ahead), the rounds'
    clock (pipelined), the secant window and the workers' tangents (secant; ``:applied`` the
    tangent from the server's reply) -- the resumed run is the uninterrupted one, file for file."""
    cfg = tiny()
    scheme, _, tangent = scheme.partition(":")
    if tangent:
        cfg = with_overrides(cfg, schemes={"secant_tangent": tangent})
    a, _, _ = train_run(cfg, scheme, tmp_path / "a")
    b, _, _ = train_run(with_overrides(cfg, train={"checkpoint_every": 0}), scheme, tmp_path / "b")
    same_files(a, b)
    assert [read_checkpoint(p).iteration for p in checkpoint_files(a)] == [8, 4]  # the two latest are kept
    assert not checkpoint_files(b)
    # a crash after the checkpoint at 4: later files are stale, the final ones missing
    c = tmp_path / "c" / a.parent.name / a.name
    shutil.copytree(a, c)
    checkpoint_files(c)[0].unlink()
    for name in ("params.npy", "trajectory.csv"):
        (c / name).unlink()
    meta = json.loads((c / "meta.json").read_text())
    write_json(c / "meta.json", {**meta, "status": "running"})
    resumed, result, _ = train_run(cfg, scheme, tmp_path / "c", resume=True)
    assert resumed == c and result.status == "completed"
    same_files(a, c)
    assert json.loads((c / "meta.json").read_text())["resumed_from"] == 4


def _interrupted_copy(run: Path, dest: Path) -> Path:
    """A copy of a finished run as a crash just before its end leaves it: final files missing, 'running'."""
    shutil.copytree(run, dest)
    for name in ("params.npy", "trajectory.csv"):
        (dest / name).unlink()
    write_json(dest / "meta.json", {**json.loads((dest / "meta.json").read_text()), "status": "running"})
    return dest


def test_resume_skips_a_truncated_newest_checkpoint_for_the_older_one_and_says_so(tmp_path, capsys):
    """A real truncated file (as a failing disk leaves it): resume from the checkpoint before it,
    one warning line, and the result equals the uninterrupted run's."""
    cfg = tiny()
    a, _, _ = train_run(cfg, "async", tmp_path / "a")
    c = _interrupted_copy(a, tmp_path / "c" / a.parent.name / a.name)
    newest, older = checkpoint_files(c)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    code, _, err = run_cli(capsys, "train", "--scheme", "async", "--config", str(_tiny_toml(tmp_path, cfg)),
                           "--results", str(tmp_path / "c"), "--resume", "--quiet")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and newest.name in warnings[0] and "unreadable" in warnings[0]
    assert json.loads((c / "meta.json").read_text())["resumed_from"] == read_checkpoint(older).iteration
    same_files(a, c)


def test_a_checkpoint_whose_arrays_were_altered_fails_its_checksum_and_is_skipped(tmp_path):
    cfg = tiny()
    a, _, _ = train_run(cfg, "async", tmp_path / "a")
    newest, older = checkpoint_files(a)
    ckpt = read_checkpoint(newest)
    name = min(ckpt.arrays)
    with np.load(newest, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[name] = arrays[name] + 1  # the same file layout and recorded digest, other numbers
    np.savez(newest, **arrays)
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(newest)
    skipped: list[str] = []
    assert load_latest_checkpoint(a, skipped.append).iteration == read_checkpoint(older).iteration
    assert len(skipped) == 1 and "corrupt" in skipped[0]


def test_when_no_checkpoint_loads_resume_is_one_line_exit_2_and_nothing_is_deleted(tmp_path, capsys):
    cfg = tiny()
    a, _, _ = train_run(cfg, "async", tmp_path / "a")
    c = _interrupted_copy(a, tmp_path / "c" / a.parent.name / a.name)
    for path in checkpoint_files(c):
        path.write_bytes(path.read_bytes()[:100])
    before = {p.name: p.read_bytes() for p in sorted((c / "checkpoint").iterdir())}
    code, _, err = run_cli(capsys, "train", "--scheme", "async", "--config", str(_tiny_toml(tmp_path, cfg)),
                           "--results", str(tmp_path / "c"), "--resume", "--quiet")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "no checkpoint of" in errors[0] and "loads" in errors[0]
    assert {p.name: p.read_bytes() for p in sorted((c / "checkpoint").iterdir())} == before


def _tiny_toml(folder: Path, cfg: ExperimentConfig) -> Path:
    """``cfg`` as an experiment TOML the CLI reads back to the same resolved config."""
    path = folder / "tiny.toml"
    path.write_text(COMPARE_TOML.replace('name = "tiny"', f'name = "{cfg.name}"'))
    return path


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, past: int, timeout: float = 240.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = checkpoint_files(run_dir)
        if files:
            newest = int(files[0].stem.split("-")[1])
            if newest > past:
                return newest
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr.read()}"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def killable(checkpoint_every: int) -> str:
    return tiny_toml("killed", iterations=400, workers=3, checkpoint_every=checkpoint_every)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["modify@server"])
def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_result(capsys, tmp_path, scheme):
    """A real crash: the process is killed with SIGKILL mid-run (one more process start and
    compilation, so only for modify; the sequential trainer and sync resume in-process above)."""
    config, reference_config = tmp_path / "killed.toml", tmp_path / "reference.toml"
    config.write_text(killable(2))
    reference_config.write_text(killable(0))
    results = tmp_path / "results"
    run_dir = results / "killed" / f"{scheme}-seed0"
    args = ["train", "--scheme", scheme, "--config", str(config), "--results", str(results), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "asynccorr", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        newest = _wait_for_checkpoint(proc, run_dir, past=2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # what a crash leaves: complete files, the run marked running, at most one interval of metrics lost
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "running"
    rows = len(read_csv(run_dir / "metrics.csv")["iteration"])
    assert rows % 2 == 0 and rows >= newest - 2
    assert not (run_dir / "params.npy").exists()
    # the killed owner's lock stays behind: the run reads as dead, and only --resume/--overwrite take it
    meta = json.loads((run_dir / "meta.json").read_text())
    assert locks.read_owner(run_dir).pid == proc.pid and locks.run_status(run_dir, meta) == "dead"
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "stale lock" in err and str(proc.pid) in err

    main([*args, "--resume"])
    main(["train", "--scheme", scheme, "--config", str(reference_config), "--results", str(tmp_path / "ref"),
          "--quiet"])
    capsys.readouterr()
    same_files(run_dir, tmp_path / "ref" / "killed" / f"{scheme}-seed0")
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["resumed_from"] >= newest
    assert not locks.lock_path(run_dir).exists()


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_the_simulation_returns_everything_up_to_the_last_update():
    calls = []

    def interrupt(metrics, evals):
        calls.append(len(metrics["iteration"]))
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as exc:
        run_sim(tiny(), "async", hooks=RunHooks(on_flush=interrupt))
    result = exc.value.result
    assert result.status == "interrupted"
    assert list(result.metrics["iteration"]) == [1, 2, 3, 4]
    assert [e.iteration for e in result.evals] == [0, 2, 4]


@pytest.mark.parametrize("scheme", ["async", "sequential"])
def test_ctrl_c_writes_the_partial_run_and_exits_130_with_one_line(capsys, tmp_path, monkeypatch, scheme):
    from asynccorr.runs import run as runs

    real, calls = runs.write_progress, []

    def write_then_interrupt(run_dir, metrics, evals, *log):
        real(run_dir, metrics, evals, *log)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "write_progress", write_then_interrupt)
    config = tmp_path / "tiny.toml"
    config.write_text(COMPARE_TOML)
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--schemes", scheme, "--seeds", "0,1", "--config", str(config), "--results",
              str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    run_dir = tmp_path / "r" / "tiny" / f"{scheme}-seed0"
    assert exc.value.code == 130
    assert err == f"error: interrupted; partial results in {run_dir}\n"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert list(read_csv(run_dir / "metrics.csv")["iteration"]) == [1, 2, 3, 4]
    assert (run_dir / "params.npy").is_file() and (run_dir / "trajectory.csv").is_file()
    assert not (tmp_path / "r" / "tiny" / f"{scheme}-seed1").exists()  # compare stopped
    assert not (tmp_path / "r" / "tiny" / "summary.csv").exists()


COMPARE_ARGS = ["--schemes", "async,sequential", "--seeds", "0,1", "--quiet"]


def _compare(capsys, config: Path, results: Path, *extra: str) -> tuple[int, str]:
    """``asynccorr compare`` of the tiny comparison: (exit status, stderr)."""
    code, _, err = run_cli(capsys, "compare", "--config", str(config), "--results", str(results),
                           *COMPARE_ARGS, *extra)
    return code, err


def _summary_without_wall_time(folder: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in _csv_rows(folder / "summary.csv")]


def test_compare_resume_reuses_finished_runs_continues_the_interrupted_one_and_trains_the_rest(
        capsys, tmp_path, monkeypatch):
    from asynccorr.runs import run as runs

    config = tmp_path / "tiny.toml"
    config.write_text(COMPARE_TOML)
    assert _compare(capsys, config, tmp_path / "ref")[0] == 0  # the reference: one uninterrupted comparison

    real, flushes = runs.write_progress, []

    def write_then_interrupt(run_dir, metrics, evals, *log):
        real(run_dir, metrics, evals, *log)
        flushes.append(1)
        if len(flushes) == 9:  # 6 flushes finish async seed 0; the 9th is at update 6 of async seed 1
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "write_progress", write_then_interrupt)
    assert _compare(capsys, config, tmp_path / "r")[0] == 130
    monkeypatch.setattr(runs, "write_progress", real)
    folder = tmp_path / "r" / "tiny"
    finished = {p.name: p.read_bytes() for p in (folder / "async-seed0").iterdir() if p.is_file()}
    assert json.loads((folder / "async-seed1" / "meta.json").read_text())["status"] == "interrupted"

    code, err = _compare(capsys, config, tmp_path / "r", "--resume")
    assert code == 0
    assert "resume: 1 finished runs reused, 1 continued from a checkpoint, 0 restarted, 2 to train" in \
        " ".join(err.split())
    assert {p.name: p.read_bytes() for p in (folder / "async-seed0").iterdir() if p.is_file()} == finished
    assert json.loads((folder / "async-seed1" / "meta.json").read_text())["resumed_from"] == 4
    for name in ("async-seed0", "async-seed1", "sequential-seed0", "sequential-seed1"):
        same_files(tmp_path / "ref" / "tiny" / name, folder / name)
    assert _summary_without_wall_time(folder) == _summary_without_wall_time(tmp_path / "ref" / "tiny")


def test_compare_resume_refuses_runs_of_another_config_and_changes_nothing(capsys, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(COMPARE_TOML)
    assert _compare(capsys, config, tmp_path / "r")[0] == 0
    before = {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file()}
    for extra, message in [(("--resume", "--iterations", "8"), "the config differs in train.iterations"),
                           (("--resume", "--overwrite"), "--resume and --overwrite exclude each other")]:
        code, err = _compare(capsys, config, tmp_path / "r", *extra)
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file()} == before


def test_resume_plan_restarts_unfinished_runs_that_cannot_continue(tmp_path):
    """No checkpoint yet (on sim, or on a real backend): the partial run starts afresh."""
    from asynccorr.runs.run import run_dir_for
    from asynccorr.studies.compare import resume_plan

    for cfg in (tiny(train={"checkpoint_every": 0}), tiny(workers={"backend": "mp"})):
        run_dir = run_dir_for(tmp_path, cfg, "async")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", runs_config_record(cfg, "async"))
        write_json(run_dir / "meta.json", {"status": "interrupted"})
        [planned] = resume_plan(tmp_path, [("async", cfg)])
        assert planned.action == "restart"


def test_scheme_means_leave_out_seeds_without_a_value_and_count_the_diverged_ones():
    rows = [{"scheme": "modify", "status": "diverged", "diverged_at": 9, "final_policy_loss": float("nan"),
             "left_road": True, "finite": True},
            {"scheme": "modify", "status": "completed", "diverged_at": None, "final_policy_loss": 2.0,
             "left_road": False, "finite": True},
            {"scheme": "modify", "status": "completed", "diverged_at": None, "final_policy_loss": 4.0,
             "left_road": False, "finite": True}]
    for r in rows:
        r.update({k: 1.0 for k in ("grad_error_mean", "grad_error_final", "rms_lateral", "mean_staleness",
                                   "sim_time", "wall_time_s")})
    [agg] = per_scheme(rows)
    assert agg["final_policy_loss"] == (3.0, 1.0, 2)  # mean, std, seeds with a value
    assert agg["diverged"] == 1 and diverged_text(agg) == "1/3 (at 9)"


# ----------------------------------------------------------------------------- the growing metrics table


def test_a_metrics_log_appends_only_new_rows_and_reads_the_same_as_a_full_write(tmp_path):
    cols = {"iteration": np.arange(1, 31), "loss": np.linspace(3.0, 1.0, 30) / 7}
    log = CsvLog(tmp_path / "log.csv")
    sizes = []
    for n in (10, 20, 30):
        log.write({k: v[:n] for k, v in cols.items()})
        sizes.append((tmp_path / "log.csv").stat().st_size)
    write_csv(tmp_path / "full.csv", cols)
    assert (tmp_path / "log.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    assert sizes[0] < sizes[1] < sizes[2]
    # appended, not rewritten: the bytes of the first write are still the file's first bytes
    first = csv_text({k: v[:10] for k, v in cols.items()}).encode()
    assert (tmp_path / "log.csv").read_bytes().startswith(first)


def test_a_torn_last_line_left_by_a_crash_mid_append_is_dropped_by_the_readers(tmp_path):
    run = tmp_path / "exp" / "async-seed0"
    cols = {"iteration": np.arange(1, 5), "policy_loss": [4.0, 3.0, 2.5, 2.0]}
    write_csv(run / "metrics.csv", cols)
    with open(run / "metrics.csv", "a") as f:
        f.write("5,1.9")  # the crash: no line end
    np.testing.assert_array_equal(read_csv(run / "metrics.csv")["iteration"], [1, 2, 3, 4])
    write_csv(run / "eval.csv", {"iteration": [0, 4], "rms_lateral": [1.0, 0.5]})
    write_json(run / "meta.json", {"status": "running"})
    write_json(run / "config.json", {"name": "exp"})
    [loaded] = plots.load_runs(tmp_path / "exp")
    assert len(loaded.metrics["iteration"]) == 4


def test_a_training_run_appends_its_metrics_at_each_evaluation_point(tmp_path, monkeypatch):
    """While it trains the table grows by the new rows only; the finished file is the whole table."""
    appended: list[int] = []
    original = CsvLog.write

    def spy(self, columns):
        before = self.rows
        original(self, columns)
        appended.append(self.rows - (before or 0))

    monkeypatch.setattr(CsvLog, "write", spy)
    run, _, _ = train_run(tiny(train={"checkpoint_every": 0}), "async", tmp_path)
    assert appended == [2] * 6  # 12 updates, eval_every 2: each flush writes its 2 new rows
    assert read_csv(run / "metrics.csv")["iteration"].tolist() == list(range(1, 13))
