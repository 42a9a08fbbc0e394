"""Experiment configuration: frozen dataclasses, TOML loading, validation.

Every field is typed and range-checked at construction; loading a TOML file
rejects unknown keys and wrong types with a ``ConfigError`` whose message names
the offending field (``section.key``). The CLI turns that into a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynccorr.errors import ConfigError  # re-exported: the error every config check raises
from asynccorr.schemes.registry import DEFAULT_PROTOCOL, NAMES, PROTOCOLS, TANGENTS, knob_default, names_help

# The choices of the layers above the config, named here so that a setting is checked where it is read;
# each layer's registry asserts that it implements exactly these.
WORKER_BACKENDS = ("sim", "mp", "ray")  # workers.backend: ``backends.registry.BACKENDS``
DELAY_KINDS = ("homogeneous", "heterogeneous", "stragglers")  # workers.delay: ``backends.delays.DelayModel``
ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "swish")  # learner.activation: ``learners.networks``


def check_hidden(name: str, hidden: Sequence[int]) -> tuple[int, ...]:
    """Validate hidden-layer sizes: at least one layer, every width a positive int."""
    hidden = tuple(hidden)
    if len(hidden) == 0:
        raise ValueError(f"{name} must list at least one hidden layer width, got an empty network")
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
            raise ValueError(f"{name} widths must be positive integers, got {list(hidden)!r}")
    return hidden


def _require(cond: bool, name: str, message: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name} {message}, got {value!r}")


def _positive(name: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, name, "must be a finite number > 0", value)


def _nonnegative(name: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0, name, "must be a finite number >= 0", value)


def _check_types(obj: Any, prefix: str) -> None:
    """Type-check every field of a config dataclass against its annotation.

    Runs first in each ``__post_init__``, so a value of the wrong type (from code or
    a CLI override, not only from TOML) is a ``ConfigError`` naming the field rather
    than a ``TypeError`` from a range check further down.
    """
    for f in dataclasses.fields(obj):
        annotation = _hints(type(obj))[f.name]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(annotation):
            _require(isinstance(value, annotation), f"{prefix}{f.name}", f"must be a {annotation.__name__}", value)
        else:
            _coerce(value, annotation, f"{prefix}{f.name}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@dataclass(frozen=True)
class EnvConfig:
    """Which task, and overrides of its default physical parameters."""

    name: str = "kinematic"  # "kinematic" (default) or "dynamic"
    params: dict[str, Any] = field(default_factory=dict)  # e.g. {amplitude = 2.0}

    def __post_init__(self) -> None:
        from asynccorr.envs import make

        _check_types(self, "env.")
        try:
            make(self.name, **self.params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"env.{exc}" if not str(exc).startswith("env") else str(exc)) from None


LEARNER_KINDS = ("gpi", "a3c", "q")
OFF_POLICY_KINDS = ("none", "vtrace")  # learner.a3c.off_policy
VTRACE_CRITICS = ("learner", "actor")  # learner.a3c.vtrace_critic
Q_TARGETS = ("one-step", "sarsa", "n-step")  # learner.q.target
Q_REPLAYS = ("none", "worker", "central")  # learner.q.replay


@dataclass(frozen=True)
class A3CConfig:
    """The model-free learner (``learner.kind = "a3c"``): n-step actor-critic on sampled experience."""

    envs: int = 32  # envs each worker rolls out in parallel (vmapped)
    n_steps: int = 16  # rollout length per batch: a batch holds envs x n_steps transitions
    gae_lambda: float = 0.95  # GAE lambda of the advantages; 1 = bootstrapped n-step returns
    entropy_coef: float = 1e-3  # entropy bonus on the Gaussian policy
    normalize_advantages: bool = True  # advantages standardised per batch
    log_std_init: float = -0.5  # initial log-std of the Gaussian policy (normalised action units)
    log_std_min: float = -4.0  # log-std kept in (min, max) by a sigmoid
    log_std_max: float = 0.5
    state_dependent_std: bool = False  # log-std from the policy network (else one learned vector)
    # How the direction at theta treats a batch another policy sampled (the actor-learner split's
    # server at theta_k, a stale message): "none" takes the worker's advantages and returns as they
    # are; "vtrace" recomputes them at theta with V-trace (Espeholt et al. 2018): importance ratios
    # pi_theta / pi_i truncated at rho_bar (the TD errors and the policy gradient) and c_bar (the
    # traces), values from theta's critic. On a fresh batch both are the same direction.
    off_policy: str = "none"
    vtrace_rho_bar: float = 1.0
    vtrace_c_bar: float = 1.0
    # whose values V-trace bootstraps from: "learner" (the critic of the theta the direction is taken
    # at: the server's theta_k in the actor-learner split, as IMPALA) or "actor" (the worker's critic
    # phi_i, as sampled: only the ratios are the learner's)
    vtrace_critic: str = "learner"

    def __post_init__(self) -> None:
        _check_types(self, "learner.a3c.")
        _require(self.off_policy in OFF_POLICY_KINDS, "learner.a3c.off_policy",
                 f"must be one of {list(OFF_POLICY_KINDS)}", self.off_policy)
        for name in ("vtrace_rho_bar", "vtrace_c_bar"):
            _require(getattr(self, name) > 0, f"learner.a3c.{name}", "must be > 0 (a truncation level)",
                     getattr(self, name))
        _require(self.vtrace_critic in VTRACE_CRITICS, "learner.a3c.vtrace_critic",
                 f"must be one of {list(VTRACE_CRITICS)}", self.vtrace_critic)
        _require(self.vtrace_c_bar <= self.vtrace_rho_bar, "learner.a3c.vtrace_c_bar",
                 f"must be <= learner.a3c.vtrace_rho_bar = {self.vtrace_rho_bar!r} (V-trace's fixed point "
                 "assumes c_bar <= rho_bar)", self.vtrace_c_bar)
        _require(self.envs >= 1, "learner.a3c.envs", "must be >= 1", self.envs)
        _require(self.n_steps >= 1, "learner.a3c.n_steps", "must be >= 1 (the rollout length)", self.n_steps)
        _require(0 <= self.gae_lambda <= 1, "learner.a3c.gae_lambda", "must be in [0, 1]", self.gae_lambda)
        _nonnegative("learner.a3c.entropy_coef", self.entropy_coef)
        for name in ("log_std_init", "log_std_min", "log_std_max"):
            _require(math.isfinite(getattr(self, name)), f"learner.a3c.{name}", "must be finite", getattr(self, name))
        _require(self.log_std_min < self.log_std_max, "learner.a3c.log_std_min",
                 f"must be < learner.a3c.log_std_max = {self.log_std_max!r} (the bounds are inverted)",
                 self.log_std_min)
        _require(self.log_std_min < self.log_std_init < self.log_std_max, "learner.a3c.log_std_init",
                 f"must lie strictly between log_std_min = {self.log_std_min!r} and log_std_max = "
                 f"{self.log_std_max!r}", self.log_std_init)

    @property
    def batch_size(self) -> int:
        return self.envs * self.n_steps


@dataclass(frozen=True)
class QConfig:
    """The value-based learner (``learner.kind = "q"``): the asynchronous value-based methods of Mnih
    et al. (2016) on a discretised action set, with a shared target network."""

    target: str = "n-step"  # "one-step" Q-learning, "sarsa" (one-step SARSA) or "n-step" Q-learning
    # discrete levels per action dimension, in order (steering, then acceleration), spread evenly over
    # the normalised range [-1, 1]; the actions are their grid. Dimensions a vehicle lacks are ignored,
    # dimensions not listed are held at 0.
    levels: tuple[int, ...] = (9, 3)
    # the network's head: "dueling" (Wang et al. 2016: V(s) + A(s, a) - mean A, one more output) or one
    # output per action
    dueling: bool = True
    envs: int = 32  # envs each worker rolls out in parallel (vmapped)
    n_steps: int = 8  # rollout length per batch: the n of n-step Q (its longest return)
    target_period: int = 20  # server updates between refreshes of the shared target network
    # each worker's final epsilon of its epsilon-greedy policy, drawn once from these with these
    # probabilities (Mnih et al. 2016: 0.1, 0.01, 0.5 with 0.4, 0.3, 0.3) ...
    epsilons: tuple[float, ...] = (0.1, 0.01, 0.5)
    epsilon_probs: tuple[float, ...] = (0.4, 0.3, 0.3)
    epsilon_anneal: int = 0  # ... reached linearly from 1 over this many of its batches (0: from the start)
    # experience replay: "none" (each batch is the rollout just sampled), "worker" (Gorila: each
    # worker keeps its own buffer of its last ``replay_capacity`` transitions and its batch is
    # ``replay_batch`` of them drawn uniformly) or "central" (Ape-X, with the ``learner`` scheme: the
    # server keeps one buffer of every worker's last ``replay_capacity`` transitions, prioritised by
    # |TD error| (the actors' at first), and draws its batch of ``replay_batch`` from it with
    # probability p^priority_exponent, importance-weighted by (n P)^-importance_exponent); one-step
    # targets only
    replay: str = "none"
    replay_capacity: int = 4096
    replay_batch: int = 256
    priority_exponent: float = 0.6  # alpha (Schaul et al. 2016; Ape-X)
    importance_exponent: float = 0.4  # beta

    def __post_init__(self) -> None:
        _check_types(self, "learner.q.")
        _require(self.target in Q_TARGETS, "learner.q.target", f"must be one of {list(Q_TARGETS)}", self.target)
        _require(len(self.levels) >= 1 and all(k >= 1 for k in self.levels), "learner.q.levels",
                 "must list at least one count of levels, each >= 1", list(self.levels))
        _require(self.levels[0] >= 2, "learner.q.levels", "must give the steering at least 2 levels",
                 list(self.levels))
        _require(self.envs >= 1, "learner.q.envs", "must be >= 1", self.envs)
        _require(self.n_steps >= 1, "learner.q.n_steps", "must be >= 1 (the rollout length)", self.n_steps)
        _require(self.target_period >= 1, "learner.q.target_period", "must be >= 1 (server updates)",
                 self.target_period)
        _require(len(self.epsilons) >= 1 and len(self.epsilons) == len(self.epsilon_probs), "learner.q.epsilon_probs",
                 f"must give one probability per epsilon ({len(self.epsilons)})", list(self.epsilon_probs))
        _require(all(0 <= e <= 1 for e in self.epsilons), "learner.q.epsilons", "must each be in [0, 1]",
                 list(self.epsilons))
        _require(all(p >= 0 for p in self.epsilon_probs) and abs(sum(self.epsilon_probs) - 1) < 1e-6,
                 "learner.q.epsilon_probs", "must be >= 0 and sum to 1", list(self.epsilon_probs))
        _require(self.epsilon_anneal >= 0, "learner.q.epsilon_anneal", "must be >= 0 (batches)", self.epsilon_anneal)
        _require(self.replay in Q_REPLAYS, "learner.q.replay", f"must be one of {list(Q_REPLAYS)}", self.replay)
        _require(self.replay == "none" or self.target == "one-step", "learner.q.replay",
                 f"needs learner.q.target = \"one-step\" (replayed transitions have no n-step return or next "
                 f"action of the current policy; target is {self.target!r})", self.replay)
        _require(self.replay_capacity >= self.envs * self.n_steps, "learner.q.replay_capacity",
                 f"must hold at least one rollout (envs x n_steps = {self.envs * self.n_steps})", self.replay_capacity)
        _require(self.replay_batch >= 1, "learner.q.replay_batch", "must be >= 1", self.replay_batch)
        _nonnegative("learner.q.priority_exponent", self.priority_exponent)
        _nonnegative("learner.q.importance_exponent", self.importance_exponent)

    @property
    def batch_size(self) -> int:
        return self.replay_batch if self.replay != "none" else self.envs * self.n_steps


@dataclass(frozen=True)
class LearnerConfig:
    """The learner: ``gpi`` (policy iteration through the differentiable model, the default),
    ``a3c`` (model-free advantage actor-critic, its knobs in ``[learner.a3c]``) or ``q`` (value-based:
    asynchronous one-step Q, SARSA or n-step Q, its knobs in ``[learner.q]``)."""

    kind: str = "gpi"  # "gpi", "a3c" or "q"
    policy_hidden: tuple[int, ...] = (64, 64)  # policy MLP widths
    value_hidden: tuple[int, ...] = (64, 64)  # value MLP widths
    activation: str = "tanh"
    horizon: int = 20  # model rollout length n for both losses
    gamma: float = 0.97  # discount
    rollout_states: int = 128  # states per batch from exploratory policy rollouts
    reset_states: int = 128  # states per batch drawn fresh from the reset distribution
    sampler_steps: int = 2  # env steps the exploratory rollouts advance per batch
    exploration_noise: float = 0.1  # std of Gaussian noise on the normalised action
    a3c: A3CConfig = field(default_factory=A3CConfig)  # kind = "a3c" only
    q: QConfig = field(default_factory=QConfig)  # kind = "q" only

    def __post_init__(self) -> None:
        _check_types(self, "learner.")
        _require(self.kind in LEARNER_KINDS, "learner.kind", f"must be one of {list(LEARNER_KINDS)}", self.kind)
        try:
            check_hidden("learner.policy_hidden", self.policy_hidden)
            check_hidden("learner.value_hidden", self.value_hidden)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _require(self.activation in ACTIVATIONS, "learner.activation",
                 f"must be one of {sorted(ACTIVATIONS)}", self.activation)
        _require(self.horizon >= 1, "learner.horizon", "must be >= 1", self.horizon)
        _require(0 < self.gamma <= 1, "learner.gamma", "must be in (0, 1]", self.gamma)
        _require(self.rollout_states >= 0, "learner.rollout_states", "must be >= 0", self.rollout_states)
        _require(self.reset_states >= 0, "learner.reset_states", "must be >= 0", self.reset_states)
        _require(self.rollout_states + self.reset_states >= 1, "learner.rollout_states",
                 "plus learner.reset_states must be >= 1", self.rollout_states)
        _require(self.sampler_steps >= 1, "learner.sampler_steps", "must be >= 1", self.sampler_steps)
        _nonnegative("learner.exploration_noise", self.exploration_noise)

    @property
    def batch_size(self) -> int:
        """States (gpi) or transitions (a3c, q) per batch."""
        if self.kind == "a3c":
            return self.a3c.batch_size
        return self.q.batch_size if self.kind == "q" else self.rollout_states + self.reset_states


@dataclass(frozen=True)
class OptimConfig:
    """Server-side optimizer applied to the (possibly corrected) direction."""

    name: str = "sgd"  # "adam" or "sgd"
    policy_lr: float = 3e-4
    value_lr: float = 1e-3
    max_grad_norm: float = 0.0  # global-norm clip of the direction; 0 disables

    def __post_init__(self) -> None:
        _check_types(self, "optim.")
        _require(self.name in ("adam", "sgd"), "optim.name", "must be 'adam' or 'sgd'", self.name)
        _positive("optim.policy_lr", self.policy_lr)
        _positive("optim.value_lr", self.value_lr)
        _nonnegative("optim.max_grad_norm", self.max_grad_norm)


MAX_WINDOW = 4096  # secant: the window's pairs are two (window x parameters) float32 buffers
MAX_SEED = 2**31  # seeds feed jax.random.PRNGKey, which takes a 32-bit signed integer


@dataclass(frozen=True)
class TrainConfig:
    """Length of a run and how often it is evaluated."""

    iterations: int = 1000  # server updates
    eval_every: int = 100  # closed-loop tracking evaluation interval; metrics are flushed to disk at it too
    seed: int = 0
    checkpoint_every: int = 100  # server updates between checkpoints (for --resume); 0 = none
    divergence_loss: float = 1e6  # a run diverges when |policy loss| or |value loss| exceeds this (inf = never)

    def __post_init__(self) -> None:
        _check_types(self, "train.")
        _require(self.iterations >= 1, "train.iterations", "must be >= 1", self.iterations)
        _require(self.eval_every >= 1, "train.eval_every", "must be >= 1", self.eval_every)
        _require(0 <= self.seed < MAX_SEED, "train.seed", f"must be in [0, {MAX_SEED})", self.seed)
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 = no checkpoints)",
                 self.checkpoint_every)
        _require(self.divergence_loss > 0, "train.divergence_loss", "must be a number > 0 (inf = no bound)",
                 self.divergence_loss)


@dataclass(frozen=True)
class ReportConfig:
    """How ``compare`` summarises its runs: an analysis choice, not part of what a run computes, so a
    run's identity (``--resume``) leaves it out and changing it re-summarises without retraining."""

    target_loss: float = 2.5  # time to target: the first update whose moving-mean policy loss is below this
    target_window: int = 20  # updates in that moving mean (the update and the window - 1 before it)
    # > 0: time to target is instead the first evaluation (train.eval_every) with the RMS lateral error on
    # the fixed scenario below this many metres, on the road -- for a learner whose policy loss is not a
    # learning curve to threshold (the Q learner's mean TD target starts near the stage cost, as Q = 0 at
    # first, overshoots and settles)
    target_rms: float = 0.0

    def __post_init__(self) -> None:
        _check_types(self, "report.")
        _require(math.isfinite(self.target_loss), "report.target_loss", "must be a finite number",
                 self.target_loss)
        _nonnegative("report.target_rms", self.target_rms)
        _require(self.target_window >= 1, "report.target_window", "must be >= 1", self.target_window)


