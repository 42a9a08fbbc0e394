"""The ``mp`` backend's transport: real parallel workers as processes on this machine.

``supervisor.supervise`` runs the loop (start, ready, messages, death, hang,
replacement, Ctrl-C, cleanup); this module is how it reaches its workers:

* Workers are ``multiprocessing`` processes of the ``spawn`` context (JAX does
  not survive ``fork``), started with one XLA/BLAS thread each
  (``worker.WORKER_ENV``) so that N workers use N cores, with SIGINT ignored (the
  server handles Ctrl-C for everyone) and, on Linux, killed if the server dies.
* Server -> workers: one ``SharedBlock`` (``multiprocessing.shared_memory``):
  the flat float32 parameters under a seqlock with their version, a stop flag, a
  go flag and one heartbeat per worker. Workers pull their own jobs: they read
  ``(theta_k, k)`` whenever they start one (``sync``: once per version) and, for
  ``modify``, again before the Hessian-vector product.
* Workers -> server: one pipe per worker carrying ``worker.Ready`` and
  ``worker.Message`` (a pipe per worker, not a shared queue: a worker killed
  while writing can only corrupt its own channel, never block the others).
* Arrivals: the server (this process) waits on every pipe and every process
  sentinel at once; a sentinel, or a pipe that ends, is a death.
* Push-pull: a worker that sent a message waits for the server's reply before it
  pulls again -- the per-worker ``taken`` counter in the block, set by ``hand_out``
  once the server applied (and published) or dropped the message. At most one message
  per worker waits; one worker is the sequential learner (``sim`` models the same).
* Hang: a worker's heartbeat is the time its current job started (0 between jobs).
* Replacement: complete messages still in a dead worker's pipe are drained (a
  message cut off mid-write ends the drain); the process is terminated, then
  killed. Cleanup sets the stop flag, reaps every process and unlinks the shared
  memory.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import connection, shared_memory
from typing import Any

import numpy as np

from asynccorr.backends.protocol import NO_HOOKS, RunHooks, RunResult
from asynccorr.backends.server import ServerRole
from asynccorr.backends.supervisor import Arrival, Death, OnEvent, Transport, WorkerStartError, supervise
from asynccorr.backends.worker import Message, Ready, WorkerCompute, WorkerSpec, worker_env
from asynccorr.config import ExperimentConfig

__all__ = ["Processes", "SharedBlock", "WorkerStartError", "run_mp"]

_HEADER = 4  # int64: seqlock sequence, version, stop flag, go flag


class SharedBlock:
    """Parameters + version under a seqlock, a stop flag and per-worker heartbeats, in shared memory.

    One writer (the server): bump the sequence to odd, write the vector and
    version, bump to even. Readers copy the vector and retry while the sequence
    is odd or changed meanwhile, so they never see a half-written vector.
    """

    def __init__(self, shm: shared_memory.SharedMemory, workers: int, size: int, owner: bool,
                 replies: bool = False) -> None:
        self.shm, self.workers, self.size, self.owner = shm, workers, size, owner
        buf = shm.buf
        self.header = np.ndarray((_HEADER,), np.int64, buf, 0)
        self.heartbeat = np.ndarray((workers,), np.float64, buf, 8 * _HEADER)
        self.taken = np.ndarray((workers,), np.int64, buf, 8 * (_HEADER + workers))
        self.params = np.ndarray((size,), np.float32, buf, 8 * (_HEADER + 2 * workers))
        # secant "applied" tangents: row i is the update applied to worker i's last message, written
        # before its ``taken`` counter moves (the reply it waits for), so it reads a whole row
        self.replies = np.ndarray((workers if replies else 0, size), np.float32, buf,
                                  8 * (_HEADER + 2 * workers) + 4 * size)

    @staticmethod
    def nbytes(workers: int, size: int, replies: bool) -> int:
        return 8 * (_HEADER + 2 * workers) + 4 * size * (1 + (workers if replies else 0))

    @classmethod
    def create(cls, workers: int, size: int, replies: bool = False) -> SharedBlock:
        nbytes = cls.nbytes(workers, size, replies)
        block = cls(shared_memory.SharedMemory(create=True, size=nbytes), workers, size, owner=True, replies=replies)
        block.header[:] = 0
        block.heartbeat[:] = 0
        block.taken[:] = 0
        block.replies[:] = 0
        return block

    @classmethod
    def attach(cls, name: str, workers: int, size: int, replies: bool = False) -> SharedBlock:
        return cls(shared_memory.SharedMemory(name=name), workers, size, owner=False, replies=replies)

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
        del self.header, self.heartbeat, self.taken, self.params, self.replies
        self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()


# ----------------------------------------------------------------------------- worker process


def die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies (no orphans)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(spec: WorkerSpec, shm_name: str, workers: int, size: int,
                 conn: connection.Connection, parent: int, replies: bool = False) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    if os.getppid() != parent:
        return
    block = SharedBlock.attach(shm_name, workers, size, replies)
    try:
        compute = WorkerCompute(spec)
        compute.warm_up()
        conn.send(Ready(spec.worker, os.getpid()))
        while not block.going and not block.stopped and os.getppid() == parent:
            time.sleep(0.001)
        wait_new = compute.scheme.synchronous
        last, sent = -1, 0
        while not block.stopped and os.getppid() == parent:
            theta, version = block.read()
            if wait_new and version == last:
                time.sleep(0.001)  # sync: compute once per version
                continue
            block.heartbeat[spec.worker] = time.time()
            msg = compute.job(theta, version, block.read)
            block.heartbeat[spec.worker] = 0.0
            conn.send(msg)
            sent += 1
            while block.taken[spec.worker] < sent and not block.stopped and os.getppid() == parent:
                time.sleep(0.0002)  # push-pull: wait for the server's reply (its update published, or a drop)
            if compute.wants_reply:
                compute.reply(block.replies[spec.worker].copy())
            last = version
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the server closed our pipe: it is shutting down
    finally:
        with contextlib.suppress(Exception):
            block.close()


# ----------------------------------------------------------------------------- server side


@contextlib.contextmanager
def spawn_environment() -> Iterator[None]:
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
class _Process:
    process: Any  # multiprocessing.Process
    conn: connection.Connection  # the read end of its pipe


def _reap(process: Any, grace: float) -> None:
    if process.is_alive():
        process.terminate()
        process.join(grace)
    if process.is_alive():
        process.kill()
        process.join(1.0)
    with contextlib.suppress(Exception):
        process.close()


class Processes(Transport):
    """Worker processes, a pipe each, and the shared block (see the module docstring)."""

    name = "mp"

    def __init__(self, workers: int, size: int, replies: bool = False) -> None:
        self.ctx = mp.get_context("spawn")
        self.replies = replies
        self.block = SharedBlock.create(workers, size, replies)
        self.procs: dict[int, _Process] = {}
        self.received: dict[int, int] = {}  # messages received from each worker's current incarnation

    def spawn(self, spec: WorkerSpec) -> int | None:
        reader, writer = self.ctx.Pipe(duplex=False)
        self.received[spec.worker] = 0
        self.block.taken[spec.worker] = 0
        args = (spec, self.block.name, self.block.workers, self.block.size, writer, os.getpid(), self.replies)
        process = self.ctx.Process(target=_worker_main, args=args, name=f"asynccorr-worker-{spec.worker}",
                                   daemon=True)
        with spawn_environment():
            process.start()
        writer.close()
        self.procs[spec.worker] = _Process(process, reader)
        return process.pid

    def wait(self, timeout: float) -> Iterator[Arrival]:
        """Every pipe and every sentinel at once; an ended pipe or process is a death."""
        waitables: dict[Any, tuple[int, bool]] = {}  # pipe or sentinel -> (worker, is the sentinel)
        for i, proc in self.procs.items():
            waitables[proc.conn] = (i, False)
            waitables[proc.process.sentinel] = (i, True)
        dead: set[int] = set()
        for ready in connection.wait(list(waitables), timeout=timeout):
            i, exited = waitables[ready]
            if i in dead:
                continue  # the rest of its pipe is for drain
            if not exited:
                try:
                    arrival = self.procs[i].conn.recv()
                    if isinstance(arrival, Message):
                        self.received[i] += 1
                    yield i, arrival
                    continue
                except (EOFError, OSError):
                    pass
            dead.add(i)
            yield i, Death("died")

    def publish(self, params: np.ndarray, version: int) -> None:
        self.block.write(params, version)

    def go(self) -> None:
        self.block.go()

    def reply(self, worker: int, step: np.ndarray) -> None:
        self.block.replies[worker] = step

    def hand_out(self, worker: int) -> None:
        """The reply to its pushes so far: the worker may pull its next job's parameters."""
        self.block.taken[worker] = self.received.get(worker, 0)

    def busy_for(self, worker: int) -> float | None:
        beat = float(self.block.heartbeat[worker])
        return time.time() - beat if beat > 0 else None

    def drain(self, worker: int) -> Iterator[Message]:
        """Complete messages still in its pipe; a torn one ends the drain."""
        conn = self.procs[worker].conn
        with contextlib.suppress(EOFError, OSError, ValueError):
            while conn.poll():
                msg = conn.recv()
                if isinstance(msg, Message):
                    yield msg

    def failure_note(self, worker: int) -> str:
        return f" (last exit code {self.procs[worker].process.exitcode}); see its output above"

    def stop(self, worker: int, death: Death) -> dict[str, Any]:
        proc = self.procs.pop(worker)
        exitcode = proc.process.exitcode if death.kind == "died" else None
        _reap(proc.process, 0.5)
        proc.conn.close()
        self.block.heartbeat[worker] = 0.0
        return {"exitcode": exitcode}

    def close(self) -> None:
        """Stop flag, pipes closed, SIGTERM to all (1 s in all to exit), SIGKILL to the rest, block unlinked."""
        self.block.stop()
        procs = list(self.procs.values())
        for proc in procs:
            proc.conn.close()
        deadline = time.monotonic() + 1.0
        for proc in procs:
            proc.process.terminate()
        for proc in procs:
            proc.process.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            _reap(proc.process, 0.0)
        self.block.close()


def run_mp(config: ExperimentConfig, scheme_name: str, hooks: RunHooks = NO_HOOKS, on_event: OnEvent | None = None,
           hang: tuple[int, int] | None = None) -> RunResult:
    """Train ``config.train.iterations`` server updates of ``scheme_name`` with worker processes.

    ``on_event`` sees every worker event (``started``, ``ready``, ``died``,
    ``hung``, each with ``pid``). ``hang = (worker, job)`` is a test hook: the
    first process of that worker hangs forever on that job.
    """
    role = ServerRole(config, scheme_name, hooks, record=True)
    return supervise(role, Processes(role.count, role.params.size, role.wants_replies), on_event, hang)
