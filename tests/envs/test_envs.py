"""Specifications of the functional vehicle-tracking environments.

Dynamics, utility, termination and the JAX transforms are pinned down against
hand-computed values; observation entries are deliberately not (only their
shape and dtype), so the observation formula can change freely.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asynccorr.envs import (
    DynamicParams,
    DynamicState,
    KinematicParams,
    KinematicState,
    make,
)

ENV_NAMES = ("kinematic", "dynamic")

# GOPS veh2dofconti constants (gops/env/env_ocp/pyth_veh2dofconti.py).
GOPS_KF, GOPS_KR = -128915.5, -85943.6
GOPS_LF, GOPS_LR = 1.06, 1.85
GOPS_M, GOPS_IZ, GOPS_U = 1412.0, 1536.7, 5.0


def _x64():
    """Context manager enabling float64 (API moved between JAX versions)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - older JAX

    return enable_x64()


def _kin_state(x, y, psi, v, step=0) -> KinematicState:
    f = lambda a: jnp.asarray(a, jnp.float32)
    return KinematicState(x=f(x), y=f(y), psi=f(psi), v=f(v), step=jnp.asarray(step, jnp.int32))


def _dyn_state(y, phi, v, w, time, step=0) -> DynamicState:
    f = lambda a: jnp.asarray(a, jnp.float32)
    return DynamicState(y=f(y), phi=f(phi), v=f(v), w=f(w), time=f(time), step=jnp.asarray(step, jnp.int32))


def _state_array(state) -> np.ndarray:
    if isinstance(state, KinematicState):
        return np.array([state.x, state.y, state.psi, state.v], dtype=np.float64)
    return np.array([state.y, state.phi, state.v, state.w, state.time], dtype=np.float64)


def _wrap(a: float) -> float:
    return math.atan2(math.sin(a), math.cos(a))


# --------------------------------------------------------------------------- dynamics


def _kinematic_by_hand(s, action, p: KinematicParams):
    x, y, psi, v = s
    steer = p.max_steer * float(np.clip(action[0], -1, 1))
    accel = p.max_accel * float(np.clip(action[1], -1, 1))
    return np.array([
        x + p.dt * v * math.cos(psi),
        y + p.dt * v * math.sin(psi),
        psi + p.dt * v * math.tan(steer) / p.wheelbase,
        min(max(v + p.dt * accel, p.min_speed), p.max_speed),
    ])


@pytest.mark.parametrize(
    "state, action",
    [
        ((1.3, 0.4, 0.2, 4.0), (0.6, -0.5)),  # interior: plain Euler step
        ((7.0, -1.1, -0.7, 2.5), (-0.9, 0.3)),  # negative steer and heading
        ((0.0, 0.0, 0.1, 3.0), (1.7, -2.5)),  # out-of-range action is clipped to [-1, 1]
        ((2.0, 0.5, 0.0, 9.95), (0.0, 1.0)),  # speed clipped at max_speed
        ((2.0, 0.5, 0.0, 0.05), (0.0, -1.0)),  # speed clipped at min_speed
    ],
)
def test_kinematic_step_matches_hand_computed_bicycle_equations(state, action):
    env, params = make("kinematic", wheelbase=2.7, dt=0.05, max_steer=0.4, max_accel=3.0)
    s = _kin_state(*state, step=3)
    nxt = env.transition(s, jnp.asarray(action, jnp.float32), params)
    expected = _kinematic_by_hand(state, action, params)
    np.testing.assert_allclose(_state_array(nxt), expected, rtol=1e-5, atol=1e-5)
    assert int(nxt.step) == 4


def test_kinematic_step_uses_default_scaling_max_steer_and_max_accel():
    env, params = make("kinematic")
    assert (params.max_steer, params.max_accel, params.wheelbase, params.dt) == (0.5, 2.0, 2.5, 0.1)
    state, action = (1.0, 0.2, 0.1, 5.0), (0.5, 0.5)
    nxt = env.step(jax.random.PRNGKey(0), _kin_state(*state), jnp.asarray(action), params).state
    # steer = 0.25 rad, accel = 1 m/s^2
    expected = [
        1.0 + 0.1 * 5.0 * math.cos(0.1),
        0.2 + 0.1 * 5.0 * math.sin(0.1),
        0.1 + 0.1 * 5.0 * math.tan(0.25) / 2.5,
        5.1,
    ]
    np.testing.assert_allclose(_state_array(nxt), expected, rtol=1e-6, atol=1e-6)


