"""Specifications of the optional Gymnasium adapter (skipped without gymnasium)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

from asynccorr.envs import make
from asynccorr.envs.gym_adapter import GymnasiumEnv

ENV_NAMES = ("kinematic", "dynamic")

# The brief fixes the observation space to Box(-inf, inf); gymnasium warns about
# infinite bounds on principle. Any other warning from check_env is a failure.
_EXPECTED_WARNINGS = ("observation space minimum value is -infinity",
                      "observation space maximum value is infinity")


@pytest.mark.parametrize("name", ENV_NAMES)
def test_check_env_passes_without_unexpected_warnings(name):
    env = GymnasiumEnv(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # render check needs a registered spec; there is nothing to render anyway
        check_env(env, skip_render_check=True)
    unexpected = [str(w.message) for w in caught
                  if not any(e in str(w.message) for e in _EXPECTED_WARNINGS)]
    assert unexpected == []


@pytest.mark.parametrize("name", ENV_NAMES)
def test_spaces_match_the_functional_env(name):
    env = GymnasiumEnv(name)
    fenv, params = make(name)
    assert env.observation_space.shape == (fenv.obs_dim(params),)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (fenv.action_dim,)
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_seeded_reset_is_reproducible_and_seed_dependent(name):
    env_a, env_b = GymnasiumEnv(name), GymnasiumEnv(name)
    obs_a, info_a = env_a.reset(seed=123)
    obs_b, info_b = env_b.reset(seed=123)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert info_a == info_b
    obs_c, _ = env_a.reset(seed=124)
    assert not np.array_equal(obs_a, obs_c)
    # and the trajectories agree too
    action = np.full(env_a.action_space.shape, 0.3, np.float32)
    env_a.reset(seed=123)
    for _ in range(5):
        step_a, step_b = env_a.step(action), env_b.step(action)
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:] == step_b[1:]


@pytest.mark.parametrize("name", ENV_NAMES)
def test_zero_action_episode_ends_by_termination_or_truncation_with_correct_types(name):
    env = GymnasiumEnv(name, max_steps=40)
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    assert set(info) == {"lateral_error", "heading_error"}
    zero = np.zeros(env.action_space.shape, np.float32)
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(zero)
        steps += 1
        assert isinstance(obs, np.ndarray) and obs.dtype == np.float32
        assert obs.shape == env.observation_space.shape
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
        assert set(info) == {"lateral_error", "heading_error", "utility"}
        assert all(type(v) is float for v in info.values())
        assert reward == pytest.approx(-info["utility"])
        assert not (terminated and truncated)
        total += reward
        if terminated or truncated:
            break
        assert steps < 40
    assert steps <= 40 and (terminated or steps == 40)
    assert truncated == (not terminated)
    assert np.isfinite(total)
    with pytest.raises(ResetNeeded):
        env.step(zero)
    env.reset()
    env.step(zero)  # a new episode runs again


def test_step_before_reset_raises_reset_needed():
    env = GymnasiumEnv("dynamic")
    with pytest.raises(ResetNeeded):
        env.step(np.zeros(1, np.float32))


def test_leaving_the_road_terminates_the_gym_episode():
    env = GymnasiumEnv("kinematic", road_half_width=0.6, scenario_lateral=0.5, max_steps=500)
    env.reset(seed=0, options={"scenario": True})
    full_left = np.array([1.0, 0.0], np.float32)
    for _ in range(500):
        _, _, terminated, truncated, info = env.step(full_left)
        if terminated or truncated:
            break
    assert terminated and not truncated
    assert abs(info["lateral_error"]) > 0.6


def test_scenario_option_starts_from_the_fixed_evaluation_state():
    env = GymnasiumEnv("dynamic", scenario_lateral=0.5)
    obs_a, info_a = env.reset(seed=1, options={"scenario": True})
    obs_b, _ = env.reset(seed=2, options={"scenario": True})
    np.testing.assert_array_equal(obs_a, obs_b)
    assert info_a["lateral_error"] == pytest.approx(0.5)


def test_constructor_accepts_overrides_an_env_instance_and_explicit_params():
    fenv, params = make("dynamic", amplitude=0.5)
    from_instance = GymnasiumEnv(fenv, params=params)
    assert from_instance.params.amplitude == 0.5
    from_name = GymnasiumEnv("dynamic", amplitude=0.5, preview=[1.0])
    assert from_name.observation_space.shape == (4 + 2,)
    with pytest.raises(ValueError, match="not_a_param"):
        GymnasiumEnv("kinematic", not_a_param=1)
    with pytest.raises(ValueError, match="nope"):
        GymnasiumEnv("nope")
    with pytest.raises(ValueError, match="dt"):
        GymnasiumEnv("kinematic", dt=0.0)
    with pytest.raises(ValueError, match="render_mode"):
        GymnasiumEnv("kinematic", render_mode="human")


def test_wrong_action_shape_raises_value_error():
    env = GymnasiumEnv("kinematic")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
