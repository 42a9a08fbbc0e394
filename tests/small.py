"""Small configs and learners the specifications share: a short run of the default experiment on a
small network, and a real learner whose direction field is a quadratic's gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from asynccorr.config import ExperimentConfig, with_overrides
from asynccorr.learners.base import Learner, Losses
from asynccorr.learners.build import make_optimizer


def small_config(**sections) -> ExperimentConfig:
    base = with_overrides(
        ExperimentConfig(),
        name="spec",
        learner={"policy_hidden": (8,), "value_hidden": (8,), "rollout_states": 8, "reset_states": 8, "horizon": 5},
        train={"iterations": 6, "eval_every": 3},
        workers={"count": 1},
    )
    return with_overrides(base, **sections)


def quadratic_learner(dim: int = 6, seed: int = 0) -> tuple[Learner, jax.Array, jax.Array]:
    """A real learner whose direction field is the gradient of a quadratic: F(p) = A p - b."""
    ka, kb = jax.random.split(jax.random.PRNGKey(seed))
    m = jax.random.normal(ka, (dim, dim))
    a = m @ m.T / dim + jnp.eye(dim)
    b = jax.random.normal(kb, (dim,))

    def direction(p, batch):
        del batch
        return a @ p - b, Losses(0.5 * p @ a @ p - b @ p, jnp.zeros(()))

    def direction_jvp(p, batch, tangent):
        (f, loss), (jf, _) = jax.jvp(lambda q: direction(q, batch), (p,), (tangent,))
        return f, jf, loss

    learner = Learner(env=None, env_params=None, config=None, num_policy=dim // 2, num_value=dim - dim // 2,
                      init=None, unravel=None, act=None, value=None, returns=None, losses=None,
                      direction=direction, direction_jvp=direction_jvp, linearize=None,
                      sampler_init=lambda key: jnp.zeros(()), sample=lambda key, sampler, p: (jnp.zeros(3), sampler))
    return learner, a, b


def sgd(learner):
    return make_optimizer(ExperimentConfig().optim.__class__(name="sgd", policy_lr=0.01, value_lr=0.01),
                          learner.num_policy, learner.num_value)
