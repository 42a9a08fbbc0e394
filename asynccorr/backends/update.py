"""The parameter server's update rule, as pure jit-compiled functions.

One rule for every backend: it applies a worker's ``Message`` (documented in
``asynccorr.backends.worker``, with the roles) as a ``Shipped`` value -- the arrays the
worker sent -- at the server's current parameters ``theta_k``:

* direction schemes: the worker's ``G`` through the scheme's correction (which may read
  the shipped ``theta_i``: DC-ASGD, gap-aware);
* worker-side protocols (``deferred``, ``pull-first``, ``look-ahead``): ``G`` and the
  worker's gap product;
* ``server`` protocol: the server evaluates ``dF/dtheta(theta_i) . (theta_k - theta_i)``
  on the shipped batch now (the paper's Fig. 2; its cost is the server's);
* ``secant`` protocol: ``G`` and the message's pair (tangent, its product) into the
  server's window; the correction is the window's least-squares fit of the gap
  (``schemes.corrections.secant_correction``), no product at the server;
* ``oracle`` (sim only): ``G`` and the product evaluated here against ``theta_k`` for
  free -- the upper bound;
* ``learner``: the fresh direction ``F(theta_k, batch)`` on the shipped states;
* ``modify-dense`` (sim only): G and the dense Jacobian at ``theta_i``, the worker's
  pure function of what it ships, evaluated here.

Synchronous rounds (``make_round_update``) average N messages of one round.

Every update also measures the **gradient error** when it has the batch: the relative
distance between the direction the server applies and the fresh direction
``F(theta_k, batch)`` on the same batch -- the paper's figure (b).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from asynccorr.compile import programs
from asynccorr.learners.base import Batch, Learner
from asynccorr.schemes import corrections
from asynccorr.schemes.registry import Scheme

Array = jax.Array


class ServerState(NamedTuple):
    params: Array  # theta_k, flat
    opt_state: optax.OptState
    correction_state: Any
    learner_state: Any = None  # the learner's server-side state (``Learner.server_init``: Ape-X's replay)


class UpdateMetrics(NamedTuple):
    policy_loss: Array  # J at theta_k on the batch
    value_loss: Array  # L_V at theta_k on the batch
    grad_error: Array  # |applied - fresh| / |fresh|, joint [theta; phi] vector
    policy_grad_error: Array  # the same on the policy block only
    stale_grad_error: Array  # |G - fresh| / |fresh|: the error had the stale G been applied uncorrected
    direction_norm: Array  # |applied|
    correction_norm: Array  # |applied - G|
    update_norm: Array  # |theta_{k+1} - theta_k|
    importance_ratio: Array  # mean pi_k(a|s) / pi_i(a|s) of the batch's actions (a3c, with measure; else nan)
    policy_kl: Array  # mean KL(pi_i(.|s) || pi_k(.|s)) over the batch's states (likewise)
    # the secant protocol's fit (nan for every other scheme):
    gap_coverage: Array  # 1 - |V c - gap|^2 / |gap|^2: the share of theta_k - theta_i the window's span holds
    cap_scale: Array  # the cap's factor on the fitted correction (1 = not capped)
    product_cosine: Array  # cos(Y c, dF/dtheta(theta_i) . gap): the fit against the exact product (diagnose)
    product_error: Array  # |Y c - exact| / |exact| (diagnose)
    residual_share: Array  # |dF/dtheta(theta_i) . (gap - V c)| / |exact|: the uncovered gap's share of it (diagnose)


def _relative(a: Array, b: Array) -> Array:
    return jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30)


def _ratio(learner: Learner, theta_k: Array, batch: Batch | None) -> tuple[Array, Array]:
    """The batch's on-policy mismatch at theta_k: (mean importance ratio, mean KL); nan without a batch."""
    return (jnp.full((), jnp.nan, jnp.float32),) * 2 if batch is None else learner.off_policy(theta_k, batch)


FIT_FIELDS = ("gap_coverage", "cap_scale", "product_cosine", "product_error", "residual_share")
NO_FIT = (jnp.nan,) * len(FIT_FIELDS)  # a scheme without a fit


def _finish(learner: Learner, optimizer: optax.GradientTransformation, server: ServerState, applied: Array,
            stale: Array, fresh: Array, losses: Any, correction_state: Any,
            mismatch: tuple[Array, Array], fit: tuple = NO_FIT, learner_state: Any = None
            ) -> tuple[ServerState, UpdateMetrics]:
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
        importance_ratio=mismatch[0],
        policy_kl=mismatch[1],
        **dict(zip(FIT_FIELDS, (jnp.asarray(x, jnp.float32) for x in fit))),
    )
    return ServerState(params, opt_state, correction_state, learner_state), metrics


