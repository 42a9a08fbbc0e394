"""What every trainer and backend builds from an experiment config: the learner, the
server's optimizer, and the run's key streams.

One derivation of the keys for everyone: ``run_keys(seed)`` splits the seed into the
parameter-initialisation key and the workers' key, and ``worker_stream`` derives worker
``i``'s run and sampler keys from the latter. The sequential trainer is worker 0, so a
one-worker run on any backend reproduces its batches.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asynccorr.config import ExperimentConfig, LearnerConfig, OptimConfig, from_dict, to_dict
from asynccorr.envs import make
from asynccorr.learners.base import Learner
from asynccorr.learners.gpi import make_learner

Array = jax.Array


def block_learning_rates(policy_lr: float, value_lr: float, num_policy: int, num_value: int) -> Array:
    """Each parameter's step: the policy's, then the value's (built on the host and transferred: no op to
    compile at start-up)."""
    return jax.device_put(np.concatenate([np.full((num_policy,), policy_lr, np.float32),
                                          np.full((num_value,), value_lr, np.float32)]))


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
    learner = make_any_learner(env, env_params, from_dict(LearnerConfig, learner_cfg))
    optimizer = make_optimizer(from_dict(OptimConfig, optim_cfg), learner.num_policy, learner.num_value)
    if learner.server_transform is not None:
        optimizer = optax.chain(optimizer, learner.server_transform)
    return learner, optimizer


def make_any_learner(env: Any, env_params: Any, config: LearnerConfig, dtype: Any = jnp.float32) -> Learner:
    """The learner ``config.kind`` names: GPI through the model, model-free A3C, or value-based Q."""
    if config.kind == "a3c":
        from asynccorr.learners.a3c import make_a3c_learner

        return make_a3c_learner(env, env_params, config, dtype)
    if config.kind == "q":
        from asynccorr.learners.q import make_q_learner

        return make_q_learner(env, env_params, config, dtype)
    return make_learner(env, env_params, config, dtype)


def run_keys(seed: int) -> tuple[Array, Array]:
    """(parameter-initialisation key, workers' key) of the run with this seed."""
    k_params, k_workers = jax.random.split(jax.random.PRNGKey(seed))
    return k_params, k_workers


def server_key(seed: int) -> Array:
    """The server's own key (its draws from a central replay): apart from every worker's stream."""
    return jax.random.fold_in(run_keys(seed)[0], 1)


def worker_stream(workers_key: Array, index: int) -> tuple[Array, Array]:
    """(run key, sampler key) of worker ``index``: the same derivation for every
    backend and for the sequential trainer (worker 0), so one worker reproduces it."""
    run_key, sampler_key = jax.random.split(jax.random.fold_in(workers_key, index))
    return run_key, sampler_key
