"""The server role of every backend: apply messages, keep the books.

Transport-agnostic and clock-agnostic (Sample Factory's idea: the same components in
serial and in parallel mode). ``mp`` and ``ray`` hand every ``worker.Message`` they
receive to ``ServerRole.receive``; ``sim`` hands it the messages its simulated workers
computed with the same worker code, at the simulated moment the server takes each one
off its queue (``receive(msg, at=...)``), and its synchronous rounds to
``apply_round``. The role owns the parameter server's state (``update.ServerState``)
and its version ``k``, measures each message's staleness ``k - i`` and residual
staleness, applies the scheme's rule (``asynccorr.backends.update.make_update``), records one
metric row per update and, at every evaluation point, hands the rows to the run
protocol's ``Recorder`` (divergence, evaluation, checkpoint, flush).

``sync`` on real workers collects one message per worker at the current version and
applies their average (a direction from an older version, a replaced worker's say, is
discarded). A ``drop-stale`` scheme discards a message staler than
``schemes.staleness_bound`` (no update, no version bump).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.backends.checkpoint import Checkpoint, restore_run, run_checkpoint
from asynccorr.backends.protocol import BASE_COLUMNS, Columns, Recorder, RunHooks, RunResult, is_eval_point
from asynccorr.backends.schedule import Entry, end_line
from asynccorr.backends.update import (
    ServerState,
    Shipped,
    UpdateMetrics,
    initial_server,
    make_round_update,
    make_update,
)
from asynccorr.backends.worker import Message
from asynccorr.config import ExperimentConfig
from asynccorr.learners.base import Losses
from asynccorr.learners.build import build
from asynccorr.learners.evaluation import EvalRecord
from asynccorr.schemes.registry import check_scheme_fits, correction_for, get_scheme, resolve

log = logging.getLogger("asynccorr.backends")

WORKER_COLUMNS = ("residual_staleness", "compute_time")  # every backend's columns after the base ones


class ServerRole:
    """The parameter server of one run.

    ``measure``: evaluate the fresh direction for the gradient error (``sim`` always
    does; the real backends when ``workers.measure_grad_error``). ``snapshot``: the backend's whole state as a
    checkpoint, taken at evaluation points when due (``sim``; real backends cannot be
    reproduced from one). ``restore`` continues from a checkpointed server state.
    """

    def __init__(self, config: ExperimentConfig, scheme_name: str, hooks: RunHooks | None = None,
                 measure: bool | None = None, diagnose: bool = False, record: bool = False) -> None:
        self.config = config
        self.scheme = get_scheme(resolve(scheme_name, config.schemes.protocol))
        self.learner, self.optimizer = build(config)
        check_scheme_fits(self.scheme, self.learner.num_params, config.schemes)
        self.correction = correction_for(self.scheme.name, config)
        self.server: ServerState = initial_server(self.learner, self.optimizer, self.correction)(
            np.int32(config.train.seed))
        self.version = 0  # k: bumped by every update (a dropped message does not bump it)
        self.iteration = 0  # server updates applied
        self.dropped = 0  # messages a drop-stale scheme discarded
        self.count = config.workers.count
        self.columns = WORKER_COLUMNS
        self.measure = config.workers.measure_grad_error if measure is None else measure
        self.diagnose = diagnose  # secant: compare each fit with the exact product (sim; a diagnostic)
        self.replies: dict[int, np.ndarray] = {}  # secant "applied" tangent: the update applied to each worker's
        self.wants_replies = self.scheme.protocol == "secant" and config.schemes.secant_tangent == "applied"
        self.hooks = hooks or RunHooks()
        self.recorder = Recorder(config, self.learner, self.hooks)
        self.snapshot: Callable[[], Checkpoint] | None = None
        self.final: RunResult | None = None  # set when the run diverged
        # since the last evaluation point, one entry per update (appended in this order):
        self.before: list[jax.Array] = []  # server parameters before the update
        self.rows: list[tuple] = []  # iteration, time, worker, staleness, *the extra columns
        self.pending: list[UpdateMetrics] = []  # on the device until the next flush
        self.drops: list[int] = []  # dropped count when the update was applied
        self.round: dict[int, Message] = {}  # sync on real workers: this version's directions so far
        self.phase_seconds: dict[str, list[float]] = {}  # real workers' measured phase times (sums, counts)
        self.server_seconds: list[float] = [0.0, 0]  # the server's measured time per message (sum, count)
        self.received = 0  # worker messages received (gradient throughput)
        self.events: list[dict[str, Any]] = []
        self.record = record  # a real backend: keep the schedule (``backends.schedule``) for ``hooks.on_schedule``
        self.schedule: list[Entry] = []  # its entries since the last evaluation point
        self.t0: float | None = None
        self.clock_offset = 0.0  # a resumed real run: the server time its checkpoint was taken at
        self.incarnations: dict[int, int] = {}  # a real run: each worker's newest incarnation (the supervisor's)
        self._host: tuple[int, np.ndarray] | None = None

    def restore(self, server: ServerState, version: int, iteration: int, dropped: int, metrics: Columns,
                evals: list[EvalRecord]) -> None:
        """Continue from a checkpointed state (everything up to an evaluation point)."""
        self.server, self.version, self.iteration, self.dropped = server, version, iteration, dropped
        self.recorder = Recorder(self.config, self.learner, self.hooks, metrics, evals, done=iteration)

    # ------------------------------------------------------------------ a real run's checkpoints

    def real_identity(self, backend: str) -> dict[str, Any]:
        """What a real run's checkpoint must say to be continued by this run."""
        return {"backend": backend, "scheme": self.scheme.name, "workers": self.count}

    def real_checkpoint(self, backend: str) -> Checkpoint:
        """A real run's state at an evaluation point: the server's (its state, version, counters, clock,
        the metrics and evaluations so far) and each worker's newest incarnation. The workers' own state
        lives in their processes: a run continued from it starts new incarnations of them."""
        info = {"version": self.version, "dropped": self.dropped, "clock": self.now(),
                "incarnations": {str(w): i for w, i in sorted(self.incarnations.items())}}
        return run_checkpoint(self.iteration, self.real_identity(backend), {"server": self.server}, self.metrics,
                              self.evals, info)

    def restore_real(self, checkpoint: Checkpoint, backend: str) -> dict[int, int]:
        """Continue a real run from ``real_checkpoint``'s checkpoint; returns each worker's first
        incarnation in this run (one past its newest before)."""
        trees, metrics, evals = restore_run(checkpoint, self.real_identity(backend), {"server": self.server})
        info = checkpoint.info
        self.restore(trees["server"], int(info["version"]), checkpoint.iteration, int(info["dropped"]), metrics, evals)
        self.clock_offset = float(info["clock"])
        before = {int(w): int(i) for w, i in info["incarnations"].items()}
        return {w: before.get(w, -1) + 1 for w in range(self.count)}

    # ------------------------------------------------------------------ bookkeeping

    @property
    def params(self) -> np.ndarray:
        """theta_k on the host (fetched once per version: what a backend publishes)."""
        if self._host is None or self._host[0] != self.version:
            self._host = (self.version, np.asarray(self.server.params))
        return self._host[1]

    @property
    def metrics(self) -> Columns:
        return self.recorder.metrics

    @property
    def evals(self) -> list[EvalRecord]:
        return self.recorder.evals

    @property
    def done(self) -> bool:
        return self.iteration >= self.config.train.iterations or self.final is not None

    def now(self) -> float:
        return self.clock_offset + (0.0 if self.t0 is None else time.perf_counter() - self.t0)

    def start_clock(self) -> None:
        """Time 0: every worker is ready (start-up and compilation are not training time)."""
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def event(self, kind: str, worker: int, **fields: Any) -> None:
        record = {"time": round(self.now(), 3), "iteration": self.iteration, "kind": kind, "worker": worker,
                  **fields}
        self.events.append(record)
        level = logging.INFO if kind in ("started", "ready") else logging.WARNING
        log.log(level, "worker %d %s at update %d %s", worker, kind, self.iteration,
                " ".join(f"{k}={v}" for k, v in fields.items()))

    def warm_up(self) -> None:
        """Compile the update on dummy inputs (result discarded) while the workers start."""
        msg = dummy_message(self.scheme, self.learner, self.server.params, self.measure)
        if self.scheme.synchronous:
            out = self._round_update(self.server, stack([msg] * self.count))
        else:
            out = self._update(self.server, shipped(msg), np.int32(0))
        jax.block_until_ready(out)

    def evaluate_initial(self) -> None:
        self.recorder.evaluate_initial(self.server.params)

    # ------------------------------------------------------------------ the update functions

    @functools.cached_property
    def _update(self) -> Callable[..., tuple[ServerState, UpdateMetrics]]:
        return make_update(self.learner, self.optimizer, self.scheme, self.correction, self.measure,
                           self.diagnose)

    @functools.cached_property
    def _round_update(self) -> Callable[..., tuple[ServerState, UpdateMetrics]]:
        return make_round_update(self.learner, self.optimizer, self.scheme, self.correction, self.measure)

    # ------------------------------------------------------------------ messages

    def admit(self, version: int) -> int | None:
        """The staleness of a message computed at ``version``, or None when the scheme drops it."""
        staleness = self.version - version
        if self.scheme.drops_stale and staleness > self.config.schemes.staleness_bound:
            self.dropped += 1
            return None
        return staleness

    def residual(self, msg: Message) -> int:
        """The updates the correction could not see: none for a server-side product, the secant fit
        (the server fits the whole gap; how well, ``gap_coverage`` says) or a fresh direction, else
        those since the version its product (or its direction) used."""
        if self.scheme.compute == "sample" or self.scheme.protocol in ("server", "oracle", "secant"):
            return 0
        return self.version - msg.version_k

    def receive(self, msg: Message, at: float | None = None, flush: bool = True) -> bool:
        """Apply (or, for sync, collect) one message at time ``at`` (default: the wall clock),
        flushing at evaluation points unless ``flush`` is False (``sim`` flushes once its own
        state is consistent); True when the parameters changed."""
        self.received += 1
        if self.done:
            return False
        at = self.now() if at is None else at
        self._record_phases(msg)
        if self.scheme.synchronous:
            if msg.version != self.version:
                self._log(msg, at, "late")
                return False
            self.round[msg.worker] = msg
            if len(self.round) < self.count:
                self._log(msg, at, "held")
                return False
            msgs = [self.round[i] for i in sorted(self.round)]
            self.round.clear()
            self._log(msg, at, "round")
            self.apply_round(msgs, at)
        else:
            staleness = self.admit(msg.version)
            if staleness is None:
                self._log(msg, at, "dropped")
                return False
            self._log(msg, at, "applied")
            self._apply(lambda s: self._update(s, shipped(msg), np.int32(staleness)), at, msg.worker, staleness,
                        (self.residual(msg), msg.compute_time))
            if self.wants_replies:
                self.replies[msg.worker] = np.asarray(self.server.params) - np.asarray(self.before[-1])
        if flush:
            self.flush_if_due()
        return True

    def _log(self, msg: Message, at: float, outcome: str) -> None:
        """One schedule entry (a real backend's run records its schedule)."""
        if self.record:
            self.schedule.append(Entry(msg.worker, msg.incarnation, msg.job, msg.version, msg.version_k, outcome,
                                       float(at), float(msg.compute_time), tuple(map(float, msg.phase_times)),
                                       float(msg.pulled), float(msg.lead)))

    def flush_schedule(self, end: dict[str, Any] | None = None) -> None:
        """The schedule entries so far (and the end line, if given) to ``hooks.on_schedule``."""
        if self.record and self.hooks.on_schedule is not None and (self.schedule or end is not None):
            lines: list = [*self.schedule, *([end] if end is not None else [])]
            self.schedule = []
            self.hooks.on_schedule(lines)

    def _record_phases(self, msg: Message) -> None:
        names = [p for p in self.scheme.phases if p != "pull"]
        for name, seconds in zip(names, msg.phase_times):
            acc = self.phase_seconds.setdefault(name, [0.0, 0])
            acc[0] += seconds
            acc[1] += 1

    def record_server_time(self, seconds: float) -> None:
        """A real backend's measured time for one message (receive, update, publish)."""
        self.server_seconds[0] += seconds
        self.server_seconds[1] += 1

    def timing(self) -> dict[str, float] | None:
        """Mean measured seconds per job phase and per server message (real backends), else None."""
        if not self.phase_seconds and not self.server_seconds[1]:
            return None
        out = {name: total / count for name, (total, count) in self.phase_seconds.items() if count}
        if self.server_seconds[1]:
            out["server"] = self.server_seconds[0] / self.server_seconds[1]
        return out

    def apply_round(self, msgs: list[Message], at: float, residual: int = 0) -> None:
        """One synchronous round: the N workers' messages, averaged. ``sim`` flushes after it."""
        staleness = self.version - msgs[0].version
        self._apply(lambda s: self._round_update(s, stack(msgs)), at, -1, staleness,
                    (residual, float(np.mean([m.compute_time for m in msgs]))))

    def _apply(self, update: Callable[[ServerState], tuple[ServerState, UpdateMetrics]], at: float, worker: int,
               staleness: int, extra: tuple) -> None:
        """Run one update and record it. The order of the appends keeps ``partial`` consistent
        whatever line a Ctrl-C interrupts."""
        self.before.append(self.server.params)
        self.server, metrics = update(self.server)
        self.version += 1
        self.iteration += 1
        self.rows.append((self.iteration, at, worker, staleness, *extra))
        self.pending.append(metrics)
        self.drops.append(self.dropped)

    # ------------------------------------------------------------------ evaluation points

    def flush_if_due(self) -> None:
        """At an evaluation point: the rows since the last one to the recorder (which checks them for
        divergence, evaluates, checkpoints when due and flushes)."""
        if not self.pending or not is_eval_point(self.iteration, self.config):
            return
        new = self._columns(self.rows, jax.device_get(self.pending))
        before, drops = self.before, self.drops
        self.rows, self.pending, self.before, self.drops = [], [], [], []
        self.final = self.recorder.flush(new, self.server.params, before=lambda b: before[b],
                                         dropped=lambda b: drops[b], snapshot=self.snapshot)
        self.flush_schedule()

    def _columns(self, rows: list[tuple], fetched: list[UpdateMetrics]) -> Columns:
        names = (*BASE_COLUMNS, *self.columns)
        dtypes = {"time": np.float64, "compute_time": np.float64}
        columns: Columns = {name: np.array([r[j] for r in rows], dtypes.get(name, np.int64))
                            for j, name in enumerate(names)}
        for name in UpdateMetrics._fields:
            columns[name] = np.array([getattr(m, name) for m in fetched], np.float64)
        return columns

    # ------------------------------------------------------------------ result

    def result(self, status: str = "completed") -> RunResult:
        """The run's result: completed, diverged (as the recorder found it) or, after Ctrl-C,
        ``status = "interrupted"`` with every update recorded so far."""
        events = tuple(self.events)
        if self.final is not None:
            self.flush_schedule(end_line("diverged", self.final.diverged_at or 0, self.final.dropped))
            return self.final._replace(events=events, timing=self.timing())
        self.evaluate_initial()
        n = min(len(self.rows), len(self.pending))
        extra = self._columns(self.rows[:n], jax.device_get(self.pending[:n])) if n or not self.metrics else None
        params = self.before[n] if n < len(self.before) else self.server.params
        dropped = self.drops[n - 1] if 0 < n <= len(self.drops) else self.dropped
        self.flush_schedule(end_line(status, self.iteration - len(self.rows) + n, dropped))
        return self.recorder.result(params, status, extra=extra, dropped=dropped, events=events)._replace(
            timing=self.timing())


