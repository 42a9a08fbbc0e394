"""Gymnasium adapter for the functional JAX environments (optional extra).

Import this module only when ``gymnasium`` is installed
(``pip install asynccorr[gymnasium]``); ``asynccorr.envs`` never imports it.

    env = GymnasiumEnv("kinematic", amplitude=1.0)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

The wrapped env is stateless; this class holds the current state, and the
reset / step functions are jitted once per instance with the params baked in.
Like the functional ``step``, it never auto-resets: calling ``step`` before the
first ``reset`` or after an episode ended (terminated or truncated) raises
``gymnasium.error.ResetNeeded``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import jax
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from asynccorr.envs import ENVIRONMENTS, make
from asynccorr.envs.base import Environment


def _info(tracking: Any, utility: Any = None) -> dict[str, float]:
    info = {
        "lateral_error": float(tracking.lateral_error),
        "heading_error": float(tracking.heading_error),
    }
    if utility is not None:
        info["utility"] = float(utility)
    return info


class GymnasiumEnv(gymnasium.Env):
    """A ``gymnasium.Env`` around one of the functional envs.

    ``name_or_env`` is a registry name (``"kinematic"``, ``"dynamic"``) or an
    ``Environment`` instance; ``params`` defaults to the env's defaults and
    ``overrides`` replace fields of it (unknown names raise ``ValueError``).
    Observations are float32 arrays, actions are normalised to [-1, 1].

    ``reset(options={"scenario": True})`` starts from the fixed evaluation
    state ``env.scenario(params)`` instead of sampling one. Info dicts carry
    python floats: ``lateral_error`` and ``heading_error`` of the current state
    and, after a step, the stage ``utility`` (reward is its negative).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        name_or_env: str | Environment = "kinematic",
        params: Any = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None (no rendering supported), got {render_mode!r}")
        if isinstance(name_or_env, str):
            if name_or_env not in ENVIRONMENTS:
                raise ValueError(f"env must be one of {sorted(ENVIRONMENTS)}, got {name_or_env!r}")
            if params is None:
                env, params = make(name_or_env, **overrides)
                overrides = {}
            else:
                env = ENVIRONMENTS[name_or_env]()
        elif isinstance(name_or_env, Environment):
            env = name_or_env
        else:
            raise TypeError(f"name_or_env must be an env name or an Environment, got {name_or_env!r}")
        if params is None:
            params = env.default_params
        if overrides:
            unknown = sorted(set(overrides) - set(params.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown {env.name} env parameter(s): {', '.join(unknown)}")
            if "preview" in overrides:
                overrides = {**overrides, "preview": tuple(float(p) for p in overrides["preview"])}
            params = params.replace(**overrides)

        self.env = env
        self.params = params
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, (env.obs_dim(params),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (env.action_dim,), np.float32)

        def reset_fn(key: jax.Array, scenario: bool) -> tuple[jax.Array, Any, Any]:
            if scenario:
                state = env.scenario(params)
                obs = env.observation(state, params)
            else:
                obs, state = env.reset(key, params)
            return obs, state, env.tracking(state, params)

        def step_fn(key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, ...]:
            key, k_step = jax.random.split(key)
            ts = env.step(k_step, state, action, params)
            return key, ts.obs, ts.state, ts.reward, ts.terminated, ts.truncated, \
                ts.info["utility"], env.tracking(ts.state, params)

        self._reset_fn = jax.jit(reset_fn, static_argnums=1)
        self._step_fn = jax.jit(step_fn)
        self._key: jax.Array | None = None
        self._state: Any = None
        self._done = True

    @property
    def state(self) -> Any:
        """The current functional env state (``None`` before the first reset)."""
        return self._state

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Start an episode; the JAX key is drawn from ``self.np_random``."""
        super().reset(seed=seed)
        options = dict(options or {})
        scenario = bool(options.pop("scenario", False))
        if options:
            raise ValueError(f"unknown reset option(s): {', '.join(sorted(options))}")
        seed_int = int(self.np_random.integers(0, 2**31 - 1))
        key, k_reset = jax.random.split(jax.random.PRNGKey(seed_int))
        obs, state, tracking = self._reset_fn(k_reset, scenario)
        obs, tracking = jax.device_get((obs, tracking))
        self._key, self._state, self._done = key, state, False
        return np.asarray(obs, dtype=np.float32), _info(tracking)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
        """Advance one step; raises ``ResetNeeded`` if no episode is running."""
        if self._done:
            raise ResetNeeded("no episode is running: call reset() first (episodes never auto-reset)")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        key, obs, state, reward, terminated, truncated, utility, tracking = self._step_fn(
            self._key, self._state, action
        )
        obs, reward, terminated, truncated, utility, tracking = jax.device_get(
            (obs, reward, terminated, truncated, utility, tracking)
        )
        terminated, truncated = bool(terminated), bool(truncated)
        self._key, self._state, self._done = key, state, terminated or truncated
        return (
            np.asarray(obs, dtype=np.float32),
            float(reward),
            terminated,
            truncated,
            _info(tracking, utility),
        )

    def render(self) -> None:
        """No rendering is supported (``render_mode`` must be ``None``)."""
        return
