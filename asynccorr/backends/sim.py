"""The ``sim`` backend: a deterministic event simulation of N workers and one server.

One process, one simulated clock, and **the same worker and server code** as the real
backends (Sample Factory's serial mode): each simulated worker runs its scheme's job
phases with the worker role's functions (``worker.pre_pull`` / ``post_pull``, ``aim``)
and ships the same ``Message``; the server role (``server.ServerRole``) applies it.
Only the clock is simulated, and it times every phase:

* a worker job: ``sample``, then its compute phases (``Scheme.phases``: direction,
  fused direction + product, linearise / apply, dense), each costing
  ``workers.direction_time`` x its ratio (``workers.*_cost_ratio``, measured by
  ``benchmarks/bench_phases.py``) x the worker's speed x the job's jitter and straggle
  (``backends.delays.DelayModel``, one draw per job; ``workers.slowdown`` makes worker i's
  phases f times slower, as on ``mp``). A mid-job pull (``schemes.registry.PULL``) reads
  the parameters published *at that simulated moment*;
* the server is a timed resource and a FIFO queue: each message costs it
  ``server_apply_cost_ratio`` and, per scheme, the server-side product (``server``
  protocol: one fused pass), the secant fit (``secant`` protocol: ``secant_pair_cost_ratio``
  per pair of its window), the fresh direction (``learner``) and, when
  ``workers.charge_measurement``, the gradient-error measurement; while it computes,
  messages wait, and workers pull the parameters it last *finished*. Its update is
  evaluated when it takes the message off the queue, at the parameters it then holds.

A worker pushes its message and waits for the reply (the classic parameter server's
push-pull, as on ``mp``): the server's update, published, or the news that its
message was dropped. It then starts its next job with the published parameters; at
most one message per worker waits in the queue, and one worker is the sequential
learner. Staleness ``k_apply - i`` and residual
staleness *come out of the timing*, recorded per update, never assumed. The ``oracle``
protocol is the one exception to "only what is real": its product is evaluated
against theta_k at application and costs nothing -- an upper bound, labelled so.

Synchronous schemes run in rounds: ``sync`` at theta_r (the slowest worker, then the
server's apply, set the round's time); ``sync-pipelined`` computes round r at
theta_{r-1} while the server applies round r - 1 (HTS-RL), its corrected variant
linearising first and applying the map once theta_r is published.

The simulation's whole state is an explicit value (``SimState``), checkpointed at
evaluation points; a run resumed from one continues bit for bit as the
uninterrupted run would have. Same seed, same results, byte for byte.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.backends.checkpoint import Checkpoint, restore_run, run_checkpoint
from asynccorr.backends.delays import DelayModel
from asynccorr.backends.protocol import NO_HOOKS, RunHooks, RunResult, TrainingInterrupted, check_interrupt
from asynccorr.backends.server import ServerRole
from asynccorr.backends.update import ServerState, init_server
from asynccorr.backends.worker import (
    Message,
    WorkerOps,
    aim,
    post_pull,
    pre_pull,
    secant_fields,
    ships,
    step_scale,
    worker_ops,
)
from asynccorr.compile import programs
from asynccorr.config import ExperimentConfig
from asynccorr.learners.base import Batch, SamplerState
from asynccorr.learners.build import run_keys, worker_stream
from asynccorr.learners.evaluation import EvalRecord
from asynccorr.schemes.registry import PULL, Scheme, secant_window

Array = jax.Array

SERVER_DONE, PULLED, SENT = 0, 1, 2  # event kinds, in their order at equal times


class Worker(NamedTuple):
    key: Array
    sampler: SamplerState
    last_params: Array  # look-ahead: the parameters of its previous mid-job pull (empty otherwise)
    tangent: Array  # secant: its next job's tangent (empty otherwise)


class Job(NamedTuple):
    """A job in flight or in the server's queue: what its worker holds."""

    worker: int
    params: Array  # theta_i as pulled
    version: int  # i
    batch: Batch
    target: Array  # the parameters its tangent aims at (theta_i until its mid-job pull)
    target_version: int  # k' (= version until its mid-job pull)
    pulled: float  # simulated time of its mid-job pull (or its start)
    post: float  # simulated duration of its phases after the pull
    compute: float  # simulated duration of all its phases
    tangent: Array  # secant: the tangent it holds for its pass (empty otherwise)


