"""The ``ray`` backend's transport: the worker and server roles of ``mp`` on a Ray cluster.

Ray is the distributed engine (``pip install 'asynccorr[ray]'``); ``supervisor.supervise``
runs the loop (start, ready, messages, death, hang, replacement, Ctrl-C, cleanup) and
this module only maps it onto Ray:

* each worker is an actor (``num_cpus=1``) wrapping ``worker.WorkerCompute``;
  ``ready()`` compiles and returns ``worker.Ready``, ``job()`` pulls the newest
  ``(theta_i, i)`` from the store and returns one ``worker.Message``;
* a ``ParameterStore`` actor holds the newest ``(theta_k, k)``: the server
  publishes every version to it and a ``modify`` worker pulls from it before
  its Hessian-vector product (the worker-side protocol of ``worker.py``);
* jobs are pushed: an asynchronous scheme keeps ``DEPTH`` jobs queued per actor
  (so it starts the next one at once, as an ``mp`` worker does); ``sync`` submits
  ``job(theta_k, k)``, one per version;
* arrivals: ``ray.wait`` on the outstanding calls; a call whose actor died raises
  ``RayActorError`` from ``ray.get``, a death. Results of jobs that completed
  before it are still applied; its jobs in flight are lost;
* hang: an actor with jobs in flight is busy since its last result (or since its
  first job); a dead or hung actor is ``ray.kill``-ed.

``workers.address`` joins an existing cluster (``"auto"``, ``"host:6379"``; the
``asynccorr`` package is shipped to it with ``py_modules``); ``""`` starts a
local Ray, which is shut down at the end. Ray already running in this process
(``ray.init`` by the caller) is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asynccorr.backends.protocol import NO_HOOKS, RunHooks, RunResult
from asynccorr.backends.server import ServerRole
from asynccorr.backends.supervisor import Arrival, Death, OnEvent, Transport, supervise
from asynccorr.backends.worker import Message, Ready, WorkerCompute, WorkerSpec, worker_env
from asynccorr.config import ConfigError, ExperimentConfig

DEPTH = 2  # asynchronous schemes: jobs queued per actor, so it pulls its next job's parameters itself, at once


class WorkerActor:
    """A worker's role inside a Ray actor process."""

    def __init__(self, spec: WorkerSpec, store: Any) -> None:
        self.spec, self.store = spec, store
        self.compute: WorkerCompute | None = None

    def ready(self) -> Ready:
        self.compute = WorkerCompute(self.spec)
        self.compute.warm_up()
        return Ready(self.spec.worker, os.getpid())

    def job(self, theta: Any = None, version: int = -1) -> Message:
        """One job at ``(theta, version)``, or (``theta`` None) at the newest parameters, pulled now."""
        import numpy as np
        import ray

        def pull() -> tuple[Any, int]:
            params, k = ray.get(self.store.latest.remote())
            return np.asarray(params), k

        if theta is None:
            theta, version = pull()
        if self.compute.wants_reply:  # secant "applied": the newest update applied to one of its messages
            self.compute.reply(ray.get(self.store.reply_for.remote(self.spec.worker)))
        return self.compute.job(np.asarray(theta), version, pull)


class ParameterStore:
    """The newest ``(theta_k, k)`` the server published."""

    def __init__(self) -> None:
        self.params: Any = None
        self.version = -1
        self.replies: dict[int, Any] = {}  # secant "applied": the update applied to each worker's last message

    def reply(self, worker: int, step: Any) -> None:
        self.replies[worker] = step

    def reply_for(self, worker: int) -> Any:
        return self.replies.get(worker)

    def publish(self, params: Any, version: int) -> None:
        if version > self.version:
            self.params, self.version = params, version

    def latest(self) -> tuple[Any, int]:
        return self.params, self.version