def init_server(params: Array, optimizer: optax.GradientTransformation,
                correction: optax.GradientTransformationExtraArgs, learner: Learner | None = None,
                key: Array | None = None) -> ServerState:
    """The server before its first update; with a learner that keeps server-side state
    (``server_init``), that state from ``key`` (``learners.build.server_key``)."""
    learner_state = None
    if learner is not None and learner.server_init is not None:
        learner_state = learner.server_init(key)
    return ServerState(params, optimizer.init(params), correction.init(params), learner_state)


@functools.lru_cache(maxsize=32)
def initial_server(learner: Learner, optimizer: optax.GradientTransformation,
                   correction: optax.GradientTransformationExtraArgs) -> Callable[[Array], ServerState]:
    """The jitted ``seed -> init_server(learner.init(run_keys(seed)[0]), ...)``: the server before its
    first update as one program (op by op it costs start-up in dispatches; the same values)."""
    from asynccorr.learners.build import run_keys, server_key

    return programs.jit(lambda seed: init_server(learner.init(run_keys(seed)[0]), optimizer, correction, learner,
                                                 server_key(seed)), "server.init")


class Shipped(NamedTuple):
    """The arrays of one message (None where the scheme ships nothing)."""

    direction: Array | None  # G at theta_i
    gap_product: Array | None  # the worker's dF/dtheta(theta_i) . (target - theta_i)
    params: Array | None  # theta_i
    batch: Batch | None
    losses: Any  # Losses at theta_i (nan for learner)
    tangent: Array | None = None  # secant: the worker's tangent v
    tangent_product: Array | None = None  # secant: dF/dtheta(theta_i) . v on the worker's batch


@functools.lru_cache(maxsize=32)
def make_update(
    learner: Learner, optimizer: optax.GradientTransformation, scheme: Scheme,
    correction: optax.GradientTransformationExtraArgs, measure: bool, diagnose: bool = False,
) -> Callable[[ServerState, Shipped, Array], tuple[ServerState, UpdateMetrics]]:
    """Jitted ``(server, shipped, staleness) -> (server', metrics)`` for an asynchronous scheme.

    ``measure``: evaluate the fresh ``F(theta_k, batch)`` on the shipped batch for the
    gradient error (one direction per update); without it the gradient-error metrics
    are NaN and the losses are the worker's (at theta_i). ``diagnose`` (with ``measure``):
    the secant protocol's fit is compared with the exact product at theta_i on the batch
    (one more fused pass per update, a diagnostic: ``sim`` does it, uncharged).
    """

    def update(server: ServerState, msg: Shipped, staleness: Array):
        theta_k, theta_i, batch = server.params, msg.params, msg.batch
        extra: dict[str, Any] = {"staleness": staleness}
        if theta_i is not None:
            extra["worker_params"] = theta_i
        fresh = losses = None
        learner_state = server.learner_state
        if scheme.compute == "sample" and learner.server_direction is not None:  # Ape-X: through its replay
            fresh, losses, learner_state = learner.server_direction(learner_state, theta_k, batch)
            stale = fresh
        elif scheme.compute == "sample":  # learner: the fresh direction is the update
            fresh, losses = learner.direction(theta_k, batch)
            stale = fresh
        elif scheme.protocol == "oracle":
            stale, extra["gap_product"], _ = learner.direction_jvp(theta_i, batch, theta_k - theta_i)
        elif scheme.protocol == "server":
            stale = msg.direction
            _, extra["gap_product"], _ = learner.direction_jvp(theta_i, batch, theta_k - theta_i)
        elif scheme.protocol == "secant":
            stale = msg.direction
            extra["tangent"], extra["tangent_product"] = msg.tangent, msg.tangent_product
        elif scheme.compute == "dense":
            stale, _ = learner.direction(theta_i, batch)
            extra["hessian"] = jax.jacfwd(lambda p: learner.direction(p, batch)[0])(theta_i)
        else:
            stale = msg.direction
            if msg.gap_product is not None:
                extra["gap_product"] = msg.gap_product
        applied, correction_state = correction.update(stale, server.correction_state, theta_k, **extra)
        if fresh is None:
            if measure:
                fresh, losses = learner.direction(theta_k, batch)
            else:
                fresh, losses = jnp.full_like(stale, jnp.nan), msg.losses
        fit = NO_FIT
        if scheme.protocol == "secant":
            fit = _secant_diagnostics(learner, correction_state, applied - stale, theta_i, theta_k, batch,
                                      diagnose and measure)
        return _finish(learner, optimizer, server, applied, stale, fresh, losses, correction_state,
                       _ratio(learner, theta_k, batch if measure else None), fit, learner_state)

    return programs.jit(update, "server.update")


