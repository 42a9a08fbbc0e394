"""The worker role of every backend and its messages.

Roles and messages, in one place (Sample Factory style)::

    server -> worker   (theta_k, k)            the newest parameters and their version:
                                               mp: a seqlocked shared-memory block;
                                               ray: the job's argument and a ParameterStore actor;
                                               sim: the parameters published at that simulated moment
    worker -> server   Ready(worker, pid)      start-up done (functions compiled)
    worker -> server   Message(...)            one job's result, below
    server -> worker   reply(step)             secant with schemes.secant_tangent = "applied": the
                                               update the server applied to its message (mp: the
                                               worker's slot in the shared block, set with the reply;
                                               ray: the ParameterStore; sim: at that moment)

A worker loops: pull ``(theta_i, i)``; then it runs its scheme's **phases**
(``Scheme.phases``, timed one by one):

* ``sample``: a batch from its own exploratory rollouts with ``theta_i`` (its key
  stream is ``build.worker_stream(k_workers, worker)`` on every backend);
* ``direction``: ``G = F(theta_i, batch)`` (direction schemes, the ``server``
  protocol);
* ``direction_jvp``: ``G`` and ``dF/dtheta(theta_i) . (target - theta_i)`` in one
  forward-over-reverse pass (``pull-first``, ``look-ahead``, ``oracle``'s cost); for
  ``secant``, ``G`` and ``y = dF/dtheta(theta_i) . v`` along the tangent ``v`` the
  worker holds before the pass (``tangent``: its previous direction times the step, or
  the update the server applied to its previous message, from the reply);
* ``linearise`` then ``apply``: ``jax.linearize`` at ``theta_i``, the map applied
  to the gap later (``deferred``);
* ``dense``: G and the dense Jacobian (``modify-dense``, sim only);
* ``schemes.registry.PULL``: read the newest ``(theta_k', k')`` mid-job. ``target`` is
  ``theta_k'``, or for ``look-ahead`` the point the server is expected to reach when
  the message lands (``aim``).

``learner`` runs ``sample`` only and ships the batch. The message is tagged with
both versions; the server records ``staleness = k_apply - i`` and
``residual_staleness`` (the updates the correction could not see: ``k_apply - k'``
for a worker-side product, 0 for a server-side one or a fresh direction).

``job_compute`` is the compute of a job given what the worker holds; mp and ray run
it inline around a real pull (``WorkerCompute.job``), ``sim`` runs the same code at
the simulated moments. Everything here is plain data: messages pickle across
processes and Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from asynccorr.schemes.registry import PULL

# Per-process thread limits: N workers should use N cores, not N x all cores.
WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "JAX_PLATFORMS": "cpu",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``WORKER_ENV`` merged over ``base`` (existing XLA flags are kept, ours appended)."""
    env = dict(base or {})
    for name, value in WORKER_ENV.items():
        if name == "XLA_FLAGS" and env.get(name):
            env[name] = f"{env[name]} {value}"
        else:
            env[name] = value
    return env


class Ready(NamedTuple):
    """A worker finished starting (imports, compiles) and is about to take jobs."""

    worker: int
    pid: int


class Message(NamedTuple):
    """One job's result, worker -> server (arrays: numpy on real backends, device arrays on sim)."""

    worker: int
    version: int  # i: version of theta_i, the parameters G was computed (and linearised) at
    version_k: int  # k': version of the newest parameters the gap product used (= version without a pull)
    direction: Any | None  # G = F(theta_i, batch), float32; None for learner (the server computes it)
    gap_product: Any | None  # dF/dtheta(theta_i) . (target - theta_i); worker-side protocols only
    batch: Any | None  # the batch (pytree) when the server needs it or measures the gradient error
    policy_loss: Any  # J at theta_i on the batch (nan for learner)
    value_loss: Any  # L_V at theta_i on the batch (nan for learner)
    compute_time: float  # seconds of the job's phases, without the slowdown sleeps
    params: Any | None = None  # theta_i, when the server's rule needs it (Scheme.needs_worker_params)
    phase_times: tuple[float, ...] = ()  # seconds per non-pull phase, in Scheme.phases order
    tangent: Any | None = None  # secant: the tangent v the worker chose before its pass
    tangent_product: Any | None = None  # secant: dF/dtheta(theta_i) . v on its batch, from the same pass
    incarnation: int = 0  # the worker's incarnation (0, +1 per replacement): with ``job``, what re-derives its keys
    job: int = 0  # its job index in that incarnation (1-based; 0: not a real worker's job)
    pulled: float = 0.0  # look-ahead: the worker's clock at its mid-job pull (``aim``'s now)
    lead: float = 0.0  # look-ahead: the pull-to-send seconds ``aim`` used (its previous job's)