def test_dynamic_defaults_are_gops_veh2dofconti_constants():
    p = DynamicParams()
    assert (p.kf, p.kr, p.lf, p.lr, p.mass, p.inertia, p.speed) == (
        GOPS_KF, GOPS_KR, GOPS_LF, GOPS_LR, GOPS_M, GOPS_IZ, GOPS_U)
    assert p.dt == 0.1
    assert p.max_steer == pytest.approx(math.pi / 6)


def _dynamic_by_hand(s, action, dt=0.1, u=GOPS_U):
    """Semi-implicit GOPS 2-DOF step in float64 with the GOPS constants."""
    y, phi, v, w, t = s
    kf, kr, lf, lr, m, iz = GOPS_KF, GOPS_KR, GOPS_LF, GOPS_LR, GOPS_M, GOPS_IZ
    delta = math.pi / 6 * float(np.clip(action[0], -1, 1))
    v_next = (m * u * v + dt * (lf * kf - lr * kr) * w - dt * kf * delta * u - dt * m * u**2 * w) / (
        m * u - dt * (kf + kr))
    w_next = (iz * u * w + dt * (lf * kf - lr * kr) * v - dt * lf * kf * delta * u) / (
        iz * u - dt * (lf**2 * kf + lr**2 * kr))
    return np.array([
        y + dt * (u * math.sin(phi) + v * math.cos(phi)),
        phi + dt * w,
        v_next,
        w_next,
        t + dt,
    ])


@pytest.mark.parametrize(
    "state, action",
    [
        ((0.3, 0.1, 0.2, -0.05, 1.2), (0.4,)),
        ((-1.0, -0.4, -0.3, 0.25, 7.5), (-0.8,)),
        ((0.0, 0.0, 0.0, 0.0, 0.0), (3.0,)),  # clipped to +pi/6
    ],
)
def test_dynamic_step_matches_hand_computed_semi_implicit_gops_update(state, action):
    env, params = make("dynamic")
    nxt = env.transition(_dyn_state(*state, step=5), jnp.asarray(action, jnp.float32), params)
    np.testing.assert_allclose(_state_array(nxt), _dynamic_by_hand(state, action), rtol=1e-5, atol=1e-5)
    assert int(nxt.step) == 6


def test_dynamic_step_uses_overridden_speed_and_dt():
    env, params = make("dynamic", speed=8.0, dt=0.05)
    state, action = (0.2, -0.1, 0.1, 0.05, 2.0), (-0.3,)
    nxt = env.transition(_dyn_state(*state), jnp.asarray(action), params)
    np.testing.assert_allclose(
        _state_array(nxt), _dynamic_by_hand(state, action, dt=0.05, u=8.0), rtol=1e-5, atol=1e-5)


def test_dynamic_straight_driving_on_reference_with_zero_steer_stays_at_rest_laterally():
    env, params = make("dynamic", amplitude=0.0)
    s = env.scenario(params.replace(scenario_lateral=0.0))
    for _ in range(20):
        s = env.transition(s, jnp.zeros(1), params)
    np.testing.assert_allclose(_state_array(s)[:4], 0.0, atol=1e-7)


# --------------------------------------------------------------------------- utility


def _kinematic_utility_by_hand(s, action, p: KinematicParams) -> float:
    x, y, psi, v = s
    k = 2 * math.pi / p.wavelength
    y_ref = p.amplitude * math.sin(k * x)
    psi_ref = math.atan(p.amplitude * k * math.cos(k * x))
    e_lat = (y - y_ref) * math.cos(psi_ref)
    e_head = _wrap(psi - psi_ref)
    steer = p.max_steer * float(np.clip(action[0], -1, 1))
    accel = p.max_accel * float(np.clip(action[1], -1, 1))
    return (p.w_lateral * e_lat**2 + p.w_heading * e_head**2 + p.w_speed * (v - p.speed_ref) ** 2
            + p.w_steer * steer**2 + p.w_accel * accel**2)


