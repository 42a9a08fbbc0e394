"""Replay: a real run's recorded schedule re-executed in one process, message for message.

A real run (``mp``, ``ray``) records its schedule (``backends.schedule``): which worker
incarnation's which job was received when, at which parameter versions, and what the
server did with it. ``run_replay`` re-executes it with the same components as every
backend (Sample Factory's serial mode): one ``worker.WorkerCompute`` per worker
incarnation (its key stream and sampler re-derived from the run's seed, its worker id
and incarnation, exactly as the real worker's), the same ``server.ServerRole``, and the
messages handed to ``ServerRole.receive`` in the recorded order at the recorded server
times. Each job is computed at the parameters of its recorded versions (the server's
own, as published: every version a job still needs is kept), a worker's jobs in their
job order (a worker whose later job arrived first -- ``ray`` keeps two in flight -- has
its earlier one computed first and held), with the recorded ``compute_time`` and, for
``look-ahead``, the recorded pull moment and lead. Nothing is timed or drawn: the
interleaving is the recorded one.

Replayed under the recorded scheme, the run is the real run again: the same updates in
the same order on the same inputs, so (with the real workers' numerics, see
``docs/replay.md``) the same parameters and metrics, bit for bit. Replayed under
another scheme it is a what-if on the very same interleaving: the same workers pull the
same versions and their messages arrive in the same order, while what they compute and
what the server applies follow the new scheme (``check_replayable`` says which schemes
a schedule can drive).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Self

import numpy as np

from asynccorr.backends.protocol import NO_HOOKS, RunHooks, RunResult, TrainingInterrupted, check_interrupt
from asynccorr.backends.schedule import Entry, Resume, Schedule, ScheduleError, server_xla_flags
from asynccorr.backends.server import ServerRole, log
from asynccorr.backends.worker import Message, WorkerCompute, WorkerSpec
from asynccorr.config import ExperimentConfig, to_dict
from asynccorr.schemes.registry import PULL, Scheme, get_scheme, resolve


def check_replayable(schedule: Schedule, scheme: Scheme, config: ExperimentConfig) -> None:
    """A ``ScheduleError`` unless ``schedule`` can drive ``scheme``: the same rounds (sync or
    not), and a mid-job pull only where the recorded workers made one (its version and moment
    come from the record); a secant ``applied`` tangent only from ``mp`` (on ``ray`` the reply a
    job reads depends on timing the schedule does not hold)."""
    recorded = get_scheme(schedule.scheme)
    if recorded.synchronous != scheme.synchronous:
        kind = "synchronous rounds" if recorded.synchronous else "asynchronous messages"
        raise ScheduleError(f"a schedule of {recorded.name} ({kind}) cannot drive {scheme.name}")
    if PULL in scheme.phases and PULL not in recorded.phases:
        raise ScheduleError(f"{scheme.name} pulls mid-job and the {recorded.name} workers of this schedule did "
                            "not: replay it under a scheme without a worker-side pull (async, modify@server, "
                            "learner, ...)")
    if scheme.protocol == "look-ahead" and recorded.protocol != "look-ahead":
        raise ScheduleError(f"{scheme.name} aims at a predicted point from its own pull times; only a "
                            "look-ahead schedule holds them")
    if scheme.protocol == "secant" and config.schemes.secant_tangent == "applied" and schedule.backend != "mp":
        raise ScheduleError(f"a {schedule.backend} schedule cannot drive the secant 'applied' tangent exactly "
                            "(which reply a job read depends on timing it does not hold); record on mp")


class _Jobs:
    """The replay's workers in the process that computes their jobs: one ``WorkerCompute`` per live
    incarnation (built on one shared learner), each job given its recorded inputs."""

    def __init__(self, config: dict[str, Any], scheme: str, learner: Any) -> None:
        self.config, self.scheme, self.learner = config, scheme, learner
        self.computes: dict[int, WorkerCompute] = {}
        self.clock = 0.0  # the recorded pull moment of the job being computed (look-ahead)

    def job(self, entry: Entry, theta_i: np.ndarray, theta_k: np.ndarray, reply: np.ndarray | None) -> Message:
        compute = self.computes.get(entry.worker)
        if compute is None or compute.spec.incarnation != entry.incarnation:
            spec = WorkerSpec(self.config, self.scheme, entry.worker, entry.incarnation)
            compute = self.computes[entry.worker] = WorkerCompute(spec, self.learner, clock=lambda: self.clock)
        if compute.wants_reply:
            compute.reply(np.zeros_like(theta_i) if reply is None else reply)
        self.clock, compute.lead = entry.pulled, entry.lead
        msg = compute.job(theta_i, entry.version, lambda: (theta_k, entry.version_k))
        return msg._replace(compute_time=entry.compute_time, phase_times=entry.phase_times)


def _host_main(conn: Any, config: dict[str, Any], scheme: str, parent: int) -> None:
    """The worker host process: jobs in, messages out, until the pipe closes."""
    import os
    import signal

    from asynccorr.backends.mp import die_with_parent
    from asynccorr.config import from_dict
    from asynccorr.learners.build import build

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    if os.getppid() != parent:
        return
    jobs = _Jobs(config, scheme, build(from_dict(ExperimentConfig, config))[0])
    with conn:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            try:
                conn.send(("message", jobs.job(*request)))
            except Exception as exc:  # noqa: BLE001 -- reported by the replay's process, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))


class WorkerHost:
    """A process that computes the replay's jobs with the real workers' numerics: spawned as an ``mp``
    worker is, with one XLA/BLAS thread (``worker.WORKER_ENV``: XLA's single-threaded CPU path
    compiles other kernels than its multi-threaded one, which round differently), so every message
    is bit for bit the one the real worker sent. Close it (a context manager)."""

    def __init__(self, config: ExperimentConfig, scheme: str) -> None:
        import multiprocessing as mp
        import os

        from asynccorr.backends.mp import spawn_environment

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_host_main, args=(child, to_dict(config), scheme, os.getpid()),
                                   name="asynccorr-replay-workers", daemon=True)
        with spawn_environment():
            self.process.start()
        child.close()

    def job(self, entry: Entry, theta_i: np.ndarray, theta_k: np.ndarray, reply: np.ndarray | None) -> Message:
        self.conn.send((entry, np.asarray(theta_i), np.asarray(theta_k), reply))
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the replay's worker process ended (exit code {self.process.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"the replay's worker process failed: {value}")
        return value

    def close(self) -> None:
        self.conn.close()
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Workers:
    """The replay's workers as the server sees them: each worker's jobs computed in job order on
    demand (by the ``WorkerHost``), messages held until their turn, replies kept per worker."""

    def __init__(self, role: ServerRole, schedule: Schedule, host: WorkerHost) -> None:
        self.role, self.host = role, host
        self.held: dict[tuple[int, int, int], Message] = {}
        self.entry_of = {(e.worker, e.incarnation, e.job): e for e in schedule.entries if isinstance(e, Entry)}
        self.done: dict[int, tuple[int, int]] = {}  # worker -> (incarnation, jobs computed)
        self.replies: dict[int, np.ndarray] = {}  # secant "applied": each worker's reply slot (mp's shared row)

    def message(self, entry: Entry, params: dict[int, np.ndarray]) -> Message:
        """The message of ``entry``'s job, computing its worker's jobs up to it."""
        key = (entry.worker, entry.incarnation, entry.job)
        if key not in self.held:
            incarnation, computed = self.done.get(entry.worker, (-1, 0))
            if incarnation > entry.incarnation or (incarnation == entry.incarnation and computed >= entry.job):
                raise ScheduleError(f"the schedule has worker {entry.worker}'s job {entry.job} (incarnation "
                                    f"{entry.incarnation}) out of order: it is inconsistent")
            start = computed + 1 if incarnation == entry.incarnation else 1
            for job in range(start, entry.job + 1):
                recorded = self.entry_of.get((entry.worker, entry.incarnation, job))
                if recorded is None:
                    raise ScheduleError(f"the schedule has worker {entry.worker}'s job {entry.job} (incarnation "
                                        f"{entry.incarnation}) but not its job {job}: it is inconsistent")
                self.held[(entry.worker, entry.incarnation, job)] = self._job(recorded, params)
                self.done[entry.worker] = (entry.incarnation, job)
        return self.held.pop(key)

    def _job(self, entry: Entry, params: dict[int, np.ndarray]) -> Message:
        for version in (entry.version, entry.version_k):
            if version not in params:
                raise ScheduleError(f"worker {entry.worker}'s job {entry.job} used version {version}, which this "
                                    f"replay's server never published (it has {self.role.version})")
        return self.host.job(entry, params[entry.version], params[entry.version_k], self.replies.get(entry.worker))

    def resume(self) -> None:
        """The run continued from a checkpoint: every worker starts again as a new incarnation (the
        jobs of the first part not applied by then are gone, and so are the replies)."""
        self.held.clear()
        self.replies.clear()

    def replied(self, worker: int) -> None:
        """After a message of ``worker`` was received: the server's reply, if any, in its slot."""
        if worker in self.role.replies:
            self.replies[worker] = self.role.replies.pop(worker)


