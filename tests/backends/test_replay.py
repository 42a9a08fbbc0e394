"""Specification of record and replay: a real run's schedule, re-executed in one process, is the run again."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clitools import run_cli
from realworkers import assert_replays_bit_for_bit, recorded_run, tiny_config

from asynccorr.backends import schedule
from asynccorr.backends.mp import run_mp
from asynccorr.backends.replay import run_replay
from asynccorr.backends.schedule import ScheduleError
from asynccorr.runs.files import read_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def async_recording():
    """100 async updates of two mp workers, with the schedule the server recorded."""
    cfg = tiny_config("mp", train={"iterations": 100, "eval_every": 25})
    result, recorded = recorded_run(run_mp, cfg, "async", "mp")
    return cfg, result, recorded


def test_an_mp_async_run_of_100_updates_replays_bit_for_bit(async_recording):
    cfg, result, recorded = async_recording
    assert result.metrics["staleness"].max() > 0  # a real interleaving, not a sequential one
    assert [e.outcome for e in recorded.entries] == ["applied"] * 100
    assert recorded.end == {"end": "completed", "updates": 100, "dropped": 0}
    assert_replays_bit_for_bit(cfg, "async", result, recorded)  # modify@server's and secant's: test_mp.py


def test_a_what_if_replays_the_same_interleaving_under_another_scheme(async_recording):
    """modify@server on the async run's schedule: the same worker applies at every update with the same
    staleness and server time, while the parameters it computes at and applies follow the new scheme."""
    cfg, result, recorded = async_recording
    what_if = run_replay(cfg, "modify@server", recorded)
    for name in ("iteration", "time", "worker", "staleness", "compute_time"):
        np.testing.assert_array_equal(what_if.metrics[name], result.metrics[name])
    assert not np.array_equal(what_if.params, result.params)
    stale = result.metrics["staleness"] > 0
    assert what_if.metrics["correction_norm"][stale].min() > 0 and result.metrics["correction_norm"].max() == 0


def test_a_schedule_that_ended_early_replays_up_to_where_the_run_stopped(async_recording):
    """An interrupted run's schedule ends with its update count: the replay stops there, interrupted,
    with the recorded run's first rows."""
    cfg, result, recorded = async_recording
    cut = recorded._replace(entries=recorded.entries[:45], end=schedule.end_line("interrupted", 40, 0))
    replayed = run_replay(cfg, "async", cut)
    assert replayed.status == "interrupted"
    assert list(replayed.metrics["iteration"]) == list(range(1, 41))
    for name in ("policy_loss", "grad_error", "update_norm"):
        assert replayed.metrics[name].tobytes() == result.metrics[name][:40].tobytes()


def test_a_schedule_with_a_missing_job_or_a_pull_it_did_not_record_is_refused(async_recording):
    cfg, _, recorded = async_recording
    gap = recorded._replace(entries=recorded.entries[:2] + recorded.entries[4:])
    with pytest.raises(ScheduleError, match="not its job"):
        run_replay(cfg, "async", gap)
    with pytest.raises(ScheduleError, match="pulls mid-job"):
        run_replay(cfg, "modify@pull-first", recorded)
    with pytest.raises(ScheduleError, match="cannot drive sync"):
        run_replay(cfg, "sync", recorded)


def test_the_schedule_file_is_json_lines_with_a_versioned_header_and_an_end_line(async_recording):
    _, _, recorded = async_recording
    text = schedule.encode([recorded.header, *recorded.entries, recorded.end])
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["format"] == "asynccorr-schedule" and lines[0]["backend"] == "mp" and lines[0]["workers"] == 2
    assert set(lines[1]) >= {"worker", "incarnation", "job", "version", "version_k", "outcome", "at", "compute_time"}
    assert schedule.parse(text) == recorded
    with pytest.raises(ScheduleError, match="truncated"):
        schedule.parse(text[:-5])
    with pytest.raises(ScheduleError, match="no end line"):
        schedule.parse("".join(text.splitlines(keepends=True)[:-1]))
    gap = schedule.encode([recorded.header, *recorded.entries[:2], *recorded.entries[4:], recorded.end])
    with pytest.raises(ScheduleError, match="without a gap"):
        schedule.parse(gap)
    with pytest.raises(ScheduleError, match="recorded by asynccorr 0.0.1"):
        schedule.parse(schedule.encode([{**recorded.header, "package": "0.0.1"}, *recorded.entries, recorded.end]))


def test_an_mp_run_continued_from_its_checkpoint_replays_bit_for_bit(tmp_path, capsys):
    """Ctrl-C after 40 updates (its checkpoint: 20), ``train --resume`` to 60: the server continues from
    the checkpoint and the workers as new incarnations; the schedule keeps both parts, and the replay
    (the first part up to the checkpoint, then the second) is the resumed run, file for file. From
    the command line, ``asynccorr replay --scheme`` replays the same two parts under another scheme."""
    from asynccorr import api
    from asynccorr.runs.run import RunInterrupted, train_run

    cfg = tiny_config("mp", train={"iterations": 60, "eval_every": 10, "checkpoint_every": 20})

    def ctrl_c_at_40(done, record):
        if done == 40:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        train_run(cfg, "async", tmp_path, on_chunk=ctrl_c_at_40)
    run_dir, result, _ = train_run(cfg, "async", tmp_path, resume=True)
    assert result.status == "completed" and json.loads((run_dir / "meta.json").read_text())["resumed_from"] == 20
    recorded = schedule.parse((run_dir / schedule.FILE).read_text())
    [at] = [n for n, e in enumerate(recorded.entries) if isinstance(e, schedule.Resume)]
    first, second = recorded.entries[:at], recorded.entries[at + 1:]
    assert sum(e.outcome == "applied" for e in first) >= 40  # its part after the checkpoint is in the file
    assert {e.incarnation for e in first} == {0} and {e.incarnation for e in second} == {1}
    replay_dir = api.replay(run_dir, results=tmp_path / "replays").run_dir
    for name in ("params.npy", "metrics.csv", "eval.csv"):
        assert (replay_dir / name).read_bytes() == (run_dir / name).read_bytes(), name

    code, out, err = run_cli(capsys, "replay", str(run_dir), "--scheme", "modify@server", "--results",
                             str(tmp_path / "replays"), "--quiet")
    assert code == 0, err
    what_if = tmp_path / "replays" / "real-replay" / "modify@server-seed0"
    assert "results:" in out and (what_if / "params.npy").is_file()
    assert json.loads((what_if / "meta.json").read_text())["replay_of"]["run"] == str(run_dir)
    original, replayed = read_csv(run_dir / "metrics.csv"), read_csv(what_if / "metrics.csv")
    for name in ("worker", "staleness", "time"):
        np.testing.assert_array_equal(replayed[name], original[name])
