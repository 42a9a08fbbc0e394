"""The run protocol: what every trainer and backend produces and how it reports.

One home for the concepts every way of training shares (the sequential trainer,
``sim``, and the real backends' server role):

* ``RunResult``: what a run leaves (parameters, per-update metrics, evaluations,
  the final tracking trajectory, its status);
* ``RunHooks``: how a run reports to the runs layer while it trains (progress,
  metric flushes, checkpoints) and where it resumes from;
* ``TrainingInterrupted``: Ctrl-C, carrying everything computed so far;
* divergence: ``first_diverged_row`` is the one definition (also used by the
  plots and the regime study to read a run back);
* ``Recorder``: the evaluation-point cycle. Metrics stay on the device between
  evaluation points; at each one the trainer hands the recorder the new rows,
  which it checks for divergence, evaluates the policy, reports progress, takes a
  checkpoint when due and flushes every row and evaluation so far. It also stamps the
  wall-clock moment the first rows reached it (``RunResult.first_flush``), the honest
  "first update" signal of start-up benchmarks: a jitted chunk has no per-update clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from asynccorr.backends.checkpoint import Checkpoint
from asynccorr.config import ExperimentConfig
from asynccorr.learners.base import Learner
from asynccorr.learners.evaluation import EvalRecord, Trajectory, evaluate

Columns = dict[str, np.ndarray]

BASE_COLUMNS = ("iteration", "time", "worker", "staleness")  # every run's first metric columns, in this order


class FirstFlush(NamedTuple):
    """The first evaluation point of a run (of this process, on resume): its wall-clock time
    (``time.time()``, comparable with a parent process's clock) and the server updates done by then
    (``min(eval_every, iterations)`` for a fresh run), their metrics already on the host."""

    unix_time: float
    updates: int


class RunResult(NamedTuple):
    params: np.ndarray
    metrics: Columns  # per iteration
    evals: list[EvalRecord]
    trajectory: Trajectory  # final closed-loop tracking
    status: str = "completed"  # "completed", "diverged" or "interrupted" (Ctrl-C)
    diverged_at: int | None = None  # first server update whose metrics were non-finite or beyond the bound
    dropped: int = 0  # messages a drop-stale scheme discarded (not counted as iterations)
    events: tuple = ()  # real backends: worker events (dicts: started, ready, died, hung, replaced)
    timing: dict | None = None  # real backends: mean seconds per job phase and per server update (as measured)
    first_flush: FirstFlush | None = None  # when the first evaluation point's rows reached the recorder


_CTRL_C = threading.Event()  # set by ``interrupt_handler``: Ctrl-C was pressed in this process


def interrupt_handler(signum: int, frame: Any) -> None:
    """SIGINT: remember it, then raise ``KeyboardInterrupt`` as Python's default handler does. Python
    drops an exception raised inside a garbage-collection callback (JAX runs one after every
    collection), so the run loops also call ``check_interrupt`` and raise it again there."""
    _CTRL_C.set()
    raise KeyboardInterrupt


def clear_interrupt() -> None:
    """Forget an earlier Ctrl-C (a command starting afresh in a process that saw one)."""
    _CTRL_C.clear()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed (its first exception may have been lost)."""
    if _CTRL_C.is_set():
        raise KeyboardInterrupt


class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped a run: carries everything computed so far.

    Every backend raises it from ``KeyboardInterrupt`` after stopping its workers,
    with ``result.status == "interrupted"``; the runs layer writes the partial run
    and re-raises ``KeyboardInterrupt``.
    """

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"interrupted after {len(result.metrics.get('iteration', ()))} server updates")
        self.result = result


OnChunk = Callable[[int, EvalRecord], None]  # progress: (updates done, the evaluation at that point)


class RunHooks(NamedTuple):
    """How a backend reports to the runs layer while it trains (every field optional).

    * ``on_chunk(done, record)``: progress, after each periodic evaluation;
    * ``on_flush(metrics, evals)``: every metric row and evaluation so far, at each
      evaluation point (the logging interval), so a crash loses at most one interval;
    * ``on_checkpoint(checkpoint)``: the backend's whole state, at the first evaluation
      point after each ``train.checkpoint_every`` updates;
    * ``resume``: a checkpoint to continue from instead of starting afresh;
    * ``on_schedule(lines)``: a real backend's schedule lines (``backends.schedule``: the
      messages received since the last call, then the end line), at each evaluation point
      and at the end.
    """

    on_chunk: OnChunk | None = None
    on_flush: Callable[[Columns, list[EvalRecord]], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    resume: Checkpoint | None = None
    on_schedule: Callable[[list], None] | None = None


NO_HOOKS = RunHooks()  # a run with no progress, no files and no resume (runs in memory)


# ----------------------------------------------------------------------------- divergence

DIVERGENCE_COLUMNS = ("policy_loss", "value_loss", "direction_norm", "update_norm")
BOUNDED_COLUMNS = ("policy_loss", "value_loss")


def first_diverged_row(columns: Mapping[str, Any], bound: float) -> int | None:
    """Index of the first metric row that is non-finite (losses, direction or update norm) or
    whose |policy loss| or |value loss| exceeds ``bound``; None if every row is healthy.

    A non-finite update norm means the parameters left the finite range at that update; a
    loss at update k is measured at the parameters after k - 1 updates.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    bad = np.zeros(n, bool)
    for name in DIVERGENCE_COLUMNS:
        if name in columns:
            bad |= ~np.isfinite(np.asarray(columns[name], np.float64))
    for name in BOUNDED_COLUMNS:
        if name in columns:
            with np.errstate(invalid="ignore"):
                bad |= np.abs(np.asarray(columns[name], np.float64)) > bound
    return int(np.argmax(bad)) if bad.any() else None


