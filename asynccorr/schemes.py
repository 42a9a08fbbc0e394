"""The registry of schemes: how the server turns a (stale) direction into an update.

A scheme names a correction (``asynccorr.corrections``), what the worker must
compute for it (plain direction, linearisation for an HVP, or a dense
Jacobian), whether the server waits for all workers (``sync``), and so what
its compute costs on the simulated clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import optax

from asynccorr import corrections

Compute = Literal["direction", "jvp", "dense"]


@dataclass(frozen=True)
class Scheme:
    name: str
    summary: str
    compute: Compute  # what a worker evaluates per job
    synchronous: bool
    make_correction: Callable[..., optax.GradientTransformationExtraArgs]
    drops_stale: bool = False  # the backend discards messages staler than schemes.staleness_bound


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("sync", "wait for all N workers at the same parameters and average (synchronous SGD)",
               "direction", True, lambda **_: corrections.no_correction()),
        Scheme("async", "apply the stale direction as it is (naive asynchronous SGD)",
               "direction", False, lambda **_: corrections.no_correction()),
        Scheme("modify", "Gao et al. 2024: G + H(theta_i)(theta_k - theta_i), exact Hessian-vector product",
               "jvp", False, lambda **_: corrections.hessian_correction()),
        Scheme("modify-safe", "modify with a trust region: the correction's norm capped at trust_ratio * |G|",
               "jvp", False, lambda trust_ratio=1.0, **_: corrections.trust_region_hessian_correction(trust_ratio)),
        Scheme("modify-dense", "the paper's literal protocol with a dense Hessian (small nets only; an oracle)",
               "dense", False, lambda **_: corrections.dense_hessian_correction()),
        Scheme("dc-asgd", "Zheng et al. 2017: G + lambda G*G*(theta_k - theta_i), lambda = schemes.dc_lambda",
               "direction", False, lambda dc_lambda=0.04, **_: corrections.delay_compensation(dc_lambda)),
        Scheme("dc-asgd-a", "DC-ASGD with adaptive lambda_t = lambda0 / sqrt(MS_t + eps), MS_t = EMA of G*G",
               "direction", False,
               lambda dc_lambda0=2.0, dc_momentum=0.95, dc_eps=1e-7, **_:
               corrections.adaptive_delay_compensation(dc_lambda0, dc_momentum, dc_eps)),
        Scheme("staleness-lr", "Zhang et al. 2016: the direction divided by its staleness tau (max(tau, 1))",
               "direction", False, lambda **_: corrections.staleness_scaling()),
        Scheme("gap-aware", "Barkai et al. 2020: G / max(1, |theta_k - theta_i| / C), C = mean server step",
               "direction", False, lambda gap_decay=0.99, **_: corrections.gap_aware(gap_decay)),
        Scheme("drop-stale", "discard directions staler than schemes.staleness_bound; the worker pulls afresh",
               "direction", False, lambda staleness_bound=8, **_: corrections.drop_stale(staleness_bound),
               drops_stale=True),
    )
}

SEQUENTIAL = "sequential"  # the single-worker, always-fresh reference trainer


CORRECTION_KNOBS = ("trust_ratio", "dc_lambda", "dc_lambda0", "dc_momentum", "dc_eps", "gap_decay",
                    "staleness_bound")  # the SchemesConfig fields a correction may take


@functools.lru_cache(maxsize=64)
def make_correction(name: str, trust_ratio: float = 1.0, **knobs: float) -> optax.GradientTransformationExtraArgs:
    """The scheme's correction (memoised, so jitted server updates are shared across runs).

    ``knobs`` are the schemes' hyperparameters by their ``SchemesConfig`` names
    (``dc_lambda``, ``dc_lambda0``, ``dc_momentum``, ``dc_eps``, ``gap_decay``,
    ``staleness_bound``); each scheme takes the ones it uses. Prefer
    ``correction_for(name, config.schemes)``.
    """
    unknown = sorted(set(knobs) - set(CORRECTION_KNOBS))
    if unknown:
        raise TypeError(f"unknown correction knob(s) {', '.join(unknown)}")
    return get_scheme(name).make_correction(trust_ratio=trust_ratio, **knobs)


def correction_for(name: str, schemes_config: Any) -> optax.GradientTransformationExtraArgs:
    """The correction of scheme ``name`` with the hyperparameters of a ``SchemesConfig``."""
    return make_correction(name, **{k: getattr(schemes_config, k) for k in CORRECTION_KNOBS})


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join([SEQUENTIAL, *SCHEMES])}; got {name!r}")
    return SCHEMES[name]
