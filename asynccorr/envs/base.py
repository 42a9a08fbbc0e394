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


def wrap_angle(angle: Array) -> Array:
    """Wrap to (-pi, pi] smoothly (differentiable almost everywhere)."""
    return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def _is_concrete_number(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    if isinstance(value, (bool, int, float, np.generic, np.ndarray, jax.Array)):
        return True
    return False


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
