"""Functional environment interface shared by the vehicle-tracking tasks.

gymnax-style: physics and task constants live in a frozen params dataclass (a
pytree, so it can be vmapped), the state is a frozen dataclass, and ``reset`` /
``step`` are pure functions that jit, vmap and differentiate. ``step`` never
auto-resets: the learner differentiates model rollouts through it, and a hidden
reset would cut the gradient.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Timestep(NamedTuple):
    """What one call of ``step`` returns.

    ``terminated`` means the vehicle left the road (a true end of the MDP);
    ``truncated`` means the time limit was hit while still on the road. At most
    one of them is true.
    """

    obs: Array
    state: Any
    reward: Array
    terminated: Array
    truncated: Array
    info: dict[str, Array]


class Tracking(NamedTuple):
    """Path-relative quantities used by evaluation and plots (all scalars)."""

    x: Array  # longitudinal position along the road [m]
    y: Array  # lateral position [m]
    y_ref: Array  # reference lateral position at x [m]
    lateral_error: Array  # signed lateral error [m]
    heading_error: Array  # heading error, wrapped to (-pi, pi] [rad]


# ----------------------------------------------------------------------------- fast float32 trig
#
# XLA:CPU lowers sin / cos / tan / atan2 / rsqrt to scalar library calls (one
# element at a time, ~5-20 ns each), while multiplies, adds, selects, sqrt and
# divide vectorise to full SIMD width. The env steps are dominated by those
# calls, so float32 inputs go through the polynomial versions below (written
# with vectorisable jnp ops), which are as accurate as float32 allows (max abs
# error ~1.4e-7 for |x| < 1e5) and ~10-30x faster. Derivatives are exact formulas
# via ``custom_jvp`` (to any order). Any other dtype (float64 in the
# finite-difference tests) uses the jnp functions.

_TWO_OVER_PI = 0.6366197723675814
# pi/2 split into three float32 parts (Cody-Waite): q * _PIO2_1 is exact for |q| < 2^16
_PIO2_1 = 1.5703125
_PIO2_2 = 4.837512969970703125e-4
_PIO2_3 = 7.549789954891882e-8
_TAN_PI_8 = 0.41421356237309503


def _is_f32(x: Array) -> bool:
    return x.dtype == jnp.float32


@jax.custom_jvp
def _sincos_f32(x: Array) -> tuple[Array, Array]:
    q = jnp.round(x * _TWO_OVER_PI)  # nearest multiple of pi/2
    r = ((x - q * _PIO2_1) - q * _PIO2_2) - q * _PIO2_3  # |r| <= pi/4
    # Weierstrass substitution: with t = tan(r / 2) (|r / 2| <= pi/8, Taylor series
    # to r^11, truncation error < 2e-8), sin r = 2t / (1 + t^2), cos r = (1 - t^2) / (1 + t^2).
    h = 0.5 * r
    z = h * h
    t = h + h * z * (1.0 / 3.0 + z * (2.0 / 15.0 + z * (17.0 / 315.0 + z * (62.0 / 2835.0 + z * (1382.0 / 155925.0)))))
    t2 = t * t
    s, c = 2.0 * t, 1.0 - t2
    n = q.astype(jnp.int32)  # quadrant: rotate (s, c) by n * pi/2 before dividing
    swap = (n & 1) != 0
    num_sin = jnp.where(swap, c, s)
    num_cos = jnp.where(swap, s, c)
    num_sin = jnp.where((n & 2) != 0, -num_sin, num_sin)
    num_cos = jnp.where(((n + 1) & 2) != 0, -num_cos, num_cos)
    # Ending in a division matters for speed, not only accuracy: XLA re-fuses
    # cheap elementwise chains into every consumer (the polynomial would be
    # recomputed once per use), but never duplicates a divide.
    den = 1.0 + t2
    return num_sin / den, num_cos / den


@_sincos_f32.defjvp
def _sincos_f32_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Any, Any]:
    (x,), (dx,) = primals, tangents
    s, c = _sincos_f32(x)
    return (s, c), (c * dx, -s * dx)


@jax.custom_jvp
def _atan2_f32(y: Array, x: Array) -> Array:
    ay, ax = jnp.abs(y), jnp.abs(x)
    hi, lo = jnp.maximum(ay, ax), jnp.minimum(ay, ax)
    t = lo / jnp.where(hi == 0, 1.0, hi)  # in [0, 1]
    big = t > _TAN_PI_8
    t = jnp.where(big, (t - 1.0) / (t + 1.0), t)  # |t| <= tan(pi/8)
    z = t * t
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * t + t
    a = jnp.where(big, p + math.pi / 4, p)
    a = jnp.where(ay > ax, math.pi / 2 - a, a)
    a = jnp.where(x < 0, math.pi - a, a)
    return jnp.where(jnp.signbit(y), -a, a)


@_atan2_f32.defjvp
def _atan2_f32_jvp(primals: tuple[Array, Array], tangents: tuple[Array, Array]) -> tuple[Array, Array]:
    (y, x), (dy, dx) = primals, tangents
    return _atan2_f32(y, x), (x * dy - y * dx) / (x * x + y * y)


def sincos(x: Array) -> tuple[Array, Array]:
    """``(sin x, cos x)`` sharing one range reduction (vectorised for float32)."""
    x = jnp.asarray(x)
    if _is_f32(x):
        return _sincos_f32(x)
    return jnp.sin(x), jnp.cos(x)


def atan2(y: Array, x: Array) -> Array:
    """``arctan2(y, x)`` in (-pi, pi] (vectorised for float32)."""
    if jnp.result_type(y, x) == jnp.float32:
        y, x = jnp.broadcast_arrays(jnp.asarray(y, jnp.float32), jnp.asarray(x, jnp.float32))
        return _atan2_f32(y, x)
    return jnp.arctan2(y, x)


def inv_sqrt(x: Array) -> Array:
    """``1 / sqrt(x)`` for x > 0. Written as ``sqrt(x) / x``: XLA:CPU's ``rsqrt``
    (which ``1 / sqrt`` is rewritten to) is scalar, ``sqrt`` and ``/`` vectorise."""
    return jnp.sqrt(x) / x


def wrap_angle(angle: Array) -> Array:
    """Wrap to (-pi, pi] smoothly (differentiable almost everywhere)."""
    s, c = sincos(angle)
    return atan2(s, c)


def _is_concrete_number(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    return isinstance(value, (bool, int, float, np.generic, np.ndarray, jax.Array))


def check_positive(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is finite and > 0.

    Tracers and non-numeric placeholders (vmap axis specs, tree sentinels) are
    skipped, so validation runs at construction but never inside a transform.
    """
    if not _is_concrete_number(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is finite and >= 0."""
    if not _is_concrete_number(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 0)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_finite(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is finite."""
    if not _is_concrete_number(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_integer(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless a concrete ``value`` is a positive integer."""
    if not _is_concrete_number(value):
        return
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" and not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_positive(name, value)


def check_order(low_name: str, low: Any, high_name: str, high: Any) -> None:
    """Raise ``ValueError`` unless concrete ``low <= high``."""
    if not (_is_concrete_number(low) and _is_concrete_number(high)):
        return
    if not np.all(np.asarray(low) <= np.asarray(high)):
        raise ValueError(f"{low_name} must be <= {high_name}, got {low!r} > {high!r}")


def check_preview(name: str, value: Any) -> None:
    """A preview is a non-empty tuple of finite positive offsets."""
    if not isinstance(value, tuple) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty tuple of positive numbers, got {value!r}")
    for v in value:
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must hold finite numbers > 0, got {value!r}")


class Environment:
    """Base class: subclasses implement the pure functions below.

    All methods are pure functions of their arguments (the instance holds no
    mutable state), so they can be passed to ``jax.jit`` / ``jax.vmap``.
    """

    name: str = "base"
    action_dim: int = 0

    @property
    def default_params(self) -> Any:
        raise NotImplementedError

    def obs_dim(self, params: Any) -> int:
        raise NotImplementedError

    def reset(self, key: Array, params: Any) -> tuple[Array, Any]:
        """Sample an initial state from the reset distribution."""
        raise NotImplementedError

    def scenario(self, params: Any) -> Any:
        """The fixed, deterministic initial state used for tracking evaluation."""
        raise NotImplementedError

    def step(self, key: Array, state: Any, action: Array, params: Any) -> Timestep:
        """Advance one step. ``key`` is accepted for API symmetry (dynamics are
        deterministic). The utility is evaluated before the step, at (x, u)."""
        del key
        cost = self.utility(state, action, params)
        next_state = self.transition(state, action, params)
        terminated = self.off_road(next_state, params)
        truncated = jnp.logical_and(next_state.step >= params.max_steps, jnp.logical_not(terminated))
        obs = self.observation(next_state, params)
        return Timestep(obs, next_state, -cost, terminated, truncated, {"utility": cost})

    def off_road(self, state: Any, params: Any) -> Array:
        """True when the state has left the road (episode terminated)."""
        raise NotImplementedError

    def observation(self, state: Any, params: Any) -> Array:
        raise NotImplementedError

    def utility(self, state: Any, action: Array, params: Any) -> Array:
        """Stage cost l(x, u) >= 0 (reward is its negative), evaluated before the step."""
        raise NotImplementedError

    def tracking(self, state: Any, params: Any) -> Tracking:
        raise NotImplementedError

    def transition(self, state: Any, action: Array, params: Any) -> Any:
        """Deterministic model x' = f(x, u): what the learner differentiates through."""
        raise NotImplementedError
