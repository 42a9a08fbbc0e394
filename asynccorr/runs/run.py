"""One run on disk: train it on its backend (``backends.registry.run``) into its run directory.

The glue between the backends (pure computation) and the results layout::

    results/<experiment>/<scheme>-seed<k>/
        config.json     resolved experiment config (with the scheme and seed of this run)
        meta.json       versions, commit, host, backend, wall time (and "first_flush": the
                        wall-clock time of the first evaluation point), summary; "status":
                        "running" while training, then "completed", "diverged" (with
                        "diverged_at") or "interrupted"
        metrics.csv     one row per server update (new rows appended at every evaluation point)
        eval.csv        periodic closed-loop tracking evaluation (likewise)
        trajectory.csv  final policy on the fixed scenario
        schedule.jsonl  mp and ray: the order the server received the messages in (``asynccorr replay``)
        params.npy      final flat parameter vector (of a diverged run: before the bad update)
        checkpoint/     the two latest checkpoints (``train --resume``)
    results/<experiment>/summary.csv, summary.md   written by ``compare``

Every file is replaced atomically, so a crash leaves complete files and loses at
most one evaluation interval of metrics; a run killed outright is continued from
its latest checkpoint with ``train --resume``; an interrupted comparison is
completed with ``compare --resume`` (``studies.compare.resume_plan``).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from asynccorr.backends import schedule
from asynccorr.backends.checkpoint import Checkpoint, CheckpointError
from asynccorr.backends.protocol import OnChunk, RunHooks, RunResult, TrainingInterrupted
from asynccorr.backends.registry import BACKENDS, backend_for, run
from asynccorr.config import ExperimentConfig, to_dict
from asynccorr.learners.evaluation import EvalRecord, eval_columns
from asynccorr.runs import locks
from asynccorr.runs.checkpoints import load_latest_checkpoint, save_checkpoint
from asynccorr.runs.files import (
    CsvLog,
    ScheduleLog,
    atomic_write_bytes,
    prepare_run_dir,
    run_dir_name,
    run_meta,
    write_csv,
    write_json,
)
from asynccorr.runs.summary import summarize_run
from asynccorr.runs.tensorboard import TensorBoardLog, check_available

FINISHED = ("completed", "diverged")  # statuses of a run that has nothing left to do


class ResumeError(ValueError):
    """A run cannot be resumed (no run, no checkpoint, different config); the message says why."""


class RunFinished(Exception):
    """``--resume`` of a run that already completed or diverged: nothing to do."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after its partial results were written to ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; partial results in {run_dir}")
        self.run_dir = run_dir


class PlannedRun(NamedTuple):
    """One run of a resumed comparison and how ``compare --resume`` completes it."""

    scheme: str
    config: ExperimentConfig
    action: Literal["train", "reuse", "resume", "restart"]
    row: dict[str, Any] | None = None  # reuse: the finished run's summary row (from its meta.json)
    checkpoint: Checkpoint | None = None  # resume: where it continues from
    status: str | None = None  # an existing run's status as read (``runs.locks.run_status``: "dead" if its owner is gone)

def run_dir_for(results_root: Path, config: ExperimentConfig, scheme: str) -> Path:
    return Path(results_root) / config.name / run_dir_name(scheme, config.train.seed)


def write_eval(run_dir: Path, evals: Sequence[EvalRecord]) -> None:
    write_csv(run_dir / "eval.csv", eval_columns(evals))


def write_progress(run_dir: Path, metrics: dict[str, np.ndarray], evals: Sequence[EvalRecord],
                   log: CsvLog | None = None) -> None:
    """The metrics and evaluations so far (called at every evaluation point while training: the
    metrics through ``log``, which appends the new rows, and at the end in full)."""
    if log is None:
        write_csv(run_dir / "metrics.csv", metrics)
    else:
        log.write(metrics)
    write_eval(run_dir, evals)


