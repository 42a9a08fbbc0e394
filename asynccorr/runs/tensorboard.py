"""A run's metrics as TensorBoard event files, in ``<run dir>/tensorboard/``.

Written live while a run trains (``train --tensorboard``: at every evaluation point, with the
metrics) or afterwards from the run's files (``asynccorr tensorboard PATH``). The writer is
``tensorboardX`` (the optional extra ``asynccorr[tensorboard]``), imported only here.

Every scalar's step is the server update. Its wall time is the update's **simulated** time,
so TensorBoard's "relative" axis shows simulated seconds (the figures' loss-vs-time axis).
Tags, per update (``metrics.csv``):

* ``loss/policy``, ``loss/value``;
* ``gradient_error/applied``, ``gradient_error/stale`` (before a correction), ``gradient_error/policy``;
* ``staleness/staleness``, ``staleness/residual`` (what a correction did not account for);
* ``norm/direction``, ``norm/correction``, ``norm/update``;
* ``throughput/updates_per_sim_s`` (updates so far / simulated time so far);
* every other column as ``metrics/<column>``;

and per evaluation (``eval.csv``) ``eval/<column>`` (``eval/rms_lateral``, the tracking error, ...).
Non-finite values (a column that does not apply to the scheme, such as ``importance_ratio`` for
a fresh gradient, or a diverged row) are left out: TensorBoard draws no point there.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asynccorr.errors import ConfigError

FOLDER = "tensorboard"
TAGS = {
    "policy_loss": "loss/policy", "value_loss": "loss/value",
    "grad_error": "gradient_error/applied", "stale_grad_error": "gradient_error/stale",
    "policy_grad_error": "gradient_error/policy",
    "staleness": "staleness/staleness", "residual_staleness": "staleness/residual",
    "direction_norm": "norm/direction", "correction_norm": "norm/correction", "update_norm": "norm/update",
}
SKIP = ("iteration", "time")  # the step and the wall time of every scalar
THROUGHPUT = "throughput/updates_per_sim_s"


def tag(column: str) -> str:
    """The TensorBoard tag of a ``metrics.csv`` column."""
    return TAGS.get(column, f"metrics/{column}")


def _writer_class() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError("TensorBoard output needs the tensorboardX package: pip install 'asynccorr[tensorboard]'"
                          ) from None
    return SummaryWriter


def check_available() -> None:
    """A one-line ``ConfigError`` now, before training, when the writer package is missing."""
    _writer_class()


def update_scalars(metrics: Mapping[str, np.ndarray], start: int = 0
                   ) -> list[tuple[str, float, int, float]]:
    """(tag, value, step, wall time) of every per-update scalar of rows ``start ..``."""
    steps = np.asarray(metrics["iteration"])
    times = np.asarray(metrics["time"]) if "time" in metrics else np.zeros(len(steps))
    out = []
    for i in range(start, len(steps)):
        step, when = int(steps[i]), float(times[i])
        out += [(tag(c), float(v[i]), step, when) for c, v in metrics.items() if c not in SKIP and np.isfinite(v[i])]
        if when > 0:
            out.append((THROUGHPUT, step / when, step, when))
    return out


def eval_scalars(evals: Mapping[str, Sequence[float]], metrics: Mapping[str, np.ndarray], start: int = 0
                 ) -> list[tuple[str, float, int, float]]:
    """(tag, value, step, wall time) of every evaluation of rows ``start ..`` (the wall time: the
    simulated time of that update, 0 before the first)."""
    steps = np.asarray(metrics.get("iteration", np.zeros(0)))
    times = np.asarray(metrics.get("time", np.zeros(len(steps))))
    out = []
    for i in range(start, len(evals["iteration"])):
        step = int(evals["iteration"][i])
        at = np.flatnonzero(steps == step)
        when = float(times[at[0]]) if at.size else 0.0
        out += [(f"eval/{c}", float(v[i]), step, when) for c, v in evals.items()
                if c != "iteration" and np.isfinite(v[i])]
    return out


class TensorBoardLog:
    """A run's event files, growing as its metrics do: the first ``write`` of this process replaces
    whatever the folder held (a resumed run rewrites its history once, so no step is there twice),
    each later one adds the rows and evaluations beyond those written."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.writer: Any = None
        self.rows = 0
        self.evals = 0

    def write(self, metrics: Mapping[str, np.ndarray], evals: Mapping[str, Sequence[float]]) -> None:
        if self.writer is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.writer = _writer_class()(logdir=str(self.folder), flush_secs=3600)
        n = len(np.asarray(metrics.get("iteration", ())))
        for name, value, step, when in (update_scalars(metrics, self.rows) + eval_scalars(evals, metrics, self.evals)):
            self.writer.add_scalar(name, value, step, walltime=when)
        self.writer.flush()
        self.rows, self.evals = n, len(evals.get("iteration", ()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def convert(run_dir: Path) -> Path:
    """Write the event files of a finished (or partial) run from its metrics.csv and eval.csv; the folder."""
    from asynccorr.runs.files import parse_run_dir_name
    from asynccorr.runs.read import load_run

    run_dir = Path(run_dir)
    parsed = parse_run_dir_name(run_dir.name)
    scheme, seed = parsed if parsed is not None else ("run", 0)
    run = load_run(run_dir, scheme, seed)
    log = TensorBoardLog(run_dir)
    try:
        log.write(run.metrics, run.evals or {"iteration": []})
    finally:
        log.close()
    return log.folder
