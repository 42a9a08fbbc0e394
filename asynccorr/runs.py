"""Run training jobs and leave their results on disk.

The glue between the trainers (pure computation) and the results layout::

    results/<experiment>/<scheme>-seed<k>/
        config.json     resolved experiment config (with the scheme and seed of this run)
        meta.json       versions, commit, host, backend, wall time (and "first_flush": the
                        wall-clock time of the first evaluation point), summary; "status":
                        "running" while training, then "completed", "diverged" (with
                        "diverged_at") or "interrupted"
        metrics.csv     one row per server update (new rows appended at every evaluation point)
        eval.csv        periodic closed-loop tracking evaluation (likewise)
        trajectory.csv  final policy on the fixed scenario
        params.npy      final flat parameter vector (of a diverged run: before the bad update)
        checkpoint/     the two latest checkpoints (``train --resume``)
    results/<experiment>/summary.csv, summary.md   written by ``compare``

Every file is replaced atomically, so a crash leaves complete files and loses at
most one evaluation interval of metrics; a run killed outright is continued from
its latest checkpoint with ``train --resume``; an interrupted comparison is
completed with ``compare --resume`` (``resume_plan``).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from asynccorr import locks, programs
from asynccorr.backends import BACKENDS, check_backend_runs, get_backend
from asynccorr.checkpoint import Checkpoint, CheckpointError, load_latest_checkpoint, save_checkpoint
from asynccorr.config import ConfigError, ExperimentConfig, to_dict, with_overrides
from asynccorr.evaluation import EvalRecord, TrackingSummary
from asynccorr.results import (
    CsvLog,
    RunExistsError,
    atomic_write_bytes,
    atomic_write_text,
    prepare_run_dir,
    run_dir_name,
    run_meta,
    write_csv,
    write_json,
)
from asynccorr.run_protocol import RunHooks, RunResult, TrainingInterrupted
from asynccorr.schemes import SCHEMES, SEQUENTIAL, get_scheme, label, resolve
from asynccorr.stats import final_window, mean_std, mean_std_text
from asynccorr.trainer import train_sequential

SUMMARY_FIELDS = (
    "scheme", "seed", "status", "diverged_at", "workers", "iterations", "sim_time", "mean_staleness",
    "mean_residual_staleness",
    "max_staleness", "final_policy_loss", "grad_error_mean", "grad_error_final", "stale_grad_error_mean",
    "rms_lateral", "left_road", "finite", "wall_time_s",
)
FINISHED = ("completed", "diverged")  # statuses of a run that has nothing left to do


class ResumeError(ValueError):
    """A run cannot be resumed (no run, no checkpoint, different config); the message says why."""


class RunFinished(Exception):
    """``--resume`` of a run that already completed or diverged: nothing to do."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after its partial results were written to ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; partial results in {run_dir}")
        self.run_dir = run_dir


def run_backend(config: ExperimentConfig, scheme: str) -> str:
    """What trains the run: ``"sequential"`` for the reference trainer, else ``workers.backend``."""
    return "sequential" if scheme == SEQUENTIAL else config.workers.backend


def resumable(config: ExperimentConfig, scheme: str) -> bool:
    """Whether a checkpoint of the run reproduces it bit for bit (the sequential trainer's always does)."""
    return scheme == SEQUENTIAL or get_backend(config.workers.backend).resumable


def run_dir_for(results_root: Path, config: ExperimentConfig, scheme: str) -> Path:
    return Path(results_root) / config.name / run_dir_name(scheme, config.train.seed)


def train(config: ExperimentConfig, scheme: str,
          on_chunk: Callable[[int, EvalRecord], None] | None = None, hooks: RunHooks | None = None) -> RunResult:
    """Train one run in memory: the sequential reference or a scheme on the configured backend."""
    hooks = hooks or RunHooks(on_chunk=on_chunk)
    if scheme != SEQUENTIAL:
        scheme = resolve(scheme, config.schemes.protocol)
        check_backend_runs(config.workers.backend, scheme)
    with programs.scope(config, scheme):  # its compiled programs are kept for the next run like it
        if scheme == SEQUENTIAL:
            return train_sequential(config, hooks=hooks)
        return get_backend(config.workers.backend).run_function()(config, scheme, hooks=hooks)