class SimState(NamedTuple):
    """Everything the rest of a simulation depends on, and its record so far."""

    server: ServerState
    workers: tuple[Worker, ...]
    jobs: tuple[Job, ...]  # in flight (sorted by worker), then the server's queue (in order)
    queued: int  # how many of ``jobs`` (the last ones) are in the server's queue
    events: tuple[tuple[float, int, int], ...]  # heap of (time, kind, worker)
    rng: dict[str, Any]  # the delay model's numpy generator: bit_generator.state
    version: int  # server version k (= iteration: dropped messages do not bump it)
    iteration: int  # server updates applied
    dropped: int  # messages discarded by a drop-stale scheme
    published: tuple[Array, Array]  # (theta, version) workers pull; sync-pipelined: also theta_{r-1}
    clock: dict[str, Any]  # server_busy, last pull times, leads; sync: finish times, publication times
    metrics: dict[str, np.ndarray]  # one row per update so far, on the host
    evals: tuple[EvalRecord, ...]


class Costs(NamedTuple):
    """Simulated seconds of each phase before a worker's speed and a job's jitter."""

    phases: dict[str, float]  # worker phase -> seconds
    server: float  # the server's time per message (sync: per round)


def costs(scheme: Scheme, config: ExperimentConfig) -> Costs:
    """The cost model of one scheme (``workers.*`` ratios x ``workers.direction_time``)."""
    w = config.workers
    ratio = {"sample": w.sample_cost_ratio, "direction": 1.0, "direction_jvp": w.jvp_cost_ratio,
             "linearise": w.linearise_cost_ratio, "apply": w.apply_cost_ratio, "dense": w.dense_cost_ratio}
    server = w.server_apply_cost_ratio
    if scheme.protocol == "server":
        server += w.jvp_cost_ratio
    if scheme.protocol == "secant":  # the fit: O(window P), charged per pair in the window
        server += secant_window(config) * w.secant_pair_cost_ratio
    if scheme.compute == "sample":
        server += 1.0
    elif w.charge_measurement and not (scheme.synchronous and not scheme.pipelined):
        server += w.count if scheme.synchronous else 1.0
    return Costs({p: w.direction_time * r for p, r in ratio.items()}, w.direction_time * server)


def delay_model(config: ExperimentConfig) -> DelayModel:
    w = config.workers
    return DelayModel(w.delay, w.jitter, w.speed_spread, w.straggler_prob, w.straggler_tail)


class Sim(NamedTuple):
    """The fixed context of one simulation (derived from the config; never checkpointed)."""

    config: ExperimentConfig
    scheme: Scheme
    learner: Any
    ops: WorkerOps
    delays: DelayModel
    speeds: np.ndarray
    costs: Costs
    ship_batch: bool
    ship_params: bool
    step_scale: np.ndarray | None  # secant, "previous" tangent: each parameter's step


def setup(role: ServerRole) -> Sim:
    config = role.config
    delays = delay_model(config)
    ship_batch, ship_params = ships(role.scheme, True)
    n = config.workers.count
    slowdown = np.ones(n)
    slowdown[:len(config.workers.slowdown)] = config.workers.slowdown  # worker i's phases are f x slower, as on mp
    previous = role.scheme.protocol == "secant" and config.schemes.secant_tangent == "previous"
    return Sim(config, role.scheme, role.learner, worker_ops(role.learner), delays,
               delays.worker_speeds(n) * slowdown, costs(role.scheme, config), ship_batch, ship_params,
               step_scale(config, role.learner) if previous else None)


