"""Shared fixtures: small configs that keep the suite fast."""

from __future__ import annotations

import signal

import jax
import pytest

from asynccorr.config import LearnerConfig
from asynccorr.envs import make
from asynccorr.learner import make_learner

# A shell that starts the suite in the background leaves SIGINT ignored, and an ignored signal
# stays ignored across exec: the Ctrl-C tests' child processes would never see their Ctrl-C.
# A handler (not SIG_IGN) here is reset to the default in every child, which Python then catches.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
