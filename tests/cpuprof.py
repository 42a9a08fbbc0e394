"""A pytest plugin that measures where the suite's CPU time goes, per test and per file.

    make install && sh tests/loopback.sh .venv/bin/python -m pytest -q -n 2 --dist loadgroup -p cpuprof

Each pytest process (each xdist worker) charges to the test that was running (setup, call and
teardown): its own CPU time (user + system, ``getrusage(RUSAGE_SELF)``), the CPU time of the child
processes it reaped meanwhile (``RUSAGE_CHILDREN``: mp workers, the CLI in a subprocess, the
replay's worker host, with their own children once reaped) and the wall time. At the end the
controller adds up what every worker wrote into ``$ASYNCCORR_CPU_PROFILE`` (default: a temporary
folder) and prints the totals, the files and the tests that used most. Processes nobody in the
suite reaps are not counted: Ray's daemons and actors (``tests/backends/test_ray.py`` alone, run
under a machine-wide CPU count, is the way to see those).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import pytest
from profiles import gather, report, save

_STATS: dict[str, list[float]] = {}  # test -> [own CPU s, children's CPU s, wall s]
_FOLDER = Path(os.environ.setdefault("ASYNCCORR_CPU_PROFILE", tempfile.mkdtemp(prefix="cpuprof-")))


def _clock() -> tuple[float, float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = _clock()
    yield
    _STATS[item.nodeid] = [b - a for a, b in zip(before, _clock())]


def pytest_sessionfinish(session):
    save(_FOLDER, "cpu", _STATS)


def pytest_terminal_summary(terminalreporter):
    stats = gather(_FOLDER, "cpu")
    if not stats:
        return
    write = terminalreporter.write_line
    own, children, wall = (sum(v[i] for v in stats.values()) for i in range(3))
    write(f"cpu profile: {own:.0f} s in the pytest processes, {children:.0f} s in the processes they reaped, "
          f"{wall:.0f} s of test wall time (Ray's daemons and actors not counted)")
    write("     own  children      wall  file")
    report(write, stats, lambda v: f"{v[0]:6.1f} s {v[1]:6.1f} s {v[2]:7.1f} s", lambda v: v[0] + v[1],
           "tests using most CPU:")
