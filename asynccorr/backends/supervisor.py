"""The supervision loop of the real backends (``mp``, ``ray``): one server, N workers, faults healed.

``supervise(role, transport)`` runs a whole training run; a backend supplies only
its ``Transport`` (how a worker is started, how its messages, its ``Ready`` and its
death arrive, how parameters are published and jobs handed out, how it is killed).
The loop, in one place:

* **start**: ``theta_0`` is published, the N workers are spawned (event ``started``,
  with the ``pid`` where the transport knows it at once), and while they import and
  compile the server compiles its own update (``ServerRole.warm_up``) and evaluates
  the initial policy. Where the workers share a persistent compilation cache
  (``compile.cache``; a transport whose workers inherit this process's environment),
  the first worker starts alone and the others when it is ready
  (or was replaced before it got ready): the N workers compile the same programs,
  and started together each would compile them; after the first they load its
  executables from the cache (``compile_once``). The clock starts only when every
  worker is ready, so the run's training is the same either way.
* **ready**: each worker's ``Ready`` (event ``ready``, with its ``pid``). When every
  initial worker is ready the clock starts (``ServerRole.start_clock``: start-up is
  not training time), the log says ``training: all N workers ready`` and the workers
  are let go (``Transport.go``, then ``Transport.hand_out`` to each). A replacement
  that gets ready later is handed work at once.
* **messages**: every ``worker.Message`` goes to ``ServerRole.receive``; when the
  parameters changed the new version is published. Then work is handed out: an
  asynchronous scheme's worker gets its next job as its result comes in; ``sync``
  hands every ready worker a job when a new version exists (one direction per worker
  per version), and a worker whose direction came too late for its version (a
  replacement's first, say) and that has nothing in flight a job at the current one.
* **death**: the transport reports a worker whose process ended (``Death("died")``:
  a crash, SIGKILL, an actor error).
* **hang**: a worker not ready ``STARTUP_TIMEOUT`` seconds after its spawn, or whose
  current job has run longer than ``workers.timeout`` seconds
  (``Transport.busy_for``), is hung (``Death("hung", after_s=...)``).
* **replacement**: a dead or hung worker's complete messages not yet received are
  still applied (``Transport.drain``: valid directions at a real ``theta_i``, their
  staleness measured), it is stopped (``Transport.stop``), the event (``died`` or
  ``hung``, with its ``pid`` and the transport's fields) is recorded in
  ``RunResult.events`` and logged, and a fresh incarnation takes the same worker id.
  A worker that dies ``START_FAILURES`` times in a row before it is ready aborts the
  run with ``WorkerStartError`` (a bug or a broken environment, not a fault to heal).
* **checkpoints and resume**: at evaluation points when due, the server role's state and each
  worker's incarnation (``ServerRole.real_checkpoint``); a run continued from one
  (``hooks.resume``) restores the server and starts the workers as their next incarnations
  (fresh key streams: a real run continues, it is not re-run; its schedule says where, and
  ``backends.replay`` re-executes both parts).
* **Ctrl-C**: ``KeyboardInterrupt`` anywhere in the loop stops the run and raises
  ``protocol.TrainingInterrupted`` carrying every update recorded so far.
* **cleanup**: whatever ends the run (completion, divergence, Ctrl-C, an error),
  ``Transport.close`` stops every worker still running and releases what the
  transport holds.

Every event also goes to ``on_event`` as it happens (the CLI's ``--verbose`` log and
the tests read them).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from asynccorr.backends.protocol import RunResult, TrainingInterrupted, check_interrupt
from asynccorr.backends.server import ServerRole, log
from asynccorr.backends.worker import Message, Ready, WorkerSpec
from asynccorr.config import to_dict

STARTUP_TIMEOUT = 300.0  # seconds a new worker may take to start, import JAX and compile before it counts as hung
START_FAILURES = 3  # a worker that dies this many times in a row before getting ready aborts the run
POLL_S = 0.25  # the longest the loop waits for an arrival before it looks for hung workers


def compile_once(environ: Mapping[str, str]) -> bool:
    """Whether the workers started from here share a persistent compilation cache (``compile.cache``
    sets it in the environment they inherit), so that one worker's compile serves the others."""
    return bool(environ.get("JAX_COMPILATION_CACHE_DIR")) and environ.get("ASYNCCORR_JAX_CACHE") != "off"


OnEvent = Callable[[dict[str, Any]], None]


class WorkerStartError(RuntimeError):
    """A worker keeps failing during start-up (a bug or a broken environment, not a fault to heal)."""


class Death(NamedTuple):
    """Why a worker is replaced: ``died`` (the transport saw it end) or ``hung`` (the loop's timeouts)."""

    kind: str  # "died" | "hung"
    error: str | None = None  # died: the error that told (ray: the exception's name)
    after_s: float | None = None  # hung: seconds without progress


Arrival = tuple[int, Ready | Message | Death]  # (worker id, what came from or about it)