# The most workers a run may have, on every backend. ``sim`` holds every worker's sampler state and
# job (batch, parameters) and starts each one's first job before the first update: ~1 ms and
# ~0.1 MB per worker on the 2-core reference machine (benchmarks/bench_workers.py), so 16,384
# workers take ~20 s and ~2 GB to start, while a mean staleness in the thousands already means
# that every direction of a short run was computed at the initial parameters. ``mp`` starts one
# process per worker (hundreds of MB each) and ``ray`` one actor: far fewer fit one machine.
MAX_WORKERS = 16_384


@dataclass(frozen=True)
class WorkersConfig:
    """The asynchronous workers and, on the ``sim`` backend, their simulated timing."""

    count: int = 8  # number of workers N
    backend: str = "sim"  # execution backend
    delay: str = "homogeneous"  # "homogeneous", "heterogeneous" or "stragglers"
    jitter: float = 0.1  # lognormal sigma of each job's duration
    speed_spread: float = 4.0  # heterogeneous: slowest / fastest worker
    straggler_prob: float = 0.05  # stragglers: probability a job straggles
    straggler_tail: float = 1.5  # stragglers: Pareto shape of the slowdown (smaller = heavier tail)
    # sim's cost model: simulated seconds of each phase = direction_time x its ratio (benchmarks/bench_phases.py)
    direction_time: float = 0.005  # simulated seconds per direction F(theta, batch)
    sample_cost_ratio: float = 0.16  # a worker's batch sampling / direction
    jvp_cost_ratio: float = 3.1  # fused direction + JVP / direction (pull-first, look-ahead; the server protocol's product)
    linearise_cost_ratio: float = 3.1  # deferred: jax.linearize at theta_i / direction
    apply_cost_ratio: float = 3.3  # deferred: one application of the linear map / direction
    dense_cost_ratio: float = 50.0  # dense Jacobian / direction (modify-dense, small nets only)
    server_apply_cost_ratio: float = 0.2  # the server's rule + optimizer step per message / direction
    secant_pair_cost_ratio: float = 0.0016  # secant: the server's fit per window pair per message / direction
    charge_measurement: bool = False  # sim: the gradient-error measurement costs the server one direction
    slowdown: tuple[float, ...] = ()  # per-worker factors >= 1: worker i's phases take f x as long (mp/ray: sleeps)
    timeout: float = 30.0  # seconds a worker job may take before the worker is declared hung and replaced
    address: str = ""  # ray: address of an existing cluster; "" starts a local one
    measure_grad_error: bool = True  # server re-evaluates F(theta_k) on the shipped batch (one direction/update)

    def __post_init__(self) -> None:
        _check_types(self, "workers.")
        _require(1 <= self.count <= MAX_WORKERS, "workers.count", f"must be in [1, {MAX_WORKERS:,}] (MAX_WORKERS: "
                 "each simulated worker holds a sampler and a job, each real one a process)", self.count)
        _require(self.backend in WORKER_BACKENDS, "workers.backend", f"must be one of {list(WORKER_BACKENDS)}",
                 self.backend)
        _require(self.delay in DELAY_KINDS, "workers.delay", f"must be one of {list(DELAY_KINDS)}", self.delay)
        _nonnegative("workers.jitter", self.jitter)
        _require(math.isfinite(self.speed_spread) and self.speed_spread >= 1, "workers.speed_spread",
                 "must be >= 1", self.speed_spread)
        _require(0 <= self.straggler_prob <= 1, "workers.straggler_prob", "must be in [0, 1]",
                 self.straggler_prob)
        _positive("workers.straggler_tail", self.straggler_tail)
        _positive("workers.direction_time", self.direction_time)
        _require(math.isfinite(self.jvp_cost_ratio) and self.jvp_cost_ratio >= 1, "workers.jvp_cost_ratio",
                 "must be >= 1", self.jvp_cost_ratio)
        for name in ("sample_cost_ratio", "linearise_cost_ratio", "apply_cost_ratio", "server_apply_cost_ratio",
                     "secant_pair_cost_ratio"):
            _nonnegative(f"workers.{name}", getattr(self, name))
        _require(math.isfinite(self.dense_cost_ratio) and self.dense_cost_ratio >= 1,
                 "workers.dense_cost_ratio", "must be >= 1", self.dense_cost_ratio)
        _require(len(self.slowdown) <= self.count, "workers.slowdown",
                 f"must have at most workers.count = {self.count} factors", self.slowdown)
        _require(all(math.isfinite(f) and f >= 1 for f in self.slowdown), "workers.slowdown",
                 "factors must be finite numbers >= 1", self.slowdown)
        _positive("workers.timeout", self.timeout)


