"""The ``ray`` backend: the worker and server roles of ``mp`` on a Ray cluster.

Ray is the distributed engine (``pip install 'asynccorr[ray]'``); this module
only maps the roles onto it:

* each worker is an actor (``num_cpus=1``) wrapping ``worker.WorkerCompute``;
  ``ready()`` compiles and returns ``worker.Ready``, ``job()`` pulls the newest
  ``(theta_i, i)`` from the store and returns one ``worker.Message`` (two jobs are
  queued per actor, so it starts the next one at once, as an ``mp`` worker does;
  ``sync``: ``job(theta_k, k)``, one per version);
* a ``ParameterStore`` actor holds the newest ``(theta_k, k)``: the server
  publishes every version to it and a ``modify`` worker pulls from it before
  its Hessian-vector product (the worker-side protocol of ``worker.py``);
* the server is this (driver) process: ``ray.wait`` on the outstanding jobs,
  ``serving.ServerRole`` applies the messages and each worker gets its next job.

``workers.address`` joins an existing cluster (``"auto"``, ``"host:6379"``; the
``asynccorr`` package is shipped to it with ``py_modules``); ``""`` starts a
local Ray, which is shut down at the end. Ray already running in this process
(``ray.init`` by the caller) is used as it is and left running.

Fault tolerance: a job whose actor died raises ``RayActorError`` from
``ray.get``; an actor with jobs in flight that returned nothing for ``workers.timeout``
seconds is hung and is ``ray.kill``-ed. Either way the event is logged and recorded and a
fresh actor takes the worker id. Results of jobs that completed before the
death are still applied; its jobs in flight are lost. Ctrl-C kills every actor,
shuts down a Ray it started and raises ``trainer.TrainingInterrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynccorr.backends.serving import ServerRole, log
from asynccorr.backends.worker import Message, Ready, WorkerCompute, WorkerSpec, worker_env
from asynccorr.config import ConfigError, ExperimentConfig, to_dict
from asynccorr.trainer import EvalRecord, RunHooks, RunResult, TrainingInterrupted

DEPTH = 2  # asynchronous schemes: jobs queued per actor, so it pulls its next job's parameters itself, at once
STARTUP_TIMEOUT = 300.0  # seconds a new actor may take to start and compile before it counts as hung
START_FAILURES = 3  # an actor that dies this many times in a row before getting ready aborts the run


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
        return self.compute.job(np.asarray(theta), version, pull)


class ParameterStore:
    """The newest ``(theta_k, k)`` the server published."""

    def __init__(self) -> None:
        self.params: Any = None
        self.version = -1

    def publish(self, params: Any, version: int) -> None:
        if version > self.version:
            self.params, self.version = params, version

    def latest(self) -> tuple[Any, int]:
        return self.params, self.version


def _runtime_env(address: str) -> dict[str, Any]:
    """Thread limits for every Ray worker process, and this copy of ``asynccorr`` importable there."""
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
    common = {"runtime_env": _runtime_env(address), "logging_level": logging.WARNING, "log_to_driver": True,
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
class _Slot:
    actor: Any
    spec: WorkerSpec
    started: float  # time.monotonic() at creation
    ready: bool = False
    in_flight: int = 0  # jobs submitted and not returned
    progress: float = 0.0  # time.monotonic() of the last result (or of the first job): hang detection
    refs: set = field(default_factory=set)


def run_ray(
    config: ExperimentConfig,
    scheme_name: str,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
    hooks: RunHooks | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    hang: tuple[int, int] | None = None,
) -> RunResult:
    """Train ``config.train.iterations`` server updates of ``scheme_name`` with Ray actors.

    ``on_event`` and ``hang`` as in ``mp.run_mp`` (``ready`` events carry the actor's pid).
    """
    role = ServerRole(config, scheme_name, hooks or RunHooks(on_chunk=on_chunk))
    count = config.workers.count
    started_ray = start_ray(config.workers.address, max(count, os.cpu_count() or 1))
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < count:
        if started_ray:
            ray.shutdown()
        raise ConfigError(f"workers.count = {count} needs {count} CPUs (one actor each); "
                          f"the Ray cluster has {cpus:g}")

    worker_cls = ray.remote(num_cpus=1, max_restarts=0)(WorkerActor)
    store_cls = ray.remote(num_cpus=0)(ParameterStore)
    config_dict = to_dict(config)
    slots: dict[int, _Slot] = {}
    pending: dict[Any, tuple[int, str]] = {}  # object ref -> (worker, "ready" | "job")
    failures = dict.fromkeys(range(count), 0)
    going = False
    params_ref: tuple[int, Any] | None = None

    def event(kind: str, i: int, **fields: Any) -> None:
        role.event(kind, i, **fields)
        if on_event is not None:
            on_event(role.events[-1])

    def spawn(i: int, incarnation: int) -> None:
        spec = WorkerSpec(config_dict, scheme_name, i, incarnation,
                          hang[1] if hang is not None and hang[0] == i else 0)
        actor = worker_cls.remote(spec, store)
        slots[i] = _Slot(actor, spec, time.monotonic())
        ref = actor.ready.remote()
        slots[i].refs.add(ref)
        pending[ref] = (i, "ready")
        event("started", i, incarnation=incarnation)

    def current_params() -> Any:
        nonlocal params_ref
        if params_ref is None or params_ref[0] != role.version:
            params_ref = (role.version, ray.put(role.params))
        return params_ref[1]

    def submit(i: int) -> None:
        """Keep worker i busy: sync, one job at the current version; otherwise DEPTH jobs that
        pull the newest parameters from the store when they start (as an mp worker does)."""
        slot = slots[i]
        if slot.in_flight == 0:
            slot.progress = time.monotonic()
        while slot.in_flight < (1 if role.scheme.synchronous else DEPTH):
            if role.scheme.synchronous:
                ref = slot.actor.job.remote(current_params(), role.version)
            else:
                ref = slot.actor.job.remote()
            slot.refs.add(ref)
            slot.in_flight += 1
            pending[ref] = (i, "job")

    def replace(i: int, kind: str, **fields: Any) -> None:
        slot = slots.pop(i)
        failures[i] = 0 if slot.ready else failures[i] + 1
        if failures[i] >= START_FAILURES:
            raise RuntimeError(f"ray worker {i} failed {failures[i]} times in a row before it was ready")
        for ref in slot.refs:
            pending.pop(ref, None)
        ray.kill(slot.actor, no_restart=True)
        event(kind, i, **fields)
        spawn(i, slot.spec.incarnation + 1)

    interrupted = False
    try:
        store = store_cls.remote()
        store.publish.remote(role.params, 0)
        for i in range(count):
            spawn(i, 0)
        role.warm_up()
        role.evaluate_initial()
        while not role.done:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
            if done:  # everything else that is ready too, oldest first
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                if ref not in pending:
                    continue  # its actor was replaced in this batch
                i, kind = pending.pop(ref)
                slot = slots[i]
                slot.refs.discard(ref)
                try:
                    value = ray.get(ref, timeout=30)
                except (RayActorError, GetTimeoutError) as exc:
                    replace(i, "died", error=type(exc).__name__)
                    continue
                if kind == "ready":
                    slot.ready = True
                    event("ready", i, pid=value.pid)
                    if not going and all(s.ready for s in slots.values()):
                        going = True
                        role.start_clock()
                        log.info("training: all %d workers ready", count)
                        for j in slots:
                            submit(j)
                    elif going:
                        submit(i)
                    continue
                slot.in_flight -= 1
                slot.progress = time.monotonic()
                changed = role.receive(value)
                if role.done:
                    break
                if changed:
                    store.publish.remote(role.params, role.version)
                if role.scheme.synchronous:
                    if changed:
                        for j, other in slots.items():
                            if other.ready and other.in_flight == 0:
                                submit(j)
                else:
                    submit(i)
            if role.done:
                break
            now = time.monotonic()
            for i, slot in list(slots.items()):
                if slot.ready and slot.in_flight and now - slot.progress > config.workers.timeout:
                    replace(i, "hung", after_s=round(now - slot.progress, 1))
                elif not slot.ready and now - slot.started > STARTUP_TIMEOUT:
                    replace(i, "hung", after_s=round(now - slot.started, 1))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for slot in slots.values():
            with contextlib.suppress(Exception):  # best effort while stopping
                ray.kill(slot.actor, no_restart=True)
        if started_ray:
            ray.shutdown()
    if interrupted:
        raise TrainingInterrupted(role.result("interrupted")) from None
    return role.result()
