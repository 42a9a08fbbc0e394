"""The registry of schemes: how the server turns a (stale) direction into an update.

A scheme names a correction (``asynccorr.corrections``), what the worker must
compute for it (plain direction, linearisation for an HVP, or a dense
Jacobian), whether the server waits for all workers (``sync``), and so what
its compute costs on the simulated clock.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import optax

from asynccorr import corrections
from asynccorr.errors import ConfigError

Compute = Literal["direction", "jvp", "dense"]


@dataclass(frozen=True)
class Scheme:
    name: str
    summary: str
    compute: Compute  # what a worker evaluates per job
    synchronous: bool
    correction: Callable[..., optax.GradientTransformationExtraArgs]  # a factory of asynccorr.corrections
    knobs: tuple[tuple[str, str], ...] = ()  # (SchemesConfig field, the factory's argument) it takes
    drops_stale: bool = False  # the backend discards messages staler than schemes.staleness_bound

    def make_correction(self, **knobs: float) -> optax.GradientTransformationExtraArgs:
        """The correction with the given knobs (by ``SchemesConfig`` name; the others are ignored,
        and a knob not given takes the factory's own default)."""
        return self.correction(**{arg: knobs[field] for field, arg in self.knobs if field in knobs})


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("sync", "wait for all N workers at the same parameters and average (synchronous SGD)",
               "direction", True, corrections.no_correction),
        Scheme("async", "apply the stale direction as it is (naive asynchronous SGD)",
               "direction", False, corrections.no_correction),
        Scheme("modify", "Gao et al. 2024: G + H(theta_i)(theta_k - theta_i), exact Hessian-vector product",
               "jvp", False, corrections.hessian_correction),
        Scheme("modify-safe", "modify with a trust region: the correction's norm capped at trust_ratio * |G|",
               "jvp", False, corrections.trust_region_hessian_correction, (("trust_ratio", "max_ratio"),)),
        Scheme("modify-dense", "the paper's literal protocol with a dense Hessian (small nets only; an oracle)",
               "dense", False, corrections.dense_hessian_correction),
        Scheme("dc-asgd", "Zheng et al. 2017: G + lambda G*G*(theta_k - theta_i), lambda = schemes.dc_lambda",
               "direction", False, corrections.delay_compensation, (("dc_lambda", "lam"),)),
        Scheme("dc-asgd-a", "DC-ASGD with adaptive lambda_t = lambda0 / sqrt(MS_t + eps), MS_t = EMA of G*G",
               "direction", False, corrections.adaptive_delay_compensation,
               (("dc_lambda0", "lam0"), ("dc_momentum", "momentum"), ("dc_eps", "eps"))),
        Scheme("staleness-lr", "Zhang et al. 2016: the direction divided by its staleness tau (max(tau, 1))",
               "direction", False, corrections.staleness_scaling),
        Scheme("gap-aware", "Barkai et al. 2020: G / max(1, |theta_k - theta_i| / C), C = mean server step",
               "direction", False, corrections.gap_aware, (("gap_decay", "decay"),)),
        Scheme("drop-stale", "discard directions staler than schemes.staleness_bound; the worker pulls afresh",
               "direction", False, corrections.drop_stale, (("staleness_bound", "bound"),), drops_stale=True),
    )
}


def knob_default(field: str) -> float:
    """A scheme knob's default: the one its correction factory declares (their one home)."""
    for scheme in SCHEMES.values():
        for name, arg in scheme.knobs:
            if name == field:
                return inspect.signature(scheme.correction).parameters[arg].default
    raise KeyError(field)


SEQUENTIAL = "sequential"  # the single-worker, always-fresh reference trainer
DISPLAY_ORDER = (SEQUENTIAL, *SCHEMES)  # how tables, legends and colours order schemes (the registry's order)


CORRECTION_KNOBS = tuple(dict.fromkeys(field for s in SCHEMES.values() for field, _ in s.knobs))
"""The ``SchemesConfig`` fields a correction may take."""


@functools.lru_cache(maxsize=64)
def make_correction(name: str, **knobs: float) -> optax.GradientTransformationExtraArgs:
    """The scheme's correction (memoised, so jitted server updates are shared across runs).

    ``knobs`` are the schemes' hyperparameters by their ``SchemesConfig`` names
    (``dc_lambda``, ``dc_lambda0``, ``dc_momentum``, ``dc_eps``, ``gap_decay``,
    ``staleness_bound``); each scheme takes the ones it uses. Prefer
    ``correction_for(name, config.schemes)``.
    """
    unknown = sorted(set(knobs) - set(CORRECTION_KNOBS))
    if unknown:
        raise TypeError(f"unknown correction knob(s) {', '.join(unknown)}")
    return get_scheme(name).make_correction(**knobs)


def correction_for(name: str, schemes_config: Any) -> optax.GradientTransformationExtraArgs:
    """The correction of scheme ``name`` with the hyperparameters of a ``SchemesConfig``."""
    return make_correction(name, **{k: getattr(schemes_config, k) for k in CORRECTION_KNOBS})


def check_scheme_fits(scheme: Scheme, num_params: int, schemes_config: Any) -> None:
    """``modify-dense`` materialises an n x n Jacobian: refuse networks above ``schemes.dense_max_params``."""
    limit = schemes_config.dense_max_params
    if scheme.compute == "dense" and num_params > limit:
        raise ConfigError(
            f"scheme {scheme.name} needs a dense {num_params}x{num_params} Hessian; it refuses networks above "
            f"schemes.dense_max_params = {limit} parameters (use smaller "
            f"learner.policy_hidden / value_hidden, or scheme modify)")


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join([SEQUENTIAL, *SCHEMES])}; got {name!r}")
    return SCHEMES[name]