def write_run(run_dir: Path, config: ExperimentConfig, scheme: str, result: RunResult, meta: dict) -> None:
    """Every file of a finished (or diverged, or interrupted) run; ``meta.json`` last."""
    write_json(run_dir / "config.json", config_record(config, scheme))
    write_progress(run_dir, result.metrics, result.evals)
    traj = result.trajectory
    columns = {name: np.asarray(getattr(traj, name)) for name in traj._fields if name != "action"}
    action = np.asarray(traj.action)
    for i in range(action.shape[1]):
        columns[f"action_{i}"] = action[:, i]
    write_csv(run_dir / "trajectory.csv", columns)
    buf = io.BytesIO()
    np.save(buf, result.params)
    atomic_write_bytes(run_dir / "params.npy", buf.getvalue())
    write_json(run_dir / "meta.json", meta)


def config_record(config: ExperimentConfig, scheme: str) -> dict[str, Any]:
    """What ``config.json`` holds: the scheme and the resolved config, as plain JSON values."""
    return json.loads(json.dumps({"scheme": scheme, **to_dict(config)}))


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the config record without its ``report`` section (how a
    comparison summarises runs, not what a run computes)."""
    return {k: v for k, v in record.items() if k != "report"}


def first_difference(stored: Any, current: Any, prefix: str = "") -> str | None:
    """Dotted name of the first field where two config records differ (in the current record's order)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in stored if k not in current)]:
            name = f"{prefix}{key}"
            if key not in stored or key not in current:
                return name
            if (found := first_difference(stored[key], current[key], name + ".")) is not None:
                return found
        return None
    return None if stored == current else prefix.rstrip(".")


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_same_run(run_dir: Path, config: ExperimentConfig, scheme: str) -> dict[str, Any]:
    """Raise ``ResumeError`` unless ``run_dir`` holds a run of exactly this config and
    scheme (naming the first differing field); returns its ``meta.json`` (``{}`` if unreadable)."""
    stored = _read_json_dict(run_dir / "config.json")
    if stored is None:
        raise ResumeError(f"no run to resume in {run_dir} (no readable config.json)")
    current = config_record(config, scheme)
    if (field := first_difference(_identity(stored), _identity(current))) is not None:
        raise ResumeError(f"cannot resume {run_dir}: the config differs in {field} "
                          f"(stored {_lookup(stored, field)!r}, now {_lookup(current, field)!r})")
    return _read_json_dict(run_dir / "meta.json") or {}


def resume_checkpoint(run_dir: Path, config: ExperimentConfig, scheme: str,
                      on_skip: Callable[[str], None] | None = None) -> Checkpoint:
    """The checkpoint to continue ``run_dir`` from, after checking that it is the same run.

    Raises ``ResumeError`` (no run, a different config, no readable checkpoint) or
    ``RunFinished`` (the run completed or diverged: nothing to resume).
    """
    status = check_same_run(run_dir, config, scheme).get("status")
    if status in FINISHED:
        raise RunFinished(f"run {run_dir} already finished (status {status}); nothing to resume")
    try:
        checkpoint = load_latest_checkpoint(run_dir, on_skip)
    except CheckpointError as exc:
        raise ResumeError(str(exc)) from None
    if checkpoint is None:
        raise ResumeError(f"no checkpoint in {run_dir} to resume from "
                          f"(train.checkpoint_every = {config.train.checkpoint_every})")
    return checkpoint


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part, "<missing>") if isinstance(value, dict) else "<missing>"
    return value


Execute = Callable[[ExperimentConfig, str, RunHooks], RunResult]  # trains one run in memory


def train_run(
    config: ExperimentConfig,
    scheme: str,
    results_root: Path,
    overwrite: bool = False,
    on_chunk: OnChunk | None = None,
    resume: bool | Checkpoint = False,
    tensorboard: bool = False,
    execute: tuple[str, Execute, dict[str, Any]] | None = None,
) -> tuple[Path, RunResult, dict[str, Any]]:
    """Train one run and write its directory; returns (run dir, result, summary row); with
    ``tensorboard`` also its event files, as the metrics are (``runs.tensorboard``).

    While it trains, ``meta.json`` says ``"status": "running"``, the metrics so far are
    appended at every evaluation point and checkpoints are saved when due. With
    ``resume`` the run continues from its latest checkpoint (see ``resume_checkpoint``), or
    from the given one. ``execute = (backend name, run function, meta fields)`` trains it with
    something other than its backend (a replay: ``runs.replay``). A real backend's schedule is
    written to ``schedule.jsonl`` as it trains (``backends.schedule``).
    Ctrl-C writes the partial run (status ``interrupted``) and raises ``RunInterrupted``.
    """
    run_dir = run_dir_for(results_root, config, scheme)
    backend = backend_for(config, scheme).name if execute is None else execute[0]
    if resume is not False and not backend_for(config, scheme).resumable:
        able = " or ".join(repr(b.name) for b in BACKENDS.values() if b.workers and b.resumable)
        raise ResumeError(f"cannot resume {run_dir}: resume needs workers.backend = {able} (an {backend} run "
                          "cannot continue from a checkpoint); start it again with --overwrite")
    owner = locks.acquire(run_dir, take_over=overwrite or resume is not False)
    try:
        return _train_owned(run_dir, backend, config, scheme, overwrite, on_chunk, resume, tensorboard,
                            execute or (backend, run, {}))
    finally:
        locks.release(run_dir, owner)


