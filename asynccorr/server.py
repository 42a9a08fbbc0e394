"""The parameter server's update rule, as pure jit-compiled functions.

Messages between roles (one place, Sample Factory style):

* worker -> server, asynchronous schemes: ``(worker id, version pulled, theta_i,
  batch)``; on the ``sim`` backend the worker's computation (``G`` and, for
  ``modify``, the linearisation at ``theta_i``) is a pure function of that
  message, so it is evaluated when the message is applied, against the
  server's ``theta_k`` -- the "exact correction at application time".
* worker -> server, ``sync``: the N batches of one round, all at ``theta_k``.
* server -> worker: ``(theta_k, version k)`` on every pull.
* real workers (``mp``, ``ray``): the worker computes ``G`` and, for ``modify``,
  the gap product against the newest parameters it could pull, and ships them
  (``asynccorr.backends.worker.Message``, where those messages are documented);
  ``make_message_update`` applies them.

Every update also measures the **gradient error**: the relative distance
between the direction the server applies and the fresh direction
``F(theta_k, batch)`` on the same batch -- the paper's figure (b).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asynccorr.learner import Batch, Learner
from asynccorr.schemes import Scheme

Array = jax.Array


class ServerState(NamedTuple):
    params: Array  # theta_k, flat
    opt_state: optax.OptState
    correction_state: Any


class UpdateMetrics(NamedTuple):
    policy_loss: Array  # J at theta_k on the batch
    value_loss: Array  # L_V at theta_k on the batch
    grad_error: Array  # |applied - fresh| / |fresh|, joint [theta; phi] vector
    policy_grad_error: Array  # the same on the policy block only
    stale_grad_error: Array  # |G - fresh| / |fresh|: the error had the stale G been applied uncorrected
    direction_norm: Array  # |applied|
    correction_norm: Array  # |applied - G|
    update_norm: Array  # |theta_{k+1} - theta_k|


def _relative(a: Array, b: Array) -> Array:
    return jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30)


def _finish(learner: Learner, optimizer: optax.GradientTransformation, server: ServerState, applied: Array,
            stale: Array, fresh: Array, losses: Any, correction_state: Any) -> tuple[ServerState, UpdateMetrics]:
    updates, opt_state = optimizer.update(applied, server.opt_state, server.params)
    params = optax.apply_updates(server.params, updates)
    n = learner.num_policy
    metrics = UpdateMetrics(
        policy_loss=losses.policy_loss,
        value_loss=losses.value_loss,
        grad_error=_relative(applied, fresh),
        policy_grad_error=_relative(applied[:n], fresh[:n]),
        stale_grad_error=_relative(stale, fresh),
        direction_norm=jnp.linalg.norm(applied),
        correction_norm=jnp.linalg.norm(applied - stale),
        update_norm=jnp.linalg.norm(updates),
    )
    return ServerState(params, opt_state, correction_state), metrics


def init_server(params: Array, optimizer: optax.GradientTransformation,
                correction: optax.GradientTransformationExtraArgs) -> ServerState:
    return ServerState(params, optimizer.init(params), correction.init(params))


@functools.lru_cache(maxsize=32)
def make_async_update(
    learner: Learner, optimizer: optax.GradientTransformation, scheme: Scheme,
    correction: optax.GradientTransformationExtraArgs,
) -> Callable[[ServerState, Array, Batch, Array], tuple[ServerState, UpdateMetrics]]:
    """Jitted ``(server, theta_i, batch, staleness) -> (server', metrics)`` for an async scheme."""

    def update(server: ServerState, worker_params: Array, batch: Batch, staleness: Array):
        fresh, losses = learner.direction(server.params, batch)
        extra: dict[str, Any] = {"worker_params": worker_params, "staleness": staleness}
        if scheme.compute == "jvp":
            # G and H(theta_i)(theta_k - theta_i) in one forward-over-reverse pass
            stale, extra["gap_product"], _ = learner.direction_jvp(worker_params, batch,
                                                                   server.params - worker_params)
        elif scheme.compute == "dense":
            stale, _ = learner.direction(worker_params, batch)
            extra["hessian"] = jax.jacfwd(lambda p: learner.direction(p, batch)[0])(worker_params)
        else:
            stale, _ = learner.direction(worker_params, batch)
        applied, correction_state = correction.update(stale, server.correction_state, server.params, **extra)
        return _finish(learner, optimizer, server, applied, stale, fresh, losses, correction_state)

    return jax.jit(update)


@functools.lru_cache(maxsize=32)
def make_sync_update(
    learner: Learner, optimizer: optax.GradientTransformation,
) -> Callable[[ServerState, Batch], tuple[ServerState, UpdateMetrics]]:
    """Jitted ``(server, batches) -> (server', metrics)``: average N fresh directions.

    ``batches`` stacks the N workers' batches on a leading axis. All directions
    are at ``theta_k`` and every batch has the same size, so their average *is*
    the fresh direction on the union of the batches: the gradient error of
    ``sync`` is zero by construction (not re-measured, which would cost N more
    direction evaluations per update).
    """

    def update(server: ServerState, batches: Batch):
        directions, losses = jax.vmap(learner.direction, in_axes=(None, 0))(server.params, batches)
        applied = directions.mean(axis=0)
        losses = jax.tree.map(lambda x: x.mean(axis=0), losses)
        return _finish(learner, optimizer, server, applied, applied, applied, losses, server.correction_state)

    return jax.jit(update)


# ----------------------------------------------------------------------------- real workers (mp, ray)


@functools.lru_cache(maxsize=32)
def make_message_update(
    learner: Learner, optimizer: optax.GradientTransformation, scheme: Scheme,
    correction: optax.GradientTransformationExtraArgs, measure: bool,
) -> Callable[..., tuple[ServerState, UpdateMetrics]]:
    """Jitted ``(server, G, gap_product, batch, staleness, losses) -> (server', metrics)``.

    Applies a direction a *real* worker computed (``asynccorr.backends.worker``):
    ``G = F(theta_i, batch)`` and, for ``jvp`` schemes, ``gap_product =
    dF/dtheta(theta_i) . (theta_k' - theta_i)`` against the newest parameters
    ``theta_k'`` the worker could pull. The scheme's correction runs here, at the
    server's current ``theta_k`` (so ``modify-safe``'s trust region still applies).

    ``measure``: evaluate the fresh ``F(theta_k, batch)`` on the shipped batch to
    measure the gradient error (one direction per update); without it the
    gradient-error metrics are NaN and the losses are the worker's (at theta_i).
    """

    def update(server: ServerState, stale: Array, gap_product: Array | None, batch: Batch | None,
               staleness: Array, losses: Any):
        extra: dict[str, Any] = {"staleness": staleness}
        if scheme.compute == "jvp":
            extra["gap_product"] = gap_product
        applied, correction_state = correction.update(stale, server.correction_state, server.params, **extra)
        if measure:
            fresh, losses = learner.direction(server.params, batch)
        else:
            fresh = jnp.full_like(stale, jnp.nan)
        return _finish(learner, optimizer, server, applied, stale, fresh, losses, correction_state)

    return jax.jit(update)


@functools.lru_cache(maxsize=32)
def make_sync_message_update(
    learner: Learner, optimizer: optax.GradientTransformation,
) -> Callable[[ServerState, Array, Any], tuple[ServerState, UpdateMetrics]]:
    """Jitted ``(server, directions, losses) -> (server', metrics)``: average N worker directions.

    ``directions`` stacks the N workers' ``F(theta_k, batch_j)``, all computed at
    the server's current parameters; as in ``make_sync_update`` their average is
    the fresh direction, so the gradient error is zero by construction.
    """

    def update(server: ServerState, directions: Array, losses: Any):
        applied = directions.mean(axis=0)
        losses = jax.tree.map(lambda x: x.mean(axis=0), losses)
        return _finish(learner, optimizer, server, applied, applied, applied, losses, server.correction_state)

    return jax.jit(update)
