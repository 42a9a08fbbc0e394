"""The ``sim`` backend: a deterministic event simulation of N workers.

One process, one simulated clock, and the same server role as the real backends
(``serving.ServerRole``: Sample Factory's serial mode). Each worker loops: pull
``(theta_k, k)``, sample a batch with its own exploratory rollouts, compute for a
duration drawn from the delay model (scaled by the scheme's relative compute cost),
send. The server applies messages in order of arrival (ties: lower worker id first),
so staleness ``tau = k_now - k_pulled`` *comes out of the timing* and is recorded
per update, never assumed. Same seed, same results, byte for byte.

The simulation's whole state is an explicit value (``SimState``): server state,
workers' keys and samplers, the jobs in flight, the event heap, the numpy
generator's state and the record so far. It is checkpointed at evaluation points
(``train.checkpoint_every``) and a run resumed from a checkpoint continues
exactly as the uninterrupted run would have, bit for bit. Metrics stay on the
device between evaluation points and are checked for divergence when fetched
(the run protocol's ``Recorder``): the run then stops at the first bad update.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from asynccorr.backends.serving import ServerRole
from asynccorr.build import run_keys, worker_stream
from asynccorr.checkpoint import Checkpoint, restore_run, run_checkpoint
from asynccorr.config import ExperimentConfig
from asynccorr.delays import DelayModel
from asynccorr.evaluation import EvalRecord
from asynccorr.learner import Batch, SamplerState
from asynccorr.run_protocol import RunHooks, RunResult, TrainingInterrupted
from asynccorr.schemes import Scheme
from asynccorr.server import ServerState, init_server

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


def delay_model(config: ExperimentConfig) -> DelayModel:
    w = config.workers
    return DelayModel(w.delay, w.jitter, w.speed_spread, w.straggler_prob, w.straggler_tail)


def setup(role: ServerRole) -> Sim:
    """The simulation's context around a server role (which built the learner, optimizer and correction)."""
    config = role.config
    delays = delay_model(config)
    return Sim(config, role.scheme, role.learner, role.optimizer, role.correction, delays,
               delays.worker_speeds(config.workers.count), compute_cost(role.scheme, config))


def _fresh_workers(sim: Sim) -> tuple[Worker, ...]:
    _, k_workers = run_keys(sim.config.train.seed)
    workers = []
    for i in range(sim.config.workers.count):
        run_key, sampler_key = worker_stream(k_workers, i)
        workers.append(Worker(run_key, sim.learner.sampler_init(sampler_key)))
    return tuple(workers)


def init_state(sim: Sim, role: ServerRole) -> SimState:
    """The state before the first update: fresh server (the role's) and workers, the initial
    evaluation, no jobs yet."""
    role.evaluate_initial()
    rng = np.random.default_rng(sim.config.train.seed).bit_generator.state
    return SimState(role.server, _fresh_workers(sim), (), (), rng, 0, 0, 0.0, 0, {}, tuple(role.evals))


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


def _identity(sim: Sim) -> dict[str, Any]:
    """What a checkpoint must say to resume this simulation."""
    return {"backend": "sim", "scheme": sim.scheme.name, "workers": sim.config.workers.count}


def state_to_checkpoint(sim: Sim, state: SimState) -> Checkpoint:
    """A ``SimState`` as named arrays (pytree leaves, metric columns) plus JSON (everything else)."""
    trees = {"server": state.server, "workers": state.workers,
             "jobs": tuple((job.params, job.batch) for job in state.jobs)}
    info = {
        "rng": state.rng, "events": [list(e) for e in state.events], "job_versions": [job.version for job in state.jobs],
        "version": state.version, "now": state.now, "dropped": state.dropped,
    }
    return run_checkpoint(state.iteration, _identity(sim), trees, state.metrics, state.evals, info)


