"""Shared fixtures: small configs that keep the suite fast."""

from __future__ import annotations

import jax
import pytest

from asynccorr.config import LearnerConfig
from asynccorr.envs import make
from asynccorr.learner import make_learner


@pytest.fixture(scope="session")
def kinematic():
    return make("kinematic")


def small_learner(env_name: str = "kinematic", dtype=None, **overrides):
    """A learner with a small batch and short horizon (optionally tiny nets)."""
    env, params = make(env_name)
    cfg = LearnerConfig(**{"rollout_states": 8, "reset_states": 8, "horizon": 8, **overrides})
    return make_learner(env, params, cfg) if dtype is None else make_learner(env, params, cfg, dtype=dtype)


def sample_batch(learner, seed: int = 0):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    params = jax.jit(learner.init)(k1)
    batch, _ = jax.jit(learner.sample)(k3, jax.jit(learner.sampler_init)(k2), params)
    return params, batch
