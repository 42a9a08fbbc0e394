"""Staleness corrections as optax-style gradient transformations.

Each correction maps the stale direction ``G`` a worker computed at its pulled
parameters ``theta_i`` to the direction the server applies at its current
parameters ``theta_k`` (passed as optax's ``params``). The worker's parameters
and, where needed, the linearisation of the direction field at them arrive as
extra arguments, so a correction chains before any optimizer::

    tx = optax.chain(hessian_correction(), optax.adam(1e-3))
    updates, state = tx.update(G, state, theta_k, worker_params=theta_i, jvp=jvp_at_theta_i)

Extra arguments (all optional; a correction uses what it needs):
  ``worker_params``  theta_i, the parameters the direction was computed at
  ``jvp``            ``v -> dF/dtheta(theta_i) . v`` (Hessian-vector product for a gradient field)
  ``gap_product``    ``dF/dtheta(theta_i) . (theta_k - theta_i)`` already evaluated: the cheap
                     path, since one ``jax.jvp`` pass yields it together with ``G`` (1.45x
                     faster than ``jax.linearize`` + apply on the default nets); used instead
                     of ``jvp`` when given
  ``hessian``        the dense Jacobian of F at theta_i (small nets only)
  ``staleness``      server version minus the version of theta_i

Parameters, directions and products may be any pytree (as in optax: a flax
``params`` dict, a tuple of arrays) or one flat vector; every rule acts leaf by leaf,
and norms are global over the tree. On a flat vector the arithmetic is exactly that
of a single array (the experiment runner's case).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax
from jax.flatten_util import ravel_pytree

Array = jax.Array
Tree = Any  # a pytree of arrays (or one array)


def _map(fn: Callable[..., Array], tree: Tree, *rest: Tree) -> Tree:
    return jax.tree_util.tree_map(fn, tree, *rest)


def _sub(a: Tree, b: Tree) -> Tree:
    return _map(lambda x, y: x - y, a, b)


def _add(a: Tree, b: Tree) -> Tree:
    return _map(lambda x, y: x + y, a, b)


def _norm(tree: Tree) -> Array:
    """Global L2 norm; for a single array exactly ``jnp.linalg.norm``."""
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1:
        return jnp.linalg.norm(leaves[0])
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


class EmptyState(NamedTuple):
    """Stateless corrections keep no state."""


def _stateless(update_fn: Callable[..., Array]) -> optax.GradientTransformationExtraArgs:
    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Array, state: EmptyState, params: Array | None = None, **extra: Any):
        return update_fn(updates, params, **extra), state

    return optax.GradientTransformationExtraArgs(init, update)


def _require(value: Any, name: str, correction: str) -> Any:
    if value is None:
        raise ValueError(f"{correction} needs the extra argument {name!r}")
    return value


def _gap_product(correction: str, params: Array | None, worker_params: Array | None,
                 jvp: Callable[[Array], Array] | None, gap_product: Array | None) -> Array:
    """``dF/dtheta(theta_i) . (theta_k - theta_i)``, from ``gap_product`` or by calling ``jvp``."""
    if gap_product is not None:
        return gap_product
    params = _require(params, "params", correction)
    worker_params = _require(worker_params, "worker_params", correction)
    return _require(jvp, "jvp (or gap_product)", correction)(_sub(params, worker_params))


def no_correction() -> optax.GradientTransformationExtraArgs:
    """Naive asynchronous SGD: apply the stale direction as it is."""
    return _stateless(lambda g, params, **_: g)


def hessian_correction() -> optax.GradientTransformationExtraArgs:
    """Gao et al. 2024, eq. 5: ``G + H(theta_i) (theta_k - theta_i)`` with an exact HVP."""

    def correct(g: Array, params: Array | None, *, worker_params: Array | None = None,
                jvp: Callable[[Array], Array] | None = None, gap_product: Array | None = None,
                **_: Any) -> Array:
        return _add(g, _gap_product("hessian_correction", params, worker_params, jvp, gap_product))

    return _stateless(correct)


def trust_region_hessian_correction(max_ratio: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """Safeguarded correction: the Taylor term is capped at ``max_ratio * ||G||``.

    The first-order expansion is only trustworthy for small parameter gaps; early
    in training one step can change the field many-fold, and the raw correction
    then predicts a direction far larger than the truth (docs/results.md: a 3.3x step).
    Capping the correction's norm keeps its direction while bounding the damage.
    """
    if not max_ratio > 0:
        raise ValueError(f"max_ratio must be > 0, got {max_ratio!r}")

    def correct(g: Array, params: Array | None, *, worker_params: Array | None = None,
                jvp: Callable[[Array], Array] | None = None, gap_product: Array | None = None,
                **_: Any) -> Array:
        c = _gap_product("trust_region_hessian_correction", params, worker_params, jvp, gap_product)
        c_norm = _norm(c)
        scale = jnp.minimum(1.0, max_ratio * _norm(g) / jnp.maximum(c_norm, 1e-30))
        return _map(lambda g_, c_: g_ + scale * c_, g, c)

    return _stateless(correct)


def dense_hessian_correction() -> optax.GradientTransformationExtraArgs:
    """The paper's literal protocol: the worker ships ``G``, a dense ``H`` and ``theta_i``."""

    def correct(g: Array, params: Array | None, *, worker_params: Array | None = None,
                hessian: Array | None = None, **_: Any) -> Array:
        params = _require(params, "params", "dense_hessian_correction")
        worker_params = _require(worker_params, "worker_params", "dense_hessian_correction")
        hessian = _require(hessian, "hessian", "dense_hessian_correction")
        gap, unravel = ravel_pytree(_sub(params, worker_params))  # H acts on the flattened tree
        return _add(g, unravel(hessian @ gap))

    return _stateless(correct)


