"""Specification of the GPI learner: losses, the direction field and its JVP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sample_batch, small_learner

from asynccorr.config import ConfigError, LearnerConfig


def _unit(key, n, dtype):
    d = jax.random.normal(key, (n,), dtype)
    return d / jnp.linalg.norm(d)


def test_model_based_policy_gradient_matches_central_finite_differences():
    with jax.enable_x64(True):
        learner = small_learner(dtype=jnp.float64, policy_hidden=(16, 16), value_hidden=(16, 16))
        params, batch = sample_batch(learner)
        direction, _ = jax.jit(learner.direction)(params, batch)
        grad_theta = direction[: learner.num_policy]
        J = jax.jit(lambda p: learner.losses(p, batch).policy_loss)
        eps = 1e-5
        for i in range(3):
            d = _unit(jax.random.PRNGKey(10 + i), learner.num_policy, jnp.float64)
            d_full = jnp.concatenate([d, jnp.zeros(learner.num_value)])
            fd = (J(params + eps * d_full) - J(params - eps * d_full)) / (2 * eps)
            np.testing.assert_allclose(float(grad_theta @ d), float(fd), rtol=1e-6, atol=1e-9)


def test_value_direction_is_the_semi_gradient_with_the_target_held_fixed():
    with jax.enable_x64(True):
        learner = small_learner(dtype=jnp.float64, policy_hidden=(16,), value_hidden=(16,))
        params, batch = sample_batch(learner, seed=1)
        direction, _ = jax.jit(learner.direction)(params, batch)
        grad_phi = direction[learner.num_policy:]
        target = jax.jit(learner.returns)(params, batch)  # evaluated once: held fixed
        obs = jax.vmap(learner.env.observation, in_axes=(0, None))(batch, learner.env_params)
        loss = jax.jit(lambda p: jnp.mean((learner.value(p, obs) - target) ** 2))
        eps = 1e-5
        d = _unit(jax.random.PRNGKey(3), learner.num_value, jnp.float64)
        d_full = jnp.concatenate([jnp.zeros(learner.num_policy), d])
        fd = (loss(params + eps * d_full) - loss(params - eps * d_full)) / (2 * eps)
        np.testing.assert_allclose(float(grad_phi @ d), float(fd), rtol=1e-6, atol=1e-9)


def test_direction_jvp_matches_dense_jacobian_on_a_small_net():
    with jax.enable_x64(True):
        learner = small_learner(dtype=jnp.float64, policy_hidden=(4,), value_hidden=(4,), horizon=5)
        params, batch = sample_batch(learner, seed=2)
        jac = jax.jit(jax.jacfwd(lambda p: learner.direction(p, batch)[0]))(params)
        assert jac.shape == (learner.num_params, learner.num_params)
        tangent = jax.random.normal(jax.random.PRNGKey(4), params.shape, jnp.float64)
        f, jf, _ = jax.jit(learner.direction_jvp)(params, batch, tangent)
        np.testing.assert_allclose(np.asarray(jf), np.asarray(jac @ tangent), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(f), np.asarray(jax.jit(learner.direction)(params, batch)[0]),
                                   rtol=1e-12)
        # linearize's map applied inside one jitted program (op by op, its trace alone took ~50 s)
        applied = jax.jit(lambda p, b, t: learner.linearize(p, b)[1](t))(params, batch, tangent)
        np.testing.assert_allclose(np.asarray(applied), np.asarray(jac @ tangent), rtol=1e-9, atol=1e-12)


def test_direction_jvp_matches_finite_difference_on_the_default_net():
    defaults = LearnerConfig()
    with jax.enable_x64(True):
        learner = small_learner(dtype=jnp.float64, policy_hidden=defaults.policy_hidden,
                                value_hidden=defaults.value_hidden, horizon=defaults.horizon)
        params, batch = sample_batch(learner, seed=3)
        tangent = jax.random.normal(jax.random.PRNGKey(5), params.shape, jnp.float64)
        _, jf, _ = jax.jit(learner.direction_jvp)(params, batch, tangent)
        F = jax.jit(lambda p: learner.direction(p, batch)[0])
        eps = 1e-6
        fd = (F(params + eps * tangent) - F(params - eps * tangent)) / (2 * eps)
        rel = float(jnp.linalg.norm(jf - fd) / jnp.linalg.norm(jf))
        assert rel < 1e-6, rel


def test_default_learner_runs_in_float32_with_documented_sizes():
    learner = small_learner()
    params, batch = sample_batch(learner)
    assert params.dtype == jnp.float32
    assert learner.num_policy == 5186 and learner.num_value == 5121  # quoted in experiments/paper.toml
    f, jf, _ = jax.jit(learner.direction_jvp)(params, batch, params)
    assert f.shape == jf.shape == params.shape
    assert bool(jnp.all(jnp.isfinite(f))) and bool(jnp.all(jnp.isfinite(jf)))


def test_jacobian_couples_actor_and_critic_blocks():
    """A change of the critic shifts the actor's direction (through V(x_n)) and vice versa."""
    learner = small_learner(policy_hidden=(16,), value_hidden=(16,))
    params, batch = sample_batch(learner)
    n_pi = learner.num_policy
    only_value = jnp.zeros_like(params).at[n_pi:].set(1.0)
    only_policy = jnp.zeros_like(params).at[:n_pi].set(1.0)
    direction_jvp = jax.jit(learner.direction_jvp)
    _, jf_v, _ = direction_jvp(params, batch, only_value)
    _, jf_p, _ = direction_jvp(params, batch, only_policy)
    assert float(jnp.linalg.norm(jf_v[:n_pi])) > 0.0
    assert float(jnp.linalg.norm(jf_p[n_pi:])) > 0.0


