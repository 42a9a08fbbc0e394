"""What the suite's profilers (``tests/compileprof.py``, ``tests/cpuprof.py``) share: each pytest process
writes its per-test figures into a folder at the end of its session, and the controller adds them up."""

from __future__ import annotations

import collections
import json
import os
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
