"""The sequential backend: the plain reference trainer, one worker, always-fresh directions.

This is the reference every asynchronous scheme is compared with: each server
update applies ``F(params, batch)`` computed at the current parameters. A
training step reads top to bottom (PureJaxRL style) and runs inside
``lax.scan`` for ``eval_every`` iterations between evaluations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asynccorr.backends.checkpoint import Checkpoint, restore_run, run_checkpoint
from asynccorr.backends.protocol import (
    BASE_COLUMNS,
    NO_HOOKS,
    Recorder,
    RunHooks,
    RunResult,
    TrainingInterrupted,
    check_interrupt,
)
from asynccorr.compile import programs
from asynccorr.config import ExperimentConfig
from asynccorr.learners.base import Learner, SamplerState
from asynccorr.learners.build import build, run_keys, worker_stream
from asynccorr.learners.evaluation import EvalRecord
from asynccorr.schemes.registry import SEQUENTIAL

Array = jax.Array


class TrainState(NamedTuple):
    params: Array  # flat [theta; phi]
    opt_state: optax.OptState
    sampler: SamplerState
    key: Array
    iteration: Array


class StepMetrics(NamedTuple):
    policy_loss: Array
    value_loss: Array
    direction_norm: Array
    update_norm: Array
    importance_ratio: Array  # a3c: 1 and 0 (every batch is fresh); gpi: nan
    policy_kl: Array


@functools.lru_cache(maxsize=16)
def chunk_runner(learner: Learner, optimizer: optax.GradientTransformation) -> Callable[[TrainState, int], tuple[TrainState, StepMetrics]]:
    """The jitted ``(state, n) -> (state after n steps, their metrics)`` the trainer runs between
    evaluation points (one ``lax.scan``; ``n`` static)."""
    step = make_step(learner, optimizer)
    return programs.jit(lambda s, n: jax.lax.scan(lambda c, _: step(c), s, None, length=n), "trainer.chunk",
                        static_argnums=(1,))


@functools.lru_cache(maxsize=16)
def initial_state(learner: Learner, optimizer: optax.GradientTransformation) -> Callable[[Array], TrainState]:
    """The jitted ``seed -> init_state(learner, optimizer, seed)`` (one program: op by op, the initial
    state costs about a second of start-up in dispatches)."""
    return programs.jit(lambda seed: init_state(learner, optimizer, seed), "trainer.init")


def init_state(learner: Learner, optimizer: optax.GradientTransformation, seed: int | Array) -> TrainState:
    k_params, k_workers = run_keys(seed)
    params = learner.init(k_params)
    run_key, sampler_key = worker_stream(k_workers, 0)
    return TrainState(params, optimizer.init(params), learner.sampler_init(sampler_key), run_key,
                      jnp.zeros((), jnp.int32))


def make_step(learner: Learner, optimizer: optax.GradientTransformation) -> Callable[[TrainState], tuple[TrainState, StepMetrics]]:
    """One sequential iteration: sample a batch, fresh direction, optimizer update."""

    def step(state: TrainState) -> tuple[TrainState, StepMetrics]:
        key, k_sample = jax.random.split(state.key)
        batch, sampler = learner.sample(k_sample, state.sampler, state.params)
        direction, losses = learner.direction(state.params, batch)
        updates, opt_state = optimizer.update(direction, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = StepMetrics(losses.policy_loss, losses.value_loss,
                              jnp.linalg.norm(direction), jnp.linalg.norm(updates),
                              *learner.off_policy(state.params, batch))
        return TrainState(params, opt_state, sampler, key, state.iteration + 1), metrics

    return step


# ----------------------------------------------------------------------------- the sequential trainer

SEQUENTIAL_COLUMNS = (*BASE_COLUMNS, "policy_loss", "value_loss", "grad_error", "policy_grad_error",
                      "stale_grad_error", "direction_norm", "correction_norm", "update_norm", "importance_ratio", "policy_kl")


def _sequential_columns(metrics: StepMetrics, first: int, config: ExperimentConfig) -> dict[str, np.ndarray]:
    """Rows ``first .. first + n - 1`` in the asynchronous backends' layout: one worker, never stale."""
    n = len(metrics.policy_loss)
    columns: dict[str, np.ndarray] = {name: np.asarray(getattr(metrics, name)) for name in StepMetrics._fields}
    columns["iteration"] = np.arange(first, first + n)
    columns["time"] = columns["iteration"] * config.workers.direction_time
    columns["worker"] = np.zeros(n, np.int64)
    columns["staleness"] = np.zeros(n, np.int64)
    for name in ("grad_error", "policy_grad_error", "stale_grad_error", "correction_norm"):
        columns[name] = np.zeros(n)
    return {k: columns[k] for k in SEQUENTIAL_COLUMNS}


