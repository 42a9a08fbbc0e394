"""The plain sequential trainer: one worker, always-fresh directions.

This is the reference every asynchronous scheme is compared with: each server
update applies ``F(params, batch)`` computed at the current parameters. A
training step reads top to bottom (PureJaxRL style) and runs inside
``lax.scan`` for ``eval_every`` iterations between evaluations.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asynccorr.config import ExperimentConfig, LearnerConfig, OptimConfig, from_dict, to_dict
from asynccorr.envs import make
from asynccorr.evaluation import TrackingSummary, Trajectory, evaluate
from asynccorr.learner import Learner, SamplerState, make_learner

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


def block_learning_rates(policy_lr: float, value_lr: float, num_policy: int, num_value: int) -> Array:
    return jnp.concatenate([jnp.full((num_policy,), policy_lr, jnp.float32),
                            jnp.full((num_value,), value_lr, jnp.float32)])


def make_optimizer(config: OptimConfig, num_policy: int, num_value: int) -> optax.GradientTransformation:
    """Descent on the flat vector: [clip] -> [adam] -> -lr, with separate actor/critic rates."""
    lr = block_learning_rates(config.policy_lr, config.value_lr, num_policy, num_value)
    parts = []
    if config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    if config.name == "adam":
        parts.append(optax.scale_by_adam())
    parts.append(optax.stateless(lambda updates, params=None: -lr * updates))
    return optax.chain(*parts)


def build(config: ExperimentConfig) -> tuple[Learner, optax.GradientTransformation]:
    """Learner and optimizer for an experiment config (memoised: runs that differ only
    in seed or length share them, and so share jit-compiled code)."""
    key = json.dumps([to_dict(config.env), to_dict(config.learner), to_dict(config.optim)], sort_keys=True)
    return _build(key)


@functools.lru_cache(maxsize=16)
def _build(key: str) -> tuple[Learner, optax.GradientTransformation]:
    env_cfg, learner_cfg, optim_cfg = json.loads(key)
    env, env_params = make(env_cfg["name"], **env_cfg["params"])
    learner = make_learner(env, env_params, from_dict(LearnerConfig, learner_cfg))
    return learner, make_optimizer(from_dict(OptimConfig, optim_cfg), learner.num_policy, learner.num_value)


@functools.lru_cache(maxsize=16)
def _chunk_runner(learner: Learner, optimizer: optax.GradientTransformation) -> Callable[[TrainState, int], tuple[TrainState, StepMetrics]]:
    step = make_step(learner, optimizer)
    return jax.jit(lambda s, n: jax.lax.scan(lambda c, _: step(c), s, None, length=n), static_argnums=1)


def worker_stream(workers_key: Array, index: int) -> tuple[Array, Array]:
    """(run key, sampler key) of worker ``index``: the same derivation for every
    backend and for the sequential trainer (worker 0), so one worker reproduces it."""
    run_key, sampler_key = jax.random.split(jax.random.fold_in(workers_key, index))
    return run_key, sampler_key


def init_state(learner: Learner, optimizer: optax.GradientTransformation, key: Array) -> TrainState:
    k_params, k_workers = jax.random.split(key)
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
                              jnp.linalg.norm(direction), jnp.linalg.norm(updates))
        return TrainState(params, opt_state, sampler, key, state.iteration + 1), metrics

    return step


class EvalRecord(NamedTuple):
    iteration: int
    summary: TrackingSummary


class RunResult(NamedTuple):
    params: np.ndarray
    metrics: dict[str, np.ndarray]  # per iteration
    evals: list[EvalRecord]
    trajectory: Trajectory  # final closed-loop tracking
    status: str = "completed"  # "completed", "diverged" (issue 6) or "interrupted" (Ctrl-C)
    diverged_at: int | None = None  # server iteration at which the run was declared diverged
    dropped: int = 0  # messages a drop-stale scheme discarded (not counted as iterations)
    events: tuple = ()  # real backends: worker events (dicts: started, ready, died, hung, replaced)


class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped a run: carries everything computed so far.

    Every backend raises it from ``KeyboardInterrupt`` after stopping its workers,
    with ``result.status == "interrupted"``; the runs layer writes the partial run
    and re-raises ``KeyboardInterrupt``.
    """

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"interrupted after {len(result.metrics.get('iteration', ()))} server updates")
        self.result = result


def train_sequential(
    config: ExperimentConfig,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
) -> RunResult:
    """Train with always-fresh directions for ``config.train.iterations`` updates."""
    learner, optimizer = build(config)
    state = init_state(learner, optimizer, jax.random.PRNGKey(config.train.seed))
    run = _chunk_runner(learner, optimizer)

    total, every = config.train.iterations, config.train.eval_every
    chunks: list[StepMetrics] = []
    evals = [EvalRecord(0, evaluate(learner, state.params)[0])]
    done = 0
    while done < total:
        n = min(every, total - done)
        state, m = run(state, n)
        done += n
        chunks.append(jax.device_get(m))
        record = EvalRecord(done, evaluate(learner, state.params)[0])
        evals.append(record)
        if on_chunk is not None:
            on_chunk(done, record)
    metrics = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in StepMetrics._fields}
    metrics["iteration"] = np.arange(1, total + 1)
    # the same columns as the asynchronous backends: one worker, never stale, simulated clock
    metrics["time"] = metrics["iteration"] * config.workers.direction_time
    metrics["worker"] = np.zeros(total, np.int64)
    metrics["staleness"] = np.zeros(total, np.int64)
    for name in ("grad_error", "policy_grad_error", "stale_grad_error", "correction_norm"):
        metrics[name] = np.zeros(total)
    order = ["iteration", "time", "worker", "staleness", "policy_loss", "value_loss", "grad_error",
             "policy_grad_error", "stale_grad_error", "direction_norm", "correction_norm", "update_norm"]
    metrics = {k: metrics[k] for k in order}
    _, traj = evaluate(learner, state.params)
    return RunResult(np.asarray(state.params), metrics, evals, traj)