class Transport(ABC):
    """How one backend starts, feeds, hears from and stops its workers; ``supervise`` does the rest.

    Workers are named by their id (0 .. N-1); a replacement takes its predecessor's id,
    after ``stop``. ``name`` is the backend's (``mp``, ``ray``): its checkpoints say it.
    """

    name: str
    shares_cache: bool = True  # its workers inherit this process's environment, compilation cache included

    @abstractmethod
    def spawn(self, spec: WorkerSpec) -> int | None:
        """Start a worker for ``spec``; its pid when known now (else it comes with its ``Ready``)."""

    @abstractmethod
    def wait(self, timeout: float) -> Iterator[Arrival]:
        """What arrived within ``timeout`` seconds, oldest first; after a worker's ``Death``, nothing more
        of it in this call (what it left is for ``drain``)."""

    @abstractmethod
    def publish(self, params: np.ndarray, version: int) -> None:
        """Make ``(theta_k, k)`` the newest parameters the workers see."""

    def go(self) -> None:
        """Every initial worker is ready and the clock runs: let them start taking jobs."""

    def reply(self, worker: int, step: np.ndarray) -> None:
        """The update the server applied to ``worker``'s message, for its next job (the secant
        protocol's ``applied`` tangent); it reaches the worker with (before) its next ``hand_out``."""

    def hand_out(self, worker: int) -> None:
        """``worker`` may take work now: give it jobs where the transport pushes them (workers that pull
        their own jobs ignore this)."""

    @abstractmethod
    def busy_for(self, worker: int) -> float | None:
        """Seconds the ready ``worker`` has been on its current work without a result; None when idle."""

    def drain(self, worker: int) -> Iterator[Message]:
        """The complete messages a dead or hung ``worker`` sent that were not received yet."""
        return iter(())

    def failure_note(self, worker: int) -> str:
        """What to add to the ``WorkerStartError`` about ``worker``'s last failure."""
        return ""

    @abstractmethod
    def stop(self, worker: int, death: Death) -> dict[str, Any]:
        """Kill ``worker`` and forget it; the fields its ``died``/``hung`` event records besides its pid."""

    @abstractmethod
    def close(self) -> None:
        """Stop every worker still running and release everything (always called, once, at the end)."""


@dataclass
class _Worker:
    """The loop's view of one worker incarnation."""

    spec: WorkerSpec
    started: float  # time.monotonic() at spawn
    pid: int | None  # from the spawn, or from its Ready
    ready: bool = False