IDENTITY = {"backend": "sequential"}  # what a checkpoint must say to resume a sequential run


def _sequential_checkpoint(state: TrainState, metrics: dict[str, np.ndarray], evals: list[EvalRecord],
                           done: int) -> Checkpoint:
    return run_checkpoint(done, IDENTITY, {"state": state}, metrics, evals)


def _sequential_restore(ckpt: Checkpoint, template: TrainState
                        ) -> tuple[TrainState, dict[str, np.ndarray], list[EvalRecord]]:
    trees, metrics, evals = restore_run(ckpt, IDENTITY, {"state": template})
    return trees["state"], metrics, evals


def run_sequential(config: ExperimentConfig, scheme_name: str = SEQUENTIAL, hooks: RunHooks = NO_HOOKS) -> RunResult:
    """Train with always-fresh directions for ``config.train.iterations`` updates.

    Runs ``lax.scan`` chunks between evaluation points and hands each chunk's metrics to
    the run protocol's ``Recorder`` (divergence check, evaluation, checkpoint, flush). On
    divergence the run stops with the metrics up to and including the first bad update k
    and the parameters the trainer held before it (after k - 1 updates: the chunk is
    replayed from its start for the rows before k).
    """
    assert scheme_name == SEQUENTIAL, scheme_name
    learner, optimizer = build(config)
    seed = config.train.seed
    run = chunk_runner(learner, optimizer)
    total, every = config.train.iterations, config.train.eval_every

    if hooks.resume is not None:
        template = jax.eval_shape(lambda: init_state(learner, optimizer, seed))
        state, metrics, evals = _sequential_restore(hooks.resume, template)
    else:
        state, metrics, evals = initial_state(learner, optimizer)(np.int32(seed)), {}, []
    recorder = Recorder(config, learner, hooks, metrics, evals, done=int(state.iteration))
    recorder.evaluate_initial(state.params)
    done = int(state.iteration)
    committed = state  # the state at the last evaluation point
    try:
        while done < total:
            check_interrupt()
            n = min(every - done % every, total - done)
            state, m = run(committed, n)
            columns = _sequential_columns(jax.device_get(m), done + 1, config)
            diverged = recorder.flush(
                columns, state.params,
                before=lambda bad, start=committed: run(start, bad)[0].params if bad > 0 else start.params,
                snapshot=lambda s=state, d=done + n: _sequential_checkpoint(s, recorder.metrics, recorder.evals, d))
            if diverged is not None:
                return diverged
            committed, done = state, done + n
    except KeyboardInterrupt:
        # the parameters that match the rows recorded so far (the chunk's, if they were recorded)
        rows = len(recorder.metrics.get("iteration", ()))
        params = state.params if rows == int(state.iteration) else committed.params
        extra = None if rows else {k: np.zeros(0) for k in SEQUENTIAL_COLUMNS}
        raise TrainingInterrupted(recorder.result(params, "interrupted", extra=extra)) from None
    return recorder.result(state.params)
