"""The registry of schemes and protocols: how the server turns a (stale) direction into an update.

A scheme names a correction (``asynccorr.schemes.corrections``), what the worker must
compute for it (plain direction, linearisation for an HVP, a dense Jacobian, or
only a batch of states), whether the server waits for all workers (``sync``), and
so what its compute costs on the simulated clock.

**Protocols** (docs/results.md, "Protocols"): who computes the Hessian-vector product of a
linearising scheme (``modify``, ``modify-safe``, ``sync-pipelined-modify``), when,
and against which parameters. Each is its own registered scheme, ``<scheme>@<protocol>``
(``modify@server``); a bare ``modify`` means ``modify@<schemes.protocol>``
(``resolve``), so every run, table and figure names its protocol:

=============  =====================================================================
``oracle``     the product against theta_k at the instant of application, free: not
               realisable, an upper bound only (``sim`` only)
``server``     the paper's Fig. 2: the worker ships G, its batch and theta_i; the server
               evaluates dF/dtheta(theta_i) . (theta_k - theta_i) at application, on
               its own (charged, queued) time. Residual staleness 0
``deferred``   the worker linearises at theta_i first, pulls theta_k' as late as
               possible, then applies the linear map: residual = updates during the apply
``pull-first`` the worker pulls theta_k' after sampling, then one fused G + product pass
``look-ahead`` ours: as pull-first, but the tangent aims where the server will be when
               the message lands: theta_k' + (lead / dt) (theta_k' - theta_last), the
               server's parameter velocity between the worker's last two pulls
               extrapolated over the worker's own last pull-to-send time
``secant``     no product against the gap anywhere: each message carries a pair (v, y),
               y = dF/dtheta(theta_i) . v along a tangent v the worker knows before its
               one fused G + product pass (``schemes.secant_tangent``: its previous
               direction times the step, or the update the server applied to its previous
               message, returned in the reply it waits for); the server fits the true gap
               theta_k - theta_i by least squares on the last ``schemes.secant_window``
               messages' tangents and corrects with their products (O(window P), no
               product at the server; ``schemes.corrections.secant_correction``). Residual
               staleness 0 (the gap is exact), but the fit is an approximation: its
               coverage of the gap is recorded per update
=============  =====================================================================
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import optax

from asynccorr.errors import ConfigError
from asynccorr.schemes import corrections

Compute = Literal["direction", "jvp", "dense", "sample"]


@dataclass(frozen=True)
class Protocol:
    """How a linearising scheme gets its product (module docstring)."""

    name: str
    summary: str
    realisable: bool  # False: an upper bound (sim only), labelled so everywhere
    phases: tuple[str, ...]  # the worker job's phases, PULL where it reads the newest (theta_k', k')
    server_product: bool = False  # the server evaluates the product on its own time
    aims_ahead: bool = False  # look-ahead: extrapolate the pulled theta_k' to the expected landing point
    secant: bool = False  # the message carries a (tangent, product) pair; the server fits the gap on a window


PULL = "pull"  # a phase marker: the worker reads the newest parameters here (mid-job)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("oracle", "the product against theta_k at application, free (not realisable: an upper bound)",
                 False, ("sample", "direction_jvp")),
        Protocol("server", "the server evaluates the product at theta_i on the shipped batch at application",
                 True, ("sample", "direction"), server_product=True),
        Protocol("deferred", "the worker linearises first, pulls theta_k' as late as possible, applies the map",
                 True, ("sample", "linearise", PULL, "apply")),
        Protocol("pull-first", "the worker pulls theta_k' after sampling, then one fused G + product pass",
                 True, ("sample", PULL, "direction_jvp")),
        Protocol("look-ahead", "pull-first aimed where the server will be: theta_k' + its velocity x the lead time",
                 True, ("sample", PULL, "direction_jvp"), aims_ahead=True),
        Protocol("secant", "each message carries y = J(theta_i) v along a tangent known before its fused pass; "
                 "the server fits the gap on a window of tangents and corrects with their products",
                 True, ("sample", "direction_jvp"), secant=True),
    )
}
TANGENTS = ("previous", "applied")  # secant: the worker's previous direction x the step, or the applied update
DEFAULT_PROTOCOL = "server"  # the best realisable protocol measured (docs/results.md "Protocols")


@dataclass(frozen=True)
class Scheme:
    name: str
    summary: str
    compute: Compute  # what a worker evaluates per job
    synchronous: bool
    correction: Callable[..., optax.GradientTransformationExtraArgs]  # a factory of asynccorr.schemes.corrections
    knobs: tuple[tuple[str, str], ...] = ()  # (SchemesConfig field, the factory's argument) it takes
    drops_stale: bool = False  # the backend discards messages staler than schemes.staleness_bound
    protocol: str | None = None  # linearising schemes: how the product is obtained (PROTOCOLS)
    pipelined: bool = False  # sync-pipelined: round r+1 computed at theta_r while round r is applied
    needs_worker_params: bool = False  # the server's rule reads theta_i (shipped with the direction)

    @property
    def base(self) -> str:
        """The scheme without its protocol (``modify@server`` -> ``modify``)."""
        return self.name.split("@")[0]

    @property
    def realisable(self) -> bool:
        return self.protocol is None or PROTOCOLS[self.protocol].realisable

    @property
    def label(self) -> str:
        """How tables and legends name it: the oracle is marked as an upper bound."""
        return self.name if self.realisable else f"{self.name} (not realisable)"

    @property
    def phases(self) -> tuple[str, ...]:
        """The worker job's phases (``PULL`` where it reads the newest parameters mid-job)."""
        if self.protocol is not None:
            if self.pipelined:  # the worker-side product against the next round's parameters
                return ("sample", "linearise", PULL, "apply")
            return PROTOCOLS[self.protocol].phases
        return {"direction": ("sample", "direction"), "dense": ("sample", "dense"),
                "sample": ("sample",)}[self.compute]

    def make_correction(self, **knobs: float) -> optax.GradientTransformationExtraArgs:
        """The correction with the given knobs (by ``SchemesConfig`` name; the others are ignored,
        and a knob not given takes the factory's own default)."""
        return self.correction(**{arg: knobs[field] for field, arg in self.knobs if field in knobs})


