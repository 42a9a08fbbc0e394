"""The worker role of the real backends (``mp``, ``ray``) and its messages.

Roles and messages, in one place (Sample Factory style)::

    server -> worker   (theta_k, k)            the newest parameters and their version:
                                               mp: a seqlocked shared-memory block;
                                               ray: the job's argument and a ParameterStore actor
    worker -> server   Ready(worker, pid)      start-up done (functions compiled)
    worker -> server   Message(...)            one job's result, below

A worker loops: pull ``(theta_i, i)``; sample a batch with its own exploratory
rollouts (its key stream is ``build.worker_stream(k_workers, worker)``, as on
the ``sim`` backend); then

* direction schemes (``sync``, ``async``): ``G = F(theta_i, batch)``, sent tagged
  with version ``i``;
* ``jvp`` schemes (``modify``, ``modify-safe``), the worker-side protocol of
  DESIGN.md section 5: linearise at ``theta_i``, pull the newest ``(theta_k', k')``
  and apply the Hessian-vector product to the gap, i.e. ``G`` and
  ``gap_product = dF/dtheta(theta_i) . (theta_k' - theta_i)`` in one
  forward-over-reverse pass (``learner.direction_jvp``: the product is evaluated
  in the same pass as the linearisation, 1.45x cheaper than ``jax.linearize`` +
  apply, and mathematically the same linearisation at ``theta_i``). The message
  is tagged with both versions. The server applies the scheme's correction with
  that product (``server.make_message_update``); it records ``staleness = k_apply
  - i`` and ``residual_staleness = k_apply - k'``: the updates the correction
  could not see (for direction schemes the two are equal).

Everything here is plain data: messages pickle across processes and Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

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
    """One job's result, worker -> server."""

    worker: int
    version: int  # i: version of theta_i, the parameters G was computed (and linearised) at
    version_k: int  # k': version of the newest parameters the gap product used (= version for direction schemes)
    direction: np.ndarray  # G = F(theta_i, batch), float32
    gap_product: np.ndarray | None  # dF/dtheta(theta_i) . (theta_k' - theta_i); jvp schemes only
    batch: Any | None  # the batch (numpy pytree) when the server measures the gradient error
    policy_loss: float  # J at theta_i on the batch
    value_loss: float  # L_V at theta_i on the batch
    compute_time: float  # seconds of sampling + compute, without the slowdown sleep


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


class WorkerCompute:
    """A worker's state and its jitted compute step (built inside the worker process)."""

    def __init__(self, spec: WorkerSpec) -> None:
        import jax

        from asynccorr.build import build, run_keys, worker_stream
        from asynccorr.config import ExperimentConfig, from_dict
        from asynccorr.schemes import get_scheme

        self.spec = spec
        config = from_dict(ExperimentConfig, spec.config)
        self.scheme = get_scheme(spec.scheme)
        if self.scheme.compute == "dense":
            raise ValueError(f"scheme {spec.scheme} is not supported on real workers")
        learner, _ = build(config)
        self.ship_batch = config.workers.measure_grad_error and not self.scheme.synchronous
        k_params, k_workers = run_keys(config.train.seed)
        key, sampler_key = worker_stream(k_workers, spec.worker)
        if spec.incarnation:
            key = jax.random.fold_in(key, spec.incarnation)  # a replacement does not replay its predecessor's batches
        self.key = key
        self.sampler = learner.sampler_init(sampler_key)
        self.init_params = learner.init(k_params)
        self._sample = jax.jit(learner.sample)
        self._direction = jax.jit(learner.direction)
        self._direction_jvp = jax.jit(learner.direction_jvp)
        self.jobs = 0

    def warm_up(self) -> None:
        """Compile every function the job uses (results discarded, state unchanged)."""
        import jax

        batch, _ = self._sample(self.key, self.sampler, self.init_params)
        if self.scheme.compute == "jvp":
            out = self._direction_jvp(self.init_params, batch, self.init_params)
        else:
            out = self._direction(self.init_params, batch)
        jax.block_until_ready(out)

    def job(self, theta_i: np.ndarray, version: int, pull: Callable[[], tuple[np.ndarray, int]]) -> Message:
        """One job at ``(theta_i, version)``; ``pull`` returns the newest ``(theta_k, k)`` (jvp schemes)."""
        import jax

        self.jobs += 1
        if self.spec.incarnation == 0 and self.jobs == self.spec.hang_at_job:
            while True:  # test hook: a hung worker
                time.sleep(1.0)
        start = time.perf_counter()
        self.key, k_sample = jax.random.split(self.key)
        batch, self.sampler = self._sample(k_sample, self.sampler, theta_i)
        if self.scheme.compute == "jvp":
            theta_k, version_k = pull()
            g, gap, losses = self._direction_jvp(theta_i, batch, theta_k - theta_i)
            gap = np.asarray(gap)
        else:
            (g, losses), gap, version_k = self._direction(theta_i, batch), None, version
        g = np.asarray(g)
        compute = time.perf_counter() - start
        if self.spec.slowdown > 1:
            time.sleep((self.spec.slowdown - 1.0) * compute)
        return Message(self.spec.worker, version, version_k, g, gap,
                       jax.device_get(batch) if self.ship_batch else None,
                       float(losses.policy_loss), float(losses.value_loss), compute)
