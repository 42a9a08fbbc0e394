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

import jax
import jax.numpy as jnp
from flax import struct

from asynccorr.envs.base import (
    Array,
    Environment,
    Tracking,
    check_finite,
    check_nonnegative,
    check_integer,
    check_positive,
    check_preview,
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
    return params.amplitude * jnp.sin(2.0 * jnp.pi * time / params.period)


def reference_heading(time: Array, params: DynamicParams) -> Array:
    omega = 2.0 * jnp.pi / params.period
    dy_dt = params.amplitude * omega * jnp.cos(omega * time)
    return jnp.arctan2(dy_dt, params.speed)


def scale_action(action: Array, params: DynamicParams) -> Array:
    return params.max_steer * jnp.clip(action[0], -1.0, 1.0)


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

    def transition(self, state: DynamicState, action: Array, params: DynamicParams) -> DynamicState:
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
            y=y + dt * (u * jnp.sin(phi) + v * jnp.cos(phi)),
            phi=phi + dt * w,
            v=v_next,
            w=w_next,
            time=state.time + dt,
            step=state.step + 1,
        )

    def _errors(self, state: DynamicState, params: DynamicParams) -> tuple[Array, Array]:
        """(dy, dphi): unwrapped, as GOPS measures them."""
        return (state.y - reference_y(state.time, params),
                state.phi - reference_heading(state.time, params))

    def tracking(self, state: DynamicState, params: DynamicParams) -> Tracking:
        dy, dphi = self._errors(state, params)
        return Tracking(
            x=params.speed * state.time,
            y=state.y,
            y_ref=reference_y(state.time, params),
            lateral_error=dy,
            heading_error=wrap_angle(dphi),
        )

    def observation(self, state: DynamicState, params: DynamicParams) -> Array:
        """``[dy, dphi, v, w, dy_1..dy_P, sin(dphi_1)..sin(dphi_P)]``.

        For each preview time ``h``: the reference's lateral offset from the
        vehicle at ``t + h`` and the sine of its heading relative to the vehicle
        heading; computed by angle addition from one sine/cosine of the phase.
        """
        dy, dphi = self._errors(state, params)
        omega = 2.0 * jnp.pi / params.period
        sin_p, cos_p = jnp.sin(omega * state.time), jnp.cos(omega * state.time)
        cos_phi, sin_phi = jnp.cos(state.phi), jnp.sin(state.phi)
        y_ahead, heading_ahead = [], []
        for h in params.preview:  # static: a few scalar features, each vectorised over any batch
            sin_h, cos_h = jnp.sin(omega * h), jnp.cos(omega * h)
            sin_a, cos_a = sin_p * cos_h + cos_p * sin_h, cos_p * cos_h - sin_p * sin_h
            dy_dt = params.amplitude * omega * cos_a
            inv_norm = jax.lax.rsqrt(params.speed**2 + dy_dt**2)
            y_ahead.append(params.amplitude * sin_a - state.y)
            heading_ahead.append((dy_dt * cos_phi - params.speed * sin_phi) * inv_norm)
        features = [dy, dphi, state.v, state.w, *y_ahead, *heading_ahead]
        return jnp.stack(features)

    def utility(self, state: DynamicState, action: Array, params: DynamicParams) -> Array:
        dy, dphi = self._errors(state, params)
        delta = scale_action(action, params)
        return (
            params.w_lateral * dy**2
            + params.w_heading * dphi**2
            + params.w_lateral_speed * state.v**2
            + params.w_yaw_rate * state.w**2
            + params.w_steer * delta**2
        )

    def off_road(self, state: DynamicState, params: DynamicParams) -> Array:
        dy, dphi = self._errors(state, params)
        return jnp.logical_or(jnp.abs(dy) > params.max_lateral_error,
                              jnp.abs(dphi) > params.max_heading_error)