def _dynamic_utility_by_hand(s, action, p: DynamicParams) -> float:
    y, phi, v, w, t = s
    om = 2 * math.pi / p.period
    dy = y - p.amplitude * math.sin(om * t)
    dphi = phi - math.atan2(p.amplitude * om * math.cos(om * t), p.speed)  # not wrapped (GOPS)
    delta = p.max_steer * float(np.clip(action[0], -1, 1))
    return (p.w_lateral * dy**2 + p.w_heading * dphi**2 + p.w_lateral_speed * v**2
            + p.w_yaw_rate * w**2 + p.w_steer * delta**2)


def _assert_reward_is_pre_step_utility(env, params, s, a, expected: float) -> None:
    ts = env.step(jax.random.PRNGKey(0), s, a, params)
    assert float(env.utility(s, a, params)) == pytest.approx(expected, rel=1e-5)
    assert float(ts.info["utility"]) == pytest.approx(expected, rel=1e-5)
    assert float(ts.reward) == pytest.approx(-expected, rel=1e-5)
    # and not the utility at the post-step state
    assert float(env.utility(ts.state, a, params)) != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "state, action",
    [((3.0, 1.2, 0.4, 6.5), (0.3, -0.7)), ((25.0, -2.0, 3.0, 2.0), (-1.5, 0.2))],
)
def test_kinematic_reward_is_minus_hand_computed_utility_at_pre_step_state(state, action):
    env, params = make("kinematic", w_lateral=2.0, w_heading=0.5, w_speed=0.3, w_steer=0.7, w_accel=0.2)
    expected = _kinematic_utility_by_hand(state, action, params)
    s, a = _kin_state(*state), jnp.asarray(action, jnp.float32)
    _assert_reward_is_pre_step_utility(env, params, s, a, expected)


@pytest.mark.parametrize(
    "state, action",
    [((0.4, -0.2, 0.3, 0.1, 3.3), (0.5,)), ((1.0, 3.5, -0.2, -0.4, 0.0), (-2.0,))],
)
def test_dynamic_reward_is_minus_hand_computed_utility_at_pre_step_state(state, action):
    env, params = make("dynamic", max_heading_error=10.0)
    expected = _dynamic_utility_by_hand(state, action, params)
    s, a = _dyn_state(*state), jnp.asarray(action, jnp.float32)
    _assert_reward_is_pre_step_utility(env, params, s, a, expected)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_utility_is_nonnegative_and_zero_on_reference_with_zero_action(name):
    env, params = make(name, scenario_lateral=0.0)
    s = env.scenario(params)
    a = jnp.zeros(env.action_dim)
    assert float(env.utility(s, a, params)) == pytest.approx(0.0, abs=1e-10)
    _, s = env.reset(jax.random.PRNGKey(3), params)
    assert float(env.utility(s, jnp.ones(env.action_dim), params)) > 0.0


# --------------------------------------------------------------------------- termination


def test_kinematic_leaving_the_road_terminates_and_does_not_truncate():
    env, params = make("kinematic", amplitude=0.0, road_half_width=3.0, max_steps=50)
    key, a = jax.random.PRNGKey(0), jnp.zeros(2)
    # 2.95 m off a straight road, heading outward at 5 m/s: 3.45 m after one step
    ts = env.step(key, _kin_state(0.0, 2.95, math.pi / 2, 5.0, step=10), a, params)
    assert bool(ts.terminated) and not bool(ts.truncated)
    # same on the last step of the episode: terminated wins, never both
    ts = env.step(key, _kin_state(0.0, -2.95, -math.pi / 2, 5.0, step=49), a, params)
    assert bool(ts.terminated) and not bool(ts.truncated)
    # still on the road: neither
    ts = env.step(key, _kin_state(0.0, 2.0, math.pi / 2, 5.0, step=10), a, params)
    assert not bool(ts.terminated) and not bool(ts.truncated)


def test_kinematic_time_limit_truncates_and_does_not_terminate():
    env, params = make("kinematic", max_steps=50)
    s, a, key = env.scenario(params), jnp.zeros(2), jax.random.PRNGKey(0)
    ts = env.step(key, s.replace(step=jnp.asarray(48, jnp.int32)), a, params)
    assert int(ts.state.step) == 49 and not bool(ts.truncated) and not bool(ts.terminated)
    ts = env.step(key, ts.state, a, params)
    assert int(ts.state.step) == 50 and bool(ts.truncated) and not bool(ts.terminated)


