"""The ``sim`` backend: a deterministic event simulation of N workers.

One process, one simulated clock. Each worker loops: pull ``(theta_k, k)``,
sample a batch with its own exploratory rollouts, compute for a duration drawn
from the delay model (scaled by the scheme's relative compute cost), send. The
server applies messages in order of arrival (ties: lower worker id first), so
staleness ``tau = k_now - k_pulled`` *comes out of the timing* and is recorded
per update, never assumed. Same seed, same results, byte for byte.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from asynccorr.config import ConfigError, ExperimentConfig
from asynccorr.delays import DelayModel
from asynccorr.evaluation import evaluate
from asynccorr.learner import Batch, SamplerState
from asynccorr.schemes import Scheme, correction_for, get_scheme
from asynccorr.server import UpdateMetrics, init_server, make_async_update, make_sync_update
from asynccorr.trainer import EvalRecord, RunResult, build, worker_stream

Array = jax.Array


class Worker(NamedTuple):
    key: Array
    sampler: SamplerState


class Job(NamedTuple):
    params: Array  # theta_i as pulled
    version: int  # k at the pull
    batch: Batch


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


def run_sim(
    config: ExperimentConfig,
    scheme_name: str,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
) -> RunResult:
    """Simulate ``config.train.iterations`` server updates of ``scheme_name``."""
    scheme = get_scheme(scheme_name)
    learner, optimizer = build(config)
    check_scheme_fits(scheme, learner.num_params, config)
    correction = correction_for(scheme.name, config.schemes)
    seed, count = config.train.seed, config.workers.count

    key = jax.random.PRNGKey(seed)
    k_params, k_workers = jax.random.split(key)
    server = init_server(learner.init(k_params), optimizer, correction)
    workers = []
    for i in range(count):
        run_key, sampler_key = worker_stream(k_workers, i)
        workers.append(Worker(run_key, learner.sampler_init(sampler_key)))
    rng = np.random.default_rng(seed)
    delays = delay_model(config)
    speeds = delays.worker_speeds(count)
    base = compute_cost(scheme, config)
    sample = jax.jit(learner.sample)

    def pull(i: int) -> Batch:
        """Worker i pulls theta_k and samples its next batch with it."""
        run_key, k_sample = jax.random.split(workers[i].key)
        batch, sampler = sample(k_sample, workers[i].sampler, server.params)
        workers[i] = Worker(run_key, sampler)
        return batch

    rows: list[tuple[int, float, int, int]] = []  # iteration, time, worker, staleness
    pending: list[UpdateMetrics] = []
    fetched: list[UpdateMetrics] = []
    evals = [EvalRecord(0, evaluate(learner, server.params)[0])]
    total, every = config.train.iterations, config.train.eval_every

    def checkpoint(done: int) -> None:
        fetched.extend(jax.device_get(pending))
        pending.clear()
        record = EvalRecord(done, evaluate(learner, server.params)[0])
        evals.append(record)
        if on_chunk is not None:
            on_chunk(done, record)

    dropped = 0
    if scheme.synchronous:
        update = make_sync_update(learner, optimizer)
        now = 0.0
        for it in range(1, total + 1):
            batches = [pull(i) for i in range(count)]
            now += max(delays.duration(rng, base, speeds[i]) for i in range(count))
            server, metrics = update(server, jax.tree.map(lambda *b: jax.numpy.stack(b), *batches))
            rows.append((it, now, -1, 0))
            pending.append(metrics)
            if it % every == 0 or it == total:
                checkpoint(it)
    else:
        update = make_async_update(learner, optimizer, scheme, correction)
        version = 0
        jobs: dict[int, Job] = {}
        events: list[tuple[float, int]] = []

        def start(i: int, now: float) -> None:
            jobs[i] = Job(server.params, version, pull(i))
            heapq.heappush(events, (now + delays.duration(rng, base, speeds[i]), i))

        for i in range(count):
            start(i, 0.0)
        it = dropped = 0
        while it < total:
            now, i = heapq.heappop(events)
            job = jobs.pop(i)
            staleness = version - job.version
            if scheme.drops_stale and staleness > config.schemes.staleness_bound:
                # discarded: no server update, no version bump; the worker pulls afresh
                dropped += 1
                start(i, now)
                continue
            it += 1
            server, metrics = update(server, job.params, job.batch, np.int32(staleness))
            version += 1
            rows.append((it, now, i, staleness))
            pending.append(metrics)
            start(i, now)
            if it % every == 0 or it == total:
                checkpoint(it)

    columns: dict[str, Any] = {
        "iteration": np.array([r[0] for r in rows], np.int64),
        "time": np.array([r[1] for r in rows], np.float64),
        "worker": np.array([r[2] for r in rows], np.int64),
        "staleness": np.array([r[3] for r in rows], np.int64),
    }
    for name in UpdateMetrics._fields:
        columns[name] = np.array([getattr(m, name) for m in fetched], np.float64)
    _, trajectory = evaluate(learner, server.params)
    return RunResult(np.asarray(server.params), columns, evals, trajectory, dropped=dropped)