def _secant_diagnostics(learner: Learner, state: Any, applied_correction: Array, theta_i: Array, theta_k: Array,
                        batch: Batch | None, exact: bool) -> tuple:
    """``FIT_FIELDS`` of one secant fit; the last three against the exact product
    ``dF/dtheta(theta_i) . (theta_k - theta_i)`` when ``exact`` (else nan). The fit's error splits in
    two: ``Y c - J gap = (Y c - J V c) - J (gap - V c)``, the window's products against the Jacobian at
    theta_i on the gap's part they cover, and the part of the gap outside their span
    (``residual_share``: how large the latter's product is, relative to the exact one)."""
    if not exact:
        return state.coverage, state.scale, jnp.nan, jnp.nan, jnp.nan
    gap = theta_k - theta_i
    _, _, covered = corrections.secant_fit(state.tangents, state.products, state.gram, gap)
    _, product, _ = learner.direction_jvp(theta_i, batch, gap)
    _, uncovered, _ = learner.direction_jvp(theta_i, batch, gap - covered)
    fitted = applied_correction / jnp.maximum(state.scale, 1e-30)  # Y c before the cap
    norms = jnp.linalg.norm(fitted) * jnp.linalg.norm(product)
    cosine = jnp.where(norms > 0, jnp.dot(fitted, product) / jnp.maximum(norms, 1e-30), jnp.nan)
    share = jnp.linalg.norm(uncovered) / jnp.maximum(jnp.linalg.norm(product), 1e-30)
    return state.coverage, state.scale, cosine, _relative(fitted, product), share


@functools.lru_cache(maxsize=32)
def make_round_update(
    learner: Learner, optimizer: optax.GradientTransformation, scheme: Scheme,
    correction: optax.GradientTransformationExtraArgs, measure: bool,
) -> Callable[[ServerState, Shipped], tuple[ServerState, UpdateMetrics]]:
    """Jitted ``(server, shipped) -> (server', metrics)``: one synchronous round, the N
    messages' arrays stacked on a leading axis.

    ``sync``: every direction is at ``theta_k`` and every batch has the same size, so
    their average *is* the fresh direction on the union of the batches: the gradient
    error is zero by construction (not re-measured, which would cost N more directions
    per update). ``sync-pipelined``: the directions are one round old (at theta_{r-1});
    with ``measure`` the gradient error is that of one worker's direction (worker 0's,
    after its correction) against the fresh direction at ``theta_k`` on its batch: the
    same per-message error as an asynchronous scheme's, at one direction per round
    instead of N. Its corrected variant adds the workers' mean gap product (each
    worker's product against theta_k: residual 0).
    """

    def update(server: ServerState, msgs: Shipped):
        stale = msgs.direction.mean(axis=0)
        losses = jax.tree.map(lambda x: x.mean(axis=0), msgs.losses)
        extra: dict[str, Any] = {}
        if msgs.gap_product is not None:
            extra["gap_product"] = msgs.gap_product.mean(axis=0)
        applied, correction_state = correction.update(stale, server.correction_state, server.params, **extra)
        first = None if msgs.batch is None else jax.tree.map(lambda x: x[0], msgs.batch)
        ratio = _ratio(learner, server.params, first if measure else None)  # sync: 1; pipelined: worker 0's
        if not scheme.pipelined:
            return _finish(learner, optimizer, server, applied, applied, applied, losses, correction_state, ratio,
                           learner_state=server.learner_state)
        # pipelined: the error of worker 0's direction (its own correction included) against the fresh
        # direction at theta_k on its batch -- one direction per round instead of N; the workers are alike
        own_stale = msgs.direction[0]
        own, _ = correction.update(own_stale, server.correction_state, server.params,
                                   **{k: v[0] for k, v in (("gap_product", msgs.gap_product),) if v is not None})
        if measure:
            fresh, losses = learner.direction(server.params, first)
        else:
            fresh = jnp.full_like(stale, jnp.nan)
        new, metrics = _finish(learner, optimizer, server, applied, own_stale, fresh, losses, correction_state,
                               ratio, learner_state=server.learner_state)
        n = learner.num_policy
        return new, metrics._replace(grad_error=_relative(own, fresh), policy_grad_error=_relative(own[:n], fresh[:n]),
                                     correction_norm=jnp.linalg.norm(own - own_stale))

    return programs.jit(update, "server.round")