def _mean(values: np.ndarray) -> float:
    """Mean, NaN for no values (a run interrupted before its first update)."""
    return float(np.mean(values)) if len(values) else float("nan")


def summarize_run(scheme: str, config: ExperimentConfig, result: RunResult, wall: float) -> dict[str, Any]:
    """One row of the comparison table."""
    m = result.metrics
    n = len(m["iteration"]) if "iteration" in m else 0
    tail = final_window(n)
    final: TrackingSummary = result.evals[-1].summary
    staleness = m.get("staleness", np.zeros(n))
    grad_error = m.get("grad_error", np.zeros(n))
    stale_error = m.get("stale_grad_error", np.zeros(n))

    return {
        "scheme": scheme,
        "seed": config.train.seed,
        "status": result.status,
        "diverged_at": result.diverged_at,
        "workers": 1 if scheme == SEQUENTIAL else config.workers.count,
        "iterations": n,
        "sim_time": float(m["time"][-1]) if n and "time" in m else float("nan"),
        "mean_staleness": _mean(staleness),
        "mean_residual_staleness": _mean(m.get("residual_staleness", staleness)),
        "max_staleness": int(np.max(staleness)) if n else 0,
        # a diverged run has no final loss (its last rows are the blow-up itself)
        "final_policy_loss": _mean(m["policy_loss"][-tail:]) if n and result.status != "diverged" else float("nan"),
        "grad_error_mean": _mean(grad_error),
        "grad_error_final": _mean(grad_error[-tail:]),
        "stale_grad_error_mean": _mean(stale_error),
        "rms_lateral": final.rms_lateral,
        "left_road": final.left_road,
        "finite": bool(np.all(np.isfinite(result.params))),
        "wall_time_s": round(wall, 3),
    }


def write_eval(run_dir: Path, evals: Sequence[EvalRecord]) -> None:
    write_csv(run_dir / "eval.csv", {
        "iteration": [e.iteration for e in evals],
        **{field: [getattr(e.summary, field) for e in evals] for field in TrackingSummary._fields},
    })


def write_progress(run_dir: Path, metrics: dict[str, np.ndarray], evals: Sequence[EvalRecord],
                   log: CsvLog | None = None) -> None:
    """The metrics and evaluations so far (called at every evaluation point while training: the
    metrics through ``log``, which appends the new rows, and at the end in full)."""
    if log is None:
        write_csv(run_dir / "metrics.csv", metrics)
    else:
        log.write(metrics)
    write_eval(run_dir, evals)


def write_run(run_dir: Path, config: ExperimentConfig, scheme: str, result: RunResult, meta: dict) -> None:
    """Every file of a finished (or diverged, or interrupted) run; ``meta.json`` last."""
    write_json(run_dir / "config.json", config_record(config, scheme))
    write_progress(run_dir, result.metrics, result.evals)
    traj = result.trajectory
    columns = {name: np.asarray(getattr(traj, name)) for name in traj._fields if name != "action"}
    action = np.asarray(traj.action)
    for i in range(action.shape[1]):
        columns[f"action_{i}"] = action[:, i]
    write_csv(run_dir / "trajectory.csv", columns)
    buf = io.BytesIO()
    np.save(buf, result.params)
    atomic_write_bytes(run_dir / "params.npy", buf.getvalue())
    write_json(run_dir / "meta.json", meta)


def config_record(config: ExperimentConfig, scheme: str) -> dict[str, Any]:
    """What ``config.json`` holds: the scheme and the resolved config, as plain JSON values."""
    return json.loads(json.dumps({"scheme": scheme, **to_dict(config)}))


