"""A pytest plugin that measures where the suite's XLA compile time goes, per test and per file.

    make install && sh tests/loopback.sh .venv/bin/python -m pytest -q -n 2 --dist loadgroup -p compileprof

Each pytest process (each xdist worker) listens to JAX's own duration events
(``jax.monitoring``): backend compiles (a program XLA compiled: not served by the session's
compilation cache) and tracing + lowering, charged to the test that was running. At the end the
controller adds up what every worker wrote into ``$ASYNCCORR_COMPILE_PROFILE`` (default: a
temporary folder) and prints the totals, the files and the tests that compiled most. Worker
processes the tests start (mp, Ray, the CLI in a subprocess) compile too and are not counted.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import pytest
from profiles import gather, report, save

_CURRENT: list[str | None] = [None]
_STATS: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0.0])  # compile s, compiles, trace s
_FOLDER = Path(os.environ.setdefault("ASYNCCORR_COMPILE_PROFILE", tempfile.mkdtemp(prefix="compileprof-")))


def _listener(event: str, duration: float, **_: object) -> None:
    test = _CURRENT[0]
    if test is None:
        return
    if event.endswith("backend_compile_duration"):
        _STATS[test][0] += duration
        _STATS[test][1] += 1
    elif event.endswith(("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration")):
        _STATS[test][2] += duration


def pytest_configure(config):
    """Listen from here, not at import: ``-p`` loads this before ``tests/conftest.py``, which must
    set the session's compilation cache before JAX is imported."""
    import jax

    jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT[0] = item.nodeid
    yield
    _CURRENT[0] = None


def pytest_sessionfinish(session):
    save(_FOLDER, "stats", dict(_STATS))


def pytest_terminal_summary(terminalreporter):
    stats = gather(_FOLDER, "stats")
    if not stats:
        return
    write = terminalreporter.write_line
    compile_s, compiles, trace_s = (sum(v[i] for v in stats.values()) for i in range(3))
    write(f"compile profile (pytest processes only): {compiles:.0f} XLA compiles, {compile_s:.0f} s compiling, "
          f"{trace_s:.0f} s tracing and lowering")
    report(write, stats, lambda v: f"{v[0]:7.1f} s {v[1]:5.0f} compiles {v[2]:6.1f} s trace", lambda v: v[0],
           "tests compiling most:", count=12)