def runtime_env(address: str) -> dict[str, Any]:
    """Thread limits for every Ray worker process (one CPU each), and this copy of ``asynccorr``
    importable there: shipped with ``py_modules`` to a cluster, on ``PYTHONPATH`` for a local Ray.
    The study runner on a cluster (``asynccorr.studies.cluster``) uses the same."""
    package = Path(__file__).resolve().parents[1]
    env = worker_env({k: v for k, v in os.environ.items() if k == "XLA_FLAGS"})
    if address:
        return {"env_vars": env, "py_modules": [str(package)]}
    path = os.pathsep.join(p for p in (str(package.parent), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {**env, "PYTHONPATH": path}}


def start_ray(address: str, num_cpus: int) -> bool:
    """Connect to (``address``) or start a local Ray; True when this call started it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("workers.backend = 'ray' needs Ray: pip install 'asynccorr[ray]'") from None
    if ray.is_initialized():
        return False
    common = {"runtime_env": runtime_env(address), "logging_level": logging.WARNING, "log_to_driver": True,
              "configure_logging": True}
    if address:
        try:
            ray.init(address=address, **common)
        except ConnectionError as exc:
            raise ConfigError(f"workers.address: cannot join the Ray cluster at {address!r}: {exc}") from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 2**20, **common)
    return True


@dataclass
class _Actor:
    handle: Any  # the WorkerActor's handle
    in_flight: int = 0  # jobs submitted and not returned
    progress: float = 0.0  # time.monotonic() of the last result (or of the first job): hang detection
    refs: set = field(default_factory=set)  # its calls not yet returned (ready and jobs)


class Actors(Transport):
    """Worker actors, the parameter store and the calls in flight (see the module docstring)."""

    name = "ray"

    def __init__(self, synchronous: bool, started_ray: bool) -> None:
        import ray

        self.synchronous, self.started_ray = synchronous, started_ray
        self.worker_cls = ray.remote(num_cpus=1, max_restarts=0)(WorkerActor)
        self.store = ray.remote(num_cpus=0)(ParameterStore).remote()
        self.actors: dict[int, _Actor] = {}
        self.pending: dict[Any, int] = {}  # object ref -> worker
        self.latest: tuple[np.ndarray, int] | None = None  # what was published last
        self.params_ref: tuple[int, Any] | None = None  # (version, ray.put of its parameters): sync jobs

    @classmethod
    def start(cls, config: ExperimentConfig, synchronous: bool) -> Actors:
        """Join or start Ray (``workers.address``) with a CPU per worker; shut down again if this fails."""
        count = config.workers.count
        started_ray = start_ray(config.workers.address, max(count, os.cpu_count() or 1))
        import ray

        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus < count:
                raise ConfigError(f"workers.count = {count} needs {count} CPUs (one actor each); "
                                  f"the Ray cluster has {cpus:g}")
            actors = cls(synchronous, started_ray)
            actors.shares_cache = not config.workers.address  # a joined cluster's nodes have their own environment
            return actors
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise

    def spawn(self, spec: WorkerSpec) -> int | None:
        actor = _Actor(self.worker_cls.remote(spec, self.store))
        self.actors[spec.worker] = actor
        self._call(spec.worker, actor.handle.ready.remote())
        return None  # its pid comes with its Ready

    def wait(self, timeout: float) -> Iterator[Arrival]:
        """The calls that returned, oldest first; an actor error is a death."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        done, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if done:  # everything else that is ready too
            done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        dead: set[int] = set()
        for ref in done:
            i = self.pending[ref]
            if i in dead:
                continue
            actor = self.actors[i]
            del self.pending[ref]
            actor.refs.discard(ref)
            try:
                value = ray.get(ref, timeout=30)
            except (RayActorError, GetTimeoutError) as exc:
                dead.add(i)
                yield i, Death("died", error=type(exc).__name__)
                continue
            if isinstance(value, Message):
                actor.in_flight -= 1
                actor.progress = time.monotonic()
            yield i, value

    def publish(self, params: np.ndarray, version: int) -> None:
        self.store.publish.remote(params, version)
        self.latest = (params, version)

    def reply(self, worker: int, step: np.ndarray) -> None:
        self.store.reply.remote(worker, step)

    def hand_out(self, worker: int) -> None:
        """Keep it busy: sync, one job at the newest version; otherwise ``DEPTH`` jobs that pull the
        newest parameters from the store when they start (as an mp worker does)."""
        actor = self.actors[worker]
        if actor.in_flight == 0:
            actor.progress = time.monotonic()
        while actor.in_flight < (1 if self.synchronous else DEPTH):
            ref = actor.handle.job.remote(*self._sync_job()) if self.synchronous else actor.handle.job.remote()
            self._call(worker, ref)
            actor.in_flight += 1

    def busy_for(self, worker: int) -> float | None:
        actor = self.actors[worker]
        return time.monotonic() - actor.progress if actor.in_flight else None

    def failure_note(self, worker: int) -> str:
        return " (a Ray actor; see its output above)"

    def stop(self, worker: int, death: Death) -> dict[str, Any]:
        import ray

        actor = self.actors.pop(worker)
        for ref in actor.refs:
            self.pending.pop(ref, None)
        ray.kill(actor.handle, no_restart=True)
        return {"error": death.error} if death.kind == "died" else {"after_s": death.after_s}

    def close(self) -> None:
        """Kill every actor; shut down a Ray this run started."""
        import ray

        for actor in self.actors.values():
            with contextlib.suppress(Exception):  # best effort while stopping
                ray.kill(actor.handle, no_restart=True)
        if self.started_ray:
            ray.shutdown()

    def _call(self, worker: int, ref: Any) -> None:
        self.pending[ref] = worker
        self.actors[worker].refs.add(ref)

    def _sync_job(self) -> tuple[Any, int]:
        """A sync job's arguments: the newest parameters (put in the object store once per version)."""
        import ray

        params, version = self.latest
        if self.params_ref is None or self.params_ref[0] != version:
            self.params_ref = (version, ray.put(params))
        return self.params_ref[1], version


def run_ray(config: ExperimentConfig, scheme_name: str, hooks: RunHooks = NO_HOOKS, on_event: OnEvent | None = None,
            hang: tuple[int, int] | None = None) -> RunResult:
    """Train ``config.train.iterations`` server updates of ``scheme_name`` with Ray actors.

    ``on_event`` and ``hang`` as in ``mp.run_mp`` (``ready``, ``died`` and ``hung`` events carry
    the actor's pid once it is ready).
    """
    role = ServerRole(config, scheme_name, hooks, record=True)
    return supervise(role, Actors.start(config, role.scheme.synchronous), on_event, hang)