# ----------------------------------------------------------------------------- the literature's remedies


def _worker_gap(correction: str, params: Array | None, worker_params: Array | None) -> Array:
    """``theta_k - theta_i``: how far the server moved since the worker pulled."""
    params = _require(params, "params", correction)
    return _sub(params, _require(worker_params, "worker_params", correction))


def delay_compensation(lam: float = 0.04) -> optax.GradientTransformationExtraArgs:
    """DC-ASGD (Zheng et al. 2017): ``G + lam * G*G*(theta_k - theta_i)``, elementwise.

    The Hessian is replaced by the diagonal of the outer product ``G G^T``, a cheap
    unbiased-in-expectation approximation of the Fisher information, and ``lam``
    trades its bias against its variance. ``theta_i`` is the per-worker backup the
    server took when the worker pulled (``worker_params``), not a per-key copy.
    """
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")

    def correct(g: Array, params: Array | None, *, worker_params: Array | None = None, **_: Any) -> Array:
        gap = _worker_gap("delay_compensation", params, worker_params)
        return _map(lambda g_, d: g_ + lam * g_ * g_ * d, g, gap)

    return _stateless(correct)


class AdaptiveDelayCompensationState(NamedTuple):
    mean_square: Tree  # MS_t: running mean of G*G over the directions applied so far


def adaptive_delay_compensation(lam0: float = 2.0, momentum: float = 0.95,
                                eps: float = 1e-7) -> optax.GradientTransformationExtraArgs:
    """DC-ASGD-a (Zheng et al. 2017): the variance-control parameter adapts per coordinate.

    ``MS_t = m*MS_{t-1} + (1-m)*G*G`` (server state, started at 0 as in the paper's
    algorithm, and updated with the incoming ``G`` *before* use), then
    ``lam_t = lam0 / sqrt(MS_t + eps)`` elementwise, and the direction is
    ``G + lam_t * G*G*(theta_k - theta_i)``. Dividing by the RMS of the gradient makes
    the compensation scale-free: it is ``lam0 * |G|/RMS(G) * |G| * gap``.
    """
    if not (math.isfinite(lam0) and lam0 >= 0):
        raise ValueError(f"lam0 must be a finite number >= 0, got {lam0!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")

    def init(params: Array) -> AdaptiveDelayCompensationState:
        return AdaptiveDelayCompensationState(_map(jnp.zeros_like, params))

    def update(g: Array, state: AdaptiveDelayCompensationState, params: Array | None = None, *,
               worker_params: Array | None = None, **_: Any):
        gap = _worker_gap("adaptive_delay_compensation", params, worker_params)
        mean_square = _map(lambda ms, g_: momentum * ms + (1 - momentum) * g_ * g_, state.mean_square, g)

        def compensate(g_: Array, ms: Array, d: Array) -> Array:
            return g_ + lam0 / jnp.sqrt(ms + eps) * g_ * g_ * d

        return _map(compensate, g, mean_square, gap), AdaptiveDelayCompensationState(mean_square)

    return optax.GradientTransformationExtraArgs(init, update)


def staleness_scaling() -> optax.GradientTransformationExtraArgs:
    """Staleness-aware async SGD (Zhang et al. 2016): the direction divided by ``tau``.

    Dividing the direction is dividing the step for any optimizer linear in it (SGD).
    ``tau = 0`` (a fresh direction) is not scaled: the factor is ``1/max(tau, 1)``,
    so ``tau`` 0 and 1 both apply the direction as it is.
    """

    def correct(g: Array, params: Array | None, *, staleness: Array | None = None, **_: Any) -> Array:
        tau = _require(staleness, "staleness", "staleness_scaling")
        return _map(lambda g_: g_ / jnp.maximum(jnp.asarray(tau, g_.dtype), 1.0), g)

    return _stateless(correct)