def first_difference(stored: Any, current: Any, prefix: str = "") -> str | None:
    """Dotted name of the first field where two config records differ (in the current record's order)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in stored if k not in current)]:
            name = f"{prefix}{key}"
            if key not in stored or key not in current:
                return name
            if (found := first_difference(stored[key], current[key], name + ".")) is not None:
                return found
        return None
    return None if stored == current else prefix.rstrip(".")


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_same_run(run_dir: Path, config: ExperimentConfig, scheme: str) -> dict[str, Any]:
    """Raise ``ResumeError`` unless ``run_dir`` holds a run of exactly this config and
    scheme (naming the first differing field); returns its ``meta.json`` (``{}`` if unreadable)."""
    stored = _read_json_dict(run_dir / "config.json")
    if stored is None:
        raise ResumeError(f"no run to resume in {run_dir} (no readable config.json)")
    current = config_record(config, scheme)
    if (field := first_difference(stored, current)) is not None:
        raise ResumeError(f"cannot resume {run_dir}: the config differs in {field} "
                          f"(stored {_lookup(stored, field)!r}, now {_lookup(current, field)!r})")
    return _read_json_dict(run_dir / "meta.json") or {}


def resume_checkpoint(run_dir: Path, config: ExperimentConfig, scheme: str,
                      on_skip: Callable[[str], None] | None = None) -> Checkpoint:
    """The checkpoint to continue ``run_dir`` from, after checking that it is the same run.

    Raises ``ResumeError`` (no run, a different config, no readable checkpoint) or
    ``RunFinished`` (the run completed or diverged: nothing to resume).
    """
    status = check_same_run(run_dir, config, scheme).get("status")
    if status in FINISHED:
        raise RunFinished(f"run {run_dir} already finished (status {status}); nothing to resume")
    try:
        checkpoint = load_latest_checkpoint(run_dir, on_skip)
    except CheckpointError as exc:
        raise ResumeError(str(exc)) from None
    if checkpoint is None:
        raise ResumeError(f"no checkpoint in {run_dir} to resume from "
                          f"(train.checkpoint_every = {config.train.checkpoint_every})")
    return checkpoint


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part, "<missing>") if isinstance(value, dict) else "<missing>"
    return value


def train_run(
    config: ExperimentConfig,
    scheme: str,
    results_root: Path,
    overwrite: bool = False,
    on_chunk: Callable[[int, EvalRecord], None] | None = None,
    resume: bool | Checkpoint = False,
) -> tuple[Path, RunResult, dict[str, Any]]:
    """Train one run and write its directory; returns (run dir, result, summary row).

    While it trains, ``meta.json`` says ``"status": "running"``, the metrics so far are
    appended at every evaluation point and checkpoints are saved when due. With
    ``resume`` the run continues from its latest checkpoint (see ``resume_checkpoint``), or
    from the given one.
    Ctrl-C writes the partial run (status ``interrupted``) and raises ``RunInterrupted``.
    """
    run_dir = run_dir_for(results_root, config, scheme)
    backend = run_backend(config, scheme)
    if resume is not False and not resumable(config, scheme):
        able = " or ".join(repr(b.name) for b in BACKENDS.values() if b.resumable)
        raise ResumeError(f"cannot resume {run_dir}: resume needs workers.backend = {able} (an {backend} run is "
                          "not reproducible from a checkpoint); start it again with --overwrite")
    owner = locks.acquire(run_dir, take_over=overwrite or resume is not False)
    try:
        return _train_owned(run_dir, backend, config, scheme, overwrite, on_chunk, resume)
    finally:
        locks.release(run_dir, owner)


def _train_owned(run_dir: Path, backend: str, config: ExperimentConfig, scheme: str, overwrite: bool,
                 on_chunk: Callable[[int, EvalRecord], None] | None, resume: bool | Checkpoint
                 ) -> tuple[Path, RunResult, dict[str, Any]]:
    """``train_run`` once this process owns the run directory."""
    if isinstance(resume, Checkpoint):
        checkpoint: Checkpoint | None = resume
    elif resume:
        checkpoint = resume_checkpoint(run_dir, config, scheme)
    else:
        checkpoint = None
        prepare_run_dir(run_dir, overwrite)
        write_json(run_dir / "config.json", config_record(config, scheme))
    write_json(run_dir / "meta.json", run_meta(backend, scheme, config.train.seed, {
        "experiment": config.name, "status": "running",
        **({"resumed_from": checkpoint.iteration} if checkpoint else {})}))
    metrics_log = CsvLog(run_dir / "metrics.csv")
    hooks = RunHooks(
        on_chunk=on_chunk,
        on_flush=lambda metrics, evals: write_progress(run_dir, metrics, evals, metrics_log),
        on_checkpoint=lambda ckpt: save_checkpoint(run_dir, ckpt),
        resume=checkpoint,
    )
    start = time.perf_counter()
    try:
        result = train(config, scheme, hooks=hooks)
    except TrainingInterrupted as exc:
        _finish(run_dir, config, scheme, backend, exc.result, time.perf_counter() - start, checkpoint)
        raise RunInterrupted(run_dir) from None
    summary = _finish(run_dir, config, scheme, backend, result, time.perf_counter() - start, checkpoint)
    return run_dir, result, summary


def _finish(run_dir: Path, config: ExperimentConfig, scheme: str, backend: str, result: RunResult, wall: float,
            checkpoint: Checkpoint | None) -> dict[str, Any]:
    summary = summarize_run(scheme, config, result, wall)
    meta = run_meta(backend, scheme, config.train.seed, {
        "experiment": config.name, "wall_time_s": round(wall, 3), "summary": summary,
        "status": result.status, "diverged_at": result.diverged_at, "dropped": result.dropped,
        "final_tracking": result.evals[-1].summary._asdict(),
        **({"workers_replaced": sum(e["kind"] in ("died", "hung") for e in result.events),
            "worker_events": list(result.events)} if result.events else {}),
        **({"resumed_from": checkpoint.iteration} if checkpoint else {}),
        **({"first_flush": result.first_flush._asdict()} if result.first_flush else {}),
    })
    write_run(run_dir, config, scheme, result, meta)
    return summary


def planned_runs(config: ExperimentConfig, schemes: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, ExperimentConfig]]:
    """(scheme, config-with-seed) for every run of a comparison, validated up front."""
    from asynccorr.build import build
    from asynccorr.schemes import check_scheme_fits

    learner, _ = build(config)
    schemes = [resolve(s, config.schemes.protocol) for s in schemes]
    repeated = sorted({s for s in schemes if schemes.count(s) > 1})
    if repeated:
        raise ConfigError(f"schemes.compare names {repeated[0]} twice (a bare modify is modify@<schemes.protocol>)")
    for scheme in schemes:
        if scheme != SEQUENTIAL:
            check_scheme_fits(get_scheme(scheme), learner.num_params, config.schemes)
            check_backend_runs(config.workers.backend, scheme)
    return [(s, with_overrides(config, train={"seed": seed})) for s in schemes for seed in seeds]


class PlannedRun(NamedTuple):
    """One run of a resumed comparison and how ``compare --resume`` completes it."""

    scheme: str
    config: ExperimentConfig
    action: Literal["train", "reuse", "resume", "restart"]
    row: dict[str, Any] | None = None  # reuse: the finished run's summary row (from its meta.json)
    checkpoint: Checkpoint | None = None  # resume: where it continues from
    status: str | None = None  # an existing run's status as read (``locks.run_status``: "dead" if its owner is gone)


def resume_plan(results_root: Path, plan: Sequence[tuple[str, ExperimentConfig]],
                on_skip: Callable[[str], None] | None = None) -> list[PlannedRun]:
    """Decide, before anything trains, how each run of ``plan`` is completed:

    * no run directory (or an empty one): ``train`` it;
    * a finished run (completed or diverged) of the same config: ``reuse`` it as it is,
      its summary row read back from ``meta.json``;
    * an unfinished one (running when killed, or interrupted) on ``sim`` or the
      sequential trainer: ``resume`` it from its latest checkpoint, bit-exactly;
    * an unfinished one with no checkpoint yet, or on ``mp``/``ray`` (not reproducible
      from a checkpoint): ``restart`` it, replacing the partial directory.

    A run directory with another config, an unreadable config or a corrupt checkpoint
    raises ``ResumeError`` naming it, so nothing is replaced by mistake.
    """
    planned = []
    for scheme, cfg in plan:
        run_dir = run_dir_for(results_root, cfg, scheme)
        if not run_dir.exists() or not any(run_dir.iterdir()):
            planned.append(PlannedRun(scheme, cfg, "train"))
            continue
        meta = check_same_run(run_dir, cfg, scheme)
        status = locks.run_status(run_dir, meta)
        if meta.get("status") in FINISHED:
            row = meta.get("summary")
            if not isinstance(row, dict):
                raise ResumeError(f"cannot reuse {run_dir}: its meta.json has no summary")
            planned.append(PlannedRun(scheme, cfg, "reuse", row=row, status=status))
            continue
        try:
            checkpoint = load_latest_checkpoint(run_dir, on_skip) if resumable(cfg, scheme) else None
        except CheckpointError as exc:
            raise ResumeError(str(exc)) from None
        if checkpoint is None:
            planned.append(PlannedRun(scheme, cfg, "restart", status=status))
        else:
            planned.append(PlannedRun(scheme, cfg, "resume", checkpoint=checkpoint, status=status))
    return planned


def check_unlocked(results_root: Path, plan: Sequence[tuple[str, ExperimentConfig]], take_over: bool) -> None:
    """Before anything trains: no run of the plan is owned by a live process, and a stale lock is
    only taken over when asked (``--resume``, ``--overwrite``); ``locks.RunLockedError`` otherwise."""
    for scheme, cfg in plan:
        locks.check_free(run_dir_for(results_root, cfg, scheme), take_over)


def check_no_existing_runs(results_root: Path, plan: Sequence[tuple[str, ExperimentConfig]]) -> None:
    for scheme, cfg in plan:
        d = run_dir_for(results_root, cfg, scheme)
        if d.exists() and any(d.iterdir()):
            raise RunExistsError(f"run directory {d} already exists (pass --overwrite to replace it)")


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scheme: each numeric summary field over seeds (``stats.MeanStd``), and counts.

    Means are over the seeds with a finite value: a diverged run has no final loss,
    and the ``diverged`` count says how many seeds are left out."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        group = [r for r in rows if r["scheme"] == scheme]
        agg: dict[str, Any] = {"scheme": scheme, "seeds": len(group)}
        for key in ("final_policy_loss", "grad_error_mean", "grad_error_final", "rms_lateral", "mean_staleness",
                    "mean_residual_staleness", "sim_time", "wall_time_s"):
            agg[key] = mean_std(r.get(key, float("nan")) for r in group)
        agg["left_road"] = sum(bool(r["left_road"]) for r in group)
        agg["diverged"] = sum(r.get("status") == "diverged" for r in group)
        agg["diverged_at"] = [r["diverged_at"] for r in group if r.get("status") == "diverged"]
        agg["finite"] = all(bool(r["finite"]) for r in group)
        out.append(agg)
    return out


def diverged_text(agg: dict[str, Any]) -> str:
    """'0/3', or '2/3 (at 21, 26)': how many seeds diverged and at which server update."""
    text = f"{agg['diverged']}/{agg['seeds']}"
    return text + f" (at {', '.join(map(str, agg['diverged_at']))})" if agg["diverged"] else text


def realisable(scheme: str) -> bool:
    return scheme == SEQUENTIAL or scheme not in SCHEMES or SCHEMES[scheme].realisable


def write_summary(folder: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """summary.csv (one row per run) and summary.md (per scheme, mean ± std over seeds)."""
    write_csv(folder / "summary.csv", {k: ["" if r.get(k) is None else r.get(k) for r in rows]
                                       for k in SUMMARY_FIELDS})
    lines = [f"# {title}", "",
             ("| scheme | seeds | diverged | final policy loss | gradient error (mean) | gradient error (last 10%) "
              "| RMS lateral [m] | left road | mean staleness | residual staleness | time [s] |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def pm(a: dict[str, Any], key: str, fmt: str) -> str:
        return mean_std_text(a[key], fmt, missing="nan")

    for a in aggregate(rows):
        lines.append(f"| {label(a['scheme'])} | {a['seeds']} | {diverged_text(a)} | "
                     f"{pm(a, 'final_policy_loss', '.3f')} | "
                     f"{pm(a, 'grad_error_mean', '.3g')} | {pm(a, 'grad_error_final', '.3g')} | "
                     f"{pm(a, 'rms_lateral', '.4f')} | {a['left_road']}/{a['seeds']} | "
                     f"{pm(a, 'mean_staleness', '.2f')} | {pm(a, 'mean_residual_staleness', '.2f')} | "
                     f"{pm(a, 'sim_time', '.2f')} |")
    if any(not realisable(a["scheme"]) for a in aggregate(rows)):
        lines += ["", ("An oracle row is not a result of any realisable scheme: its product is evaluated against "
                       "theta_k at the instant of application, for free (an upper bound).")]
    atomic_write_text(folder / "summary.md", "\n".join(lines) + "\n")
