"""The server role of the real backends (``mp``, ``ray``): apply messages, keep the books.

Transport-agnostic: a backend hands every ``worker.Message`` it receives to
``ServerRole.receive``; the role applies it with the scheme's correction
(``server.make_message_update``), bumps the version, calls ``publish(theta,
version)`` so the backend can ship the new parameters, records the per-update
metrics and evaluates every ``train.eval_every`` updates.

``sync``: a round collects one direction per worker, all computed at the current
version, and applies their average; a direction from an older version (a
replaced worker's, say) is discarded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.backends.worker import Message
from asynccorr.config import ConfigError, ExperimentConfig
from asynccorr.evaluation import evaluate
from asynccorr.learner import Losses
from asynccorr.schemes import correction_for, get_scheme
from asynccorr.server import UpdateMetrics, init_server, make_message_update, make_sync_message_update
from asynccorr.trainer import (
    EvalRecord,
    RunHooks,
    RunResult,
    build,
    diverged_result,
    first_diverged_row,
    is_eval_point,
)

log = logging.getLogger("asynccorr.backends")


def check_real_backend_scheme(scheme_name: str, backend: str) -> None:
    if get_scheme(scheme_name).compute == "dense":
        raise ConfigError(f"scheme {scheme_name} (a dense-Hessian oracle) runs on workers.backend = 'sim' only, "
                          f"not {backend!r}; use scheme modify")


class ServerRole:
    def __init__(self, config: ExperimentConfig, scheme_name: str, hooks: RunHooks | None = None) -> None:
        check_real_backend_scheme(scheme_name, config.workers.backend)
        self.config = config
        self.scheme = get_scheme(scheme_name)
        self.learner, self.optimizer = build(config)
        correction = correction_for(self.scheme.name, config.schemes)
        k_params, _ = jax.random.split(jax.random.PRNGKey(config.train.seed))
        self.server = init_server(self.learner.init(k_params), self.optimizer, correction)
        self.params = np.asarray(self.server.params)
        self.version = 0
        self.count = config.workers.count
        if self.scheme.synchronous:
            self._sync_update = make_sync_message_update(self.learner, self.optimizer)
        else:
            self._update = make_message_update(self.learner, self.optimizer, self.scheme, correction,
                                               config.workers.measure_grad_error)
        self.hooks = hooks or RunHooks()
        self.before: list[np.ndarray] = []  # server parameters before each update since the last flush
        self.diverged_at: int | None = None
        self.last_finite: np.ndarray | None = None  # parameters before the diverging update
        self.total, self.every = config.train.iterations, config.train.eval_every
        self.rows: list[tuple[int, float, int, int, int, float]] = []
        self.pending: list[UpdateMetrics] = []
        self.fetched: list[UpdateMetrics] = []
        self.evals: list[EvalRecord] = []
        self.round: dict[int, Message] = {}
        self.received = 0  # worker messages received (gradient throughput)
        self.dropped = 0
        self.events: list[dict[str, Any]] = []
        self.t0: float | None = None

    # ------------------------------------------------------------------ bookkeeping

    @property
    def iteration(self) -> int:
        return len(self.rows)

    @property
    def done(self) -> bool:
        return self.iteration >= self.total or self.diverged_at is not None

    def now(self) -> float:
        return 0.0 if self.t0 is None else time.perf_counter() - self.t0

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
        n = self.params.size
        if self.scheme.synchronous:
            zeros = np.zeros((self.count,), np.float32)
            out = self._sync_update(self.server, np.zeros((self.count, n), np.float32), Losses(zeros, zeros))
        else:
            batch = None
            if self.config.workers.measure_grad_error:
                key = jax.random.PRNGKey(0)
                sampler = jax.eval_shape(self.learner.sampler_init, key)
                shapes, _ = jax.eval_shape(self.learner.sample, key, sampler, self.server.params)
                batch = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
            gap = np.zeros((n,), np.float32) if self.scheme.compute == "jvp" else None
            out = self._update(self.server, np.zeros((n,), np.float32), gap, batch, np.int32(0),
                               Losses(np.float32(0), np.float32(0)))
        jax.block_until_ready(out)

    def evaluate_initial(self) -> None:
        if not self.evals:
            self.evals.append(EvalRecord(0, evaluate(self.learner, self.server.params)[0]))

    # ------------------------------------------------------------------ updates

    def receive(self, msg: Message) -> bool:
        """Apply (or, for sync, collect) one message; True when the parameters changed."""
        self.received += 1
        if self.done:
            return False
        if self.scheme.synchronous:
            if msg.version != self.version:
                return False
            self.round[msg.worker] = msg
            if len(self.round) < self.count:
                return False
            msgs = [self.round[i] for i in sorted(self.round)]
            self.round.clear()
            losses = Losses(jnp.asarray([m.policy_loss for m in msgs], jnp.float32),
                            jnp.asarray([m.value_loss for m in msgs], jnp.float32))
            self.server, metrics = self._sync_update(self.server, np.stack([m.direction for m in msgs]), losses)
            self._record(metrics, -1, 0, 0, float(np.mean([m.compute_time for m in msgs])))
            return True
        staleness = self.version - msg.version
        if self.scheme.drops_stale and staleness > self.config.schemes.staleness_bound:
            self.dropped += 1
            return False
        losses = Losses(np.float32(msg.policy_loss), np.float32(msg.value_loss))
        self.server, metrics = self._update(self.server, msg.direction, msg.gap_product, msg.batch,
                                            np.int32(staleness), losses)
        self._record(metrics, msg.worker, staleness, self.version - msg.version_k, msg.compute_time)
        return True

    def _record(self, metrics: UpdateMetrics, worker: int, staleness: int, residual: int, compute: float) -> None:
        self.before.append(self.params)
        self.version += 1
        self.params = np.asarray(self.server.params)
        self.rows.append((self.iteration + 1, self.now(), worker, staleness, residual, compute))
        self.pending.append(metrics)
        if is_eval_point(self.iteration, self.config):
            self._flush()

    def _flush(self) -> None:
        """At an evaluation point: fetch, check for divergence (as on ``sim``), evaluate, report."""
        first = len(self.fetched)
        self.fetched.extend(jax.device_get(self.pending))
        self.pending.clear()
        bad = first_diverged_row(self._tail(first),
                                 self.config.train.divergence_loss)
        before, self.before = self.before, []
        if bad is not None:  # stop at the first bad update, keeping its row
            self.diverged_at = first + bad + 1
            del self.rows[self.diverged_at:], self.fetched[self.diverged_at:]
            self.last_finite = before[bad]
            return
        it = self.iteration
        record = EvalRecord(it, evaluate(self.learner, self.server.params)[0])
        self.evals.append(record)
        if self.hooks.on_flush is not None:
            self.hooks.on_flush(self._columns(), list(self.evals))
        if self.hooks.on_chunk is not None:
            self.hooks.on_chunk(it, record)

    # ------------------------------------------------------------------ result

    def _tail(self, first: int) -> dict[str, np.ndarray]:
        """The metric columns of the fetched rows from index ``first`` on."""
        return {name: np.array([getattr(m, name) for m in self.fetched[first:]], np.float64)
                for name in UpdateMetrics._fields}

    def result(self, status: str = "completed") -> RunResult:
        self.evaluate_initial()
        self.fetched.extend(jax.device_get(self.pending))
        self.pending.clear()
        if self.diverged_at is not None:
            return diverged_result(self.learner, self.last_finite, self._columns(), self.evals, self.diverged_at,
                             self.dropped)._replace(events=tuple(self.events))
        columns = self._columns()
        _, trajectory = evaluate(self.learner, self.server.params)
        return RunResult(np.asarray(self.server.params), columns, self.evals, trajectory, status=status,
                         dropped=self.dropped, events=tuple(self.events))

    def _columns(self) -> dict[str, np.ndarray]:
        """Every row so far (the fetched ones: call after a fetch)."""
        rows = self.rows[:len(self.fetched)]
        columns: dict[str, Any] = {
            "iteration": np.array([r[0] for r in rows], np.int64),
            "time": np.array([r[1] for r in rows], np.float64),
            "worker": np.array([r[2] for r in rows], np.int64),
            "staleness": np.array([r[3] for r in rows], np.int64),
            "residual_staleness": np.array([r[4] for r in rows], np.int64),
            "compute_time": np.array([r[5] for r in rows], np.float64),  # worker s of sampling + compute
        }
        columns.update(self._tail(0))
        return columns