class GapAwareState(NamedTuple):
    previous_params: Tree  # theta_k of the previous call
    mean_step: Tree  # EMA of |theta_k - theta_{k-1}| per parameter, not bias-corrected
    steps: Array  # int32: server steps observed so far (= calls - 1 after the first call)
    calls: Array  # int32


def gap_aware(decay: float = 0.99) -> optax.GradientTransformationExtraArgs:
    """Gap-Aware (Barkai, Hakimi, Schuster, ICLR 2020): divide by the parameter gap.

    The *gap* measures staleness by how far each parameter actually moved, not by
    how many updates passed: ``gap = max(1, |theta_k - theta_i| / C)`` elementwise,
    where ``C`` is the typical size of one server step of that parameter. The
    direction is ``G / gap``: a stale gradient is penalised linearly in the number
    of "average steps" its parameters are behind, and not at all within one.

    ``C``: the paper defines it as the average per-parameter step of the server and
    estimates it from the optimizer's running statistics (``lr * RMS(G)`` for SGD).
    Here it is measured directly, so it holds for any optimizer: the state keeps the
    server parameters of the previous call and an exponential moving average (rate
    ``decay``, bias-corrected like Adam's moments) of ``|theta_k - theta_{k-1}|``,
    updated with the step observed at this call before use. One call per server
    update is assumed (the transformation sits on the server). Before any step is
    observed (first call), and for a parameter that has never moved, there is no
    scale and no penalty (gap 1).
    """
    if not 0 <= decay < 1:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")

    def init(params: Array) -> GapAwareState:
        zero = jnp.zeros((), jnp.int32)
        return GapAwareState(_map(jnp.asarray, params), _map(jnp.zeros_like, params), zero, zero)

    def update(g: Array, state: GapAwareState, params: Array | None = None, *,
               worker_params: Array | None = None, **_: Any):
        gap = _worker_gap("gap_aware", params, worker_params)
        observe = state.calls > 0
        steps = state.steps + observe.astype(jnp.int32)

        def mean(m: Array, p: Array, prev: Array) -> Array:
            return jnp.where(observe, decay * m + (1 - decay) * jnp.abs(p - prev), m)

        def penalise(g_: Array, d: Array, m: Array) -> Array:
            c = m / (1 - decay ** jnp.maximum(steps, 1).astype(g_.dtype))
            safe_c = jnp.where(c > 0, c, 1.0)
            return g_ / jnp.where(c > 0, jnp.maximum(1.0, jnp.abs(d) / safe_c), 1.0)

        mean_step = _map(mean, state.mean_step, params, state.previous_params)
        return _map(penalise, g, gap, mean_step), GapAwareState(params, mean_step, steps, state.calls + 1)

    return optax.GradientTransformationExtraArgs(init, update)


def drop_stale(bound: int = 8) -> optax.GradientTransformationExtraArgs:
    """Bounded staleness: a direction older than ``bound`` updates becomes zero.

    For library users who chain it before an optimizer. (A zero direction still
    moves a stateful optimizer such as Adam or momentum; the ``sim`` backend
    therefore discards such messages before the server update instead, without
    counting an iteration, and the worker pulls afresh.)
    """
    if not bound >= 0:
        raise ValueError(f"bound must be >= 0, got {bound!r}")

    def correct(g: Array, params: Array | None, *, staleness: Array | None = None, **_: Any) -> Array:
        tau = _require(staleness, "staleness", "drop_stale")
        return _map(lambda g_: jnp.where(tau > bound, jnp.zeros_like(g_), g_), g)

    return _stateless(correct)


# ----------------------------------------------------------------------------- the secant protocol


class SecantState(NamedTuple):
    """The server's window of the last ``window`` messages' secant pairs, and its last fit.

    ``tangents`` and ``products`` are ring buffers of flat vectors (row ``j`` is the pair of
    one message: ``v_j`` and ``y_j = dF/dtheta(theta_j, b_j) . v_j``); ``gram`` holds
    ``tangents @ tangents.T``, kept row by row as pairs arrive (O(window P) per message).
    """

    tangents: Array  # (M, P)
    products: Array  # (M, P)
    gram: Array  # (M, M)
    slot: Array  # int32: the row the next pair overwrites
    coverage: Array  # last fit: 1 - |V c - gap|^2 / |gap|^2, the share of the gap the window's span holds
    scale: Array  # last fit: the cap's factor on the correction (1 = not capped)