def _base_schemes() -> tuple[Scheme, ...]:
    return (
        Scheme("sync", "wait for all N workers at the same parameters and average (synchronous SGD)",
               "direction", True, corrections.no_correction),
        Scheme("async", "apply the stale direction as it is (naive asynchronous SGD)",
               "direction", False, corrections.no_correction),
        Scheme("sync-pipelined", "HTS-RL: round r+1's directions computed at theta_r while round r is applied "
               "(a fixed one-step delay)", "direction", True, corrections.no_correction, pipelined=True),
        Scheme("sync-pipelined-modify", "sync-pipelined, each direction corrected to the next round's parameters "
               "by the worker's own product (deferred: residual 0)", "jvp", True, corrections.hessian_correction,
               pipelined=True, protocol="deferred"),
        Scheme("learner", "IMPALA / SEED RL actor-learner split: workers only sample states; the server computes "
               "the fresh direction at theta_k", "sample", False, corrections.no_correction),
        Scheme("modify", "Gao et al. 2024: G + H(theta_i)(theta_k - theta_i), exact Hessian-vector product",
               "jvp", False, corrections.hessian_correction),
        Scheme("modify-safe", "modify with a trust region: the correction's norm capped at trust_ratio * |G|",
               "jvp", False, corrections.trust_region_hessian_correction, (("trust_ratio", "max_ratio"),)),
        Scheme("modify-dense", "the paper's literal protocol: the worker ships G and a dense Hessian (small nets "
               "only)", "dense", False, corrections.dense_hessian_correction, needs_worker_params=True),
        Scheme("dc-asgd", "Zheng et al. 2017: G + lambda G*G*(theta_k - theta_i), lambda = schemes.dc_lambda",
               "direction", False, corrections.delay_compensation, (("dc_lambda", "lam"),),
               needs_worker_params=True),
        Scheme("dc-asgd-a", "DC-ASGD with adaptive lambda_t = lambda0 / sqrt(MS_t + eps), MS_t = EMA of G*G",
               "direction", False, corrections.adaptive_delay_compensation,
               (("dc_lambda0", "lam0"), ("dc_momentum", "momentum"), ("dc_eps", "eps")), needs_worker_params=True),
        Scheme("staleness-lr", "Zhang et al. 2016: the direction divided by its staleness tau (max(tau, 1))",
               "direction", False, corrections.staleness_scaling),
        Scheme("gap-aware", "Barkai et al. 2020: G / max(1, |theta_k - theta_i| / C), C = mean server step",
               "direction", False, corrections.gap_aware, (("gap_decay", "decay"),), needs_worker_params=True),
        Scheme("drop-stale", "discard directions staler than schemes.staleness_bound; the worker pulls afresh",
               "direction", False, corrections.drop_stale, (("staleness_bound", "bound"),), drops_stale=True),
    )


