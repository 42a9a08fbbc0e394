"""Specification of V-trace (Espeholt et al. 2018) on the A3C learner: the targets and advantages
against a reference implementation (rlax) and against the definition computed in float64, and the
direction it gives the actor-learner split's server on a batch another policy sampled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small import a3c_config, sample, small_a3c

from asynccorr.backends.sim import run_sim
from asynccorr.config import A3CConfig, ConfigError, LearnerConfig, describe, to_dict
from asynccorr.learners import a3c


def random_rollout(seed: int, steps: int = 7, envs: int = 3, cuts: bool = True):
    """Values, next values, costs, done flags and log-normal ratios of a random (T, E) rollout (float64)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(steps + 1, envs))
    costs = rng.uniform(0.0, 2.0, size=(steps, envs))
    done = rng.uniform(size=(steps, envs)) < (0.2 if cuts else 0.0)
    next_values = np.where(done, rng.normal(size=(steps, envs)), values[1:])  # a reset: another state
    ratios = np.exp(rng.normal(scale=0.6, size=(steps, envs)))
    return values[:-1], next_values, costs, done, ratios


def vtrace_by_definition(values, next_values, costs, done, ratios, gamma, lam, rho_bar, c_bar):
    """Espeholt et al.'s eq. (1) summed term by term (no recursion), per env column, in float64:
    v_s = V(x_s) + sum_{t>=s} gamma^(t-s) (prod_{s<=i<t} c_i) rho_t delta_t, the sum ending where an
    episode ends; the advantage rho_s (l_s + gamma q_{s+1} - V(x_s)) with q_{s+1} = lam v_{s+1} +
    (1 - lam) V(x_{s+1}) inside an episode and V(x_{s+1}) at its end."""
    steps, envs = values.shape
    rho, c = np.minimum(rho_bar, ratios), lam * np.minimum(c_bar, ratios)
    delta = rho * (costs + gamma * next_values - values)
    targets = np.zeros_like(values)
    for e in range(envs):
        for s in range(steps):
            total, weight = 0.0, 1.0
            for t in range(s, steps):
                total += weight * delta[t, e]
                if done[t, e]:
                    break
                weight *= gamma * c[t, e]
            targets[s, e] = values[s, e] + total
    q_next = next_values.copy()  # the last step, and an episode's end, bootstrap from V(x_{s+1})
    q_next[:-1] = np.where(done[:-1], next_values[:-1], lam * targets[1:] + (1 - lam) * next_values[:-1])
    return targets, rho * (costs + gamma * q_next - values)


@pytest.mark.parametrize("lam,rho_bar,c_bar", [(1.0, 1.0, 1.0), (0.9, 1.0, 1.0), (0.95, 2.0, 1.0),
                                               (1.0, 1.5, 0.5)])
def test_vtrace_is_espeholt_et_al_eq_1_computed_by_definition_in_float64(lam, rho_bar, c_bar):
    rollout = random_rollout(0)
    with jax.enable_x64(True):
        got = a3c.vtrace(*(jnp.asarray(x) for x in rollout), 0.97, lam, rho_bar, c_bar)
        targets, advantages = vtrace_by_definition(*rollout, 0.97, lam, rho_bar, c_bar)
        np.testing.assert_allclose(np.asarray(got.targets), targets, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got.pg_advantages), advantages, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam,rho_bar", [(1.0, 1.0), (0.9, 1.0), (0.95, 2.0)])
def test_vtrace_equals_rlax_on_a_trajectory_without_cuts(lam, rho_bar):
    """rlax's ``vtrace_td_error_and_advantage`` (one episode segment per env: rlax reads ``V(x_{t+1})``
    from the next row, so it cannot express a reset inside a rollout; its ``c_bar`` is 1)."""
    import rlax  # a test dependency (pyproject: test, dev)
    values, next_values, costs, done, ratios = random_rollout(1, cuts=False)
    gamma = 0.97
    got = a3c.vtrace(*(jnp.asarray(x, jnp.float32) for x in (values, next_values, costs, done, ratios)),
                     gamma, lam, rho_bar, 1.0)
    for e in range(values.shape[1]):
        ref = rlax.vtrace_td_error_and_advantage(
            jnp.asarray(values[:, e], jnp.float32), jnp.asarray(next_values[:, e], jnp.float32),
            jnp.asarray(costs[:, e], jnp.float32), jnp.full(values.shape[0], gamma, jnp.float32),
            jnp.asarray(ratios[:, e], jnp.float32), lam, clip_rho_threshold=rho_bar, clip_pg_rho_threshold=rho_bar)
        np.testing.assert_allclose(np.asarray(got.targets[:, e]), np.asarray(ref.errors) + values[:, e],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got.pg_advantages[:, e]), np.asarray(ref.pg_advantage),
                                   rtol=1e-5, atol=1e-5)