def _look_ahead_size(sim: Sim) -> int:
    return sim.learner.num_params if sim.scheme.protocol == "look-ahead" else 0


def _tangent_size(sim: Sim) -> int:
    return sim.learner.num_params if sim.scheme.protocol == "secant" else 0


SETUP_BLOCK = 64  # workers per batched set-up call: one compiled shape for every N


def _fresh_workers(sim: Sim) -> tuple[Worker, ...]:
    """Every worker's key stream and sampler, set up in batched calls of ``SETUP_BLOCK`` workers (not
    N builds; one compile whatever N), then split into the N workers' rows on the host: numpy views,
    where splitting the device arrays would compile an N-output program per leaf (~20 s at N = 1,024)."""
    seed, n = np.int32(sim.config.train.seed), sim.config.workers.count
    setup_block = _batched_workers(sim.learner.sampler_init)
    blocks = [jax.device_get(setup_block(seed, np.arange(start, start + SETUP_BLOCK, dtype=np.int32)))
              for start in range(0, n, SETUP_BLOCK)]
    keys, samplers = jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *blocks)
    last = np.zeros((_look_ahead_size(sim),), np.float32)
    tangent = np.zeros((_tangent_size(sim),), np.float32)
    return tuple(Worker(keys[i], jax.tree.map(lambda leaf, i=i: leaf[i], samplers), last, tangent)
                 for i in range(n))


@functools.lru_cache(maxsize=8)
def _batched_workers(sampler_init: Callable) -> Callable:
    """The jitted ``(seed, worker indices) -> (their run keys, their samplers)`` of a run."""

    def setup_all(seed: Array, index: Array) -> tuple[Array, Any]:
        _, k_workers = run_keys(seed)
        run_keys_, sampler_keys = jax.vmap(lambda i: worker_stream(k_workers, i))(index)
        return run_keys_, jax.vmap(sampler_init)(sampler_keys)

    return programs.jit(setup_all, "sim.setup_workers")


def init_state(sim: Sim, role: ServerRole) -> SimState:
    """The state before the first update: fresh server (the role's) and workers, the initial
    evaluation, no jobs yet."""
    role.evaluate_initial()
    rng = np.random.default_rng(sim.config.train.seed).bit_generator.state
    n = sim.config.workers.count
    theta = role.server.params
    clock = {"server_busy": False, "published_version": 0, "last_pull": [None] * n, "lead": [0.0] * n,
             "finish": [0.0] * n, "published_at": [0.0, 0.0]}
    return SimState(role.server, _fresh_workers(sim), (), 0, (), rng, 0, 0, 0, (theta, theta), clock, {},
                    tuple(role.evals))


def _templates(sim: Sim) -> tuple[ServerState, Worker, tuple[Array, Batch, Array]]:
    """Shapes and dtypes of the server state, one worker and one job's arrays (``jax.eval_shape``)."""
    return jax.eval_shape(lambda key: _template_parts(sim, key), jax.random.PRNGKey(0))


def _template_parts(sim: Sim, key: Array) -> tuple[ServerState, Worker, tuple[Array, Batch, Array]]:
    from asynccorr.learners.build import build
    from asynccorr.schemes.registry import correction_for

    _, optimizer = build(sim.config)
    k_params, k_workers = jax.random.split(key)
    params = sim.learner.init(k_params)
    run_key, sampler_key = worker_stream(k_workers, 0)
    tangent = jnp.zeros((_tangent_size(sim),), jnp.float32)
    worker = Worker(run_key, sim.learner.sampler_init(sampler_key),
                    jnp.zeros((_look_ahead_size(sim),), jnp.float32), tangent)
    batch, _ = sim.learner.sample(run_key, worker.sampler, params)
    server = init_server(params, optimizer, correction_for(sim.scheme.name, sim.config), sim.learner, k_params)
    return server, worker, (params, batch, params, tangent)


