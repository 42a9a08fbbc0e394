"""Who owns a run directory: one live training process; stale locks and dead runs told apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import run_cli, tiny_toml

from asynccorr.runs import locks
from asynccorr.runs.files import write_json

REPO = Path(__file__).resolve().parents[2]


def locked_toml(iterations: int) -> str:
    return tiny_toml("locked", iterations, workers=3, checkpoint_every=0)


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_lock(run_dir: Path) -> int:
    pid = _dead_pid()
    path = locks.lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = locks.this_process()
    path.write_text(json.dumps(me._replace(pid=pid, start=None)._asdict()))
    return pid


def test_a_lock_is_taken_atomically_refuses_a_second_owner_and_is_released(tmp_path):
    run = tmp_path / "exp" / "async-seed0"
    me = locks.acquire(run, take_over=False)
    assert locks.read_owner(run) == me and locks.is_alive(me)
    with pytest.raises(locks.RunLockedError, match=f"in use by pid {os.getpid()}"):
        locks.acquire(run, take_over=True)  # a live owner: --overwrite or --resume do not take it
    locks.release(run, me)
    assert not locks.lock_path(run).exists()
    assert not any(p.name.endswith(".tmp") for p in run.parent.iterdir())


def test_a_stale_lock_is_reported_and_taken_over_only_when_asked(tmp_path):
    run = tmp_path / "exp" / "async-seed0"
    pid = _stale_lock(run)
    assert not locks.is_alive(locks.read_owner(run))
    with pytest.raises(locks.RunLockedError, match=f"stale lock of pid {pid}.*--resume.*--overwrite"):
        locks.acquire(run, take_over=False)
    me = locks.acquire(run, take_over=True)
    assert locks.read_owner(run) == me


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    """The recorded process start time tells this process apart from an owner that had its pid."""
    run = tmp_path / "exp" / "async-seed0"
    me = locks.this_process()
    if me.start is None:
        pytest.skip("no /proc here: process start times unknown")
    locks.lock_path(run).parent.mkdir(parents=True)
    locks.lock_path(run).write_text(json.dumps(me._replace(start=me.start - 1)._asdict()))
    assert not locks.is_alive(locks.read_owner(run))


def test_a_running_run_whose_owner_is_gone_reads_as_dead(tmp_path):
    run = tmp_path / "exp" / "async-seed0"
    _stale_lock(run)
    assert locks.run_status(run, {"status": "running"}) == "dead"
    assert locks.run_status(run, {"status": "completed"}) == "completed"
    locks.lock_path(run).unlink()
    assert locks.run_status(run, {"status": "running"}) == "dead"  # no owner at all
    me = locks.acquire(run, take_over=False)
    assert locks.run_status(run, {"status": "running"}) == "running"
    locks.release(run, me)


@pytest.mark.slow
def test_a_second_train_into_a_live_run_is_refused_naming_the_owner_even_with_overwrite(capsys, tmp_path):
    """Two real processes: the first trains; the second, started while it runs, is refused with one
    line naming the first's pid, with --overwrite and --resume too, and changes nothing; the first
    then stops (Ctrl-C) and releases the run."""
    config = tmp_path / "locked.toml"
    config.write_text(locked_toml(1_000_000))
    results = tmp_path / "results"
    run_dir = results / "locked" / "async-seed0"
    args = ["train", "--scheme", "async", "--config", str(config), "--results", str(results), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "asynccorr", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.csv").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run did not start in time"
            time.sleep(0.2)
        owner = locks.read_owner(run_dir)
        assert owner is not None and owner.pid == first.pid
        config_before = (run_dir / "config.json").read_bytes()
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, err = run_cli(capsys, *args, *extra)
            errors = err.strip().splitlines()
            assert code == 2 and len(errors) == 1 and f"in use by pid {first.pid}" in errors[0], (extra, err)
        assert first.poll() is None  # it was live all along, and is untouched
        assert (run_dir / "config.json").read_bytes() == config_before
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and not locks.lock_path(run_dir).exists()


def test_compare_refuses_up_front_when_one_of_its_runs_is_owned_by_a_live_process(capsys, tmp_path):
    config = tmp_path / "locked.toml"
    config.write_text(locked_toml(4))
    results = tmp_path / "results"
    run = results / "locked" / "async-seed1"
    me = locks.acquire(run, take_over=False)
    try:
        code, _, err = run_cli(capsys, "compare", "--config", str(config), "--results", str(results),
                               "--schemes", "async", "--seeds", "0,1", "--overwrite", "--quiet")
    finally:
        locks.release(run, me)
    assert code == 2 and "in use by pid" in err and len(err.strip().splitlines()) == 1
    assert not (results / "locked" / "async-seed0").exists()  # nothing trained before the check


def test_plot_and_compare_resume_say_which_runs_are_dead(capsys, tmp_path):
    config = tmp_path / "locked.toml"
    config.write_text(locked_toml(4))
    results = tmp_path / "results"
    code, _, err = run_cli(capsys, "compare", "--config", str(config), "--results", str(results),
                           "--schemes", "async", "--seeds", "0", "--quiet")
    assert code == 0, err
    run = results / "locked" / "async-seed0"
    meta = json.loads((run / "meta.json").read_text())
    write_json(run / "meta.json", {**meta, "status": "running"})  # as a killed owner leaves it
    _stale_lock(run)
    code, _, err = run_cli(capsys, "plot", str(results))
    assert code == 0 and f"warning: {run} is dead" in err
    code, _, err = run_cli(capsys, "compare", "--config", str(config), "--results", str(results),
                           "--schemes", "async", "--seeds", "0", "--resume", "--quiet")
    assert code == 0, err
    assert "1 restarted" in err and "1 of the unfinished dead" in err
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    assert not locks.lock_path(run).exists()