class WorkerSpec(NamedTuple):
    """Everything a fresh worker process needs to rebuild its role (picklable)."""

    config: dict[str, Any]  # config.to_dict(ExperimentConfig)
    scheme: str
    worker: int
    incarnation: int = 0  # 0 for the original worker, +1 per replacement
    hang_at_job: int = 0  # test hook: the first incarnation hangs forever on this job (1-based); 0 = never

    @property
    def slowdown(self) -> float:
        factors = self.config["workers"]["slowdown"]
        return float(factors[self.worker]) if self.worker < len(factors) else 1.0


# ----------------------------------------------------------------------------- the compute of a job


class WorkerOps:
    """The worker role's jitted functions for one learner (shared by all of a process's workers)."""

    def __init__(self, learner: Any) -> None:
        from asynccorr.compile import programs

        self.learner = learner
        self.sample = programs.jit(learner.sample, "worker.sample")
        self.next_batch = programs.jit(_next_batch(learner.sample), "worker.next_batch")
        self.direction = programs.jit(learner.direction, "worker.direction")
        self.direction_jvp = programs.jit(learner.direction_jvp, "worker.direction_jvp")

    def linearise(self, theta: Any, batch: Any) -> tuple[Any, Any, Callable[[Any], Any]]:
        """``(G, losses, t -> dF/dtheta(theta) . t)``: ``jax.linearize`` of the jitted field (the
        linear part is compiled once and cached; it cannot be a jit output)."""
        import jax

        (g, losses), f_jvp = jax.linearize(lambda p: self.direction(p, batch), theta)
        return g, losses, (lambda t: f_jvp(t)[0])

    def dense(self, theta: Any, batch: Any) -> Any:
        """The dense Jacobian of F at theta (small nets only)."""
        import jax

        return jax.jacfwd(lambda p: self.learner.direction(p, batch)[0])(theta)


def _next_batch(sample: Callable) -> Callable:
    def next_batch(key: Any, sampler: Any, theta: Any) -> tuple[Any, Any, Any]:
        """``(key', batch, sampler')``: the worker's key stream advances, its next batch with theta."""
        import jax

        key, k_sample = jax.random.split(key)
        batch, sampler = sample(k_sample, sampler, theta)
        return key, batch, sampler

    return next_batch


def worker_ops(learner: Any) -> WorkerOps:
    """The ``WorkerOps`` of a learner (one per learner and process: compiled once)."""
    ops = _OPS.get(id(learner))
    if ops is None or ops.learner is not learner:
        ops = _OPS[id(learner)] = WorkerOps(learner)
    return ops


_OPS: dict[int, WorkerOps] = {}


def aim(theta_k: Any, version_k: int, now: float, last: tuple[Any, int, float] | None, lead: float) -> Any:
    """look-ahead's target: where the server should be when this message lands.

    From the worker's previous mid-job pull ``last = (theta, version, time)`` and this one
    (``theta_k'`` at ``version_k``, ``now``): the server's mean step ``(theta_k' - theta) /
    (version_k - version)`` and the rate of the *other* workers' updates (its own one is
    applied before it pulls again); the expected residual staleness is that rate times
    ``lead``, the worker's own last pull-to-send time. With one worker the target is
    ``theta_k'``."""
    if last is None or lead <= 0:
        return theta_k
    theta, version, then = last
    steps = version_k - version
    if steps <= 1 or not now > then:
        return theta_k
    expected = (steps - 1) / (now - then) * lead  # others' updates during the lead
    return theta_k + (expected / steps) * (theta_k - theta)