def _identity(sim: Sim) -> dict[str, Any]:
    """What a checkpoint must say to resume this simulation."""
    return {"backend": "sim", "scheme": sim.scheme.name, "workers": sim.config.workers.count}


_JOB_SCALARS = ("worker", "version", "target_version", "pulled", "post", "compute")


def state_to_checkpoint(sim: Sim, state: SimState) -> Checkpoint:
    """A ``SimState`` as named arrays (pytree leaves, metric columns) plus JSON (everything else)."""
    trees = {"server": state.server, "workers": state.workers,
             "jobs": tuple((job.params, job.batch, job.target, job.tangent) for job in state.jobs),
             "published": state.published}
    clock = dict(state.clock)
    clock["last_pull"] = [None if p is None else [int(p[0]), float(p[1])] for p in clock["last_pull"]]
    info = {
        "rng": state.rng, "events": [list(e) for e in state.events],
        "jobs": [[getattr(job, f) for f in _JOB_SCALARS] for job in state.jobs], "queued": state.queued,
        "version": state.version, "dropped": state.dropped, "clock": clock,
    }
    return run_checkpoint(state.iteration, _identity(sim), trees, state.metrics, state.evals, info)


def state_from_checkpoint(sim: Sim, ckpt: Checkpoint) -> SimState:
    """Inverse of ``state_to_checkpoint`` for the same config and scheme."""
    info = ckpt.info
    server_t, worker_t, job_t = _templates(sim)
    scalars = info.get("jobs", [])
    templates = {"server": server_t, "workers": tuple(worker_t for _ in range(sim.config.workers.count)),
                 "jobs": tuple(job_t for _ in scalars), "published": (job_t[0], job_t[0])}
    trees, metrics, evals = restore_run(ckpt, _identity(sim), templates)
    jobs = tuple(Job(int(s[0]), params, int(s[1]), batch, target, int(s[2]), float(s[3]), float(s[4]), float(s[5]),
                     tangent) for (params, batch, target, tangent), s in zip(trees["jobs"], scalars))
    return SimState(
        server=trees["server"], workers=trees["workers"], jobs=jobs, queued=int(info["queued"]),
        events=tuple((float(t), int(k), int(i)) for t, k, i in info["events"]),
        rng=info["rng"], version=int(info["version"]), iteration=ckpt.iteration, dropped=int(info["dropped"]),
        published=tuple(trees["published"]), clock=info["clock"], metrics=metrics, evals=tuple(evals),
    )


def run_sim(config: ExperimentConfig, scheme_name: str, hooks: RunHooks = NO_HOOKS) -> RunResult:
    """Simulate ``config.train.iterations`` server updates of ``scheme_name`` (from ``hooks.resume`` if given)."""
    role = ServerRole(config, scheme_name, hooks, measure=True, diagnose=True)
    sim = setup(role)
    state = state_from_checkpoint(sim, hooks.resume) if hooks.resume is not None else init_state(sim, role)
    loop = _Loop(sim, role, state)
    try:
        return loop.run()
    except KeyboardInterrupt:
        raise TrainingInterrupted(role.result("interrupted")) from None


