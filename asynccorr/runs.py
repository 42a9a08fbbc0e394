"""Run training jobs and leave their results on disk.

The glue between the trainers (pure computation) and the results layout::

    results/<experiment>/<scheme>-seed<k>/
        config.json     resolved experiment config (with the scheme and seed of this run)
        meta.json       versions, commit, host, backend, wall time, summary
        metrics.csv     one row per server update
        eval.csv        periodic closed-loop tracking evaluation
        trajectory.csv  final policy on the fixed scenario
        params.npy      final flat parameter vector
    results/<experiment>/summary.csv, summary.md   written by ``compare``
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asynccorr.config import ExperimentConfig, to_dict, with_overrides
from asynccorr.evaluation import TrackingSummary
from asynccorr.results import (
    RunExistsError,
    atomic_write_text,
    prepare_run_dir,
    run_meta,
    write_csv,
    write_json,
)
from asynccorr.schemes import SEQUENTIAL, get_scheme
from asynccorr.trainer import EvalRecord, RunResult, TrainingInterrupted, train_sequential

SUMMARY_FIELDS = (
    "scheme", "seed", "workers", "iterations", "sim_time", "mean_staleness", "max_staleness",
    "final_policy_loss", "grad_error_mean", "grad_error_final", "stale_grad_error_mean",
    "rms_lateral", "left_road", "finite", "wall_time_s",
)


def run_dir_for(results_root: Path, config: ExperimentConfig, scheme: str) -> Path:
    return Path(results_root) / config.name / f"{scheme}-seed{config.train.seed}"


def train(config: ExperimentConfig, scheme: str,
          on_chunk: Callable[[int, EvalRecord], None] | None = None) -> RunResult:
    """Train one run in memory: the sequential reference or a scheme on the configured backend."""
    if scheme == SEQUENTIAL:
        return train_sequential(config, on_chunk=on_chunk)
    get_scheme(scheme)
    backend = config.workers.backend
    if backend == "mp":
        from asynccorr.backends.mp import run_mp

        return run_mp(config, scheme, on_chunk=on_chunk)
    if backend == "ray":
        from asynccorr.backends.ray_backend import run_ray

        return run_ray(config, scheme, on_chunk=on_chunk)
    from asynccorr.backends.sim import run_sim

    return run_sim(config, scheme, on_chunk=on_chunk)


def _mean(values: np.ndarray) -> float:
    """Mean, NaN for no values (a run interrupted before its first update)."""
    return float(np.mean(values)) if len(values) else float("nan")


def summarize_run(scheme: str, config: ExperimentConfig, result: RunResult, wall: float) -> dict[str, Any]:
    """One row of the comparison table."""
    m = result.metrics
    n = len(m["iteration"])
    tail = max(1, n // 10)
    final: TrackingSummary = result.evals[-1].summary
    staleness = m.get("staleness", np.zeros(n))
    grad_error = m.get("grad_error", np.zeros(n))
    stale_error = m.get("stale_grad_error", np.zeros(n))
    return {
        "scheme": scheme,
        "seed": config.train.seed,
        "workers": 1 if scheme == SEQUENTIAL else config.workers.count,
        "iterations": n,
        "sim_time": float(m["time"][-1]) if "time" in m and n else float("nan"),
        "mean_staleness": _mean(staleness),
        "max_staleness": int(np.max(staleness)) if n else 0,
        "final_policy_loss": _mean(m["policy_loss"][-tail:]),
        "grad_error_mean": _mean(grad_error),
        "grad_error_final": _mean(grad_error[-tail:]),
        "stale_grad_error_mean": _mean(stale_error),
        "rms_lateral": final.rms_lateral,
        "left_road": final.left_road,
        "finite": bool(np.all(np.isfinite(result.params))),
        "wall_time_s": round(wall, 3),
    }


def write_run(run_dir: Path, config: ExperimentConfig, scheme: str, result: RunResult, meta: dict) -> None:
    write_json(run_dir / "config.json", {"scheme": scheme, **to_dict(config)})
    write_csv(run_dir / "metrics.csv", result.metrics)
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
    scheme: str,
    results_root: Path,
    overwrite: bool = False,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
) -> tuple[Path, RunResult, dict[str, Any]]:
    """Train one run and write its directory; returns (run dir, result, summary row)."""
    run_dir = run_dir_for(results_root, config, scheme)
    prepare_run_dir(run_dir, overwrite)
    start = time.perf_counter()
    interrupted = None
    try:
        result = train(config, scheme, on_chunk=on_chunk)
    except TrainingInterrupted as exc:  # Ctrl-C: keep every metric computed so far, then stop
        result, interrupted = exc.result, exc
    wall = time.perf_counter() - start
    summary = summarize_run(scheme, config, result, wall)
    backend = "sequential" if scheme == SEQUENTIAL else config.workers.backend
    meta = run_meta(backend, scheme, config.train.seed, {
        "experiment": config.name, "wall_time_s": round(wall, 3), "summary": summary,
        "final_tracking": result.evals[-1].summary._asdict(), "status": result.status,
        **({"workers_replaced": sum(e["kind"] in ("died", "hung") for e in result.events),
            "worker_events": list(result.events)} if result.events else {}),
    })
    write_run(run_dir, config, scheme, result, meta)
    if interrupted is not None:
        raise KeyboardInterrupt(str(interrupted)) from interrupted
    return run_dir, result, summary


def planned_runs(config: ExperimentConfig, schemes: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, ExperimentConfig]]:
    """(scheme, config-with-seed) for every run of a comparison, validated up front."""
    from asynccorr.backends.sim import check_scheme_fits
    from asynccorr.trainer import build

    learner, _ = build(config)
    for scheme in schemes:
        if scheme != SEQUENTIAL:
            check_scheme_fits(get_scheme(scheme), learner.num_params, config)
            if config.workers.backend != "sim":
                from asynccorr.backends.serving import check_real_backend_scheme

                check_real_backend_scheme(scheme, config.workers.backend)
    return [(s, with_overrides(config, train={"seed": seed})) for s in schemes for seed in seeds]


def check_no_existing_runs(results_root: Path, plan: Sequence[tuple[str, ExperimentConfig]]) -> None:
    for scheme, cfg in plan:
        d = run_dir_for(results_root, cfg, scheme)
        if d.exists() and any(d.iterdir()):
            raise RunExistsError(f"run directory {d} already exists (pass --overwrite to replace it)")


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scheme: mean and standard deviation over seeds of the numeric summary fields."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        group = [r for r in rows if r["scheme"] == scheme]
        agg: dict[str, Any] = {"scheme": scheme, "seeds": len(group)}
        for key in ("final_policy_loss", "grad_error_mean", "grad_error_final", "rms_lateral", "mean_staleness",
                    "sim_time", "wall_time_s"):
            values = np.array([r[key] for r in group], np.float64)
            agg[key] = float(np.mean(values))
            agg[key + "_std"] = float(np.std(values)) if len(values) > 1 else 0.0
        agg["left_road"] = sum(bool(r["left_road"]) for r in group)
        agg["finite"] = all(bool(r["finite"]) for r in group)
        out.append(agg)
    return out


def write_summary(folder: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """summary.csv (one row per run) and summary.md (per scheme, mean ± std over seeds)."""
    write_csv(folder / "summary.csv", {k: [r[k] for r in rows] for k in SUMMARY_FIELDS})
    lines = [f"# {title}", "",
             "| scheme | seeds | final policy loss | gradient error (mean) | gradient error (last 10%) "
             "| RMS lateral [m] | left road | mean staleness | sim time [s] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def pm(a: dict[str, Any], key: str, fmt: str) -> str:
        v, s = a[key], a[key + "_std"]
        if not math.isfinite(v):
            return "nan"
        return f"{v:{fmt}} ± {s:{fmt}}" if a["seeds"] > 1 else f"{v:{fmt}}"

    for a in aggregate(rows):
        lines.append(f"| {a['scheme']} | {a['seeds']} | {pm(a, 'final_policy_loss', '.3f')} | "
                     f"{pm(a, 'grad_error_mean', '.3g')} | {pm(a, 'grad_error_final', '.3g')} | "
                     f"{pm(a, 'rms_lateral', '.4f')} | {a['left_road']}/{a['seeds']} | "
                     f"{pm(a, 'mean_staleness', '.2f')} | {pm(a, 'sim_time', '.2f')} |")
    atomic_write_text(folder / "summary.md", "\n".join(lines) + "\n")
