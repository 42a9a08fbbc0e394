"""Dynamic 2-DOF (linear lateral) bicycle: the GOPS ``veh2dofconti`` task.

State ``[y, phi, v, w]`` (lateral position, heading, lateral speed, yaw rate)
at constant longitudinal speed ``u``; the single action is the front steer
angle, normalised to [-1, 1] and scaled to +-pi/6. The discretisation is
semi-implicit in ``v`` and ``w`` (as in GOPS), stable at ``dt = 0.1``:

    y'   = y + dt (u sin(phi) + v cos(phi))        phi' = phi + dt w
    v'   = [m u v + dt (lf kf - lr kr) w - dt kf delta u - dt m u^2 w] / [m u - dt (kf + kr)]
    w'   = [Iz u w + dt (lf kf - lr kr) v - dt lf kf delta u] / [Iz u - dt (lf^2 kf + lr^2 kr)]

Reference ``y_ref(t) = A sin(2 pi t / T)`` with heading ``atan2(dy_ref/dt, u)``;
utility ``0.04 dy^2 + 0.02 dphi^2 + 0.01 v^2 + 0.01 w^2 + 0.01 delta^2``
evaluated before the step. Leaves the road when ``|dy| > 2`` or ``|dphi| > pi``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from asynccorr.envs.base import (
    Array,
    Environment,
    Timestep,
    Tracking,
    atan2,
    check_finite,
    check_integer,
    check_nonnegative,
    check_positive,
    check_preview,
    inv_sqrt,
    sincos,
    wrap_angle,
)


@struct.dataclass
class DynamicParams:
    """GOPS veh2dofconti constants (SI units) plus reference, weights and bounds."""

    kf: float = -128915.5  # front cornering stiffness [N/rad]
    kr: float = -85943.6  # rear cornering stiffness [N/rad]
    lf: float = 1.06  # CG to front axle [m]
    lr: float = 1.85  # CG to rear axle [m]
    mass: float = 1412.0  # [kg]
    inertia: float = 1536.7  # yaw inertia Iz [kg m^2]
    speed: float = 5.0  # constant longitudinal speed u [m/s]
    dt: float = 0.1  # [s]
    max_steer: float = 3.141592653589793 / 6  # |delta| bound [rad]
    amplitude: float = 1.5  # reference amplitude [m]
    period: float = 10.0  # reference period in time [s]
    w_lateral: float = 0.04
    w_heading: float = 0.02
    w_lateral_speed: float = 0.01
    w_yaw_rate: float = 0.01
    w_steer: float = 0.01
    max_lateral_error: float = 2.0  # |dy| beyond this = left the road [m]
    max_heading_error: float = 3.141592653589793  # |dphi| beyond this = left the road [rad]
    max_steps: int = 200
    init_lateral: float = 1.0  # reset: dy ~ U(-., .) [m]
    init_heading: float = 0.3  # reset: dphi ~ U(-., .) [rad]
    init_lateral_speed: float = 0.2  # reset: v ~ U(-., .) [m/s]
    init_yaw_rate: float = 0.2  # reset: w ~ U(-., .) [rad/s]
    scenario_lateral: float = 0.5  # fixed evaluation start: dy at t = 0 [m]
    preview: tuple[float, ...] = struct.field(pytree_node=False, default=(0.5, 1.0, 1.5, 2.0, 2.5))  # [s]

    def __post_init__(self) -> None:
        for name in ("lf", "lr", "mass", "inertia", "speed", "dt", "max_steer", "period",
                     "max_lateral_error", "max_heading_error", "max_steps"):
            check_positive(name, getattr(self, name))
        for name in ("kf", "kr", "amplitude", "scenario_lateral"):
            check_finite(name, getattr(self, name))
        for name in ("w_lateral", "w_heading", "w_lateral_speed", "w_yaw_rate", "w_steer",
                     "init_lateral", "init_heading", "init_lateral_speed", "init_yaw_rate"):
            check_nonnegative(name, getattr(self, name))
        check_preview("preview", self.preview)
        check_integer("max_steps", self.max_steps)


@struct.dataclass
class DynamicState:
    y: Array
    phi: Array
    v: Array  # lateral speed
    w: Array  # yaw rate
    time: Array  # [s], sets the reference phase
    step: Array  # integer step counter


def reference_y(time: Array, params: DynamicParams) -> Array:
    return params.amplitude * sincos(2.0 * jnp.pi * time / params.period)[0]


def reference_heading(time: Array, params: DynamicParams) -> Array:
    omega = 2.0 * jnp.pi / params.period
    dy_dt = params.amplitude * omega * sincos(omega * time)[1]
    return atan2(dy_dt, params.speed)


def scale_action(action: Array, params: DynamicParams) -> Array:
    return params.max_steer * jnp.clip(action[0], -1.0, 1.0)


class _Frame(NamedTuple):
    """The trigonometry of one state, computed once and shared by everything ``step`` returns."""

    sin_phase: Array  # sin / cos of the reference's phase 2 pi t / T
    cos_phase: Array
    sin_phi: Array  # sin / cos of the vehicle heading
    cos_phi: Array
    dy: Array  # lateral error y - y_ref(t)
    dphi: Array  # heading error phi - psi_ref(t), unwrapped (GOPS)


def _frame(state: DynamicState, params: DynamicParams) -> _Frame:
    omega = 2.0 * jnp.pi / params.period
    sin_p, cos_p = sincos(omega * state.time)
    sin_phi, cos_phi = sincos(state.phi)
    heading_ref = atan2(params.amplitude * omega * cos_p, params.speed)
    return _Frame(sin_p, cos_p, sin_phi, cos_phi, state.y - params.amplitude * sin_p, state.phi - heading_ref)


def _transition(state: DynamicState, f: _Frame, action: Array, params: DynamicParams) -> DynamicState:
    delta = scale_action(action, params)
    dt, u, m, iz = params.dt, params.speed, params.mass, params.inertia
    kf, kr, lf, lr = params.kf, params.kr, params.lf, params.lr
    y, phi, v, w = state.y, state.phi, state.v, state.w
    v_next = (m * u * v + dt * (lf * kf - lr * kr) * w - dt * kf * delta * u - dt * m * u**2 * w) / (
        m * u - dt * (kf + kr)
    )
    w_next = (iz * u * w + dt * (lf * kf - lr * kr) * v - dt * lf * kf * delta * u) / (
        iz * u - dt * (lf**2 * kf + lr**2 * kr)
    )
    return DynamicState(
        y=y + dt * (u * f.sin_phi + v * f.cos_phi),
        phi=phi + dt * w,
        v=v_next,
        w=w_next,
        time=state.time + dt,
        step=state.step + 1,
    )


def _observation(state: DynamicState, f: _Frame, params: DynamicParams) -> Array:
    omega = 2.0 * jnp.pi / params.period
    y_ahead, heading_ahead = [], []
    for h in params.preview:  # static: a few scalar features, each vectorised over any batch
        sin_h, cos_h = sincos(omega * h)  # scalars unless params are batched
        sin_a, cos_a = f.sin_phase * cos_h + f.cos_phase * sin_h, f.cos_phase * cos_h - f.sin_phase * sin_h
        dy_dt = params.amplitude * omega * cos_a
        y_ahead.append(params.amplitude * sin_a - state.y)
        heading_ahead.append((dy_dt * f.cos_phi - params.speed * f.sin_phi) * inv_sqrt(params.speed**2 + dy_dt**2))
    features = [f.dy, f.dphi, state.v, state.w, *y_ahead, *heading_ahead]
    return jnp.stack(features)


def _utility(state: DynamicState, f: _Frame, action: Array, params: DynamicParams) -> Array:
    delta = scale_action(action, params)
    return (
        params.w_lateral * f.dy**2
        + params.w_heading * f.dphi**2
        + params.w_lateral_speed * state.v**2
        + params.w_yaw_rate * state.w**2
        + params.w_steer * delta**2
    )


def _off_road(f: _Frame, params: DynamicParams) -> Array:
    return jnp.logical_or(jnp.abs(f.dy) > params.max_lateral_error, jnp.abs(f.dphi) > params.max_heading_error)


class Dynamic2DOF(Environment):
    """Linear 2-DOF bicycle tracking ``y_ref(t) = A sin(2 pi t / T)`` at speed u."""

    name = "dynamic"
    action_dim = 1

    @property
    def default_params(self) -> DynamicParams:
        return DynamicParams()

    def obs_dim(self, params: DynamicParams) -> int:
        return 4 + 2 * len(params.preview)

    def reset(self, key: Array, params: DynamicParams) -> tuple[Array, DynamicState]:
        k_t, k_y, k_phi, k_v, k_w = jax.random.split(key, 5)

        def u(k: Array, scale: float) -> Array:
            return jax.random.uniform(k, (), minval=-1.0, maxval=1.0) * scale

        time = jax.random.uniform(k_t, (), minval=0.0, maxval=params.period)
        state = DynamicState(
            y=reference_y(time, params) + u(k_y, params.init_lateral),
            phi=reference_heading(time, params) + u(k_phi, params.init_heading),
            v=u(k_v, params.init_lateral_speed),
            w=u(k_w, params.init_yaw_rate),
            time=time,
            step=jnp.zeros((), jnp.int32),
        )
        return self.observation(state, params), state

    def scenario(self, params: DynamicParams) -> DynamicState:
        time = jnp.zeros(())
        return DynamicState(
            y=reference_y(time, params) + params.scenario_lateral,
            phi=reference_heading(time, params),
            v=jnp.zeros(()),
            w=jnp.zeros(()),
            time=time,
            step=jnp.zeros((), jnp.int32),
        )

    def step(self, key: Array, state: DynamicState, action: Array, params: DynamicParams) -> Timestep:
        """Same as ``Environment.step``, with the trigonometry of each state computed once."""
        del key
        f = _frame(state, params)
        cost = _utility(state, f, action, params)
        next_state = _transition(state, f, action, params)
        f_next = _frame(next_state, params)
        terminated = _off_road(f_next, params)
        truncated = jnp.logical_and(next_state.step >= params.max_steps, jnp.logical_not(terminated))
        obs = _observation(next_state, f_next, params)
        return Timestep(obs, next_state, -cost, terminated, truncated, {"utility": cost})

    def transition(self, state: DynamicState, action: Array, params: DynamicParams) -> DynamicState:
        return _transition(state, _frame(state, params), action, params)

    def tracking(self, state: DynamicState, params: DynamicParams) -> Tracking:
        f = _frame(state, params)
        return Tracking(
            x=params.speed * state.time,
            y=state.y,
            y_ref=params.amplitude * f.sin_phase,
            lateral_error=f.dy,
            heading_error=wrap_angle(f.dphi),
        )

    def observation(self, state: DynamicState, params: DynamicParams) -> Array:
        """``[dy, dphi, v, w, dy_1..dy_P, sin(dphi_1)..sin(dphi_P)]``.

        For each preview time ``h``: the reference's lateral offset from the
        vehicle at ``t + h`` and the sine of its heading relative to the vehicle
        heading; computed by angle addition from one sine/cosine of the phase.
        """
        return _observation(state, _frame(state, params), params)

    def utility(self, state: DynamicState, action: Array, params: DynamicParams) -> Array:
        return _utility(state, _frame(state, params), action, params)

    def off_road(self, state: DynamicState, params: DynamicParams) -> Array:
        return _off_road(_frame(state, params), params)
