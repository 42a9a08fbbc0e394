"""Closed-loop tracking evaluation on the env's fixed scenario, and over random starts.

The deterministic policy drives the vehicle from ``env.scenario(params)`` for
one episode (``max_steps``); errors are counted only while the vehicle is on
the road, and leaving it is reported, not hidden. ``evaluate_random_starts`` does
the same from many ``env.reset`` states at once (random reference phase and
offsets): the policy's tracking over the start distribution, not one scenario.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.compile import programs
from asynccorr.learners.base import Learner

Array = jax.Array


class Trajectory(NamedTuple):
    """Per-step record of one evaluation episode (arrays of length ``max_steps``)."""

    time: Array  # [s] at the start of the step
    x: Array
    y: Array
    y_ref: Array
    lateral_error: Array
    heading_error: Array
    action: Array  # (T, action_dim), normalised
    utility: Array
    on_road: Array  # the step was taken before the episode terminated


class TrackingSummary(NamedTuple):
    rms_lateral: float  # [m], over on-road steps
    max_lateral: float  # [m]
    rms_heading: float  # [rad]
    total_utility: float  # sum of l(x, u) over on-road steps
    steps_on_road: int
    left_road: bool


class EvalRecord(NamedTuple):
    """One periodic evaluation: after ``iteration`` server updates."""

    iteration: int
    summary: TrackingSummary


def eval_columns(evals: Sequence[EvalRecord]) -> dict[str, list[Any]]:
    """Evaluation records as ``eval.csv``'s columns: ``iteration`` and every ``TrackingSummary`` field
    (what the run's files, its TensorBoard events and the summary's tracking target read)."""
    return {"iteration": [e.iteration for e in evals],
            **{field: [getattr(e.summary, field) for e in evals] for field in TrackingSummary._fields}}


def rollout_scenario(learner: Learner, params: Array) -> Trajectory:
    """Run the deterministic policy from the fixed scenario (pure, jit-able)."""
    return rollout_from(learner, params, learner.env.scenario(learner.env_params))


def rollout_from(learner: Learner, params: Array, start: Any) -> Trajectory:
    """Run the deterministic policy for one episode (``max_steps``) from the env state ``start``
    (pure, jit-able; vmap it over a batch of starts)."""
    env, env_params = learner.env, learner.env_params

    def body(carry: tuple[object, Array], _: None) -> tuple[tuple[object, Array], Trajectory]:
        state, alive = carry
        tr = env.tracking(state, env_params)
        action = learner.act(params, env.observation(state, env_params))
        ts = env.step(None, state, action, env_params)
        record = Trajectory(
            time=state.step.astype(jnp.float32) * env_params.dt,
            x=tr.x, y=tr.y, y_ref=tr.y_ref,
            lateral_error=tr.lateral_error, heading_error=tr.heading_error,
            action=action, utility=-ts.reward, on_road=alive,
        )
        return (ts.state, jnp.logical_and(alive, jnp.logical_not(ts.terminated))), record

    _, traj = jax.lax.scan(body, (start, jnp.ones((), bool)), None, length=int(env_params.max_steps))
    return traj


def summarize(traj: Trajectory) -> TrackingSummary:
    """Scalar tracking metrics from a trajectory (host-side)."""
    on = np.asarray(traj.on_road)
    lat = np.asarray(traj.lateral_error)[on]
    head = np.asarray(traj.heading_error)[on]
    n = int(on.sum())
    return TrackingSummary(
        rms_lateral=float(np.sqrt(np.mean(lat**2))) if n else float("nan"),
        max_lateral=float(np.max(np.abs(lat))) if n else float("nan"),
        rms_heading=float(np.sqrt(np.mean(head**2))) if n else float("nan"),
        total_utility=float(np.asarray(traj.utility)[on].sum()),
        steps_on_road=n,
        left_road=bool(n < on.size),
    )


@functools.lru_cache(maxsize=16)
def _scenario(learner: Learner) -> Callable[[Array], Trajectory]:
    return programs.jit(functools.partial(rollout_scenario, learner), "evaluate.scenario")


def evaluate(learner: Learner, params: Array) -> tuple[TrackingSummary, Trajectory]:
    traj = _scenario(learner)(params)
    return summarize(traj), jax.device_get(traj)


# ----------------------------------------------------------------------------- random starts


class RandomStartSummary(NamedTuple):
    """Tracking of the deterministic policy over ``episodes`` random-start episodes."""

    rms_lateral: float  # [m], over every on-road step of every episode
    rms_lateral_settled: float  # [m], over the on-road steps at episode time >= settle_s
    episodes: int
    left_road: int  # episodes that left the road


def rollout_random_starts(learner: Learner, params: Array, key: Array, episodes: int) -> Trajectory:
    """One episode from each of ``episodes`` ``env.reset`` states (pure, jit-able with ``episodes`` static):
    every field gets a leading episode axis."""
    env, env_params = learner.env, learner.env_params
    _, starts = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, episodes), env_params)
    return jax.vmap(rollout_from, in_axes=(None, None, 0))(learner, params, starts)


def summarize_random_starts(traj: Trajectory, settle_s: float) -> RandomStartSummary:
    """RMS lateral error over all on-road steps, and over those ``settle_s`` or more into their episode
    (once the policy has pulled the vehicle in from its random start); host-side."""
    on = np.asarray(traj.on_road)
    lat = np.asarray(traj.lateral_error)
    settled = on & (np.asarray(traj.time) >= settle_s - 1e-6)

    def rms(mask: np.ndarray) -> float:
        return float(np.sqrt(np.mean(lat[mask] ** 2))) if mask.any() else float("nan")

    return RandomStartSummary(rms(on), rms(settled), int(on.shape[0]), int((~on.all(axis=1)).sum()))


@functools.lru_cache(maxsize=16)
def _random_starts(learner: Learner) -> Callable[[Array, Array, int], Trajectory]:
    return programs.jit(functools.partial(rollout_random_starts, learner), "evaluate.random_starts",
                        static_argnums=(2,))


def evaluate_random_starts(learner: Learner, params: Array, key: Array, episodes: int = 50,
                           settle_s: float = 5.0) -> RandomStartSummary:
    """``summarize_random_starts`` of ``rollout_random_starts`` (one jitted call)."""
    return summarize_random_starts(jax.device_get(_random_starts(learner)(params, key, episodes)), settle_s)