class _Loop:
    """The simulated workers and the server's queue around the server role: mutable working
    copies of a ``SimState``; ``snapshot()`` turns them and the role's state back into a value
    (the role takes it at evaluation points when a checkpoint is due)."""

    def __init__(self, sim: Sim, role: ServerRole, state: SimState) -> None:
        self.sim, self.role = sim, role
        role.restore(state.server, state.version, state.iteration, state.dropped, state.metrics, list(state.evals))
        role.snapshot = lambda: state_to_checkpoint(sim, self.snapshot())
        self.workers = list(state.workers)
        split = len(state.jobs) - state.queued
        self.jobs: dict[int, Job] = {job.worker: job for job in state.jobs[:split]}
        self.queue: list[Job] = list(state.jobs[split:])
        self.events = [tuple(e) for e in state.events]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state.rng
        self.published = tuple(state.published)  # (theta, theta of the previous version: pipelined)
        self.clock = {k: (list(v) if isinstance(v, list) else v) for k, v in state.clock.items()}

    # -- the value

    def snapshot(self) -> SimState:
        role = self.role
        assert not role.pending, "snapshots are taken at evaluation points only"
        jobs = tuple(self.jobs[i] for i in sorted(self.jobs)) + tuple(self.queue)
        clock = {k: (list(v) if isinstance(v, list) else v) for k, v in self.clock.items()}
        return SimState(role.server, tuple(self.workers), jobs, len(self.queue), tuple(self.events),
                        self.rng.bit_generator.state, role.version, role.iteration, role.dropped, self.published,
                        clock, role.metrics, tuple(role.evals))

    # -- the workers (the worker role's code at simulated moments)

    def sample(self, i: int, theta: Array) -> Batch:
        """Worker i's next batch with ``theta`` (its key stream and sampler advance)."""
        worker = self.workers[i]
        run_key, batch, sampler = self.sim.ops.next_batch(worker.key, worker.sampler, theta)
        self.workers[i] = worker._replace(key=run_key, sampler=sampler)
        return batch

    def durations(self, i: int) -> tuple[float, float]:
        """(before the pull, after it) of worker i's next job: phase costs x speed x one jitter draw."""
        mult = self.sim.delays.duration(self.rng, 1.0, self.sim.speeds[i])
        phases, before, after, pulled = self.sim.scheme.phases, 0.0, 0.0, False
        for phase in phases:
            if phase == PULL:
                pulled = True
                continue
            cost = self.sim.costs.phases[phase] * mult
            if pulled:
                after += cost
            else:
                before += cost
        return before, after

    def message(self, job: Job) -> Message:
        """What the worker ships: the worker role's compute on what it held (pure functions)."""
        sim = self.sim
        pre = pre_pull(sim.ops, sim.scheme, job.params, job.batch)
        g, product, losses = post_pull(sim.ops, sim.scheme, job.params, job.batch, job.target, pre, job.tangent)
        if sim.step_scale is not None:  # secant, "previous": its next tangent is this direction times the step
            self.workers[job.worker] = self.workers[job.worker]._replace(tangent=sim.step_scale * g)
        gap, tangent, tangent_product = secant_fields(sim.scheme, product, job.tangent)
        nan = float("nan")
        return Message(job.worker, job.version, job.target_version, g, gap, job.batch if sim.ship_batch else None,
                       nan if losses is None else losses.policy_loss, nan if losses is None else losses.value_loss,
                       job.compute, job.params if sim.ship_params else None, (), tangent, tangent_product)

    # -- the asynchronous loop

    def start(self, i: int, now: float) -> None:
        """Worker i pulls the published parameters, samples, and computes until its pull or its send."""
        theta, version = self.published[0], self.clock["published_version"]
        batch = self.sample(i, theta)
        before, after = self.durations(i)
        tangent = self.workers[i].tangent
        if PULL in self.sim.scheme.phases:
            self.jobs[i] = Job(i, theta, version, batch, theta, version, now, after, before + after, tangent)
            heapq.heappush(self.events, (now + before, PULLED, i))
        else:
            self.jobs[i] = Job(i, theta, version, batch, theta, version, now, 0.0, before, tangent)
            heapq.heappush(self.events, (now + before, SENT, i))

    def pull(self, i: int, now: float) -> None:
        """Worker i's mid-job pull: its tangent's target is fixed now."""
        job = self.jobs[i]
        theta = self.published[0]
        target = theta
        version = self.clock["published_version"]
        if self.sim.scheme.protocol == "look-ahead":
            previous = self.clock["last_pull"][i]  # [version, time] of its previous mid-job pull
            last = None if previous is None else (self.workers[i].last_params, int(previous[0]), float(previous[1]))
            target = aim(theta, version, now, last, self.clock["lead"][i])
            self.workers[i] = self.workers[i]._replace(last_params=theta)
            self.clock["last_pull"][i] = [version, now]
        self.jobs[i] = job._replace(target=target, target_version=version, pulled=now)
        heapq.heappush(self.events, (now + job.post, SENT, i))

    def send(self, i: int, now: float) -> None:
        """Worker i's message joins the server's queue; the worker waits until the server takes it."""
        job = self.jobs.pop(i)
        self.clock["lead"][i] = now - job.pulled
        self.queue.append(job)
        if not self.clock["server_busy"]:
            self.serve(now)

    def serve(self, now: float) -> None:
        """The server takes messages off its queue until one is applied; a dropped one's worker
        starts its next job at once, an applied one's when the update is published."""
        role = self.role
        while self.queue and not role.done:
            job = self.queue.pop(0)
            done = now + self.sim.costs.server
            if role.receive(self.message(job), at=done, flush=False):
                if job.worker in role.replies:  # secant, "applied": the update, i's next tangent (with the
                    reply = role.replies.pop(job.worker)  # reply it gets at SERVER_DONE; held here, as its state)
                    self.workers[job.worker] = self.workers[job.worker]._replace(tangent=reply)
                self.clock["server_busy"] = True
                heapq.heappush(self.events, (done, SERVER_DONE, job.worker))
                role.flush_if_due()
                return
            self.start(job.worker, now)
        self.clock["server_busy"] = False

    def finish(self, i: int, now: float) -> None:
        """The server finished worker i's update: publish it (the reply to i's push), i starts
        its next job, the server takes the next message."""
        self.published = (self.role.server.params, self.published[0])
        self.clock["published_version"] = self.role.version
        self.clock["server_busy"] = False
        self.start(i, now)
        self.serve(now)

    def run_async(self) -> None:
        if not self.jobs and not self.queue and not self.events:
            for i in range(self.sim.config.workers.count):
                self.start(i, 0.0)
        handlers = {SERVER_DONE: self.finish, PULLED: self.pull, SENT: self.send}
        while not self.role.done:
            check_interrupt()
            now, kind, i = heapq.heappop(self.events)
            handlers[kind](i, now)

    # -- the synchronous rounds

    def run_rounds(self) -> None:
        """``sync``: round r at theta_r; ``sync-pipelined``: round r at theta_{r-1}, overlapping the
        server's apply of round r - 1; its corrected variant pulls theta_r mid-job (residual 0)."""
        sim, role, clock = self.sim, self.role, self.clock
        count, pipelined = sim.config.workers.count, sim.scheme.pipelined
        corrected = PULL in sim.scheme.phases
        while not role.done:
            check_interrupt()
            r = role.version
            lagged = pipelined and r > 0
            theta = self.published[1] if lagged else self.published[0]  # theta_{r-1} or theta_r
            base_time = clock["published_at"][0 if lagged else 1]  # when theta_{r-1} / theta_r was published
            now_r = clock["published_at"][1]  # theta_r's publication
            msgs, finish = [], []
            for i in range(count):
                batch = self.sample(i, theta)
                before, after = self.durations(i)
                begin = max(clock["finish"][i], base_time) if pipelined else now_r
                end = max(begin + before, now_r) + after if corrected else begin + before + after
                target = self.published[0] if corrected else theta
                job = Job(i, theta, r - 1 if lagged else r, batch, target, r, begin, after, before + after,
                          self.workers[i].tangent)
                msgs.append(self.message(job))
                finish.append(end)
            clock["finish"] = finish
            done = max(max(finish), now_r) + sim.costs.server
            staleness = 1 if lagged else 0
            role.apply_round(msgs, done, residual=0 if corrected else staleness)
            self.published = (role.server.params, self.published[0])
            self.clock["published_version"] = role.version
            clock["published_at"] = [now_r, done]
            role.flush_if_due()

    def run(self) -> RunResult:
        if self.sim.scheme.synchronous:
            self.run_rounds()
        else:
            self.run_async()
        return self.role.result()
