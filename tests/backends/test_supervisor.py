"""Specification of the real backends' supervision loop (``supervisor.supervise``) on a fake transport.

The workers are plain records driven by a script (no processes, no Ray); the server is a
real ``ServerRole`` on a tiny config. Each ``wait`` plays the script's next step; once the
script is played the workers are healthy (those starting get ready, every job in flight
returns) until the run ends, and a run with nothing left to wait for fails as stalled.
The fake pushes jobs as the Ray transport does: ``hand_out`` gives an idle worker one job
at the newest published version.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from realworkers import tiny_config

from asynccorr.backends.protocol import RunResult, TrainingInterrupted
from asynccorr.backends.server import ServerRole
from asynccorr.backends.supervisor import (
    START_FAILURES,
    Arrival,
    Death,
    Transport,
    WorkerStartError,
    compile_once,
    supervise,
)
from asynccorr.backends.worker import Message, Ready, WorkerSpec

TIMEOUT = 5.0  # workers.timeout of every run here
MAX_POLLS = 200  # a run that waits more often than this does not end


@dataclass
class FakeWorker:
    """One incarnation: its pid, whether it is ready, its jobs and what it left behind."""

    spec: WorkerSpec
    pid: int
    ready: bool = False
    jobs: deque[int] = field(default_factory=deque)  # versions of the jobs handed out, not returned
    left: list[Message] = field(default_factory=list)  # complete messages not received (for drain)
    busy_s: float = 0.0  # how long its current job has run


Instruction = Callable[["FakeTransport"], Iterator[Arrival]]


class FakeTransport(Transport):
    """Scripted in-process workers; every call the loop makes is logged (``log``)."""

    name = "fake"

    def __init__(self, role: ServerRole, script: list[list[Instruction]]) -> None:
        self.role, self.script = role, deque(script)
        self.workers: dict[int, FakeWorker] = {}
        self.log: list[str] = []
        self.clock: list[bool] = []  # whether the role's clock ran at each log entry
        self.published: list[tuple[int, np.ndarray]] = []
        self.jobs: list[tuple[int, int, int]] = []  # (worker, incarnation, version) of every job handed out
        self.stopped: list[tuple[int, Death]] = []
        self.polls = 0

    def note(self, entry: str) -> None:
        self.log.append(entry)
        self.clock.append(self.role.t0 is not None)

    # ------------------------------------------------------------------ the Transport

    def spawn(self, spec: WorkerSpec) -> int | None:
        self.workers[spec.worker] = FakeWorker(spec, pid=1000 + 10 * spec.worker + spec.incarnation)
        self.note(f"spawn {spec.worker}#{spec.incarnation}")
        return None  # the pid comes with its Ready

    def wait(self, timeout: float) -> Iterator[Arrival]:
        self.polls += 1
        assert self.polls <= MAX_POLLS, "the run does not end"
        for instruction in self.script.popleft() if self.script else self.healthy():
            yield from instruction(self)

    def publish(self, params: np.ndarray, version: int) -> None:
        self.published.append((version, np.array(params)))
        self.note(f"publish {version}")

    def go(self) -> None:
        self.note("go")

    def hand_out(self, worker: int) -> None:
        self.note(f"hand_out {worker}")
        w = self.workers[worker]
        if not w.jobs:  # one job at a time, at the newest version
            version = self.published[-1][0]
            w.jobs.append(version)
            self.jobs.append((worker, w.spec.incarnation, version))

    def busy_for(self, worker: int) -> float | None:
        w = self.workers[worker]
        return w.busy_s if w.jobs else None

    def drain(self, worker: int) -> Iterator[Message]:
        self.note(f"drain {worker}")
        yield from self.workers[worker].left

    def failure_note(self, worker: int) -> str:
        return " (fake exit code -9)"

    def stop(self, worker: int, death: Death) -> dict[str, Any]:
        self.note(f"stop {worker} {death.kind}")
        self.stopped.append((worker, death))
        del self.workers[worker]
        return {"exitcode": -9} if death.kind == "died" else {}

    def close(self) -> None:
        self.note("close")

    # ------------------------------------------------------------------ the workers

    def healthy(self) -> list[Instruction]:
        """After the script: every starting worker gets ready, every job in flight returns."""
        step = [ready(i) for i, w in self.workers.items() if not w.ready]
        step += [returns(i) for i, w in self.workers.items() for _ in w.jobs]
        assert step, f"the run stalled: no worker is starting or working; log: {self.log}"
        return step

    def message(self, worker: int, version: int) -> Message:
        """A direction-scheme result at ``version`` (a small step: the parameters move)."""
        n = self.role.params.size
        return Message(worker, version, version, np.full(n, 1e-3 * (worker + 1), np.float32), None, None,
                       1.0, 1.0, 0.01)


def ready(i: int) -> Instruction:
    """Worker ``i`` finished starting."""
    def play(fake: FakeTransport) -> Iterator[Arrival]:
        w = fake.workers[i]
        w.ready = True
        fake.note(f"ready {i}")
        yield i, Ready(i, w.pid)
    return play


def returns(i: int) -> Instruction:
    """Worker ``i``'s oldest job returns its message."""
    def play(fake: FakeTransport) -> Iterator[Arrival]:
        w = fake.workers[i]
        version = w.jobs.popleft()
        w.busy_s = 0.0
        fake.note(f"result {i}@{version}")
        yield i, fake.message(i, version)
    return play