# ----------------------------------------------------------------------------- messages as arrays


def shipped(msg: Message) -> Shipped:
    """The arrays a message carries, as the update rule takes them."""
    return Shipped(msg.direction, msg.gap_product, msg.params, msg.batch,
                   Losses(np.float32(msg.policy_loss), np.float32(msg.value_loss))
                   if isinstance(msg.policy_loss, float) else Losses(msg.policy_loss, msg.value_loss),
                   msg.tangent, msg.tangent_product)


def stack(msgs: list[Message]) -> Shipped:
    """N messages' arrays stacked on a leading axis (a synchronous round)."""
    rows = [shipped(m) for m in msgs]
    return jax.tree.map(lambda *xs: None if xs[0] is None else jnp.stack([jnp.asarray(x) for x in xs]), *rows,
                        is_leaf=lambda x: x is None)


def dummy_message(scheme: Any, learner: Any, params: jax.Array, measure: bool) -> Message:
    """A message with the arrays a real worker of ``scheme`` ships, zero-filled (to compile)."""
    from asynccorr.backends.worker import ships

    n = params.size
    ship_batch, ship_params = ships(scheme, measure)
    batch = None
    if ship_batch:
        key = jax.random.PRNGKey(0)
        sampler = jax.eval_shape(learner.sampler_init, key)
        shapes, _ = jax.eval_shape(learner.sample, key, sampler, params)
        batch = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    has_direction = scheme.compute not in ("sample", "dense") and scheme.protocol != "oracle"
    secant = scheme.protocol == "secant"
    has_gap = scheme.protocol is not None and scheme.protocol not in ("server", "oracle", "secant")
    zeros = np.zeros((n,), np.float32)
    return Message(0, 0, 0, zeros if has_direction else None, zeros if has_gap else None, batch,
                   0.0, 0.0, 0.0, zeros if ship_params else None, (), zeros if secant else None,
                   zeros if secant else None)