def _last_use(entries: tuple[Entry | Resume, ...]) -> dict[int, int]:
    """Per version: the index of the last entry whose job used it (older versions are then freed)."""
    last: dict[int, int] = defaultdict(int)
    for n, e in enumerate(entries):
        if isinstance(e, Entry):
            last[e.version] = last[e.version_k] = n
    return last


def _part_ends(entries: tuple[Entry | Resume, ...], stop: int) -> list[int]:
    """Per entry: the update count its part of the run ends at (the next resume's, else ``stop``)."""
    ends, end = [], stop
    for e in reversed(entries):
        ends.append(end)
        if isinstance(e, Resume):
            end = e.iteration
    return ends[::-1]


def run_replay(config: ExperimentConfig, scheme_name: str, schedule: Schedule,
               hooks: RunHooks = NO_HOOKS) -> RunResult:
    """Re-execute ``schedule`` under ``scheme_name`` (the recorded scheme: the run again; another:
    a what-if on the same interleaving). The run ends where the recorded one did: its update
    count reached, a divergence, or the schedule's end (an interrupted run: ``interrupted``)."""
    role = ServerRole(config, resolve(scheme_name, config.schemes.protocol), hooks)
    check_replayable(schedule, role.scheme, config)
    recorded_flags = schedule.header.get("xla_flags", "")
    if recorded_flags != server_xla_flags():
        log.warning("the recorded server ran with XLA_FLAGS=%r, this process has %r: its updates may round "
                    "differently", recorded_flags, server_xla_flags())
    with WorkerHost(config, role.scheme.name) as host:
        return _replay(role, schedule, _Workers(role, schedule, host))


