"""Specification of the model-free A3C learner: its direction field, its JVP, its batches, and
every scheme running it unchanged."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small import ONE_WORKER_SCHEMES, a3c_config, sample, small_a3c

from asynccorr.backends.sequential import run_sequential
from asynccorr.backends.sim import run_sim
from asynccorr.config import (
    A3CConfig,
    ConfigError,
    load_config,
    with_overrides,
)
from asynccorr.learners import a3c
from asynccorr.learners.build import build
from asynccorr.runs.run import train_run
from asynccorr.schemes.registry import SCHEMES

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- the direction field


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_the_a3c_direction_is_the_gradient_of_its_loss_by_central_finite_differences(state_dependent_std):
    with jax.enable_x64(True):
        learner = small_a3c(dtype=jnp.float64, hidden=(16,), state_dependent_std=state_dependent_std)
        params, batch, _ = sample(learner)
        assert batch.obs.dtype == jnp.float64
        direction, _ = jax.jit(learner.direction)(params, batch)
        loss = jax.jit(lambda p: a3c.objective(learner, p, batch))
        eps = 1e-6
        for i in range(4):
            d = jax.random.normal(jax.random.PRNGKey(10 + i), params.shape, jnp.float64)
            d = d / jnp.linalg.norm(d)
            fd = (loss(params + eps * d) - loss(params - eps * d)) / (2 * eps)
            np.testing.assert_allclose(float(direction @ d), float(fd), rtol=1e-6, atol=1e-10)


def test_the_a3c_jvp_matches_the_dense_jacobian_on_a_small_net():
    with jax.enable_x64(True):
        learner = small_a3c(dtype=jnp.float64, hidden=(4,))
        params, batch, _ = sample(learner, seed=1)
        jac = jax.jit(jax.jacfwd(lambda p: learner.direction(p, batch)[0]))(params)
        tangent = jax.random.normal(jax.random.PRNGKey(4), params.shape, jnp.float64)
        f, jf, _ = jax.jit(learner.direction_jvp)(params, batch, tangent)
        np.testing.assert_allclose(np.asarray(jf), np.asarray(jac @ tangent), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(f), np.asarray(learner.direction(params, batch)[0]), rtol=1e-12)
        _, apply, _ = learner.linearize(params, batch)
        np.testing.assert_allclose(np.asarray(apply(tangent)), np.asarray(jac @ tangent), rtol=1e-9, atol=1e-12)
        # the rollout, advantages and returns are data: the actor and critic blocks do not couple
        n = learner.num_policy
        assert np.all(np.asarray(jac[:n, n:]) == 0) and np.all(np.asarray(jac[n:, :n]) == 0)
        assert np.abs(np.asarray(jac[:n, :n])).max() > 0 and np.abs(np.asarray(jac[n:, n:])).max() > 0


# ----------------------------------------------------------------------------- returns and advantages


def test_gae_with_lambda_one_is_the_bootstrapped_return_and_an_episode_end_cuts_the_trace():
    gamma = 0.9
    costs = jnp.array([[1.0], [2.0], [3.0]])
    values = jnp.array([[0.5], [0.4], [0.3]])
    next_values = jnp.array([[0.4], [7.0], [10.0]])  # step 1 ended an episode: its next value is its own
    done = jnp.array([[False], [True], [False]])
    adv = np.asarray(a3c.gae(costs, values, next_values, done, gamma, 1.0))[:, 0]
    returns = adv + np.asarray(values)[:, 0]
    # R_2 = 3 + 0.9 * 10; R_1 = 2 + 0.9 * 7 (cut); R_0 = 1 + 0.9 * R_1
    np.testing.assert_allclose(returns, [1 + 0.9 * (2 + 0.9 * 7), 2 + 0.9 * 7, 3 + 0.9 * 10], rtol=1e-6)
    one_step = np.asarray(a3c.gae(costs, values, next_values, done, gamma, 0.0))[:, 0]
    np.testing.assert_allclose(one_step, np.asarray(costs + gamma * next_values - values)[:, 0], rtol=1e-6)


def test_a_batch_is_the_workers_envs_rolled_n_steps_with_the_advantages_standardised():
    learner = small_a3c(envs=4, n_steps=6)
    _, batch, sampler = sample(learner)
    assert batch.obs.shape == (24, learner.env.obs_dim(learner.env_params))
    assert batch.actions.shape == (24, 2) and batch.returns.shape == (24,)
    assert abs(float(batch.advantages.mean())) < 1e-5 and abs(float(batch.advantages.std()) - 1) < 1e-3
    assert sampler.env_state.x.shape == (4,)
    raw = small_a3c(envs=4, n_steps=6, normalize_advantages=False)
    _, raw_batch, _ = sample(raw)
    np.testing.assert_allclose(np.asarray(raw_batch.returns), np.asarray(batch.returns), rtol=1e-6)
    assert abs(float(raw_batch.advantages.std()) - 1) > 1e-2


def test_leaving_the_road_is_absorbing_so_it_never_looks_cheap():
    """An episode that ends off the road bootstraps from the off-road state's cost paid for ever:
    with the untrained policy (which leaves the road) the returns exceed any on-road cost-to-go."""
    learner = small_a3c(envs=16, n_steps=64)
    _, batch, _ = sample(learner, seed=3)
    gamma = learner.config.gamma
    off_road = 9.0 / (1 - gamma)  # lateral error beyond the 3 m half-width, for ever
    assert float(batch.returns.max()) > off_road


def test_a_fresh_batch_is_on_policy_and_a_stale_one_is_not():
    """The mismatch at theta_k of a batch sampled at theta_i: importance ratio 1 and KL 0 when
    theta_k = theta_i; a positive KL that grows with the distance otherwise (the exact Gaussian KL,
    checked against its Monte Carlo estimate on the batch's own actions)."""
    learner = small_a3c(envs=64, n_steps=8)
    params, batch, _ = sample(learner)
    ratio, kl = learner.off_policy(params, batch)
    assert float(ratio) == pytest.approx(1.0, abs=1e-6) and float(kl) == pytest.approx(0.0, abs=1e-7)
    step = jax.random.normal(jax.random.PRNGKey(9), params.shape)
    kls = [float(learner.off_policy(params + s * step, batch)[1]) for s in (0.01, 0.03)]
    assert 0 < kls[0] < kls[1]
    ratio_near, _ = learner.off_policy(params + 0.01 * step, batch)
    assert abs(float(ratio_near) - 1) < 0.1  # 1 in expectation: the ratio's mean barely moves


def test_the_gaussian_kl_is_the_integral_of_p_log_p_over_q():
    x = np.linspace(-12.0, 12.0, 200_001)
    p = np.exp(-0.5 * ((x - 0.3) / 0.7) ** 2) / (0.7 * np.sqrt(2 * np.pi))
    q = np.exp(-0.5 * ((x + 0.5) / 1.6) ** 2) / (1.6 * np.sqrt(2 * np.pi))
    numeric = np.sum(p * np.log(p / q)) * (x[1] - x[0])
    exact = float(a3c.gaussian_kl(jnp.array([0.3]), jnp.log(jnp.array([0.7])), jnp.array([-0.5]),
                                  jnp.log(jnp.array([1.6]))))
    assert exact == pytest.approx(numeric, rel=1e-5)


def test_the_gaussian_kl_of_two_nearby_float32_policies_is_positive_and_accurate():
    """A message one version stale moves the policy a little: its KL must not cancel to 0 in float32."""
    mean, log_std = np.array([0.2, -0.1]), np.array([-0.5, 0.1])
    for dmean, dlog in ((1e-4, 0.0), (0.0, 1e-4), (3e-5, -2e-5)):
        m_q, l_q = mean + dmean, log_std + dlog
        exact = np.sum(0.5 * (np.exp(2 * (log_std - l_q)) + ((mean - m_q) * np.exp(-l_q)) ** 2 - 1)
                       - (log_std - l_q))  # float64
        got = float(a3c.gaussian_kl(*(jnp.asarray(a, jnp.float32) for a in (mean, log_std, m_q, l_q))))
        assert got > 0 and got == pytest.approx(exact, rel=1e-2)


def test_the_a3c_learner_runs_on_the_dynamic_env():
    learner = small_a3c("dynamic")
    params, batch, _ = sample(learner)
    direction, losses = jax.jit(learner.direction)(params, batch)
    assert direction.shape == params.shape and np.all(np.isfinite(np.asarray(direction)))
    assert np.isfinite(float(losses.value_loss))


def test_the_default_a3c_experiment_is_the_kinematic_task_with_sgd():
    cfg = load_config(REPO / "experiments" / "a3c.toml")
    assert cfg.learner.kind == "a3c" and cfg.env.name == "kinematic" and cfg.optim.name == "sgd"
    learner, _ = build(cfg)
    assert learner.num_params > 10_000 and cfg.learner.batch_size == 512


@pytest.mark.parametrize("knobs, field", [
    ({"n_steps": 0}, "learner.a3c.n_steps"),
    ({"envs": -1}, "learner.a3c.envs"),
    ({"entropy_coef": -1e-3}, "learner.a3c.entropy_coef"),
    ({"gae_lambda": -0.1}, "learner.a3c.gae_lambda"),
    ({"log_std_min": 0.0, "log_std_max": -1.0}, "learner.a3c.log_std_min"),
    ({"log_std_init": -9.0}, "learner.a3c.log_std_init"),
])
def test_bad_a3c_settings_are_rejected_naming_the_field(knobs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        A3CConfig(**knobs)


# ----------------------------------------------------------------------------- every scheme runs it

@pytest.mark.parametrize("scheme", ONE_WORKER_SCHEMES)
def test_with_one_worker_every_scheme_equals_the_sequential_a3c_learner(scheme):
    cfg = a3c_config()
    reference = run_sequential(cfg)
    result = run_sim(cfg, scheme)
    assert np.all(result.metrics["staleness"] == 0)
    np.testing.assert_allclose(result.params, reference.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.metrics["value_loss"], reference.metrics["value_loss"], rtol=1e-4)
    np.testing.assert_allclose(reference.metrics["importance_ratio"], 1.0, atol=1e-6)
    np.testing.assert_allclose(reference.metrics["policy_kl"], 0.0, atol=1e-7)
    kl = result.metrics["policy_kl"]
    unmeasured = SCHEMES[scheme].synchronous  # sync's batches stay with its workers: nothing to measure
    assert np.all(np.isnan(kl)) if unmeasured else np.all(np.abs(kl) < 1e-7)


def test_a_seeded_a3c_run_is_byte_identical_on_sim_and_logs_the_on_policy_mismatch(tmp_path):
    cfg = a3c_config(workers={"count": 3}, train={"iterations": 9, "eval_every": 3})
    dirs = [train_run(with_overrides(cfg, train={"seed": seed}), "modify", tmp_path / root)[0]
            for root, seed in (("a", 0), ("b", 0), ("c", 1))]
    for name in ("metrics.csv", "eval.csv", "trajectory.csv", "params.npy"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
    assert (dirs[0] / "metrics.csv").read_bytes() != (dirs[2] / "metrics.csv").read_bytes()
    header, *rows = (dirs[0] / "metrics.csv").read_text().splitlines()
    column = lambda name: np.array([float(r.split(",")[header.split(",").index(name)]) for r in rows])
    staleness, kl = column("staleness"), column("policy_kl")
    assert np.all(np.isfinite(column("importance_ratio")))
    assert np.all(kl[staleness == 0] < 1e-7) and np.all(kl[staleness > 0] > 0)  # stale batches are off-policy


def test_the_correction_removes_most_of_the_a3c_gradient_error_at_the_default_staleness():
    """On the A3C experiment's learner (64-64 nets) at its staleness of 7 (tiny nets at this step
    size are another matter: there the first-order correction overshoots)."""
    cfg = with_overrides(load_config(REPO / "experiments" / "a3c.toml"),
                         train={"iterations": 60, "eval_every": 60, "checkpoint_every": 0})
    stale, corrected = (run_sim(cfg, s).metrics for s in ("async", "modify"))
    assert stale["staleness"][16:].mean() > 6
    assert corrected["grad_error"][16:].mean() < 0.2 * stale["grad_error"][16:].mean()


# ----------------------------------------------------------------------------- it learns


@pytest.mark.slow
def test_the_sequential_a3c_learner_tracks_the_sine_within_its_budget():
    """docs/a3c.md: 0.10 m RMS lateral error on the fixed scenario within 600 updates."""
    cfg = load_config(REPO / "experiments" / "a3c.toml")
    result = run_sequential(with_overrides(cfg, train={"iterations": 600, "eval_every": 300,
                                                         "checkpoint_every": 0}))
    initial, final = result.evals[0].summary, result.evals[-1].summary
    assert initial.left_road and not final.left_road
    assert final.rms_lateral < 0.10, final
