"""Results read back: one run directory as a ``Run``, an experiment folder as its runs.

The layout is ``runs.run``'s. Reading never writes and never imports matplotlib, so
``api.load``, the summaries and the figures share it. ``Run.diverged`` is the one
reading of "diverged" on disk: the run says so (``"status": "diverged"`` in
``meta.json``) or one of its rows is what ``backends.protocol.first_diverged_row`` flags
with the run's own ``train.divergence_loss``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asynccorr.backends.protocol import diverged, first_diverged_row
from asynccorr.runs.files import parse_run_dir_name, read_csv
from asynccorr.schemes.registry import SEQUENTIAL, display_order


class ResultsError(ValueError):
    """An experiment folder or one of its runs cannot be read (missing, empty or corrupt files)."""


@dataclass(frozen=True, eq=False)
class Run:
    """One run directory, loaded (columns as float arrays; missing optional files as empty dicts).

    Compared by identity: its fields hold arrays.
    """

    scheme: str
    seed: int
    path: Path
    metrics: dict[str, np.ndarray]
    evals: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.metrics["iteration"])

    @property
    def workers(self) -> int | None:
        """The experiment's worker count (``workers.count`` of ``config.json``); None for the sequential
        reference, which trains one worker whatever the config says, or when the config does not say."""
        section = self.config.get("workers")
        count = section.get("count") if isinstance(section, dict) else None
        return count if isinstance(count, int) and self.scheme != SEQUENTIAL else None

    @property
    def diverged_at(self) -> int | None:
        """The server update at which the run was declared diverged (``meta.json``), if any."""
        value = self.meta.get("diverged_at")
        if self.meta.get("status") == "diverged" and isinstance(value, int) and not isinstance(value, bool):
            return value
        return None

    @property
    def divergence_bound(self) -> float:
        """The run's ``train.divergence_loss`` (``config.json``); no bound if it does not say."""
        train = self.config.get("train")
        value = train.get("divergence_loss") if isinstance(train, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.inf

    @property
    def valid_rows(self) -> int:
        """Rows before the divergence point: before the first row that ``first_diverged_row`` flags
        (with the run's own bound) and before the update ``diverged_at`` (all rows if neither)."""
        bad = first_diverged_row(self.metrics, self.divergence_bound)
        n = self.rows if bad is None else bad
        if self.diverged_at is not None:
            past = self.metrics["iteration"] >= self.diverged_at
            n = min(n, int(np.argmax(past))) if past.any() else n
        return n

    @property
    def diverged(self) -> bool:
        """``backends.protocol.diverged`` of the run's ``meta.json`` status and metrics."""
        return diverged(self.meta.get("status"), self.metrics, self.divergence_bound)


def load_runs(folder: Path) -> list[Run]:
    """Every ``<scheme>-seed<k>`` directory of ``folder``, in scheme order then seed."""
    folder = Path(folder)
    if not folder.exists():
        raise ResultsError(f"experiment folder {folder} does not exist")
    if not folder.is_dir():
        raise ResultsError(f"{folder} is not a directory")
    runs = [load_run(p, *name) for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (name := parse_run_dir_name(p.name))]
    if not runs:
        raise ResultsError(f"no run directories (<scheme>-seed<k>/) in {folder}")
    rank = {s: i for i, s in enumerate(display_order([r.scheme for r in runs]))}
    return sorted(runs, key=lambda r: (rank[r.scheme], r.seed))


def load_run(path: Path, scheme: str, seed: int) -> Run:
    metrics = _read_table(path / "metrics.csv", required=True)
    if not metrics or len(next(iter(metrics.values()))) == 0:
        raise ResultsError(f"{path / 'metrics.csv'} has no rows")
    missing = [c for c in ("iteration", "policy_loss") if c not in metrics]
    if missing:
        raise ResultsError(f"{path / 'metrics.csv'} lacks column(s) {', '.join(missing)}")
    return Run(scheme, seed, path, metrics, _read_table(path / "eval.csv"), _read_table(path / "trajectory.csv"),
               _read_json(path / "meta.json"), _read_json(path / "config.json"))


def _read_table(path: Path, required: bool = False) -> dict[str, np.ndarray]:
    if not path.is_file() or path.stat().st_size == 0:
        if required:
            raise ResultsError(f"{path} is {'empty' if path.is_file() else 'missing'}")
        return {}
    try:
        return read_csv(path)
    except (ValueError, OSError, csv.Error) as e:
        raise ResultsError(f"{path} is corrupt: {_one_line(e)}") from e


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise ResultsError(f"{path} is corrupt: {_one_line(e)}") from e
    return data if isinstance(data, dict) else {}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


UNFINISHED = ("interrupted", "running", "dead")  # statuses of a run drawn only as far as it got


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and parse_run_dir_name(path.name) is not None and (path / "metrics.csv").is_file()


def experiment_folders(root: Path) -> list[Path]:
    """The folders at or beneath ``root`` that hold run directories (``<scheme>-seed<k>/``), sorted."""
    root = Path(root)
    found = []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if any(part.startswith(".") or part == "figures" for part in folder.relative_to(root).parts):
            continue
        if not is_run_dir(folder) and any(is_run_dir(p) for p in folder.iterdir()):
            found.append(folder)
    return found