def _replay(role: ServerRole, schedule: Schedule, workers: _Workers) -> RunResult:
    """The loop of ``run_replay``: each entry's message to the server role, in order."""
    config = role.config
    params = {0: role.params}
    last_use = _last_use(schedule.entries)
    stop = int(schedule.end.get("updates", config.train.iterations)) if schedule.end.get("end") == "interrupted" \
        else config.train.iterations
    ends = _part_ends(schedule.entries, stop)
    role.start_clock()
    role.evaluate_initial()
    try:
        for n, entry in enumerate(schedule.entries):
            if isinstance(entry, Resume):
                if role.iteration != entry.iteration:
                    raise ScheduleError(f"the schedule resumes after update {entry.iteration}, but its part "
                                        f"before that reaches update {role.iteration}: it is inconsistent")
                workers.resume()
                continue
            if role.done or role.iteration >= ends[n]:
                if ends[n] == stop:
                    break
                continue  # received after the checkpoint the run continued from: not part of the run
            check_interrupt()
            msg = workers.message(entry, params)
            if role.receive(msg, at=entry.at):
                params[role.version] = role.params
            workers.replied(entry.worker)
            for version in [v for v in params if v < role.version and last_use.get(v, -1) <= n]:
                del params[version]
    except KeyboardInterrupt:
        raise TrainingInterrupted(role.result("interrupted")) from None
    return role.result() if role.done else role.result("interrupted")