def diverged(status: str | None, columns: Mapping[str, Any], bound: float) -> bool:
    """The one reading of "diverged", in memory and on disk: the run stopped as diverged
    (``status``), or one of its metric rows is what ``first_diverged_row`` flags."""
    return status == "diverged" or first_diverged_row(columns, bound) is not None


# ----------------------------------------------------------------------------- metric columns

def concat_columns(a: Columns, b: Columns) -> Columns:
    """Append rows ``b`` to ``a`` column by column (``a`` may be empty)."""
    if not a:
        return dict(b)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def head_columns(columns: Columns, n: int) -> Columns:
    return {k: v[:n] for k, v in columns.items()}


# ----------------------------------------------------------------------------- evaluation points

def is_eval_point(done: int, config: ExperimentConfig) -> bool:
    """Evaluation (and metrics flush) after every ``eval_every`` updates and at the end."""
    return done % config.train.eval_every == 0 or done == config.train.iterations


def checkpoint_due(done: int, last: int, config: ExperimentConfig) -> bool:
    """At an evaluation point ``done``: whether a ``checkpoint_every`` boundary was passed since
    the checkpoint at ``last`` (never at the end of the run, which writes the final results)."""
    every = config.train.checkpoint_every
    return every > 0 and done < config.train.iterations and done // every > last // every


def diverged_result(learner: Learner, params: np.ndarray, metrics: Columns,
                    evals: list[EvalRecord], at: int, dropped: int = 0) -> RunResult:
    """The result of a run that diverged at update ``at``: ``params`` are those before that update
    (after ``at - 1`` updates), evaluated once more unless already evaluated."""
    summary, traj = evaluate(learner, params)
    if evals[-1].iteration != at - 1:
        evals = [*evals, EvalRecord(at - 1, summary)]
    return RunResult(params, metrics, evals, traj, status="diverged", diverged_at=at, dropped=dropped)


class Recorder:
    """The evaluation-point cycle of one run: the record so far and what happens at each point.

    ``metrics`` and ``evals`` are the rows and evaluations flushed so far (restored from a
    checkpoint on resume); ``last_checkpoint`` the update of the latest checkpoint.
    """

    def __init__(self, config: ExperimentConfig, learner: Learner, hooks: RunHooks,
                 metrics: Columns | None = None, evals: list[EvalRecord] | None = None,
                 done: int = 0) -> None:
        self.config, self.learner, self.hooks = config, learner, hooks
        self.metrics: Columns = dict(metrics or {})
        self.evals: list[EvalRecord] = list(evals or [])
        self.last_checkpoint = done
        self.first_flush: FirstFlush | None = None

    def evaluate_initial(self, params: jax.Array) -> None:
        """The evaluation before the first update (a resumed run has it already)."""
        if not self.evals:
            self.evals.append(EvalRecord(0, evaluate(self.learner, params)[0]))

    def flush(self, new: Columns, params: jax.Array, before: Callable[[int], jax.Array],
              dropped: Callable[[int], int] = lambda _: 0,
              snapshot: Callable[[], Checkpoint] | None = None) -> RunResult | None:
        """At an evaluation point, with the rows ``new`` since the last one and the parameters
        ``params`` after them: check, evaluate, report, checkpoint when due and flush.

        On divergence nothing is recorded and the diverged result is returned: the rows up
        to and including the first bad one, the parameters ``before(row)`` that update and
        ``dropped(row)`` the messages dropped by then.
        """
        if self.first_flush is None:
            self.first_flush = FirstFlush(time.time(), int(new["iteration"][-1]))
        bad = first_diverged_row(new, self.config.train.divergence_loss)
        if bad is not None:
            return diverged_result(self.learner, np.asarray(before(bad)),
                                   concat_columns(self.metrics, head_columns(new, bad + 1)), self.evals,
                                   int(new["iteration"][bad]), dropped(bad))._replace(first_flush=self.first_flush)
        self.metrics = concat_columns(self.metrics, new)
        done = int(new["iteration"][-1])
        record = EvalRecord(done, evaluate(self.learner, params)[0])
        self.evals.append(record)
        hooks = self.hooks
        if hooks.on_chunk is not None:
            hooks.on_chunk(done, record)
        if snapshot is not None and hooks.on_checkpoint is not None and \
                checkpoint_due(done, self.last_checkpoint, self.config):
            hooks.on_checkpoint(snapshot())
            self.last_checkpoint = done
        if hooks.on_flush is not None:
            hooks.on_flush(self.metrics, self.evals)
        return None

    def result(self, params: jax.Array, status: str = "completed", extra: Columns | None = None,
               dropped: int = 0, events: tuple = ()) -> RunResult:
        """The run's result at ``params``: every flushed row plus ``extra`` (an interrupted
        run's rows since the last evaluation point), and the final tracking trajectory."""
        metrics = concat_columns(self.metrics, extra) if extra else self.metrics
        _, trajectory = evaluate(self.learner, params)
        return RunResult(np.asarray(params), metrics, self.evals, trajectory, status=status, dropped=dropped,
                         events=events, first_flush=self.first_flush)
