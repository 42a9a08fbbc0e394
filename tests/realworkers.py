"""Helpers shared by the specifications of the real backends (backends/test_mp.py, backends/test_ray.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from clitools import tiny_toml

from asynccorr.backends import schedule
from asynccorr.backends.protocol import RunHooks
from asynccorr.backends.replay import run_replay
from asynccorr.backends.schedule import Schedule
from asynccorr.config import ExperimentConfig, with_overrides

REPO = Path(__file__).resolve().parents[1]


def tiny_config(backend: str, **sections) -> ExperimentConfig:
    """Two workers, tiny nets, a few dozen updates: seconds of training after start-up."""
    base = with_overrides(
        ExperimentConfig(),
        name="real",
        learner={"policy_hidden": (8,), "value_hidden": (8,), "rollout_states": 8, "reset_states": 8, "horizon": 5},
        train={"iterations": 40, "eval_every": 20},
        workers={"count": 2, "backend": backend, "timeout": 5.0},
    )
    return with_overrides(base, **sections)


def assert_complete_async_run(result, iterations: int) -> None:
    m = result.metrics
    assert result.status == "completed"
    np.testing.assert_array_equal(m["iteration"], np.arange(1, iterations + 1))
    for name in ("time", "worker", "staleness", "residual_staleness", "policy_loss", "grad_error", "correction_norm"):
        assert len(m[name]) == iterations, name
    assert np.all(np.diff(m["time"]) >= 0)
    assert set(m["worker"]) <= {0, 1}
    assert np.all(m["residual_staleness"] >= 0) and np.all(m["residual_staleness"] <= m["staleness"])
    assert np.all(np.isfinite(result.params))
    assert [e.iteration for e in result.evals] == [0, *range(20, iterations + 1, 20)]


def assert_secant_run(result) -> None:
    """A 40-update modify-safe@secant run of 2 workers: each message carried its pair, the server's
    fit covered the gap (no residual staleness: it fits the whole gap) and corrected the stale
    directions; the exact-product diagnostics are sim's only."""
    assert_complete_async_run(result, 40)
    m = result.metrics
    stale = m["staleness"] > 0
    assert stale.any() and np.all(m["residual_staleness"] == 0)
    assert np.nanmax(m["gap_coverage"][stale]) > 0.5 and m["correction_norm"][stale].max() > 0
    assert np.all(np.isnan(m["product_cosine"]))


def assert_worker_corrected_modify_run(result) -> None:
    """A 40-update modify run of 2 workers: stale directions, corrected by the workers."""
    assert_complete_async_run(result, 40)
    m = result.metrics
    assert set(m["worker"]) == {0, 1}
    assert m["staleness"].max() > 0
    # the worker pulled newer parameters before its HVP: the correction is not zero and the
    # staleness it could not see (residual) is below the staleness of theta_i
    assert np.any(m["correction_norm"] > 0)
    assert np.any(m["residual_staleness"] < m["staleness"])


def run_with_a_killed_and_a_hung_worker(run, backend: str):
    """Run 60 async updates with ``run`` (``run_mp`` or ``run_ray``): worker 0 is SIGKILLed after
    the first 20, worker 1 hangs on its 3rd job; both must be replaced and the run complete, and
    the ``died`` and ``hung`` events name the pids of the processes that died and hung. Returns the
    result and its recorded schedule."""
    first: dict[int, int] = {}  # worker -> pid of its first incarnation (from its ready event)
    killed: list[int] = []

    def on_event(e):
        if e["kind"] == "ready":
            first.setdefault(e["worker"], e["pid"])

    def on_chunk(done, record):
        if not killed:
            killed.append(first[0])
            os.kill(first[0], signal.SIGKILL)

    cfg = tiny_config(backend, train={"iterations": 60, "eval_every": 20}, workers={"timeout": 2.0})
    lines: list = []
    result = run(cfg, "async", RunHooks(on_chunk=on_chunk, on_schedule=lines.extend), on_event=on_event, hang=(1, 3))
    assert_complete_async_run(result, 60)
    kinds = [(e["kind"], e["worker"]) for e in result.events]
    assert ("died", 0) in kinds and ("hung", 1) in kinds
    restarted = {e["worker"] for e in result.events if e["kind"] == "started" and e["incarnation"] == 1}
    assert restarted == {0, 1}
    assert next(e for e in result.events if e["kind"] == "died")["pid"] == killed[0]
    assert next(e for e in result.events if e["kind"] == "hung")["pid"] == first[1]
    return cfg, result, schedule_of(lines, backend, "async", cfg)


