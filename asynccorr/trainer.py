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
    status: str = "completed"  # "completed", "diverged" or "interrupted" (Ctrl-C)
    diverged_at: int | None = None  # first server update whose metrics were non-finite or beyond the bound
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


class RunHooks(NamedTuple):
    """How a backend reports to the runs layer while it trains (every field optional).

    * ``on_chunk(done, record)``: progress, after each periodic evaluation;
    * ``on_flush(metrics, evals)``: every metric row and evaluation so far, at each
      evaluation point (the logging interval), so a crash loses at most one interval;
    * ``on_checkpoint(checkpoint)``: the backend's whole state, at the first evaluation
      point after each ``train.checkpoint_every`` updates;
    * ``resume``: a checkpoint to continue from instead of starting afresh.
    """

    on_chunk: Callable[[int, EvalRecord], None] | None = None
    on_flush: Callable[[dict[str, np.ndarray], list[EvalRecord]], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    resume: Checkpoint | None = None


# ----------------------------------------------------------------------------- shared by the backends

DIVERGENCE_COLUMNS = ("policy_loss", "value_loss", "direction_norm", "update_norm")
BOUNDED_COLUMNS = ("policy_loss", "value_loss")


def first_diverged_row(columns: dict[str, np.ndarray], bound: float) -> int | None:
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


def concat_columns(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Append rows ``b`` to ``a`` column by column (``a`` may be empty)."""
    if not a:
        return dict(b)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def head_columns(columns: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in columns.items()}


def is_eval_point(done: int, config: ExperimentConfig) -> bool:
    """Evaluation (and metrics flush) after every ``eval_every`` updates and at the end."""
    return done % config.train.eval_every == 0 or done == config.train.iterations


def checkpoint_due(done: int, last: int, config: ExperimentConfig) -> bool:
    """At an evaluation point ``done``: whether a ``checkpoint_every`` boundary was passed since
    the checkpoint at ``last`` (never at the end of the run, which writes the final results)."""
    every = config.train.checkpoint_every
    return every > 0 and done < config.train.iterations and done // every > last // every


# ----------------------------------------------------------------------------- the sequential trainer

SEQUENTIAL_COLUMNS = ("iteration", "time", "worker", "staleness", "policy_loss", "value_loss", "grad_error",
                      "policy_grad_error", "stale_grad_error", "direction_norm", "correction_norm", "update_norm")


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


def _sequential_checkpoint(state: TrainState, metrics: dict[str, np.ndarray], evals: list[EvalRecord],
                           done: int) -> Checkpoint:
    arrays, names = pack_columns(metrics)
    arrays.update(pack_tree("state", state))
    return Checkpoint(done, arrays, {"backend": "sequential", "columns": names, "evals": evals_to_json(evals)})


def _sequential_restore(ckpt: Checkpoint, template: TrainState
                        ) -> tuple[TrainState, dict[str, np.ndarray], list[EvalRecord]]:
    if ckpt.info.get("backend") != "sequential":
        raise CheckpointError(f"checkpoint was written by backend {ckpt.info.get('backend')!r}, not sequential")
    state = unpack_tree("state", ckpt.arrays, template)
    return state, unpack_columns(ckpt.arrays, ckpt.info["columns"]), evals_from_json(ckpt.info["evals"])


def train_sequential(
    config: ExperimentConfig,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
    hooks: RunHooks | None = None,
) -> RunResult:
    """Train with always-fresh directions for ``config.train.iterations`` updates.

    Runs ``lax.scan`` chunks between evaluation points; after each chunk the metrics are
    checked for divergence (``first_diverged_row``), flushed, and a checkpoint is taken
    when due. On divergence the run stops with the metrics up to and including the first
    bad update k and the parameters the trainer held before it (after k - 1 updates).
    """
    hooks = hooks or RunHooks(on_chunk=on_chunk)
    learner, optimizer = build(config)
    key = jax.random.PRNGKey(config.train.seed)
    run = _chunk_runner(learner, optimizer)
    total, every = config.train.iterations, config.train.eval_every

    if hooks.resume is not None:
        template = jax.eval_shape(lambda k: init_state(learner, optimizer, k), key)
        state, metrics, evals = _sequential_restore(hooks.resume, template)
    else:
        state = init_state(learner, optimizer, key)
        metrics, evals = {}, [EvalRecord(0, evaluate(learner, state.params)[0])]
    done = last_checkpoint = int(state.iteration)
    committed = (state, metrics, evals)  # one assignment: always a consistent triple for Ctrl-C
    try:
        while done < total:
            n = min(every - done % every, total - done)
            state, m = run(state, n)
            columns = _sequential_columns(jax.device_get(m), done + 1, config)
            bad = first_diverged_row(columns, config.train.divergence_loss)
            if bad is not None:
                chunk_start = committed[0]
                before = run(chunk_start, bad)[0] if bad > 0 else chunk_start
                return diverged_result(learner, np.asarray(before.params),
                                 concat_columns(metrics, head_columns(columns, bad + 1)), evals, done + bad + 1)
            done += n
            record = EvalRecord(done, evaluate(learner, state.params)[0])
            metrics, evals = concat_columns(metrics, columns), [*evals, record]
            committed = (state, metrics, evals)
            if hooks.on_chunk is not None:
                hooks.on_chunk(done, record)
            if hooks.on_checkpoint is not None and checkpoint_due(done, last_checkpoint, config):
                hooks.on_checkpoint(_sequential_checkpoint(state, metrics, evals, done))
                last_checkpoint = done
            if hooks.on_flush is not None:
                hooks.on_flush(metrics, evals)
    except KeyboardInterrupt:
        state, metrics, evals = committed
        metrics = metrics or {k: np.zeros(0) for k in SEQUENTIAL_COLUMNS}
        _, traj = evaluate(learner, state.params)
        raise TrainingInterrupted(RunResult(np.asarray(state.params), metrics, evals, traj,
                                            status="interrupted")) from None
    _, traj = evaluate(learner, state.params)
    return RunResult(np.asarray(state.params), metrics, evals, traj)


def diverged_result(learner: Learner, params: np.ndarray, metrics: dict[str, np.ndarray],
                    evals: list[EvalRecord], at: int, dropped: int = 0) -> RunResult:
    """The result of a run that diverged at update ``at``: ``params`` are those before that update
    (after ``at - 1`` updates), evaluated once more unless already evaluated."""
    summary, traj = evaluate(learner, params)
    if evals[-1].iteration != at - 1:
        evals = [*evals, EvalRecord(at - 1, summary)]
    return RunResult(params, metrics, evals, traj, status="diverged", diverged_at=at, dropped=dropped)