class Supervisor:
    """One run of the loop in the module docstring (use ``supervise``)."""

    def __init__(self, role: ServerRole, transport: Transport, on_event: OnEvent | None = None,
                 hang: tuple[int, int] | None = None, first_alone: bool | None = None) -> None:
        self.role, self.transport, self.on_event, self.hang = role, transport, on_event, hang
        if first_alone is None:
            first_alone = transport.shares_cache and compile_once(os.environ)
        self.first_alone = first_alone
        self.config_dict = to_dict(role.config)
        self.workers: dict[int, _Worker] = {}
        self.failures = dict.fromkeys(range(role.count), 0)  # consecutive deaths before ready, per worker
        self.dead: dict[int, Death] = {}  # this step's dead and hung, replaced at its end
        self.going = False
        self.waiting: list[int] = []  # workers whose start waits for the first one's compile
        self.first = dict.fromkeys(range(role.count), 0)  # each worker's first incarnation in this run
        if role.hooks.resume is not None:
            self.first = role.restore_real(role.hooks.resume, transport.name)
        role.snapshot = lambda: role.real_checkpoint(transport.name)

    def run(self) -> RunResult:
        """Train to the end (or to divergence); Ctrl-C raises ``TrainingInterrupted``."""
        interrupted = False
        try:
            self._start()
            while not self.role.done:
                self._step()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.transport.close()
        if interrupted:
            raise TrainingInterrupted(self.role.result("interrupted")) from None
        return self.role.result()

    # ------------------------------------------------------------------ the loop

    def _start(self) -> None:
        self.transport.publish(self.role.params, self.role.version)
        first = 1 if self.first_alone else self.role.count
        self.waiting = list(range(first, self.role.count))
        for i in range(first):
            self._spawn(i, self.first[i])
        self.role.warm_up()
        self.role.evaluate_initial()

    def _step(self) -> None:
        """Take what arrives within ``POLL_S``, then replace the dead and the hung."""
        check_interrupt()
        self.dead = {}
        self._receive()
        if self.role.done:
            return
        for i, worker in self.workers.items():
            if i not in self.dead and (hung := self._hung(i, worker)) is not None:
                self.dead[i] = hung
        dead, self.dead = self.dead, {}
        for i, death in dead.items():
            self._replace(i, death)

    def _receive(self) -> None:
        """Hand each arrival to its handler, until the run is done; deaths are noted."""
        for i, arrival in self.transport.wait(POLL_S):
            if isinstance(arrival, Death):
                self.dead[i] = arrival
            elif isinstance(arrival, Ready):
                self._ready(i, arrival)
            elif isinstance(arrival, Message):
                self._message(i, arrival)
            if self.role.done:
                return

    def _release(self) -> None:
        """Start the workers that waited for the first one (its programs are in the cache now)."""
        waiting, self.waiting = self.waiting, []
        for i in waiting:
            self._spawn(i, self.first[i])

    def _ready(self, i: int, ready: Ready) -> None:
        worker = self.workers[i]
        worker.ready, worker.pid = True, ready.pid
        self._event("ready", i, pid=ready.pid)
        self._release()
        if self.going:
            self.transport.hand_out(i)
        elif len(self._ready_workers()) == self.role.count:
            self.going = True
            self.role.start_clock()
            self.transport.go()
            log.info("training: all %d workers ready", self.role.count)
            for j in self._ready_workers():
                self.transport.hand_out(j)

    def _message(self, i: int, msg: Message) -> None:
        changed = self._apply(msg)
        if self.role.done:
            return
        if not self.role.scheme.synchronous:
            self.transport.hand_out(i)  # its next job
        elif changed:  # sync: a new version, a job for every ready worker
            for j in self._ready_workers():
                self.transport.hand_out(j)
        elif self._behind(i, msg):  # sync: its direction came too late for its round
            self.transport.hand_out(i)

    def _behind(self, i: int, msg: Message) -> bool:
        """Sync: ``i`` has nothing in flight and its last job was for an older version than the server's.

        A replacement handed a job at ``v`` just before the round at ``v`` completed without it is
        never handed one at ``v + 1`` otherwise (the new version's hand-out found it busy): with
        nothing in flight the hang check cannot fire and the round waits for it forever.
        """
        return msg.version < self.role.version and self.transport.busy_for(i) is None

    def _apply(self, msg: Message) -> bool:
        """The message to the server role; a new version is published. True when it changed."""
        start = time.perf_counter()
        changed = self.role.receive(msg)
        if changed and not self.role.done:
            self.transport.publish(self.role.params, self.role.version)
        if msg.worker in self.role.replies:
            self.transport.reply(msg.worker, self.role.replies.pop(msg.worker))
        if changed:
            self.role.record_server_time(time.perf_counter() - start)
        return changed

    def _ready_workers(self) -> list[int]:
        """The workers that are ready and not dead."""
        return [i for i, w in self.workers.items() if w.ready and i not in self.dead]

    # ------------------------------------------------------------------ faults

    def _hung(self, i: int, worker: _Worker) -> Death | None:
        """Start-up beyond ``STARTUP_TIMEOUT``, or a job beyond ``workers.timeout``."""
        if worker.ready:
            age, limit = self.transport.busy_for(i), self.role.config.workers.timeout
        else:
            age, limit = time.monotonic() - worker.started, STARTUP_TIMEOUT
        return Death("hung", after_s=round(age, 1)) if age is not None and age > limit else None

    def _replace(self, i: int, death: Death) -> None:
        """Apply what it completed, stop it, record the event, spawn its next incarnation."""
        worker = self.workers[i]
        self.failures[i] = 0 if worker.ready else self.failures[i] + 1
        if self.failures[i] >= START_FAILURES:
            raise WorkerStartError(f"worker {i} failed {self.failures[i]} times in a row before it was ready"
                                   f"{self.transport.failure_note(i)}")
        for msg in self.transport.drain(i):
            if self.role.done:
                break
            self._apply(msg)
        fields = self.transport.stop(i, death)
        del self.workers[i]
        self._event(death.kind, i, pid=worker.pid, **fields)
        self._spawn(i, worker.spec.incarnation + 1)
        self._release()  # the first worker did not get ready: the others need not wait for it

    # ------------------------------------------------------------------ workers and events

    def _spawn(self, i: int, incarnation: int) -> None:
        hang_at = self.hang[1] if self.hang is not None and self.hang[0] == i else 0
        spec = WorkerSpec(self.config_dict, self.role.scheme.name, i, incarnation, hang_at)
        self.role.incarnations[i] = incarnation
        pid = self.transport.spawn(spec)
        self.workers[i] = _Worker(spec, time.monotonic(), pid)
        self._event("started", i, **({} if pid is None else {"pid": pid}), incarnation=incarnation)

    def _event(self, kind: str, i: int, **fields: Any) -> None:
        self.role.event(kind, i, **fields)
        if self.on_event is not None:
            self.on_event(self.role.events[-1])


def supervise(role: ServerRole, transport: Transport, on_event: OnEvent | None = None,
              hang: tuple[int, int] | None = None, first_alone: bool | None = None) -> RunResult:
    """Run ``role``'s training with the workers of ``transport`` (the loop of the module docstring).

    ``on_event`` sees every worker event as it happens. ``hang = (worker, job)`` is a test
    hook: the first incarnation of that worker hangs forever on that job (1-based).
    ``first_alone``: start the first worker alone and the others once it is ready (default: where
    the transport's workers share this process's compilation cache, ``compile_once``).
    """
    return Supervisor(role, transport, on_event, hang, first_alone).run()
