"""Kinematic bicycle tracking a sinusoidal reference path.

State ``(x, y, psi, v)`` in world coordinates; action ``(steer, accel)`` given
normalised to [-1, 1] and scaled to the physical bounds. Rear-axle kinematic
bicycle, explicit Euler with ``dt``:

    x' = x + dt v cos(psi)        y' = y + dt v sin(psi)
    psi' = psi + dt v tan(delta) / L      v' = clip(v + dt a, v_min, v_max)

Reference ``y_ref(x) = A sin(2 pi x / lambda)``, heading ``atan(dy_ref/dx)``.
The observation is path-relative (lateral, heading and speed errors) plus a
preview of the reference ahead in the vehicle frame, which makes it Markov:
the preview pins down the phase of the sine under the vehicle.
"""

from __future__ import annotations

import math
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
    check_order,
    check_positive,
    check_preview,
    inv_sqrt,
    sincos,
)


@struct.dataclass
class KinematicParams:
    """Physics, reference, utility weights and bounds (SI units)."""

    amplitude: float = 2.0  # A of the sine reference [m]
    wavelength: float = 40.0  # lambda of the sine reference [m]
    speed_ref: float = 5.0  # target speed [m/s]
    wheelbase: float = 2.5  # L [m]
    dt: float = 0.1  # integration step [s]
    max_steer: float = 0.5  # |delta| bound [rad]
    max_accel: float = 2.0  # |a| bound [m/s^2]
    min_speed: float = 0.0  # [m/s]
    max_speed: float = 10.0  # [m/s]
    w_lateral: float = 1.0  # utility weight on lateral error^2
    w_heading: float = 1.0  # ... heading error^2
    w_speed: float = 0.1  # ... speed error^2
    w_steer: float = 0.1  # ... steer^2 [rad^2]
    w_accel: float = 0.01  # ... accel^2
    road_half_width: float = 3.0  # |lateral error| beyond this = left the road [m]
    max_steps: int = 200  # episode length (truncation)
    init_lateral: float = 1.0  # reset: lateral offset ~ U(-., .) [m]
    init_heading: float = 0.3  # reset: heading offset ~ U(-., .) [rad]
    init_speed: float = 1.0  # reset: speed offset ~ U(-., .) [m/s]
    scenario_lateral: float = 0.5  # fixed evaluation start: lateral offset at x = 0 [m]
    preview: tuple[float, ...] = struct.field(pytree_node=False, default=(2.0, 4.0, 6.0, 8.0, 10.0))

    def __post_init__(self) -> None:
        for name in ("wavelength", "wheelbase", "dt", "max_steer", "max_accel", "max_speed",
                     "road_half_width", "max_steps"):
            check_positive(name, getattr(self, name))
        for name in ("amplitude", "speed_ref"):
            check_finite(name, getattr(self, name))
        for name in ("min_speed", "w_lateral", "w_heading", "w_speed", "w_steer", "w_accel",
                     "init_lateral", "init_heading", "init_speed"):
            check_nonnegative(name, getattr(self, name))
        check_finite("scenario_lateral", self.scenario_lateral)
        check_preview("preview", self.preview)
        check_integer("max_steps", self.max_steps)
        check_order("min_speed", self.min_speed, "max_speed", self.max_speed)
        if isinstance(self.max_steer, (int, float)) and self.max_steer >= math.pi / 2:
            raise ValueError(f"max_steer must be < pi/2 rad, got {self.max_steer!r}")


@struct.dataclass
class KinematicState:
    x: Array
    y: Array
    psi: Array
    v: Array
    step: Array  # integer step counter


def reference_y(x: Array, params: KinematicParams) -> Array:
    return params.amplitude * sincos(2.0 * jnp.pi * x / params.wavelength)[0]


def reference_heading(x: Array, params: KinematicParams) -> Array:
    k = 2.0 * jnp.pi / params.wavelength
    slope = params.amplitude * k * sincos(k * x)[1]
    return atan2(slope, jnp.ones_like(slope))