def pre_pull(ops: WorkerOps, scheme: Any, theta_i: Any, batch: Any) -> Any:
    """The compute before the mid-job pull: deferred's linearisation (else nothing)."""
    return ops.linearise(theta_i, batch) if "linearise" in scheme.phases else None


def post_pull(ops: WorkerOps, scheme: Any, theta_i: Any, batch: Any, target: Any, pre: Any,
              tangent: Any = None) -> tuple[Any, Any, Any]:
    """The rest of the job: ``(G or None, product or None, losses or None)``; the product is the
    gap product, or for ``secant`` the product along ``tangent``."""
    phases = scheme.phases
    if scheme.protocol == "secant":
        return ops.direction_jvp(theta_i, batch, tangent)
    if "apply" in phases:
        g, losses, product = pre
        return g, product(target - theta_i), losses
    if "direction_jvp" in phases and scheme.protocol != "oracle":
        return ops.direction_jvp(theta_i, batch, target - theta_i)
    if "direction" in phases:
        g, losses = ops.direction(theta_i, batch)
        return g, None, losses
    return None, None, None  # learner; oracle and dense: the server evaluates the worker's pure function


def step_scale(config: Any, learner: Any) -> np.ndarray:
    """Each parameter's step size (the policy's, then the value's): a ``previous`` secant tangent is
    the worker's last direction times it, the step plain SGD takes with it."""
    return np.concatenate([np.full((learner.num_policy,), config.optim.policy_lr, np.float32),
                           np.full((learner.num_value,), config.optim.value_lr, np.float32)])


def secant_fields(scheme: Any, product: Any, tangent: Any) -> tuple[Any, Any, Any]:
    """``(gap_product, tangent, tangent_product)`` of a message: a secant message's product is along
    its tangent, every other protocol's against its gap."""
    if scheme.protocol == "secant":
        return None, tangent, product
    return product, None, None


def ships(scheme: Any, measure: bool) -> tuple[bool, bool]:
    """(ship the batch, ship theta_i) for a scheme's messages."""
    measured = measure and (not scheme.synchronous or scheme.pipelined)  # sync's error is 0 by construction
    needed = scheme.compute in ("sample", "dense") or scheme.protocol in ("server", "oracle")
    return measured or needed, scheme.needs_worker_params


