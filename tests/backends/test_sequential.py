"""Specification of the sequential (always-fresh) trainer and the tracking evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asynccorr.backends.sequential import run_sequential
from asynccorr.config import ExperimentConfig, OptimConfig, TrainConfig, with_overrides
from asynccorr.learners.build import build, make_optimizer
from asynccorr.learners.evaluation import (
    evaluate,
    evaluate_random_starts,
    rollout_random_starts,
    summarize,
    summarize_random_starts,
)

# docs/performance.md "Tracking threshold": 0.10 m RMS lateral error on the fixed scenario.
RMS_THRESHOLD_M = 0.10
ITERATION_BUDGET = 500


def _config(iterations: int, eval_every: int, seed: int = 0) -> ExperimentConfig:
    return with_overrides(ExperimentConfig(), train={"iterations": iterations, "eval_every": eval_every,
                                                     "seed": seed})


@pytest.mark.slow
def test_sequential_trainer_tracks_the_sine_within_the_iteration_budget():
    result = run_sequential(_config(ITERATION_BUDGET, 250))
    initial, final = result.evals[0].summary, result.evals[-1].summary
    assert initial.left_road  # the untrained policy cannot follow the road ...
    assert not final.left_road  # ... the trained one stays on it for the whole episode
    assert final.rms_lateral < RMS_THRESHOLD_M, final
    assert final.total_utility < 0.1 * initial.total_utility
    assert np.mean(result.metrics["policy_loss"][-50:]) < 0.2 * result.metrics["policy_loss"][0]


def test_training_is_deterministic_given_the_seed_and_differs_across_seeds():
    a = run_sequential(_config(6, 3, seed=0))
    b = run_sequential(_config(6, 3, seed=0))
    c = run_sequential(_config(6, 3, seed=1))
    np.testing.assert_array_equal(a.params, b.params)
    for name in a.metrics:
        np.testing.assert_array_equal(a.metrics[name], b.metrics[name])
    assert not np.array_equal(a.params, c.params)


def test_metrics_have_one_row_per_iteration_and_evaluations_at_the_interval():
    result = run_sequential(_config(7, 3))
    assert list(result.metrics["iteration"]) == list(range(1, 8))
    assert [e.iteration for e in result.evals] == [0, 3, 6, 7]
    for name, values in result.metrics.items():
        assert values.shape == (7,)
        # the on-policy mismatch is the A3C learner's diagnostic: undefined for GPI's deterministic policy
        assert np.all(np.isnan(values)) if name in ("importance_ratio", "policy_kl") else np.all(np.isfinite(values)), name


def test_optimizer_applies_separate_actor_and_critic_learning_rates():
    opt = make_optimizer(OptimConfig(name="sgd", policy_lr=0.1, value_lr=0.01), num_policy=2, num_value=3)
    direction = jnp.ones(5)
    updates, _ = opt.update(direction, opt.init(direction), direction)
    np.testing.assert_allclose(np.asarray(updates), [-0.1, -0.1, -0.01, -0.01, -0.01], rtol=1e-6)


def test_optimizer_clips_the_direction_by_global_norm():
    opt = make_optimizer(OptimConfig(name="sgd", policy_lr=1.0, value_lr=1.0, max_grad_norm=1.0), 1, 1)
    direction = jnp.array([30.0, 40.0])
    updates, _ = opt.update(direction, opt.init(direction), direction)
    np.testing.assert_allclose(np.asarray(updates), [-0.6, -0.8], rtol=1e-6)


def test_evaluation_counts_errors_only_while_on_the_road():
    learner, _ = build(ExperimentConfig())
    params = learner.init(jax.random.PRNGKey(0))
    summary, traj = evaluate(learner, params)
    on = np.asarray(traj.on_road)
    assert summary.left_road and summary.steps_on_road == on.sum() < on.size
    assert on[: summary.steps_on_road].all() and not on[summary.steps_on_road:].any()
    lat = np.asarray(traj.lateral_error)[on]
    assert summary.rms_lateral == pytest.approx(float(np.sqrt(np.mean(lat**2))))
    assert summary.max_lateral == pytest.approx(float(np.max(np.abs(lat))))
    # the same trajectory re-summarised gives the same numbers
    assert summarize(traj) == summary


def test_evaluation_starts_from_the_fixed_scenario():
    learner, _ = build(ExperimentConfig())
    _, traj = evaluate(learner, learner.init(jax.random.PRNGKey(0)))
    p = learner.env_params
    assert float(traj.x[0]) == 0.0
    assert float(traj.y[0]) == pytest.approx(p.scenario_lateral)


def test_random_start_evaluation_runs_one_episode_per_reset_state_and_counts_on_road_steps_only():
    learner, _ = build(with_overrides(ExperimentConfig(), env={"name": "dynamic", "params": {}}))
    params, key = learner.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(3)
    traj = jax.device_get(rollout_random_starts(learner, params, key, 6))
    assert np.asarray(traj.lateral_error).shape == (6, learner.env_params.max_steps)
    assert len(set(np.asarray(traj.y)[:, 0].tolist())) == 6  # six different starts ...
    assert (np.asarray(traj.time)[:, 0] == 0).all()  # ... each at the beginning of its episode
    on, lat, t = np.asarray(traj.on_road), np.asarray(traj.lateral_error), np.asarray(traj.time)
    summary = summarize_random_starts(traj, settle_s=5.0)
    assert summary.rms_lateral == pytest.approx(float(np.sqrt(np.mean(lat[on] ** 2))))
    assert summary.rms_lateral_settled == pytest.approx(float(np.sqrt(np.mean(lat[on & (t >= 5.0 - 1e-6)] ** 2))))
    assert summary.episodes == 6 and summary.left_road == int((~on.all(axis=1)).sum())
    jitted = evaluate_random_starts(learner, params, key, episodes=6, settle_s=5.0)  # one jitted call: fused,
    assert jitted._replace(rms_lateral=0.0, rms_lateral_settled=0.0) == summary._replace(  # so equal to rounding
        rms_lateral=0.0, rms_lateral_settled=0.0)
    assert jitted.rms_lateral == pytest.approx(summary.rms_lateral, rel=1e-4)
    assert jitted.rms_lateral_settled == pytest.approx(summary.rms_lateral_settled, rel=1e-4)


def test_train_config_rejects_impossible_values():
    from asynccorr.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.iterations"):
        TrainConfig(iterations=0)
    with pytest.raises(ConfigError, match=r"optim\.policy_lr"):
        OptimConfig(policy_lr=-1e-3)