def dies(i: int, leaving: bool = False) -> Instruction:
    """Worker ``i``'s process ends; ``leaving``: its jobs in flight were complete but not received."""
    def play(fake: FakeTransport) -> Iterator[Arrival]:
        w = fake.workers[i]
        if leaving:
            w.left = [fake.message(i, v) for v in w.jobs]
        w.jobs.clear()
        fake.note(f"died {i}")
        yield i, Death("died", error="Killed")
    return play


def busy(i: int, seconds: float) -> Instruction:
    """Worker ``i``'s current job has run ``seconds`` without a result."""
    def play(fake: FakeTransport) -> Iterator[Arrival]:
        fake.workers[i].busy_s = seconds
        return iter(())
    return play


def ctrl_c(fake: FakeTransport) -> Iterator[Arrival]:
    """The user presses Ctrl-C while the loop waits."""
    fake.note("ctrl-c")
    raise KeyboardInterrupt
    yield  # a generator, as every instruction


def transport(scheme: str, script: list[list[Instruction]], iterations: int = 4) -> FakeTransport:
    """Two fake workers of ``scheme`` on a real server role: ``script``, then healthy, to ``iterations``."""
    config = tiny_config("mp", train={"iterations": iterations, "eval_every": iterations},
                         workers={"measure_grad_error": False, "timeout": TIMEOUT})
    return FakeTransport(ServerRole(config, scheme), script)


def run(scheme: str, script: list[list[Instruction]], iterations: int = 4,
        first_alone: bool = False) -> tuple[RunResult, FakeTransport]:
    """Supervise ``transport(scheme, script, iterations)`` to its end (every worker started at once
    unless ``first_alone``)."""
    fake = transport(scheme, script, iterations)
    return supervise(fake.role, fake, first_alone=first_alone), fake


def events(result: RunResult, kind: str) -> list[dict[str, Any]]:
    """The run's events of ``kind``, without their time."""
    return [{k: v for k, v in e.items() if k != "time"} for e in result.events if e["kind"] == kind]


BOTH_READY = [ready(0), ready(1)]


# ----------------------------------------------------------------------------- start and messages


def test_the_clock_starts_and_the_workers_go_only_once_every_worker_is_ready():
    result, fake = run("async", [[ready(0)], [ready(1)]])
    assert fake.log[:7] == ["publish 0", "spawn 0#0", "spawn 1#0", "ready 0", "ready 1", "go", "hand_out 0"]
    clock = dict(zip(fake.log, fake.clock))
    assert not clock["ready 1"] and clock["go"]  # the last Ready arrived before the clock started
    assert fake.log.count("go") == 1
    assert all(e["time"] == 0.0 for e in result.events if e["kind"] == "ready")
    assert fake.jobs[:2] == [(0, 0, 0), (1, 0, 0)]  # the first jobs, after go
    assert result.status == "completed"


