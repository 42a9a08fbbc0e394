"""Run one training job and leave its results on disk.

The glue between the trainer (pure computation) and the results directory
layout ``results/<experiment>/<scheme>-seed<k>/``:

* ``config.json``   resolved experiment config
* ``meta.json``     versions, commit, host, backend, wall time, final summary
* ``metrics.csv``   one row per server update
* ``eval.csv``      periodic closed-loop tracking evaluation
* ``trajectory.csv`` final policy on the fixed scenario
* ``params.npy``    final flat parameter vector
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asynccorr.config import ExperimentConfig, to_dict
from asynccorr.evaluation import TrackingSummary
from asynccorr.results import atomic_write_text, prepare_run_dir, run_meta, write_csv, write_json
from asynccorr.trainer import EvalRecord, RunResult, train_sequential


def run_dir_for(results_root: Path, config: ExperimentConfig, scheme: str) -> Path:
    return Path(results_root) / config.name / f"{scheme}-seed{config.train.seed}"


def write_run(run_dir: Path, config: ExperimentConfig, result: RunResult, meta: dict) -> None:
    write_json(run_dir / "config.json", to_dict(config))
    write_csv(run_dir / "metrics.csv", {"iteration": result.metrics["iteration"],
                                        **{k: v for k, v in result.metrics.items() if k != "iteration"}})
    write_csv(run_dir / "eval.csv", {
        "iteration": [e.iteration for e in result.evals],
        **{field: [getattr(e.summary, field) for e in result.evals] for field in TrackingSummary._fields},
    })
    traj = result.trajectory
    columns = {name: np.asarray(getattr(traj, name)) for name in traj._fields if name != "action"}
    action = np.asarray(traj.action)
    for i in range(action.shape[1]):
        columns[f"action_{i}"] = action[:, i]
    write_csv(run_dir / "trajectory.csv", columns)
    buf = io.BytesIO()
    np.save(buf, result.params)
    tmp = run_dir / ".params.npy.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(run_dir / "params.npy")
    write_json(run_dir / "meta.json", meta)


def train_run(
    config: ExperimentConfig,
    results_root: Path,
    overwrite: bool = False,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
) -> tuple[Path, RunResult]:
    """Train with the sequential trainer and write the run directory; returns both."""
    run_dir = run_dir_for(results_root, config, "sequential")
    prepare_run_dir(run_dir, overwrite)
    start = time.perf_counter()
    result = train_sequential(config, on_chunk=on_chunk)
    wall = time.perf_counter() - start
    final = result.evals[-1].summary
    meta = run_meta("sequential", "sequential", config.train.seed,
                    {"wall_time_s": round(wall, 3), "final_tracking": final._asdict(),
                     "experiment": config.name})
    write_run(run_dir, config, result, meta)
    return run_dir, result
