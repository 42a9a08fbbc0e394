"""The ``sim`` backend: a deterministic event simulation of N workers.

One process, one simulated clock. Each worker loops: pull ``(theta_k, k)``,
sample a batch with its own exploratory rollouts, compute for a duration drawn
from the delay model (scaled by the scheme's relative compute cost), send. The
server applies messages in order of arrival (ties: lower worker id first), so
staleness ``tau = k_now - k_pulled`` *comes out of the timing* and is recorded
per update, never assumed. Same seed, same results, byte for byte.

The simulation's whole state is an explicit value (``SimState``): server state,
workers' keys and samplers, the jobs in flight, the event heap, the numpy
generator's state and the record so far. It is checkpointed at evaluation points
(``train.checkpoint_every``) and a run resumed from a checkpoint continues
exactly as the uninterrupted run would have, bit for bit. Metrics stay on the
device between evaluation points and are checked for divergence when fetched
(``trainer.first_diverged_row``): the run then stops at the first bad update.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from asynccorr.checkpoint import (
    Checkpoint,
    CheckpointError,
    evals_from_json,
    evals_to_json,
    pack_columns,
    pack_tree,
    unpack_columns,
    unpack_tree,
)
from asynccorr.config import ConfigError, ExperimentConfig
from asynccorr.delays import DelayModel
from asynccorr.evaluation import evaluate
from asynccorr.learner import Batch, SamplerState
from asynccorr.schemes import Scheme, correction_for, get_scheme
from asynccorr.server import ServerState, UpdateMetrics, init_server, make_async_update, make_sync_update
from asynccorr.trainer import (
    EvalRecord,
    RunHooks,
    RunResult,
    TrainingInterrupted,
    build,
    checkpoint_due,
    concat_columns,
    diverged_result,
    first_diverged_row,
    head_columns,
    is_eval_point,
    worker_stream,
)

Array = jax.Array


class Worker(NamedTuple):
    key: Array
    sampler: SamplerState


class Job(NamedTuple):
    params: Array  # theta_i as pulled
    version: int  # k at the pull
    batch: Batch


class SimState(NamedTuple):
    """Everything the rest of a simulation depends on, and its record so far."""

    server: ServerState
    workers: tuple[Worker, ...]
    jobs: tuple[Job, ...]  # in flight, worker i's at index i (empty for sync, and before the start)
    events: tuple[tuple[float, int], ...]  # heap of (arrival time, worker id)
    rng: dict[str, Any]  # the delay model's numpy generator: bit_generator.state
    version: int  # server version k (= iteration: dropped messages do not bump it)
    iteration: int  # server updates applied
    now: float  # simulated clock of the synchronous scheme (async keeps time in the events)
    dropped: int  # messages discarded by a drop-stale scheme
    metrics: dict[str, np.ndarray]  # one row per update so far, on the host
    evals: tuple[EvalRecord, ...]


class Sim(NamedTuple):
    """The fixed context of one simulation (derived from the config; never checkpointed)."""

    config: ExperimentConfig
    scheme: Scheme
    learner: Any
    optimizer: Any
    correction: Any
    delays: DelayModel
    speeds: np.ndarray
    base: float  # simulated time of one job before speed and jitter


def compute_cost(scheme: Scheme, config: ExperimentConfig) -> float:
    """Simulated time of one worker job, before per-worker speed and jitter."""
    ratio = {"direction": 1.0, "jvp": config.workers.jvp_cost_ratio, "dense": config.workers.dense_cost_ratio}
    return config.workers.direction_time * ratio[scheme.compute]


def check_scheme_fits(scheme: Scheme, num_params: int, config: ExperimentConfig) -> None:
    """``modify-dense`` materialises an n x n Jacobian: refuse networks above the stated size."""
    if scheme.compute == "dense" and num_params > config.schemes.dense_max_params:
        raise ConfigError(
            f"scheme {scheme.name} needs a dense {num_params}x{num_params} Hessian; it refuses networks above "
            f"schemes.dense_max_params = {config.schemes.dense_max_params} parameters (use smaller "
            f"learner.policy_hidden / value_hidden, or scheme modify)")


def delay_model(config: ExperimentConfig) -> DelayModel:
    w = config.workers
    return DelayModel(w.delay, w.jitter, w.speed_spread, w.straggler_prob, w.straggler_tail)


def setup(config: ExperimentConfig, scheme_name: str) -> Sim:
    """Build the learner, optimizer and correction for a run (validating the scheme's size limit)."""
    scheme = get_scheme(scheme_name)
    learner, optimizer = build(config)
    check_scheme_fits(scheme, learner.num_params, config)
    correction = correction_for(scheme.name, config.schemes)
    delays = delay_model(config)
    return Sim(config, scheme, learner, optimizer, correction, delays, delays.worker_speeds(config.workers.count),
               compute_cost(scheme, config))


def _fresh(sim: Sim, key: Array) -> tuple[ServerState, tuple[Worker, ...]]:
    k_params, k_workers = jax.random.split(key)
    server = init_server(sim.learner.init(k_params), sim.optimizer, sim.correction)
    workers = []
    for i in range(sim.config.workers.count):
        run_key, sampler_key = worker_stream(k_workers, i)
        workers.append(Worker(run_key, sim.learner.sampler_init(sampler_key)))
    return server, tuple(workers)


def init_state(sim: Sim) -> SimState:
    """The state before the first update: fresh server and workers, the initial evaluation, no jobs yet."""
    seed = sim.config.train.seed
    server, workers = _fresh(sim, jax.random.PRNGKey(seed))
    evals = (EvalRecord(0, evaluate(sim.learner, server.params)[0]),)
    rng = np.random.default_rng(seed).bit_generator.state
    return SimState(server, workers, (), (), rng, 0, 0, 0.0, 0, {}, evals)


def _templates(sim: Sim) -> tuple[ServerState, Worker, tuple[Array, Batch]]:
    """Shapes and dtypes of the server state, one worker and one job (``jax.eval_shape``: no compute)."""
    def make(key: Array) -> tuple[ServerState, Worker, tuple[Array, Batch]]:
        k_params, k_workers = jax.random.split(key)
        params = sim.learner.init(k_params)
        run_key, sampler_key = worker_stream(k_workers, 0)
        worker = Worker(run_key, sim.learner.sampler_init(sampler_key))
        batch, _ = sim.learner.sample(run_key, worker.sampler, params)
        return init_server(params, sim.optimizer, sim.correction), worker, (params, batch)

    return jax.eval_shape(make, jax.random.PRNGKey(0))


def state_to_checkpoint(sim: Sim, state: SimState) -> Checkpoint:
    """A ``SimState`` as named arrays (pytree leaves, metric columns) plus JSON (everything else)."""
    arrays, columns = pack_columns(state.metrics)
    arrays.update(pack_tree("server", state.server))
    arrays.update(pack_tree("workers", state.workers))
    arrays.update(pack_tree("jobs", tuple((job.params, job.batch) for job in state.jobs)))
    info = {
        "backend": "sim", "scheme": sim.scheme.name, "workers": len(state.workers), "columns": columns,
        "evals": evals_to_json(state.evals), "rng": state.rng, "events": [list(e) for e in state.events],
        "job_versions": [job.version for job in state.jobs], "version": state.version, "now": state.now,
        "dropped": state.dropped,
    }
    return Checkpoint(state.iteration, arrays, info)


def state_from_checkpoint(sim: Sim, ckpt: Checkpoint) -> SimState:
    """Inverse of ``state_to_checkpoint`` for the same config and scheme."""
    info = ckpt.info
    count = sim.config.workers.count
    if info.get("backend") != "sim" or info.get("scheme") != sim.scheme.name or info.get("workers") != count:
        raise CheckpointError(f"checkpoint is of backend {info.get('backend')!r}, scheme {info.get('scheme')!r}, "
                              f"{info.get('workers')} workers; this run is sim, {sim.scheme.name}, {count}")
    server_t, worker_t, job_t = _templates(sim)
    versions = info["job_versions"]
    jobs = unpack_tree("jobs", ckpt.arrays, tuple(job_t for _ in versions))
    return SimState(
        server=unpack_tree("server", ckpt.arrays, server_t),
        workers=unpack_tree("workers", ckpt.arrays, tuple(worker_t for _ in range(count))),
        jobs=tuple(Job(params, int(v), batch) for (params, batch), v in zip(jobs, versions)),
        events=tuple((float(t), int(i)) for t, i in info["events"]),
        rng=info["rng"], version=int(info["version"]), iteration=ckpt.iteration, now=float(info["now"]),
        dropped=int(info["dropped"]), metrics=unpack_columns(ckpt.arrays, info["columns"]),
        evals=tuple(evals_from_json(info["evals"])),
    )


def run_sim(
    config: ExperimentConfig,
    scheme_name: str,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
    hooks: RunHooks | None = None,
) -> RunResult:
    """Simulate ``config.train.iterations`` server updates of ``scheme_name`` (from ``hooks.resume`` if given)."""
    hooks = hooks or RunHooks(on_chunk=on_chunk)
    sim = setup(config, scheme_name)
    state = state_from_checkpoint(sim, hooks.resume) if hooks.resume is not None else init_state(sim)
    loop = _Loop(sim, state, hooks)
    try:
        return loop.run()
    except KeyboardInterrupt:
        raise TrainingInterrupted(loop.partial()) from None


class _Loop:
    """The event loop over a ``SimState``: mutable working copies of its fields, ``snapshot()``
    turns them back into a value. Between evaluation points the per-update metrics stay on the
    device (no host sync per update); ``flush`` fetches them, checks them for divergence,
    evaluates, checkpoints when due and reports."""

    def __init__(self, sim: Sim, state: SimState, hooks: RunHooks) -> None:
        self.sim, self.hooks = sim, hooks
        self.server = state.server
        self.workers = list(state.workers)
        self.jobs: dict[int, Job] = dict(enumerate(state.jobs))
        self.events = [tuple(e) for e in state.events]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state.rng
        self.version, self.it, self.now, self.dropped = state.version, state.iteration, state.now, state.dropped
        self.metrics, self.evals = state.metrics, list(state.evals)
        self.last_checkpoint = state.iteration
        # since the last evaluation point, one entry per update:
        self.rows: list[tuple[int, float, int, int]] = []  # iteration, time, worker, staleness
        self.pending: list[UpdateMetrics] = []  # on the device until the next flush
        self.before: list[Array] = []  # server parameters before the update
        self.drops: list[int] = []  # dropped count when the update was applied
        self.sample = jax.jit(sim.learner.sample)

    # -- the value

    def snapshot(self) -> SimState:
        assert not self.pending, "snapshots are taken at evaluation points only"
        return SimState(self.server, tuple(self.workers), tuple(self.jobs[i] for i in sorted(self.jobs)),
                        tuple(self.events), self.rng.bit_generator.state, self.version, self.it, self.now,
                        self.dropped, self.metrics, tuple(self.evals))

    # -- the workers

    def pull(self, i: int) -> Batch:
        """Worker i pulls theta_k and samples its next batch with it."""
        run_key, k_sample = jax.random.split(self.workers[i].key)
        batch, sampler = self.sample(k_sample, self.workers[i].sampler, self.server.params)
        self.workers[i] = Worker(run_key, sampler)
        return batch

    def start(self, i: int, now: float) -> None:
        self.jobs[i] = Job(self.server.params, self.version, self.pull(i))
        heapq.heappush(self.events, (now + self.sim.delays.duration(self.rng, self.sim.base, self.sim.speeds[i]), i))

    def record(self, now: float, worker: int, staleness: int, metrics: UpdateMetrics) -> None:
        self.rows.append((self.it, now, worker, staleness))
        self.pending.append(metrics)
        self.drops.append(self.dropped)

    # -- the loop

    def run(self) -> RunResult:
        sim, total = self.sim, self.sim.config.train.iterations
        if sim.scheme.synchronous:
            update = make_sync_update(sim.learner, sim.optimizer)
            count = sim.config.workers.count
            while self.it < total:
                batches = [self.pull(i) for i in range(count)]
                self.now += max(sim.delays.duration(self.rng, sim.base, sim.speeds[i]) for i in range(count))
                self.before.append(self.server.params)
                self.server, metrics = update(self.server, jax.tree.map(lambda *b: jax.numpy.stack(b), *batches))
                self.it += 1
                self.record(self.now, -1, 0, metrics)
                if is_eval_point(self.it, sim.config) and (diverged := self.flush()) is not None:
                    return diverged
        else:
            update = make_async_update(sim.learner, sim.optimizer, sim.scheme, sim.correction)
            if not self.jobs:
                for i in range(sim.config.workers.count):
                    self.start(i, 0.0)
            while self.it < total:
                now, i = heapq.heappop(self.events)
                job = self.jobs.pop(i)
                staleness = self.version - job.version
                if sim.scheme.drops_stale and staleness > sim.config.schemes.staleness_bound:
                    # discarded: no server update, no version bump; the worker pulls afresh
                    self.dropped += 1
                    self.start(i, now)
                    continue
                self.before.append(self.server.params)
                self.server, metrics = update(self.server, job.params, job.batch, np.int32(staleness))
                self.version += 1
                self.it += 1
                self.record(now, i, staleness, metrics)
                self.start(i, now)
                if is_eval_point(self.it, sim.config) and (diverged := self.flush()) is not None:
                    return diverged
        _, trajectory = evaluate(sim.learner, self.server.params)
        return RunResult(np.asarray(self.server.params), self.metrics, self.evals, trajectory, dropped=self.dropped)

    def _columns(self, rows: list[tuple[int, float, int, int]], fetched: list[UpdateMetrics]) -> dict[str, Any]:
        columns: dict[str, Any] = {
            "iteration": np.array([r[0] for r in rows], np.int64),
            "time": np.array([r[1] for r in rows], np.float64),
            "worker": np.array([r[2] for r in rows], np.int64),
            "staleness": np.array([r[3] for r in rows], np.int64),
        }
        for name in UpdateMetrics._fields:
            columns[name] = np.array([getattr(m, name) for m in fetched], np.float64)
        return columns

    def flush(self) -> RunResult | None:
        """At an evaluation point: fetch, check, evaluate, checkpoint, report; a result if the run diverged."""
        sim, hooks = self.sim, self.hooks
        new = self._columns(self.rows, jax.device_get(self.pending))
        bad = first_diverged_row(new, sim.config.train.divergence_loss)
        if bad is not None:
            metrics = concat_columns(self.metrics, head_columns(new, bad + 1))
            return diverged_result(sim.learner, np.asarray(self.before[bad]), metrics, self.evals,
                             int(new["iteration"][bad]), self.drops[bad])
        self.metrics, self.rows, self.pending, self.before, self.drops = \
            concat_columns(self.metrics, new), [], [], [], []
        record = EvalRecord(self.it, evaluate(sim.learner, self.server.params)[0])
        self.evals.append(record)
        if hooks.on_chunk is not None:
            hooks.on_chunk(self.it, record)
        if hooks.on_checkpoint is not None and checkpoint_due(self.it, self.last_checkpoint, sim.config):
            hooks.on_checkpoint(state_to_checkpoint(sim, self.snapshot()))
            self.last_checkpoint = self.it
        if hooks.on_flush is not None:
            hooks.on_flush(self.metrics, self.evals)
        return None

    def partial(self) -> RunResult:
        """Everything up to the last update whose metrics were recorded (after Ctrl-C)."""
        n = min(len(self.rows), len(self.pending))
        metrics = concat_columns(self.metrics, self._columns(self.rows[:n], jax.device_get(self.pending[:n])))
        params = self.before[n] if n < len(self.before) else self.server.params
        _, trajectory = evaluate(self.sim.learner, params)
        dropped = self.drops[n - 1] if 0 < n <= len(self.drops) else self.dropped
        return RunResult(np.asarray(params), metrics, list(self.evals), trajectory, status="interrupted",
                         dropped=dropped)