def recorded_run(run, cfg: ExperimentConfig, scheme: str, backend: str):
    """``run(cfg, scheme)`` (``run_mp`` or ``run_ray``) with its schedule recorded: (result, schedule)."""
    lines: list = []
    result = run(cfg, scheme, RunHooks(on_schedule=lines.extend))
    return result, schedule_of(lines, backend, scheme, cfg)


def schedule_of(lines: list, backend: str, scheme: str, cfg: ExperimentConfig) -> Schedule:
    """The schedule a run directory would hold for these recorded lines (written and parsed back)."""
    return schedule.parse(schedule.encode([schedule.header(backend, scheme, cfg.workers.count, cfg.train.seed),
                                           *lines]))


def assert_replays_bit_for_bit(cfg: ExperimentConfig, scheme: str, result, recorded: Schedule):
    """The schedule re-executed in this process gives the real run's parameters and every metric
    column, bit for bit (NaNs included); returns the replay's result."""
    replayed = run_replay(cfg, scheme, recorded)
    assert replayed.status == result.status
    assert replayed.params.tobytes() == np.asarray(result.params).tobytes()
    assert list(replayed.metrics) == list(result.metrics)
    for name, column in result.metrics.items():
        assert replayed.metrics[name].tobytes() == column.tobytes(), name
    assert [e.iteration for e in replayed.evals] == [e.iteration for e in result.evals]
    return replayed


def tagged_processes(tag: str) -> list[int]:
    """Pids whose environment holds ASYNCCORR_TEST_TAG=<tag> (spawned children inherit it)."""
    needle = f"ASYNCCORR_TEST_TAG={tag}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


INTERRUPT_CONFIG = tiny_toml("interrupt", iterations=10_000_000, eval_every=50)


def interrupt_cli_run(tmp_path: Path, backend: str, started: str = "training: all 2 workers ready"):
    """Start ``asynccorr train`` on ``backend``, Ctrl-C it once training runs; return what it left.

    Returns (seconds from SIGINT to exit, exit code, stderr, pids still tagged, run dir).
    """
    config = tmp_path / "interrupt.toml"
    config.write_text(INTERRUPT_CONFIG)
    tag = uuid.uuid4().hex
    env = {**os.environ, "ASYNCCORR_TEST_TAG": tag, "PYTHONPATH": str(REPO)}
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "asynccorr", "train", "--scheme", "async", "--backend", backend,
                                 "--config", str(config), "--results", str(tmp_path / "results"), "--quiet",
                                 "--verbose"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 400
            while started not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "training never started"
                time.sleep(0.2)
            time.sleep(1.5)  # some updates
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # say where it was: its log, for the next one to read
                raise AssertionError(f"no exit 30 s after Ctrl-C; its stderr:\n{log.read_text()[-3000:]}") from None
            finally:
                elapsed = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    leftover = tagged_processes(tag)
    for _ in range(50):  # a process that is already exiting gets a moment to go
        if not leftover:
            break
        time.sleep(0.1)
        leftover = tagged_processes(tag)
    for pid in leftover:  # never leave them behind, even when the test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return elapsed, code, log.read_text(), leftover, tmp_path / "results" / "interrupt" / "async-seed0"
