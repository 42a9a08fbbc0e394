"""The ``mp`` backend: real parallel workers as processes on this machine.

* Workers are ``multiprocessing`` processes of the ``spawn`` context (JAX does
  not survive ``fork``), started with one XLA/BLAS thread each
  (``worker.WORKER_ENV``) so that N workers use N cores, with SIGINT ignored (the
  server handles Ctrl-C for everyone) and, on Linux, killed if the server dies.
* Server -> workers: one ``SharedBlock`` (``multiprocessing.shared_memory``):
  the flat float32 parameters under a seqlock with their version, a stop flag
  and one heartbeat per worker. Workers read ``(theta_k, k)`` whenever they
  start a job and, for ``modify``, again before the Hessian-vector product.
* Workers -> server: one pipe per worker carrying ``worker.Ready`` and
  ``worker.Message`` (a pipe per worker, not a shared queue: a worker killed
  while writing can only corrupt its own channel, never block the others).
* The server (this process) waits on every pipe and every process sentinel at
  once, applies messages with ``serving.ServerRole`` and publishes each new
  version to the block.

Fault tolerance: a worker whose process ends (crash, SIGKILL) is seen through
its sentinel at once; a worker whose current job is older than
``workers.timeout`` seconds (heartbeat) is killed. Either way it is logged,
recorded in ``RunResult.events`` and replaced by a fresh process with the same
worker id. Complete messages it sent before dying are still applied (they are
valid directions at a real ``theta_i``, and their staleness is measured); a
message cut off mid-write is dropped. Ctrl-C stops and reaps every worker,
unlinks the shared memory and raises ``trainer.TrainingInterrupted`` carrying
every metric so far.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import connection, shared_memory
from typing import Any

import numpy as np

from asynccorr.backends.serving import ServerRole, log
from asynccorr.backends.worker import Message, Ready, WorkerCompute, WorkerSpec, worker_env
from asynccorr.config import ExperimentConfig, to_dict
from asynccorr.trainer import EvalRecord, RunHooks, RunResult, TrainingInterrupted

STARTUP_TIMEOUT = 300.0  # seconds a new worker may take to import JAX and compile before it counts as hung
START_FAILURES = 3  # a worker that dies this many times in a row before getting ready aborts the run
_HEADER = 4  # int64: seqlock sequence, version, stop flag, go flag


class WorkerStartError(RuntimeError):
    """A worker process keeps failing during start-up (a bug or a broken environment, not a fault to heal)."""


class SharedBlock:
    """Parameters + version under a seqlock, a stop flag and per-worker heartbeats, in shared memory.

    One writer (the server): bump the sequence to odd, write the vector and
    version, bump to even. Readers copy the vector and retry while the sequence
    is odd or changed meanwhile, so they never see a half-written vector.
    """

    def __init__(self, shm: shared_memory.SharedMemory, workers: int, size: int, owner: bool) -> None:
        self.shm, self.workers, self.size, self.owner = shm, workers, size, owner
        buf = shm.buf
        self.header = np.ndarray((_HEADER,), np.int64, buf, 0)
        self.heartbeat = np.ndarray((workers,), np.float64, buf, 8 * _HEADER)
        self.params = np.ndarray((size,), np.float32, buf, 8 * (_HEADER + workers))

    @classmethod
    def create(cls, workers: int, size: int) -> SharedBlock:
        nbytes = 8 * (_HEADER + workers) + 4 * size
        block = cls(shared_memory.SharedMemory(create=True, size=nbytes), workers, size, owner=True)
        block.header[:] = 0
        block.heartbeat[:] = 0
        return block

    @classmethod
    def attach(cls, name: str, workers: int, size: int) -> SharedBlock:
        return cls(shared_memory.SharedMemory(name=name), workers, size, owner=False)

    @property
    def name(self) -> str:
        return self.shm.name

    def write(self, params: np.ndarray, version: int) -> None:
        self.header[0] += 1  # odd: write in progress
        self.params[:] = params
        self.header[1] = version
        self.header[0] += 1  # even: consistent

    def read(self) -> tuple[np.ndarray, int]:
        while True:
            seq = int(self.header[0])
            if seq & 1:
                continue
            params = self.params.copy()
            version = int(self.header[1])
            if int(self.header[0]) == seq:
                return params, version

    @property
    def stopped(self) -> bool:
        return bool(self.header[2])

    def stop(self) -> None:
        self.header[2] = 1

    @property
    def going(self) -> bool:
        return bool(self.header[3])

    def go(self) -> None:
        """Every initial worker is ready: start taking jobs (replacements find it set)."""
        self.header[3] = 1

    def close(self) -> None:
        # drop the numpy views first: a buffer with exported views cannot be closed
        del self.header, self.heartbeat, self.params
        self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()


# ----------------------------------------------------------------------------- worker process


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies (no orphans)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(spec: WorkerSpec, shm_name: str, workers: int, size: int,
                 conn: connection.Connection, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:
        return
    block = SharedBlock.attach(shm_name, workers, size)
    try:
        compute = WorkerCompute(spec)
        compute.warm_up()
        conn.send(Ready(spec.worker, os.getpid()))
        while not block.going and not block.stopped and os.getppid() == parent:
            time.sleep(0.001)
        wait_new = compute.scheme.synchronous
        last = -1
        while not block.stopped and os.getppid() == parent:
            theta, version = block.read()
            if wait_new and version == last:
                time.sleep(0.001)  # sync: compute once per version
                continue
            block.heartbeat[spec.worker] = time.time()
            msg = compute.job(theta, version, block.read)
            block.heartbeat[spec.worker] = 0.0
            conn.send(msg)
            last = version
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the server closed our pipe: it is shutting down
    finally:
        with contextlib.suppress(Exception):
            block.close()


# ----------------------------------------------------------------------------- server side


@contextlib.contextmanager
def _spawn_environment() -> Iterator[None]:
    """Worker thread limits in the environment a spawned child inherits; SIGINT ignored in it."""
    saved = {k: os.environ.get(k) for k in worker_env()}
    os.environ.update(worker_env({k: v for k, v in saved.items() if v is not None}))
    main = mp.current_process().name == "MainProcess" and _in_main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@dataclass
class _Slot:
    process: Any  # multiprocessing.Process
    conn: connection.Connection
    spec: WorkerSpec
    started: float  # time.monotonic() at spawn
    ready: bool = False


def _reap(process: Any, grace: float) -> None:
    if process.is_alive():
        process.terminate()
        process.join(grace)
    if process.is_alive():
        process.kill()
        process.join(1.0)
    with contextlib.suppress(Exception):
        process.close()


def run_mp(
    config: ExperimentConfig,
    scheme_name: str,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
    hooks: RunHooks | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    hang: tuple[int, int] | None = None,
) -> RunResult:
    """Train ``config.train.iterations`` server updates of ``scheme_name`` with worker processes.

    ``on_event`` sees every worker event (``started``, ``ready``, ``died``,
    ``hung``, each with ``pid``). ``hang = (worker, job)`` is a test hook: the
    first process of that worker hangs forever on that job.
    """
    role = ServerRole(config, scheme_name, hooks or RunHooks(on_chunk=on_chunk))
    ctx = mp.get_context("spawn")
    count, size = config.workers.count, role.params.size
    block = SharedBlock.create(count, size)
    block.write(role.params, 0)
    config_dict = to_dict(config)
    slots: dict[int, _Slot] = {}

    def event(kind: str, i: int, **fields: Any) -> None:
        role.event(kind, i, **fields)
        if on_event is not None:
            on_event(role.events[-1])

    def spawn(i: int, incarnation: int) -> None:
        reader, writer = ctx.Pipe(duplex=False)
        spec = WorkerSpec(config_dict, scheme_name, i, incarnation,
                          hang[1] if hang is not None and hang[0] == i else 0)
        process = ctx.Process(target=_worker_main, args=(spec, block.name, count, size, writer, os.getpid()),
                              name=f"asynccorr-worker-{i}", daemon=True)
        with _spawn_environment():
            process.start()
        writer.close()
        slots[i] = _Slot(process, reader, spec, time.monotonic())
        event("started", i, pid=process.pid, incarnation=incarnation)

    def handle(i: int, msg: Any) -> None:
        if isinstance(msg, Ready):
            slots[i].ready = True
            event("ready", i, pid=msg.pid)
            if not block.going and all(slot.ready for slot in slots.values()):
                role.start_clock()
                block.go()
                log.info("training: all %d workers ready", count)
        elif isinstance(msg, Message) and role.receive(msg):
            block.write(role.params, role.version)

    failures = dict.fromkeys(range(count), 0)  # consecutive deaths before ready, per worker

    def replace(i: int, kind: str, **fields: Any) -> None:
        slot = slots[i]
        failures[i] = 0 if slot.ready else failures[i] + 1
        if failures[i] >= START_FAILURES:
            raise WorkerStartError(f"worker {i} failed {failures[i]} times in a row before it was ready "
                                   f"(last exit code {slot.process.exitcode}); see its output above")
        del slots[i]
        # complete messages already in the pipe are applied; a torn one ends the drain
        with contextlib.suppress(EOFError, OSError, ValueError):
            while not role.done and slot.conn.poll():
                msg = slot.conn.recv()
                if isinstance(msg, Message) and role.receive(msg):
                    block.write(role.params, role.version)
        pid = slot.process.pid
        _reap(slot.process, 0.5)
        slot.conn.close()
        block.heartbeat[i] = 0.0
        event(kind, i, pid=pid, **fields)
        spawn(i, slot.spec.incarnation + 1)

    interrupted = False
    try:
        for i in range(count):
            spawn(i, 0)
        role.warm_up()
        role.evaluate_initial()
        while not role.done:
            waitables: dict[Any, tuple[int, str]] = {}
            for i, slot in slots.items():
                waitables[slot.conn] = (i, "conn")
                waitables[slot.process.sentinel] = (i, "exit")
            dead: dict[int, str] = {}
            for ready in connection.wait(list(waitables), timeout=0.25):
                i, what = waitables[ready]
                if i in dead:
                    continue
                if what == "exit":
                    dead[i] = "died"
                    continue
                try:
                    handle(i, slots[i].conn.recv())
                except (EOFError, OSError):
                    dead[i] = "died"
                if role.done:
                    break
            if role.done:
                break
            now = time.time()
            for i, slot in list(slots.items()):
                if i in dead:
                    continue
                beat = float(block.heartbeat[i])
                job_hung = slot.ready and beat > 0 and now - beat > config.workers.timeout
                start_hung = not slot.ready and time.monotonic() - slot.started > STARTUP_TIMEOUT
                if job_hung or start_hung:
                    dead[i] = "hung"
            for i, kind in dead.items():
                replace(i, kind, exitcode=slots[i].process.exitcode if kind == "died" else None)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        block.stop()
        for slot in slots.values():
            slot.conn.close()
        deadline = time.monotonic() + 1.0
        for slot in slots.values():
            slot.process.terminate()
        for slot in slots.values():
            slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in slots.values():
            _reap(slot.process, 0.0)
        block.close()
    if interrupted:
        raise TrainingInterrupted(role.result("interrupted")) from None
    return role.result()