def test_with_a_shared_compilation_cache_the_first_worker_starts_alone_and_the_others_once_it_is_ready():
    """The others then load the first one's programs from the cache instead of compiling them too;
    the clock still starts when every worker is ready."""
    result, fake = run("async", [[ready(0)], [ready(1)]], first_alone=True)
    assert fake.log[:7] == ["publish 0", "spawn 0#0", "ready 0", "spawn 1#0", "ready 1", "go", "hand_out 0"]
    assert not dict(zip(fake.log, fake.clock))["ready 1"]
    assert fake.jobs[:2] == [(0, 0, 0), (1, 0, 0)] and result.status == "completed"


def test_a_first_worker_that_dies_before_it_is_ready_does_not_hold_the_others_back():
    result, fake = run("async", [[dies(0)], [ready(1)], [ready(0)]], first_alone=True)
    assert fake.log[:6] == ["publish 0", "spawn 0#0", "died 0", "drain 0", "stop 0 died", "spawn 0#1"]
    assert fake.log[6] == "spawn 1#0"
    assert result.status == "completed" and [e["worker"] for e in events(result, "died")] == [0]


@pytest.mark.parametrize("shares_cache", [True, False])
def test_by_default_the_first_worker_starts_alone_where_the_transports_workers_share_the_cache(
        shares_cache, monkeypatch):
    """A joined Ray cluster's actors do not inherit this process's cache (``shares_cache`` False):
    there the workers start together."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/cache")
    monkeypatch.delenv("ASYNCCORR_JAX_CACHE", raising=False)
    fake = transport("async", [BOTH_READY])
    fake.shares_cache = shares_cache
    supervise(fake.role, fake)
    assert (fake.log.index("spawn 1#0") > fake.log.index("ready 0")) is shares_cache


@pytest.mark.parametrize(("environ", "expected"), [
    ({"JAX_COMPILATION_CACHE_DIR": "/cache"}, True),
    ({"JAX_COMPILATION_CACHE_DIR": "/cache", "ASYNCCORR_JAX_CACHE": "off"}, False),
    ({}, False),
])
def test_the_first_worker_starts_alone_only_where_the_workers_share_a_compilation_cache(environ, expected):
    assert compile_once(environ) is expected


def test_every_message_goes_to_the_server_and_each_new_version_is_published_before_the_next_job():
    result, fake = run("async", [BOTH_READY])
    assert fake.role.received == 4
    m = result.metrics
    np.testing.assert_array_equal(m["iteration"], [1, 2, 3, 4])
    np.testing.assert_array_equal(m["worker"], [0, 1, 0, 1])
    np.testing.assert_array_equal(m["staleness"], [0, 1, 1, 1])  # worker 1's first job was at version 0
    assert [v for v, _ in fake.published] == [0, 1, 2, 3]  # the final version ends the run unpublished
    assert all(not np.array_equal(a, b) for (_, a), (_, b) in zip(fake.published, fake.published[1:]))
    first = fake.log.index("result 0@0")
    assert fake.log[first:first + 3] == ["result 0@0", "publish 1", "hand_out 0"]
    assert fake.jobs[2] == (0, 0, 1)  # its next job is at the version just published


# ----------------------------------------------------------------------------- faults


def test_a_dead_worker_is_recorded_with_its_pid_and_replaced_after_its_complete_messages_are_applied():
    result, fake = run("async", [BOTH_READY, [returns(0)], [dies(0, leaving=True)]], iterations=6)
    assert result.status == "completed"
    died = fake.log.index("died 0")
    assert fake.log[died:died + 5] == ["died 0", "drain 0", "publish 2", "stop 0 died", "spawn 0#1"]
    np.testing.assert_array_equal(result.metrics["worker"][:2], [0, 0])  # its drained message is update 2
    assert result.metrics["staleness"][1] == 0
    assert events(result, "died") == [{"iteration": 2, "kind": "died", "worker": 0, "pid": 1000, "exitcode": -9}]
    started = events(result, "started")
    assert {"iteration": 2, "kind": "started", "worker": 0, "incarnation": 1} in started
    assert [e["pid"] for e in events(result, "ready") if e["worker"] == 0] == [1000, 1001]
    assert any(job[:2] == (0, 1) for job in fake.jobs)  # the replacement works


def test_a_worker_busy_longer_than_the_timeout_is_hung_stopped_and_replaced_and_a_slow_one_is_not():
    result, fake = run("async", [BOTH_READY, [returns(0), busy(0, TIMEOUT - 1), busy(1, TIMEOUT + 1)]])
    assert result.status == "completed"
    assert fake.stopped == [(1, Death("hung", after_s=TIMEOUT + 1))]
    hung = fake.log.index("stop 1 hung")
    assert fake.log[hung + 1] == "spawn 1#1"
    assert events(result, "hung") == [{"iteration": 1, "kind": "hung", "worker": 1, "pid": 1010}]
    assert [e["pid"] for e in events(result, "ready") if e["worker"] == 1] == [1010, 1011]


def test_a_worker_dying_start_failures_times_before_ready_aborts_the_run_and_still_closes():
    fake = transport("async", [[dies(0)] for _ in range(START_FAILURES)])
    with pytest.raises(WorkerStartError, match=rf"worker 0 failed {START_FAILURES} times in a row before it was "
                                               r"ready \(fake exit code -9\)"):
        supervise(fake.role, fake)
    assert fake.log.count("close") == 1 and fake.log[-1] == "close"
    assert [e for e in fake.log if e.startswith("spawn 0")] == [f"spawn 0#{k}" for k in range(START_FAILURES)]


def test_ctrl_c_raises_training_interrupted_with_the_updates_so_far_and_still_closes():
    fake = transport("async", [BOTH_READY, [returns(0)], [ctrl_c]])
    with pytest.raises(TrainingInterrupted) as err:
        try:
            supervise(fake.role, fake)
        except KeyboardInterrupt:  # escaping, it would stop the whole pytest session
            pytest.fail("Ctrl-C escaped supervise as a KeyboardInterrupt")
    assert err.value.result.status == "interrupted"
    np.testing.assert_array_equal(err.value.result.metrics["iteration"], [1])
    assert fake.log[-2:] == ["ctrl-c", "close"]


# ----------------------------------------------------------------------------- sync


def test_sync_a_replacement_whose_first_direction_came_too_late_gets_a_job_at_the_new_version():
    """Worker 0 sends its direction for version 0 and dies; its replacement is handed a job at 0;
    worker 1 completes round 0 without it. The replacement's direction for 0 changes nothing,
    yet it must get a job at 1, or round 1 waits for it forever."""
    script = [BOTH_READY, [returns(0)], [dies(0)], [ready(0)], [returns(1)], [returns(0)]]
    result, fake = run("sync", script, iterations=3)
    assert result.status == "completed"
    np.testing.assert_array_equal(result.metrics["iteration"], [1, 2, 3])
    replacement = [v for w, inc, v in fake.jobs if (w, inc) == (0, 1)]
    assert replacement == [0, 1, 2]
    assert len(set(fake.jobs)) == len(fake.jobs)  # one job per worker per version


def test_sync_a_worker_waiting_for_its_round_gets_no_second_job_at_the_same_version():
    result, fake = run("sync", [BOTH_READY, [returns(0)], [returns(1)]], iterations=2)
    assert result.status == "completed"
    assert fake.jobs == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing, on purpose
def test_a_ctrl_c_whose_exception_a_gc_callback_swallowed_is_raised_again_by_the_run_loops():
    import gc

    from asynccorr.backends import protocol

    def callback(phase, info):  # as JAX's: Python ignores what a gc callback raises
        if phase == "start":
            protocol.interrupt_handler(2, None)

    gc.callbacks.append(callback)
    try:
        gc.collect()  # the KeyboardInterrupt is raised inside the callback and dropped
    finally:
        gc.callbacks.remove(callback)
    try:
        with pytest.raises(KeyboardInterrupt):
            protocol.check_interrupt()
    finally:
        protocol.clear_interrupt()  # as every command does when it starts
    protocol.check_interrupt()  # nothing pending: nothing raised