def _train_owned(run_dir: Path, backend: str, config: ExperimentConfig, scheme: str, overwrite: bool,
                 on_chunk: OnChunk | None, resume: bool | Checkpoint, tensorboard: bool,
                 execute: tuple[str, Execute, dict[str, Any]]) -> tuple[Path, RunResult, dict[str, Any]]:
    """``train_run`` once this process owns the run directory."""
    if tensorboard:
        check_available()  # before anything is written
    if isinstance(resume, Checkpoint):
        checkpoint: Checkpoint | None = resume
    elif resume:
        checkpoint = resume_checkpoint(run_dir, config, scheme)
    else:
        checkpoint = None
        prepare_run_dir(run_dir, overwrite)
        write_json(run_dir / "config.json", config_record(config, scheme))
    _, function, extra = execute
    write_json(run_dir / "meta.json", run_meta(backend, scheme, config.train.seed, {
        "experiment": config.name, "status": "running", **extra,
        **({"resumed_from": checkpoint.iteration} if checkpoint else {})}))
    metrics_log = CsvLog(run_dir / "metrics.csv")
    events = TensorBoardLog(run_dir) if tensorboard else None

    def flush(metrics: dict[str, np.ndarray], evals: Sequence[EvalRecord]) -> None:
        write_progress(run_dir, metrics, evals, metrics_log)
        if events is not None:
            events.write(metrics, eval_columns(evals))

    hooks = RunHooks(
        on_chunk=on_chunk,
        on_flush=flush,
        on_checkpoint=lambda ckpt: save_checkpoint(run_dir, ckpt),
        resume=checkpoint,
        on_schedule=ScheduleLog(run_dir / schedule.FILE, schedule.header(backend, scheme, config.workers.count,
                                                                           config.train.seed),
                                resumed_at=checkpoint.iteration if checkpoint else None),
    )
    start = time.perf_counter()
    try:
        try:
            result = function(config, scheme, hooks)
        except TrainingInterrupted as exc:
            _finish(run_dir, config, scheme, backend, exc.result, time.perf_counter() - start, checkpoint, extra)
            if events is not None:
                events.write(exc.result.metrics, eval_columns(exc.result.evals))
            raise RunInterrupted(run_dir) from None
        summary = _finish(run_dir, config, scheme, backend, result, time.perf_counter() - start, checkpoint, extra)
        if events is not None:
            events.write(result.metrics, eval_columns(result.evals))
    finally:
        if events is not None:
            events.close()
    return run_dir, result, summary


def _finish(run_dir: Path, config: ExperimentConfig, scheme: str, backend: str, result: RunResult, wall: float,
            checkpoint: Checkpoint | None, extra: dict[str, Any]) -> dict[str, Any]:
    summary = summarize_run(scheme, config, result, wall)
    meta = run_meta(backend, scheme, config.train.seed, {
        "experiment": config.name, "wall_time_s": round(wall, 3), "summary": summary, **extra,
        "status": result.status, "diverged_at": result.diverged_at, "dropped": result.dropped,
        "final_tracking": result.evals[-1].summary._asdict(),
        **({"workers_replaced": sum(e["kind"] in ("died", "hung") for e in result.events),
            "worker_events": list(result.events)} if result.events else {}),
        **({"resumed_from": checkpoint.iteration} if checkpoint else {}),
        **({"first_flush": result.first_flush._asdict()} if result.first_flush else {}),
    })
    write_run(run_dir, config, scheme, result, meta)
    return summary
