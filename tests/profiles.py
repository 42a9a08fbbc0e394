"""What the suite's profilers (``tests/compileprof.py``, ``tests/cpuprof.py``) share: each pytest process
writes its per-test figures into a folder at the end of its session, and the controller adds them up."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from pathlib import Path


def save(folder: Path, prefix: str, stats: dict[str, list[float]]) -> None:
    """This pytest process's per-test figures (the xdist worker's name in the file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json").write_text(json.dumps(stats))


def gather(folder: Path, prefix: str) -> dict[str, list[float]]:
    """Every process's per-test figures."""
    stats: dict[str, list[float]] = {}
    for path in folder.glob(f"{prefix}-*.json"):
        stats.update(json.loads(path.read_text()))
    return stats


def by_file(stats: dict[str, list[float]]) -> dict[str, list[float]]:
    """The per-test figures summed per test file."""
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * len(next(iter(stats.values()))))
    for test, values in stats.items():
        for i, value in enumerate(values):
            files[test.split("::")[0]][i] += value
    return dict(files)


def report(write: Callable[[str], None], stats: dict[str, list[float]], row: Callable[[list[float]], str],
           weight: Callable[[list[float]], float], tests_heading: str, count: int = 15) -> None:
    """The files, then the tests, that weigh most: one ``row(figures)`` line each, its name after it."""
    for name, values in sorted(by_file(stats).items(), key=lambda kv: -weight(kv[1]))[:count]:
        write(f"  {row(values)}  {name}")
    write(tests_heading)
    for name, values in sorted(stats.items(), key=lambda kv: -weight(kv[1]))[:count]:
        write(f"  {row(values)}  {name}")