def test_batch_mixes_exploratory_rollout_states_and_reset_states():
    learner = small_learner(rollout_states=6, reset_states=10, sampler_steps=3)
    key = jax.random.PRNGKey(0)
    params = learner.init(key)
    sampler = learner.sampler_init(key)
    batch, sampler2 = jax.jit(learner.sample)(jax.random.PRNGKey(1), sampler, params)
    assert batch.x.shape == (16,)
    steps, start = np.asarray(batch.step), np.asarray(sampler.env_state.step)
    # advanced 3 steps, or restarted (a new episode's clock) if the episode ended on the way
    assert np.all((steps[:6] == start + 3) | (steps[:6] < 3))
    assert np.all(steps[6:] == 0)  # fresh from the reset distribution
    np.testing.assert_array_equal(np.asarray(sampler2.env_state.x), np.asarray(batch.x[:6]))


def test_exploratory_episode_clocks_start_staggered():
    learner = small_learner(rollout_states=64)
    clocks = np.asarray(learner.sampler_init(jax.random.PRNGKey(0)).env_state.step)
    assert clocks.min() >= 0 and clocks.max() < learner.env_params.max_steps
    assert len(set(clocks.tolist())) > 32  # not all restarting on the same iteration


def test_sampler_restarts_episodes_that_end():
    learner = small_learner(rollout_states=4, reset_states=0, sampler_steps=1)
    env, env_params = learner.env, learner.env_params
    params = learner.init(jax.random.PRNGKey(0))
    sampler = learner.sampler_init(jax.random.PRNGKey(1))
    at_limit = sampler.env_state.replace(step=jnp.full((4,), env_params.max_steps - 1, jnp.int32))
    batch, _ = jax.jit(learner.sample)(jax.random.PRNGKey(2), sampler._replace(env_state=at_limit), params)
    assert np.all(np.asarray(batch.step) == 0)
    del env


def test_direction_works_on_the_dynamic_env():
    learner = small_learner("dynamic")
    params, batch = sample_batch(learner)
    f, losses = jax.jit(learner.direction)(params, batch)
    assert f.shape == (learner.num_params,)
    assert np.isfinite(float(losses.policy_loss)) and np.isfinite(float(losses.value_loss))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"policy_hidden": ()}, "learner.policy_hidden"),
        ({"value_hidden": ()}, "learner.value_hidden"),
        ({"policy_hidden": (64, 0)}, "learner.policy_hidden"),
        ({"horizon": 0}, "learner.horizon"),
        ({"gamma": 1.5}, "learner.gamma"),
        ({"activation": "sigmoidish"}, "learner.activation"),
        ({"rollout_states": 0, "reset_states": 0}, "learner.rollout_states"),
        ({"exploration_noise": -0.1}, "learner.exploration_noise"),
    ],
)
def test_invalid_learner_config_is_rejected_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        LearnerConfig(**overrides)


@pytest.mark.parametrize(("hidden", "activation"), [((3,), "tanh"), ((5, 7, 4), "relu"), ((64, 64), "tanh")])
def test_feature_major_mlp_is_the_flax_module_on_the_transposed_batch(hidden, activation):
    from asynccorr.learners.networks import Policy, Value, mlp_apply_feature_major

    obs = jax.random.normal(jax.random.PRNGKey(0), (9, 13))  # batch-major: 9 observations of 13
    for module, squash in [(Policy(hidden, 2, activation), jnp.tanh), (Value(hidden, activation), None)]:
        tree = module.init(jax.random.PRNGKey(1), obs[0])
        expected = module.apply(tree, obs)
        out = mlp_apply_feature_major(tree, obs.T, activation)  # (out, batch)
        got = squash(out).T if squash is not None else out[0]
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_model_return_is_the_rollout_of_the_public_policy_and_value():
    """The rollout inside the losses (feature-major) is the same function as
    stepping the env with ``learner.act`` and scoring the end with ``learner.value``."""
    with jax.enable_x64(True):
        learner = small_learner(dtype=jnp.float64, policy_hidden=(16, 16), value_hidden=(16,))
        params, batch = sample_batch(learner, seed=2)
        env, env_params, cfg = learner.env, learner.env_params, learner.config
        observe = jax.vmap(env.observation, in_axes=(0, None))
        state, total, discount = batch, 0.0, 1.0
        for _ in range(cfg.horizon):
            action = learner.act(params, observe(state, env_params))
            total = total + discount * jax.vmap(env.utility, in_axes=(0, 0, None))(state, action, env_params)
            state = jax.vmap(env.transition, in_axes=(0, 0, None))(state, action, env_params)
            discount *= cfg.gamma
        expected = total + discount * learner.value(params, observe(state, env_params))
        np.testing.assert_allclose(np.asarray(learner.returns(params, batch)), np.asarray(expected), rtol=1e-10)