SECANT_RIDGE = 1e-6  # the fit's ridge, relative to the window's mean squared tangent norm


def secant_fit(tangents: Array, products: Array, gram: Array, gap: Array) -> tuple[Array, Array, Array]:
    """``(Y c, coverage, V c)`` with ``c = argmin |V c - gap|`` (V's rows are the tangents): the
    product of the window's carried Jacobian-vector products with the gap's least-squares
    coordinates in the span of their tangents. Normal equations with a small ridge, by
    Cholesky: O(M P + M^3). A zero window (or gap) gives a zero correction."""
    m = gram.shape[0]
    mean_sq = jnp.trace(gram) / m
    ridge = SECANT_RIDGE * mean_sq + jnp.finfo(gram.dtype).tiny
    factor = jax.scipy.linalg.cho_factor(gram + ridge * jnp.eye(m, dtype=gram.dtype), lower=True)
    c = jax.scipy.linalg.cho_solve(factor, tangents @ gap)
    fitted = c @ tangents
    gap_sq = jnp.sum(jnp.square(gap))
    coverage = jnp.where(gap_sq > 0, 1.0 - jnp.sum(jnp.square(fitted - gap)) / jnp.maximum(gap_sq, 1e-30), jnp.nan)
    return c @ products, coverage, fitted


def secant_correction(window: int = 16, max_ratio: float = math.inf) -> optax.GradientTransformationExtraArgs:
    """The ``secant`` protocol's server rule: ``G + Y c`` without any product at the server.

    Each message ships, besides ``G``, a pair ``(v, y)``: a tangent the worker chose before
    its pass and ``y = dF/dtheta(theta_i, b) . v`` from the same fused pass (extra arguments
    ``tangent`` and ``tangent_product``). The server keeps the last ``window`` pairs (this
    message's included); for a direction computed at ``theta_i`` and applied at ``theta_k`` it
    fits the true gap ``theta_k - theta_i`` by least squares in the span of the window's
    tangents and maps the coordinates through their products: the correction ``Y c``
    approximates ``dF/dtheta(theta_i) (theta_k - theta_i)`` with O(window P) work. The
    products come from other workers' parameters and batches, so the fit is a secant model
    of the field, not its Jacobian at theta_i: ``max_ratio`` caps the correction's norm at
    ``max_ratio * |G|`` (``modify-safe@secant``; ``inf`` = uncapped, ``modify@secant``).
    Needs ``worker_params`` (theta_i) too. The state holds the window (checkpointed with the
    server) and the last fit's diagnostics.
    """
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if not max_ratio > 0:
        raise ValueError(f"max_ratio must be > 0, got {max_ratio!r}")

    def init(params: Tree) -> SecantState:
        flat, _ = ravel_pytree(params)
        rows = jnp.zeros((window, flat.size), flat.dtype)
        nan = jnp.full((), jnp.nan, flat.dtype)
        return SecantState(rows, rows, jnp.zeros((window, window), flat.dtype), jnp.zeros((), jnp.int32),
                           nan, jnp.ones((), flat.dtype))

    def update(g: Tree, state: SecantState, params: Tree | None = None, *, worker_params: Tree | None = None,
               tangent: Tree | None = None, tangent_product: Tree | None = None, **_: Any):
        gap, _ = ravel_pytree(_worker_gap("secant_correction", params, worker_params))
        v, _ = ravel_pytree(_require(tangent, "tangent", "secant_correction"))
        y, _ = ravel_pytree(_require(tangent_product, "tangent_product", "secant_correction"))
        flat_g, unravel = ravel_pytree(g)
        slot = state.slot
        tangents = state.tangents.at[slot].set(v)
        products = state.products.at[slot].set(y)
        row = tangents @ v
        gram = state.gram.at[slot, :].set(row).at[:, slot].set(row)
        correction, coverage, _ = secant_fit(tangents, products, gram, gap)
        scale = jnp.ones((), flat_g.dtype)
        if math.isfinite(max_ratio):
            c_norm = jnp.linalg.norm(correction)
            capped = jnp.minimum(1.0, max_ratio * jnp.linalg.norm(flat_g) / jnp.maximum(c_norm, 1e-30))
            scale = jnp.where(c_norm > 0, capped, 1.0).astype(flat_g.dtype)
        applied = unravel(flat_g + scale * correction)
        return applied, SecantState(tangents, products, gram, (slot + 1) % window, coverage.astype(flat_g.dtype),
                                    scale)

    return optax.GradientTransformationExtraArgs(init, update)