LINEARISING = ("modify", "modify-safe")  # the schemes that take a protocol


def _with_protocols(schemes: tuple[Scheme, ...]) -> dict[str, Scheme]:
    """The registry: every linearising scheme once per protocol, as ``<scheme>@<protocol>``; the
    secant protocol's last (it came last: the order is every table's and every colour's, kept stable)."""
    import dataclasses

    out: dict[str, Scheme] = {}
    later: dict[str, Scheme] = {}
    for s in schemes:
        if s.name not in LINEARISING:
            out[s.name] = s
            continue
        for p in PROTOCOLS.values():
            correction, knobs = s.correction, s.knobs
            if p.secant:  # the server's rule is the fit; modify-safe keeps its cap, modify has none
                correction = (corrections.secant_correction if s.name == "modify-safe"
                              else functools.partial(corrections.secant_correction, max_ratio=math.inf))
                knobs = (*knobs, ("secant_window", "window"))
            (later if p.secant else out)[f"{s.name}@{p.name}"] = dataclasses.replace(
                s, name=f"{s.name}@{p.name}", summary=f"{s.summary}; protocol {p.name}: {p.summary}", protocol=p.name,
                correction=correction, knobs=knobs,
                needs_worker_params=p.server_product or p.name == "oracle" or p.secant)
    return {**out, **later}


SCHEMES: dict[str, Scheme] = _with_protocols(_base_schemes())


def knob_default(field: str) -> float:
    """A scheme knob's default: the one its correction factory declares (their one home)."""
    if field == "secant_window":
        return 0  # 0 = two messages per worker (``secant_window``)
    for scheme in SCHEMES.values():
        for name, arg in scheme.knobs:
            if name == field:
                return inspect.signature(scheme.correction).parameters[arg].default
    raise KeyError(field)


SEQUENTIAL = "sequential"  # the single-worker, always-fresh reference trainer
DISPLAY_ORDER = (SEQUENTIAL, *SCHEMES)  # how tables, legends and colours order schemes (the registry's order)
NAMES = (SEQUENTIAL, *SCHEMES, *LINEARISING)  # what a user may name (a bare linearising name takes the protocol)


def resolve(name: str, protocol: str) -> str:
    """The registered name of a user's scheme name: ``modify`` -> ``modify@<protocol>``."""
    return f"{name}@{protocol}" if name in LINEARISING else name


def realisable(name: str) -> bool:
    """Whether a run under this name is a result a real cluster can produce (every name but an
    ``@oracle`` one: the sequential reference and names this registry does not know are runs too)."""
    return name not in SCHEMES or SCHEMES[name].realisable