@dataclass(frozen=True)
class SchemesConfig:
    """Which schemes ``compare`` runs, on which seeds, and the schemes' own knobs."""

    compare: tuple[str, ...] = ("sync", "async", "modify", "modify-safe", "learner", "sync-pipelined", "modify@oracle")
    seeds: tuple[int, ...] = (0, 1, 2)
    protocol: str = DEFAULT_PROTOCOL  # how a bare modify / modify-safe gets its product (schemes.PROTOCOLS)
    # the correction knobs; their defaults are the correction factories' own (asynccorr.schemes.corrections)
    trust_ratio: float = knob_default("trust_ratio")  # modify-safe: cap |correction| at trust_ratio * |G|
    dense_max_params: int = 2048  # modify-dense refuses larger networks (dense H has n^2 entries)
    staleness_bound: int = knob_default("staleness_bound")  # drop-stale: staler messages are discarded
    dc_lambda: float = knob_default("dc_lambda")  # dc-asgd: lambda of G + lambda G*G*(theta_k - theta_i)
    dc_lambda0: float = knob_default("dc_lambda0")  # dc-asgd-a: lambda_t = dc_lambda0 / sqrt(MS_t + dc_eps)
    dc_momentum: float = knob_default("dc_momentum")  # dc-asgd-a: MS_t = m MS_{t-1} + (1 - m) G*G
    dc_eps: float = knob_default("dc_eps")  # dc-asgd-a
    gap_decay: float = knob_default("gap_decay")  # gap-aware: EMA rate of the mean per-parameter server step C
    secant_window: int = knob_default("secant_window")  # secant: pairs the server fits on; 0 = 2 x workers.count
    secant_tangent: str = "applied"  # secant: "applied" (the server's update) or "previous" (last direction x step)

    def __post_init__(self) -> None:
        _check_types(self, "schemes.")
        _require(len(self.compare) >= 1, "schemes.compare", "must name at least one scheme", self.compare)
        for name in self.compare:
            _require(name in NAMES, "schemes.compare", f"must hold scheme names ({names_help()})", name)
        _require(self.protocol in PROTOCOLS, "schemes.protocol", f"must be one of {list(PROTOCOLS)}", self.protocol)
        _require(len(set(self.compare)) == len(self.compare), "schemes.compare", "has duplicates", self.compare)
        _require(len(self.seeds) >= 1, "schemes.seeds", "must list at least one seed", self.seeds)
        _require(all(0 <= s < MAX_SEED for s in self.seeds), "schemes.seeds", f"must be in [0, {MAX_SEED})",
                 self.seeds)
        _require(len(set(self.seeds)) == len(self.seeds), "schemes.seeds", "has duplicates", self.seeds)
        _positive("schemes.trust_ratio", self.trust_ratio)
        _require(self.dense_max_params >= 1, "schemes.dense_max_params", "must be >= 1", self.dense_max_params)
        _require(self.staleness_bound >= 0, "schemes.staleness_bound", "must be >= 0", self.staleness_bound)
        _nonnegative("schemes.dc_lambda", self.dc_lambda)
        _nonnegative("schemes.dc_lambda0", self.dc_lambda0)
        _require(0 <= self.dc_momentum < 1, "schemes.dc_momentum", "must be in [0, 1)", self.dc_momentum)
        _positive("schemes.dc_eps", self.dc_eps)
        _require(0 <= self.gap_decay < 1, "schemes.gap_decay", "must be in [0, 1)", self.gap_decay)
        _require(0 <= self.secant_window <= MAX_WINDOW, "schemes.secant_window",
                 f"must be in [0, {MAX_WINDOW}] (0 = 2 x workers.count)", self.secant_window)
        _require(self.secant_tangent in TANGENTS, "schemes.secant_tangent", f"must be one of {list(TANGENTS)}",
                 self.secant_tangent)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "paper"  # results go to results/<name>/
    env: EnvConfig = field(default_factory=EnvConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    schemes: SchemesConfig = field(default_factory=SchemesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        _check_types(self, "")
        _require(bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name) and self.name[0] != ".",
                 "name", "must be a non-empty name of letters, digits, '-', '_' or '.'", self.name)


# ----------------------------------------------------------------------------- loading


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check ``value`` against a field annotation; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(annotation)
    if annotation is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), name, "must be a number", value)
        return float(value)
    if annotation is int:
        _require(isinstance(value, int) and not isinstance(value, bool), name, "must be an integer", value)
        return value
    if annotation is str:
        _require(isinstance(value, str), name, "must be a string", value)
        return value
    if annotation is bool:
        _require(isinstance(value, bool), name, "must be true or false", value)
        return value
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), name, "must be a list", value)
        (item,) = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), name, "must be a table", value)
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name} has the wrong type, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        _require(isinstance(value, dict), name, "must be a table", value)
        return from_dict(annotation, value, prefix=f"{name}.")
    raise TypeError(f"unsupported annotation {annotation!r} for {name}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a ``ConfigError`` (one line) when it is missing, a directory,
    unreadable, not UTF-8 or not TOML. Every loader of the package reads its file here."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"malformed TOML in {path}: not UTF-8 text ({exc.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML in {path}: {exc}") from None


def parse_setting(text: str) -> tuple[tuple[str, ...], Any]:
    """``section.key=value`` (``--set``) as (the dotted key's parts, the value): the value is read as a
    TOML value (``1e-3``, ``[1, 2]``, ``true``, ``"adam"``), and a bare word that is not one as a string."""
    key, sep, raw = text.partition("=")
    parts = tuple(p.strip() for p in key.split("."))
    if not sep or not all(parts) or not raw.strip():
        raise ConfigError(f"--set wants section.key=value (e.g. optim.policy_lr=1e-3), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_settings(data: dict[str, Any], settings: Sequence[str]) -> dict[str, Any]:
    """A TOML table (as read) with each ``section.key=value`` of ``settings`` put in, in order (a copy):
    the result is validated exactly as the file would be."""
    out = json.loads(json.dumps(data))
    for text in settings:
        parts, value = parse_setting(text)
        table = out
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text}: {'.'.join(parts[: i + 1])} is a value, not a section")
        table[parts[-1]] = value
    return out


def load_config(path: str | Path | None, settings: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment TOML (or the built-in defaults when ``path`` is None), with ``--set``
    settings applied to it before it is validated."""
    return from_dict(ExperimentConfig, apply_settings(read_toml(path) if path is not None else {}, settings))


def with_overrides(config: ExperimentConfig, **section_fields: Any) -> ExperimentConfig:
    """Return ``config`` with fields replaced, e.g. ``train={"seed": 3}`` or ``name="x"`` (re-validated)."""
    changes: dict[str, Any] = {}
    for section, values in section_fields.items():
        if not isinstance(values, dict):
            changes[section] = values
        elif values:
            changes[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **changes)


LEARNER_NAMES = {"gpi": "model-based GPI", "a3c": "model-free A3C", "q": "value-based Q"}


def describe(record: dict[str, Any]) -> str:
    """What tells experiments apart, in words, from a config record (``to_dict`` or a run's
    config.json; missing fields take the defaults): learner, optimizer and step sizes, workers, delays.

    e.g. ``model-based GPI, SGD step 0.0003 (value 0.001), N = 8 workers, homogeneous delays``."""
    learner, optim, workers = ({**to_dict(default), **record.get(key, {})} for key, default in
                               (("learner", LearnerConfig()), ("optim", OptimConfig()), ("workers", WorkersConfig())))
    kind = LEARNER_NAMES.get(learner["kind"], str(learner["kind"]))
    a3c = {**to_dict(A3CConfig()), **learner.get("a3c", {})}
    if learner["kind"] == "a3c" and a3c["off_policy"] == "vtrace":
        critic = ", the actor's critic" if a3c["vtrace_critic"] == "actor" else ""
        kind += f" with V-trace (rho_bar {a3c['vtrace_rho_bar']:g}, c_bar {a3c['vtrace_c_bar']:g}{critic})"
    if learner["kind"] == "q":
        q = {**to_dict(QConfig()), **learner.get("q", {})}
        replay = {"worker": ", per-worker replay", "central": ", central prioritised replay"}.get(q["replay"], "")
        kind = f"value-based {q['target']} {'SARSA' if q['target'] == 'sarsa' else 'Q'}{replay}"
    optimizer = optim["name"].upper() if optim["name"] == "sgd" else optim["name"].capitalize()
    step = f"{optimizer} step {optim['policy_lr']:g} (value {optim['value_lr']:g})"
    return f"{kind}, {step}, N = {workers['count']} workers, {workers['delay']} delays"


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) suitable for JSON/TOML output."""
    def convert(v: Any) -> Any:
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v
    return convert(dataclasses.asdict(config))
