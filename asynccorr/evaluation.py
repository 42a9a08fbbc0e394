"""Closed-loop tracking evaluation on the env's fixed scenario.

The deterministic policy drives the vehicle from ``env.scenario(params)`` for
one episode (``max_steps``); errors are counted only while the vehicle is on
the road, and leaving it is reported, not hidden.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.learner import Learner

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


def rollout_scenario(learner: Learner, params: Array) -> Trajectory:
    """Run the deterministic policy from the fixed scenario (pure, jit-able)."""
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

    start = env.scenario(env_params)
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


def evaluate(learner: Learner, params: Array) -> tuple[TrackingSummary, Trajectory]:
    traj = jax.jit(rollout_scenario, static_argnums=0)(learner, params)
    return summarize(traj), jax.device_get(traj)
