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
from typing import Literal

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
    )
}

SEQUENTIAL = "sequential"  # the single-worker, always-fresh reference trainer


@functools.lru_cache(maxsize=32)
def make_correction(name: str, trust_ratio: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """The scheme's correction (memoised, so jitted server updates are shared across runs)."""
    return get_scheme(name).make_correction(trust_ratio=trust_ratio)


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join([SEQUENTIAL, *SCHEMES])}; got {name!r}")
    return SCHEMES[name]