def state_from_checkpoint(sim: Sim, ckpt: Checkpoint) -> SimState:
    """Inverse of ``state_to_checkpoint`` for the same config and scheme."""
    info = ckpt.info
    server_t, worker_t, job_t = _templates(sim)
    versions = info.get("job_versions", [])
    templates = {"server": server_t, "workers": tuple(worker_t for _ in range(sim.config.workers.count)),
                 "jobs": tuple(job_t for _ in versions)}
    trees, metrics, evals = restore_run(ckpt, _identity(sim), templates)
    return SimState(
        server=trees["server"], workers=trees["workers"],
        jobs=tuple(Job(params, int(v), batch) for (params, batch), v in zip(trees["jobs"], versions)),
        events=tuple((float(t), int(i)) for t, i in info["events"]),
        rng=info["rng"], version=int(info["version"]), iteration=ckpt.iteration, now=float(info["now"]),
        dropped=int(info["dropped"]), metrics=metrics, evals=tuple(evals),
    )


def run_sim(
    config: ExperimentConfig,
    scheme_name: str,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
    hooks: RunHooks | None = None,
) -> RunResult:
    """Simulate ``config.train.iterations`` server updates of ``scheme_name`` (from ``hooks.resume`` if given)."""
    hooks = hooks or RunHooks(on_chunk=on_chunk)
    role = ServerRole(config, scheme_name, hooks, columns=())
    sim = setup(role)
    state = state_from_checkpoint(sim, hooks.resume) if hooks.resume is not None else init_state(sim, role)
    loop = _Loop(sim, role, state)
    try:
        return loop.run()
    except KeyboardInterrupt:
        raise TrainingInterrupted(role.result("interrupted")) from None


class _Loop:
    """The event loop of the workers around the server role: mutable working copies of the
    workers' part of a ``SimState``; ``snapshot()`` turns them and the role's state back into
    a value (the role takes it at evaluation points when a checkpoint is due)."""

    def __init__(self, sim: Sim, role: ServerRole, state: SimState) -> None:
        self.sim, self.role = sim, role
        role.restore(state.server, state.version, state.iteration, state.dropped, state.metrics, list(state.evals))
        role.snapshot = lambda: state_to_checkpoint(sim, self.snapshot())
        self.workers = list(state.workers)
        self.jobs: dict[int, Job] = dict(enumerate(state.jobs))
        self.events = [tuple(e) for e in state.events]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state.rng
        self.now = state.now
        self.sample = jax.jit(sim.learner.sample)

    # -- the value

    def snapshot(self) -> SimState:
        role = self.role
        assert not role.pending, "snapshots are taken at evaluation points only"
        return SimState(role.server, tuple(self.workers), tuple(self.jobs[i] for i in sorted(self.jobs)),
                        tuple(self.events), self.rng.bit_generator.state, role.version, role.iteration, self.now,
                        role.dropped, role.metrics, tuple(role.evals))

    # -- the workers

    def pull(self, i: int) -> Batch:
        """Worker i pulls theta_k and samples its next batch with it."""
        run_key, k_sample = jax.random.split(self.workers[i].key)
        batch, sampler = self.sample(k_sample, self.workers[i].sampler, self.role.server.params)
        self.workers[i] = Worker(run_key, sampler)
        return batch

    def start(self, i: int, now: float) -> None:
        self.jobs[i] = Job(self.role.server.params, self.role.version, self.pull(i))
        heapq.heappush(self.events, (now + self.sim.delays.duration(self.rng, self.sim.base, self.sim.speeds[i]), i))

    # -- the loop

    def run(self) -> RunResult:
        sim, role = self.sim, self.role
        if sim.scheme.synchronous:
            count = sim.config.workers.count
            while not role.done:
                batches = [self.pull(i) for i in range(count)]
                self.now += max(sim.delays.duration(self.rng, sim.base, sim.speeds[i]) for i in range(count))
                role.apply_round(jax.tree.map(lambda *b: jax.numpy.stack(b), *batches), self.now)
                role.flush_if_due()
        else:
            if not self.jobs:
                for i in range(sim.config.workers.count):
                    self.start(i, 0.0)
            while not role.done:
                now, i = heapq.heappop(self.events)
                job = self.jobs.pop(i)
                applied = role.apply_job(i, job.params, job.version, job.batch, now)
                self.start(i, now)  # a dropped job too: the worker pulls afresh
                if applied:
                    role.flush_if_due()
        return role.result()