def test_dynamic_leaving_the_road_terminates_and_does_not_truncate():
    env, params = make("dynamic", amplitude=0.0, max_steps=50)
    key, a = jax.random.PRNGKey(0), jnp.zeros(1)
    # lateral: 1.95 m off, heading 90 degrees outward at u = 5 m/s -> 2.45 m
    for step in (10, 49):
        ts = env.step(key, _dyn_state(1.95, math.pi / 2, 0.0, 0.0, 0.0, step=step), a, params)
        assert bool(ts.terminated) and not bool(ts.truncated)
    # heading: |dphi| beyond pi (GOPS does not wrap it) while on the road laterally
    ts = env.step(key, _dyn_state(0.0, 3.1, 0.0, 1.0, 0.0, step=10), a, params)
    assert abs(float(ts.state.phi)) > math.pi
    assert bool(ts.terminated) and not bool(ts.truncated)
    ts = env.step(key, _dyn_state(1.0, 0.0, 0.0, 0.0, 0.0, step=10), a, params)
    assert not bool(ts.terminated) and not bool(ts.truncated)


def test_dynamic_time_limit_truncates_and_does_not_terminate():
    env, params = make("dynamic", max_steps=30)
    s, a, key = env.scenario(params), jnp.zeros(1), jax.random.PRNGKey(0)
    ts = env.step(key, s.replace(step=jnp.asarray(29, jnp.int32)), a, params)
    assert bool(ts.truncated) and not bool(ts.terminated)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_terminated_and_truncated_are_never_both_true_over_random_rollouts(name):
    env, params = make(name, max_steps=20)
    n, horizon = 256, 25
    keys = jax.random.split(jax.random.PRNGKey(7), n)
    _, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    actions = 3.0 * jax.random.normal(jax.random.PRNGKey(8), (horizon, n, env.action_dim))

    @jax.jit
    def rollout(states, actions):
        def body(s, a):
            ts = jax.vmap(env.step, in_axes=(None, 0, 0, None))(jax.random.PRNGKey(0), s, a, params)
            return ts.state, (ts.terminated, ts.truncated)

        return jax.lax.scan(body, states, actions)[1]

    term, trunc = rollout(states, actions)
    assert term.dtype == jnp.bool_ and trunc.dtype == jnp.bool_
    assert not bool(jnp.any(term & trunc))
    assert bool(jnp.any(term)) and bool(jnp.any(trunc))  # both outcomes were exercised


# --------------------------------------------------------------------------- vmap == loop