def display_order(names: Iterable[str]) -> list[str]:
    """Distinct names: the known ones in ``DISPLAY_ORDER``, then the others alphabetically."""
    present = set(names)
    return [s for s in DISPLAY_ORDER if s in present] + sorted(present - set(DISPLAY_ORDER))


def label(name: str) -> str:
    """A run's display name: the scheme, with the oracle marked as not realisable."""
    return SCHEMES[name].label if name in SCHEMES else name


CORRECTION_KNOBS = tuple(dict.fromkeys(field for s in SCHEMES.values() for field, _ in s.knobs))
"""The ``SchemesConfig`` fields a correction may take."""


@functools.lru_cache(maxsize=64)
def make_correction(name: str, **knobs: float) -> optax.GradientTransformationExtraArgs:
    """The scheme's correction (memoised, so jitted server updates are shared across runs).

    ``knobs`` are the schemes' hyperparameters by their ``SchemesConfig`` names
    (``dc_lambda``, ``dc_lambda0``, ``dc_momentum``, ``dc_eps``, ``gap_decay``,
    ``staleness_bound``); each scheme takes the ones it uses. Prefer
    ``correction_for(name, config)``.
    """
    unknown = sorted(set(knobs) - set(CORRECTION_KNOBS))
    if unknown:
        raise TypeError(f"unknown correction knob(s) {', '.join(unknown)}")
    return get_scheme(name).make_correction(**knobs)


def secant_window(config: Any) -> int:
    """The secant protocol's window of an ``ExperimentConfig``: ``schemes.secant_window``, or with 0
    (the default) two messages per worker, the last ``2 N`` (measured: docs/secant.md)."""
    return config.schemes.secant_window or 2 * config.workers.count


def correction_for(name: str, config: Any) -> optax.GradientTransformationExtraArgs:
    """The correction of scheme ``name`` with the hyperparameters of an ``ExperimentConfig``."""
    knobs = {k: getattr(config.schemes, k) for k in CORRECTION_KNOBS if k != "secant_window"}
    if get_scheme(name).protocol == "secant":  # (only there: the others' memoised rule is shared across N)
        knobs["secant_window"] = secant_window(config)
    return make_correction(name, **knobs)


def check_scheme_fits(scheme: Scheme, num_params: int, schemes_config: Any) -> None:
    """``modify-dense`` materialises an n x n Jacobian: refuse networks above ``schemes.dense_max_params``."""
    limit = schemes_config.dense_max_params
    if scheme.compute == "dense" and num_params > limit:
        raise ConfigError(
            f"scheme {scheme.name} needs a dense {num_params}x{num_params} Hessian; it refuses networks above "
            f"schemes.dense_max_params = {limit} parameters (use smaller "
            f"learner.policy_hidden / value_hidden, or scheme modify)")


def names_help() -> str:
    """The names a user may give, compactly (the protocol variants as a pattern)."""
    plain = [n for n in (SEQUENTIAL, *SCHEMES) if "@" not in n]
    plain[plain.index("modify-dense"):plain.index("modify-dense")] = list(LINEARISING)
    return (f"{', '.join(plain)} ({' and '.join(LINEARISING)} also as <name>@<protocol>, protocol one of "
            f"{', '.join(PROTOCOLS)})")


def check_name(name: str) -> None:
    """A ``ValueError`` unless a user may name this scheme."""
    if name not in NAMES:
        raise ValueError(f"scheme must be one of {names_help()}; got {name!r}")


def get_scheme(name: str) -> Scheme:
    """A registered scheme (a bare linearising name must be ``resolve``d first)."""
    if name not in SCHEMES:
        check_name(name)
        raise ValueError(f"scheme {name} needs a protocol: {name}@<protocol>, protocol one of {', '.join(PROTOCOLS)}")
    return SCHEMES[name]
