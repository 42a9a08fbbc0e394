"""The A3C learner's hand-written building blocks against the field's libraries (distrax, rlax):
the learner keeps its own (a few lines each, no import cost on the default experiment's start-up),
and these pin them to the references."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from asynccorr.learners import a3c


def gaussians(seed: int, batch: int = 64, dims: int = 2):
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    mean_p, mean_q = (jax.random.normal(k, (batch, dims)) for k in keys[:2])
    log_std_p, log_std_q = (0.5 * jax.random.normal(k, (batch, dims)) for k in keys[2:4])
    action = jax.random.normal(keys[4], (batch, dims)) * 1.5
    return mean_p, log_std_p, mean_q, log_std_q, action


def test_the_gaussian_log_prob_kl_and_entropy_are_distrax_multivariate_normal_diag():
    mean_p, log_std_p, mean_q, log_std_q, action = gaussians(0)
    p = distrax.MultivariateNormalDiag(mean_p, jnp.exp(log_std_p))
    q = distrax.MultivariateNormalDiag(mean_q, jnp.exp(log_std_q))
    np.testing.assert_allclose(a3c.gaussian_log_prob(mean_p, log_std_p, action), p.log_prob(action),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a3c.gaussian_kl(mean_p, log_std_p, mean_q, log_std_q), p.kl_divergence(q),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a3c.gaussian_entropy(log_std_p), p.entropy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 0.95, 0.0])
def test_gae_is_rlax_truncated_gae_on_a_rollout_without_episode_ends(lam):
    """rlax reads the bootstrap of step t from ``values[t + 1]`` and cuts with the discount, so it
    cannot express a time-limit truncation (bootstrap, then cut the trace) inside a rollout: the
    comparison is on segments without one (tests/learners/test_a3c.py covers the cuts)."""
    steps, envs, gamma = 9, 4, 0.97
    k_cost, k_value = jax.random.split(jax.random.PRNGKey(1))
    costs = jax.random.uniform(k_cost, (steps, envs))
    values = jax.random.normal(k_value, (steps + 1, envs))
    done = jnp.zeros((steps, envs), bool)
    ours = a3c.gae(costs, values[:-1], values[1:], done, gamma, lam)
    ref = jax.vmap(lambda c, v: rlax.truncated_generalized_advantage_estimation(c, jnp.full(steps, gamma), lam, v),
                   in_axes=1, out_axes=1)(costs, values)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