class _Frame(NamedTuple):
    """The trigonometry of one state, computed once and shared by everything ``step`` returns."""

    sin_phase: Array  # sin / cos of the reference's phase 2 pi x / lambda
    cos_phase: Array
    sin_psi: Array  # sin / cos of the vehicle heading
    cos_psi: Array
    y_ref: Array  # A sin(phase)
    slope: Array  # dy_ref/dx = tan(psi_ref)


def _frame(state: KinematicState, params: KinematicParams) -> _Frame:
    k = 2.0 * jnp.pi / params.wavelength
    sin_p, cos_p = sincos(k * state.x)
    sin_psi, cos_psi = sincos(state.psi)
    return _Frame(sin_p, cos_p, sin_psi, cos_psi, params.amplitude * sin_p, params.amplitude * k * cos_p)


def _tracking(state: KinematicState, f: _Frame) -> Tracking:
    # cos(psi_ref) = 1 / sqrt(1 + slope^2) and sin(psi_ref) = slope cos(psi_ref), so
    # sin(psi - psi_ref) = cos(psi_ref) (sin psi - slope cos psi) and
    # cos(psi - psi_ref) = cos(psi_ref) (cos psi + slope sin psi); atan2 drops the
    # common positive factor: the heading error is wrapped by construction.
    heading_error = atan2(f.sin_psi - f.slope * f.cos_psi, f.cos_psi + f.slope * f.sin_psi)
    return Tracking(
        x=state.x,
        y=state.y,
        y_ref=f.y_ref,
        lateral_error=(state.y - f.y_ref) * inv_sqrt(1.0 + f.slope * f.slope),
        heading_error=heading_error,
    )


def _observation(state: KinematicState, f: _Frame, tr: Tracking, params: KinematicParams) -> Array:
    k = 2.0 * jnp.pi / params.wavelength
    lateral_ahead, heading_ahead = [], []
    for d in params.preview:  # static: a few scalar features, each vectorised over any batch
        sin_d, cos_d = sincos(k * d)  # scalars unless params are batched
        # reference point d ahead, by angle addition: phase + k d
        sin_a = f.sin_phase * cos_d + f.cos_phase * sin_d
        cos_a = f.cos_phase * cos_d - f.sin_phase * sin_d
        slope = params.amplitude * k * cos_a
        lateral_ahead.append(-f.sin_psi * d + f.cos_psi * (params.amplitude * sin_a - state.y))
        # sin(psi_ref_ahead - psi) = cos(psi_ref_ahead) (slope cos psi - sin psi)
        heading_ahead.append(inv_sqrt(1.0 + slope * slope) * (slope * f.cos_psi - f.sin_psi))
    features = [tr.lateral_error, tr.heading_error, state.v - params.speed_ref, *lateral_ahead, *heading_ahead]
    return jnp.stack(features)


def _utility(state: KinematicState, tr: Tracking, action: Array, params: KinematicParams) -> Array:
    steer, accel = scale_action(action, params)
    return (
        params.w_lateral * tr.lateral_error**2
        + params.w_heading * tr.heading_error**2
        + params.w_speed * (state.v - params.speed_ref) ** 2
        + params.w_steer * steer**2
        + params.w_accel * accel**2
    )


def _transition(state: KinematicState, f: _Frame, action: Array, params: KinematicParams) -> KinematicState:
    steer, accel = scale_action(action, params)
    sin_steer, cos_steer = sincos(steer)
    dt, dist = params.dt, params.dt * state.v
    return KinematicState(
        x=state.x + dist * f.cos_psi,
        y=state.y + dist * f.sin_psi,
        psi=state.psi + dist * (sin_steer / cos_steer) / params.wheelbase,
        v=jnp.clip(state.v + dt * accel, params.min_speed, params.max_speed),
        step=state.step + 1,
    )