def test_on_policy_vtrace_is_the_lambda_return_and_gae():
    values, next_values, costs, done, _ = (jnp.asarray(x, jnp.float32) for x in random_rollout(2))
    out = a3c.vtrace(values, next_values, costs, done, jnp.ones_like(values), 0.97, 0.9, 1.0, 1.0)
    adv = a3c.gae(costs, values, next_values, done, 0.97, 0.9)
    np.testing.assert_allclose(np.asarray(out.pg_advantages), np.asarray(adv), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.targets), np.asarray(adv + values), rtol=1e-5, atol=1e-5)


def vtrace_learner(**knobs):
    return small_a3c(off_policy="vtrace", **knobs)


def test_on_a_fresh_batch_the_vtrace_direction_is_the_a3c_direction():
    plain, vt = small_a3c(), vtrace_learner()
    params, batch, _ = sample(vt)
    assert batch.trajectory is not None and sample(plain)[1].trajectory is None
    g_vt, losses_vt = jax.jit(vt.direction)(params, batch)
    g_plain, losses_plain = jax.jit(plain.direction)(params, batch)
    np.testing.assert_allclose(np.asarray(g_vt), np.asarray(g_plain), rtol=2e-3, atol=2e-5)
    assert float(losses_vt.policy_loss) == float(losses_plain.policy_loss)  # the behaviour's returns


def test_on_a_stale_batch_the_direction_at_theta_k_takes_vtrace_targets_at_theta_k():
    """The actor-learner split's server: a batch sampled at theta_i, the direction at theta_k is the
    A3C direction on that batch with V-trace's advantages and targets of theta_k (its ratios to
    pi_i and its critic), not the worker's."""
    plain, vt = small_a3c(), vtrace_learner()
    theta_i, stale, _ = sample(vt, seed=0)
    theta_k = theta_i + 0.05 * jax.random.normal(jax.random.PRNGKey(7), theta_i.shape)
    got, losses = jax.jit(vt.direction)(theta_k, stale)
    assert float(jax.jit(vt.losses)(theta_k, stale).value_loss) == pytest.approx(float(losses.value_loss), rel=1e-5)
    expected = jax.jit(plain.direction)(theta_k, a3c_frozen_targets(vt, theta_k, stale))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-6)
    uncorrected = jax.jit(plain.direction)(theta_k, stale._replace(trajectory=None))[0]
    assert float(jnp.linalg.norm(got - uncorrected)) > 0.05 * float(jnp.linalg.norm(uncorrected))


def test_with_the_actors_critic_only_the_ratios_are_the_learners():
    """``vtrace_critic = "actor"``: the worker's values as sampled, the ratios of theta_k -- on a
    fresh batch the A3C direction, on a stale one V-trace bootstrapped from phi_i."""
    plain, vt = small_a3c(), vtrace_learner(vtrace_critic="actor")
    theta_i, batch, _ = sample(vt, seed=1)
    np.testing.assert_allclose(np.asarray(jax.jit(vt.direction)(theta_i, batch)[0]),
                               np.asarray(jax.jit(plain.direction)(theta_i, batch)[0]), rtol=2e-3, atol=2e-5)
    theta_k = theta_i + 0.05 * jax.random.normal(jax.random.PRNGKey(8), theta_i.shape)
    got = jax.jit(vt.direction)(theta_k, batch)[0]
    expected = jax.jit(plain.direction)(theta_k, a3c_frozen_targets(vt, theta_k, batch, critic="actor"))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-6)
    learners_critic = jax.jit(vtrace_learner().direction)(theta_k, batch)[0]
    assert float(jnp.linalg.norm(got - learners_critic)) > 1e-3 * float(jnp.linalg.norm(got))