class WorkerCompute:
    """A real worker's state and its jitted compute (built inside the worker process)."""

    def __init__(self, spec: WorkerSpec, learner: Any = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """``learner``: one already built for this config (a replay's workers share it); ``clock``: the
        moment of a mid-job pull (look-ahead's ``aim``; a replay gives the recorded one)."""
        import jax

        from asynccorr.config import ExperimentConfig, from_dict
        from asynccorr.learners.build import build, run_keys, worker_stream
        from asynccorr.schemes.registry import get_scheme, resolve

        self.spec = spec
        config = from_dict(ExperimentConfig, spec.config)
        self.scheme = get_scheme(resolve(spec.scheme, config.schemes.protocol))
        if self.scheme.compute == "dense" or not self.scheme.realisable or self.scheme.pipelined:
            raise ValueError(f"scheme {spec.scheme} is not supported on real workers")
        learner = build(config)[0] if learner is None else learner
        self.clock = clock
        self.ship_batch, self.ship_params = ships(self.scheme, config.workers.measure_grad_error)
        k_params, k_workers = run_keys(config.train.seed)
        key, sampler_key = worker_stream(k_workers, spec.worker)
        if spec.incarnation:
            key = jax.random.fold_in(key, spec.incarnation)  # a replacement does not replay its predecessor's batches
        self.key = key
        self.sampler = learner.sampler_init(sampler_key)
        self.init_params = learner.init(k_params)
        self.ops = worker_ops(learner)
        self.jobs = 0
        self.last_pull: tuple[np.ndarray, int, float] | None = None  # look-ahead: the previous mid-job pull
        self.lead = 0.0  # look-ahead: the last job's pull-to-send seconds
        self.secant = self.scheme.protocol == "secant"
        self.tangent_kind = config.schemes.secant_tangent
        self.step_scale = step_scale(config, learner) if self.secant else None
        self.tangent = np.zeros((learner.num_params,), np.float32) if self.secant else None  # the next job's v

    @property
    def wants_reply(self) -> bool:
        """Its next tangent is the update the server applied to its message (``reply``)."""
        return self.secant and self.tangent_kind == "applied"

    def reply(self, step: np.ndarray | None) -> None:
        """The server's reply to its last message: the update it applied (None: not applied)."""
        if self.wants_reply and step is not None:
            self.tangent = np.asarray(step, np.float32)

    def warm_up(self) -> None:
        """Compile every function the job uses (results discarded, state unchanged)."""
        import jax

        _, batch, _ = self.ops.next_batch(self.key, self.sampler, self.init_params)
        p = self.init_params
        jax.block_until_ready(post_pull(self.ops, self.scheme, p, batch, p, pre_pull(self.ops, self.scheme, p, batch),
                                        self.tangent))

    def job(self, theta_i: np.ndarray, version: int, pull: Callable[[], tuple[np.ndarray, int]]) -> Message:
        """One job at ``(theta_i, version)``; ``pull`` returns the newest ``(theta_k, k)`` (mid-job pulls)."""
        import jax

        self.jobs += 1
        if self.spec.incarnation == 0 and self.jobs == self.spec.hang_at_job:
            while True:  # test hook: a hung worker
                time.sleep(1.0)
        scheme, ops = self.scheme, self.ops
        phase_times: list[float] = []

        def done(t0: float) -> float:
            """End a phase begun at ``t0``: record it, sleep the slowdown (a slower machine's
            every phase is slower, the pull's moment included), return the next phase's start."""
            seconds = time.perf_counter() - t0
            phase_times.append(seconds)
            if self.spec.slowdown > 1:
                time.sleep((self.spec.slowdown - 1.0) * seconds)
            return time.perf_counter()

        t = time.perf_counter()
        self.key, batch, self.sampler = ops.next_batch(self.key, self.sampler, theta_i)
        jax.block_until_ready(batch)
        t = done(t)
        pre = pre_pull(ops, scheme, theta_i, batch)
        if pre is not None:
            jax.block_until_ready(pre[0])
            t = done(t)
        target, version_k = theta_i, version
        if PULL in scheme.phases:
            theta_k, version_k = pull()
            pulled, lead = self.clock(), self.lead
            target = aim(theta_k, version_k, pulled, self.last_pull, lead) \
                if scheme.protocol == "look-ahead" else theta_k
            self.last_pull = (theta_k, version_k, pulled)
        tangent = self.tangent
        g, product, losses = post_pull(ops, scheme, theta_i, batch, target, pre, tangent)
        g, product = (None if x is None else np.asarray(x) for x in (g, product))
        if self.secant and self.tangent_kind == "previous":
            self.tangent = self.step_scale * g
        gap, tangent, tangent_product = secant_fields(scheme, product, tangent)
        if len(phase_times) < len([p for p in scheme.phases if p != PULL]):
            t = done(t)
        if PULL in scheme.phases:
            self.lead = t - pulled
        compute = sum(phase_times)
        nan = float("nan")
        return Message(self.spec.worker, version, version_k, g, gap,
                       jax.device_get(batch) if self.ship_batch else None,
                       nan if losses is None else float(losses.policy_loss),
                       nan if losses is None else float(losses.value_loss), compute,
                       np.asarray(theta_i) if self.ship_params else None, tuple(phase_times), tangent, tangent_product,
                       self.spec.incarnation, self.jobs, *((pulled, lead) if PULL in scheme.phases else ()))