@pytest.mark.parametrize("name", ENV_NAMES)
def test_vmap_over_1000_envs_equals_loop_of_single_env_steps(name):
    env, params = make(name)
    n, horizon = 1000, 3
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    actions = jax.random.uniform(jax.random.PRNGKey(12), (horizon, n, env.action_dim), minval=-1.2, maxval=1.2)
    step_key = jax.random.PRNGKey(0)

    reset1 = jax.jit(lambda k: env.reset(k, params))
    step1 = jax.jit(lambda s, a: env.step(step_key, s, a, params))
    resetn = jax.jit(jax.vmap(reset1))
    stepn = jax.jit(jax.vmap(step1))

    obs, states = resetn(keys)
    batched = [obs]
    for t in range(horizon):
        ts = stepn(states, actions[t])
        states = ts.state
        batched.append((ts.obs, ts.reward, ts.terminated, ts.truncated, ts.info["utility"]))
    batched = jax.device_get(batched)

    looped = []
    for i in range(n):
        obs_i, s_i = reset1(keys[i])
        row = [obs_i]
        for t in range(horizon):
            ts = step1(s_i, actions[t, i])
            s_i = ts.state
            row.append((ts.obs, ts.reward, ts.terminated, ts.truncated, ts.info["utility"]))
        looped.append(row)
    looped = jax.device_get(looped)

    np.testing.assert_allclose(batched[0], np.stack([r[0] for r in looped]), rtol=1e-5, atol=1e-5)
    for t in range(1, horizon + 1):
        obs_b, rew_b, term_b, trunc_b, util_b = batched[t]
        obs_l, rew_l, term_l, trunc_l, util_l = (np.stack(x) for x in zip(*[r[t] for r in looped]))
        assert obs_b.shape == (n, env.obs_dim(params)) and obs_b.dtype == np.float32
        np.testing.assert_allclose(obs_b, obs_l, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rew_b, rew_l, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(util_b, util_l, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(term_b, term_l)
        np.testing.assert_array_equal(trunc_b, trunc_l)


# --------------------------------------------------------------------------- jit and grad


@pytest.mark.parametrize("name", ENV_NAMES)
def test_step_under_jit_equals_eager_step(name):
    env, params = make(name)
    _, s = env.reset(jax.random.PRNGKey(1), params)
    a = jnp.full((env.action_dim,), 0.3)
    eager = env.step(jax.random.PRNGKey(2), s, a, params)
    jitted = jax.jit(env.step)(jax.random.PRNGKey(2), s, a, params)
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(e), np.asarray(j), rtol=1e-6, atol=1e-6)


def _total_utility_fn(env, params, horizon):
    def total(actions):
        s = env.scenario(params)
        cost = 0.0
        for t in range(horizon):
            ts = env.step(jax.random.PRNGKey(0), s, actions[t], params)
            cost = cost - ts.reward
            s = ts.state
        return cost

    return total


@pytest.mark.parametrize("name", ENV_NAMES)
def test_gradient_of_rollout_utility_wrt_actions_is_finite_and_matches_finite_difference(name):
    with _x64():
        env, params = make(name)
        horizon = 6
        actions = jax.random.uniform(jax.random.PRNGKey(5), (horizon, env.action_dim),
                                     minval=-0.6, maxval=0.6, dtype=jnp.float64)
        total = jax.jit(_total_utility_fn(env, params, horizon))
        grad = jax.jit(jax.grad(total))(actions)
        assert grad.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(grad)))
        assert float(jnp.max(jnp.abs(grad))) > 0.0
        eps = 1e-6
        for t, j in [(0, 0), (2, env.action_dim - 1), (horizon - 1, 0)]:
            e = jnp.zeros_like(actions).at[t, j].set(eps)
            fd = (float(total(actions + e)) - float(total(actions - e))) / (2 * eps)
            assert float(grad[t, j]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_gradient_in_float32_is_finite(name):
    env, params = make(name)
    actions = jnp.full((4, env.action_dim), 0.2, jnp.float32)
    grad = jax.jit(jax.grad(_total_utility_fn(env, params, 4)))(actions)
    assert grad.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(grad)))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("kinematic", "dt", 0.0),
        ("kinematic", "dt", -0.1),
        ("dynamic", "dt", 0.0),
        ("dynamic", "dt", -0.05),
        ("kinematic", "wheelbase", 0.0),
        ("kinematic", "wheelbase", -2.5),
        ("kinematic", "amplitude", float("nan")),
        ("kinematic", "amplitude", float("inf")),
        ("dynamic", "amplitude", float("nan")),
        ("dynamic", "amplitude", -float("inf")),
        ("dynamic", "mass", 0.0),
        ("dynamic", "mass", -1412.0),
        ("kinematic", "preview", ()),
        ("dynamic", "preview", ()),
        ("kinematic", "preview", (2.0, -1.0)),
    ],
)
def test_invalid_params_raise_value_error_naming_the_parameter(name, field, value):
    with pytest.raises(ValueError, match=field):
        make(name, **{field: value})
    params_cls = KinematicParams if name == "kinematic" else DynamicParams
    with pytest.raises(ValueError, match=field):
        params_cls(**{field: value})
    with pytest.raises(ValueError, match=field):
        params_cls().replace(**{field: value})


@pytest.mark.parametrize("name", ENV_NAMES)
def test_make_rejects_unknown_override_naming_it(name):
    with pytest.raises(ValueError, match="not_a_param"):
        make(name, not_a_param=1.0)


def test_make_rejects_unknown_env_name():
    with pytest.raises(ValueError, match="no_such_env"):
        make("no_such_env")


@pytest.mark.parametrize("name", ENV_NAMES)
def test_make_applies_overrides_and_accepts_a_list_preview(name):
    env, params = make(name, amplitude=0.7, preview=[1, 2])
    assert params.amplitude == 0.7 and params.preview == (1.0, 2.0)
    assert env.obs_dim(params) == env.obs_dim(env.default_params) - 2 * (5 - 2)


# --------------------------------------------------------------------------- reset