def test_the_vtrace_direction_jvp_holds_the_targets_as_data():
    """The product differentiates the losses with V-trace's targets fixed at the point (as the
    critic's targets are data): ``jax.jvp`` of the direction, checked against central differences of
    the direction with the targets frozen."""
    with jax.enable_x64(True):
        vt = vtrace_learner(dtype=jnp.float64)
        params, batch, _ = sample(vt)
        frozen = a3c_frozen_targets(vt, params, batch)
        tangent = jax.random.normal(jax.random.PRNGKey(3), params.shape, jnp.float64)
        f, jf, _ = jax.jit(vt.direction_jvp)(params, batch, tangent)
        plain = small_a3c(dtype=jnp.float64)
        eps = 1e-6
        fd = (plain.direction(params + eps * tangent, frozen)[0]
              - plain.direction(params - eps * tangent, frozen)[0]) / (2 * eps)
        np.testing.assert_allclose(np.asarray(jf), np.asarray(fd), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(np.asarray(f), np.asarray(jax.jit(vt.direction)(params, batch)[0]), rtol=1e-12)


def a3c_frozen_targets(learner, params, batch, critic: str = "learner"):
    """The batch with the V-trace advantages and targets of ``params`` written in (as the plain
    learner would read them); ``critic = "actor"``: bootstrapped from the values the worker sampled."""
    tr = batch.trajectory
    shape = tr.cost.shape
    policy_tree, value_tree = learner.unravel(params)
    policy_net, value_net = a3c.networks(learner.env, learner.config, params.dtype)
    mean, log_std = policy_net.apply(policy_tree, batch.obs)
    ratios = jnp.exp(a3c.gaussian_log_prob(mean, log_std, batch.actions) - batch.behaviour_logp).reshape(shape)
    values = value_net.apply(value_tree, batch.obs).reshape(shape)
    next_values = jnp.where(tr.terminated, tr.terminal_value, value_net.apply(value_tree, tr.next_obs))
    if critic == "actor":
        values, next_values = tr.values, tr.next_values
    cfg = learner.config
    out = a3c.vtrace(values, next_values, tr.cost, tr.done, ratios, cfg.gamma, cfg.a3c.gae_lambda, 1.0, 1.0)
    return batch._replace(advantages=a3c.standardised(out.pg_advantages.reshape(-1)),
                          returns=out.targets.reshape(-1), trajectory=None)


def test_vtrace_knobs_are_checked_and_named_in_titles():
    with pytest.raises(ConfigError, match=r"learner\.a3c\.off_policy"):
        A3CConfig(off_policy="retrace")
    with pytest.raises(ConfigError, match=r"learner\.a3c\.vtrace_rho_bar"):
        A3CConfig(vtrace_rho_bar=0.0)
    with pytest.raises(ConfigError, match=r"learner\.a3c\.vtrace_c_bar"):
        A3CConfig(vtrace_rho_bar=1.0, vtrace_c_bar=2.0)
    with pytest.raises(ConfigError, match=r"learner\.a3c\.vtrace_critic"):
        A3CConfig(vtrace_critic="server")
    record = {"learner": to_dict(LearnerConfig(kind="a3c", a3c=A3CConfig(off_policy="vtrace", vtrace_rho_bar=2.0)))}
    assert "V-trace (rho_bar 2, c_bar 1)" in describe(record)
    assert "V-trace" not in describe({"learner": to_dict(LearnerConfig(kind="a3c"))})


def test_the_learner_scheme_with_vtrace_runs_on_sim_and_measures_against_the_vtrace_direction():
    cfg = a3c_config(learner={"kind": "a3c", "policy_hidden": (8,), "value_hidden": (8,),
                              "a3c": A3CConfig(envs=4, n_steps=6, off_policy="vtrace")},
                     workers={"count": 3}, train={"iterations": 12, "eval_every": 6})
    m = run_sim(cfg, "learner").metrics
    assert len(m["iteration"]) == 12 and m["staleness"].max() > 0
    assert np.all(m["grad_error"] == 0)  # the server applies the direction it measures against
    assert np.all(np.isfinite(m["policy_loss"])) and np.all(np.isfinite(m["importance_ratio"]))