def scale_action(action: Array, params: KinematicParams) -> tuple[Array, Array]:
    """Map a normalised action in [-1, 1]^2 to (steer [rad], accel [m/s^2])."""
    a = jnp.clip(action, -1.0, 1.0)
    return params.max_steer * a[0], params.max_accel * a[1]


class KinematicBicycle(Environment):
    """Kinematic bicycle following ``y = A sin(2 pi x / lambda)``."""

    name = "kinematic"
    action_dim = 2

    @property
    def default_params(self) -> KinematicParams:
        return KinematicParams()

    def obs_dim(self, params: KinematicParams) -> int:
        return 3 + 2 * len(params.preview)

    def reset(self, key: Array, params: KinematicParams) -> tuple[Array, KinematicState]:
        k_x, k_y, k_psi, k_v = jax.random.split(key, 4)
        x = jax.random.uniform(k_x, (), minval=0.0, maxval=params.wavelength)
        dy = jax.random.uniform(k_y, (), minval=-1.0, maxval=1.0) * params.init_lateral
        dpsi = jax.random.uniform(k_psi, (), minval=-1.0, maxval=1.0) * params.init_heading
        dv = jax.random.uniform(k_v, (), minval=-1.0, maxval=1.0) * params.init_speed
        state = KinematicState(
            x=x,
            y=reference_y(x, params) + dy,
            psi=reference_heading(x, params) + dpsi,
            v=jnp.clip(params.speed_ref + dv, params.min_speed, params.max_speed),
            step=jnp.zeros((), jnp.int32),
        )
        return self.observation(state, params), state

    def scenario(self, params: KinematicParams) -> KinematicState:
        x = jnp.zeros(())
        return KinematicState(
            x=x,
            y=reference_y(x, params) + params.scenario_lateral,
            psi=reference_heading(x, params),
            v=x + params.speed_ref,
            step=jnp.zeros((), jnp.int32),
        )

    def step(self, key: Array, state: KinematicState, action: Array, params: KinematicParams) -> Timestep:
        """Same as ``Environment.step``, with the trigonometry of each state computed once."""
        del key
        f = _frame(state, params)
        cost = _utility(state, _tracking(state, f), action, params)
        next_state = _transition(state, f, action, params)
        f_next = _frame(next_state, params)
        tr_next = _tracking(next_state, f_next)
        terminated = jnp.abs(tr_next.lateral_error) > params.road_half_width
        truncated = jnp.logical_and(next_state.step >= params.max_steps, jnp.logical_not(terminated))
        obs = _observation(next_state, f_next, tr_next, params)
        return Timestep(obs, next_state, -cost, terminated, truncated, {"utility": cost})

    def transition(self, state: KinematicState, action: Array, params: KinematicParams) -> KinematicState:
        return _transition(state, _frame(state, params), action, params)

    def tracking(self, state: KinematicState, params: KinematicParams) -> Tracking:
        return _tracking(state, _frame(state, params))

    def observation(self, state: KinematicState, params: KinematicParams) -> Array:
        """``[e_lat, e_head, e_speed, lat_1..lat_P, sin(head_1)..sin(head_P)]``.

        For each preview distance ``d``: the lateral coordinate of the reference
        point ``(x + d, y_ref(x + d))`` in the vehicle frame, and the sine of the
        reference heading there relative to the vehicle heading. Preview points
        use the angle-addition formula, so the whole observation costs one sine
        and cosine of the phase and of the heading, and one arctangent (speed
        matters: it runs inside every model rollout).
        """
        f = _frame(state, params)
        return _observation(state, f, _tracking(state, f), params)

    def utility(self, state: KinematicState, action: Array, params: KinematicParams) -> Array:
        return _utility(state, self.tracking(state, params), action, params)

    def off_road(self, state: KinematicState, params: KinematicParams) -> Array:
        return jnp.abs(self.tracking(state, params).lateral_error) > params.road_half_width