@pytest.mark.parametrize("name", ENV_NAMES)
def test_reset_is_deterministic_given_key_and_differs_across_keys(name):
    env, params = make(name)
    obs_a, s_a = env.reset(jax.random.PRNGKey(42), params)
    obs_b, s_b = jax.jit(env.reset)(jax.random.PRNGKey(42), params)
    obs_c, s_c = env.reset(jax.random.PRNGKey(43), params)
    np.testing.assert_allclose(np.asarray(obs_a), np.asarray(obs_b), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_state_array(s_a), _state_array(s_b), rtol=1e-6, atol=1e-6)
    assert not np.allclose(_state_array(s_a), _state_array(s_c))
    assert not np.allclose(np.asarray(obs_a), np.asarray(obs_c))
    assert int(s_a.step) == 0


@pytest.mark.parametrize("name", ENV_NAMES)
@pytest.mark.parametrize("preview", [None, (1.0,), (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)])
def test_observation_shape_is_obs_dim_and_dtype_float32(name, preview):
    env, params = make(name) if preview is None else make(name, preview=preview)
    obs, s = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (env.obs_dim(params),) and obs.dtype == jnp.float32
    ts = env.step(jax.random.PRNGKey(0), s, jnp.zeros(env.action_dim), params)
    assert ts.obs.shape == (env.obs_dim(params),) and ts.obs.dtype == jnp.float32
    assert ts.reward.shape == () and ts.terminated.shape == () and ts.truncated.shape == ()
    assert ts.terminated.dtype == jnp.bool_ and ts.truncated.dtype == jnp.bool_
    assert ts.state.step.dtype == jnp.int32
    assert bool(jnp.all(jnp.isfinite(ts.obs)))


@pytest.mark.parametrize("name", ENV_NAMES)
def test_reset_samples_start_on_the_road_within_the_configured_offsets(name):
    env, params = make(name)
    keys = jax.random.split(jax.random.PRNGKey(0), 512)

    @jax.jit
    @jax.vmap
    def start(key):
        _, s = env.reset(key, params)
        return env.tracking(s, params), env.off_road(s, params)

    tr, off = start(keys)
    assert not bool(jnp.any(off))
    assert float(jnp.max(jnp.abs(tr.lateral_error))) <= params.init_lateral + 1e-6
    assert float(jnp.max(jnp.abs(tr.heading_error))) <= params.init_heading + 1e-6


@pytest.mark.parametrize("name", ENV_NAMES)
def test_scenario_starts_offset_by_scenario_lateral_at_step_zero(name):
    env, params = make(name, scenario_lateral=0.4)
    s = env.scenario(params)
    tr = env.tracking(s, params)
    assert int(s.step) == 0
    assert float(tr.y - tr.y_ref) == pytest.approx(0.4, rel=1e-5)
    assert float(tr.heading_error) == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------- vmap over params


@pytest.mark.parametrize("name", ENV_NAMES)
def test_params_can_be_vmapped_over_a_batch_of_amplitudes(name):
    env, params = make(name)
    amps = jnp.array([0.0, 0.5, 1.0, 2.5])
    batch = params.replace(amplitude=amps)
    axes = jax.tree.map(lambda _: None, params).replace(amplitude=0)
    a = jnp.full((env.action_dim,), 0.25)

    def one(p):
        s = env.scenario(p)
        ts = env.step(jax.random.PRNGKey(0), s, a, p)
        return ts.obs, ts.reward, ts.state

    obs_b, rew_b, st_b = jax.jit(jax.vmap(one, in_axes=(axes,)))(batch)
    assert obs_b.shape == (4, env.obs_dim(params))
    for i, amp in enumerate(np.asarray(amps)):
        obs_i, rew_i, st_i = one(params.replace(amplitude=float(amp)))
        np.testing.assert_allclose(np.asarray(obs_b[i]), np.asarray(obs_i), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(rew_b[i]), float(rew_i), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_state_array(jax.tree.map(lambda x, i=i: x[i], st_b)),
                                   _state_array(st_i), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ENV_NAMES)
@pytest.mark.parametrize(("field", "value", "says"), [
    ("amplitude", "big", "must be a number"),
    ("dt", [0.1], "must be a number"),
    ("amplitude", True, "must be a number"),
    ("max_steps", 200.5, "must be an integer"),
    ("max_steps", "200", "must be a number"),
])
def test_make_rejects_an_override_of_the_wrong_type_naming_it(name, field, value, says):
    with pytest.raises(TypeError, match=f"{field} {says}, got {value!r}".replace("[", r"\[").replace("]", r"\]")):
        make(name, **{field: value})
