"""A comparison: every scheme x seed of one experiment, planned and validated before anything
trains (``plan_compare``; ``resume_plan``: how ``compare --resume`` completes an interrupted
one), trained run by run or on a Ray cluster (``run_compare``), and its summary files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from asynccorr.backends.checkpoint import CheckpointError
from asynccorr.backends.protocol import OnChunk
from asynccorr.backends.registry import backend_for, check_backend_runs, check_learner_runs
from asynccorr.config import ConfigError, ExperimentConfig, describe, to_dict, with_overrides
from asynccorr.learners.build import build
from asynccorr.runs import locks
from asynccorr.runs.checkpoints import load_latest_checkpoint
from asynccorr.runs.files import RunExistsError, check_writable_folder, read_csv
from asynccorr.runs.run import FINISHED, PlannedRun, ResumeError, check_same_run, run_dir_for, train_run
from asynccorr.runs.summary import analysis_fields, per_scheme, write_summary
from asynccorr.runs.tensorboard import check_available
from asynccorr.schemes.registry import check_scheme_fits, get_scheme, resolve
from asynccorr.studies.pool import check_jobs


def planned_runs(config: ExperimentConfig, schemes: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, ExperimentConfig]]:
    """(scheme, config-with-seed) for every run of a comparison, validated up front."""
    learner, _ = build(config)
    schemes = [resolve(s, config.schemes.protocol) for s in schemes]
    repeated = sorted({s for s in schemes if schemes.count(s) > 1})
    if repeated:
        raise ConfigError(f"schemes.compare names {repeated[0]} twice (a bare modify is modify@<schemes.protocol>)")
    for scheme in schemes:
        check_learner_runs(config, scheme)
        if backend_for(config, scheme).workers:  # (the sequential reference is no scheme of the registry)
            check_scheme_fits(get_scheme(scheme), learner.num_params, config.schemes)
            check_backend_runs(config.workers.backend, scheme)
    return [(s, with_overrides(config, train={"seed": seed})) for s in schemes for seed in seeds]


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
            row = {**row, **_analysis_of(run_dir, row, cfg)}
            planned.append(PlannedRun(scheme, cfg, "reuse", row=row, status=status))
            continue
        try:
            checkpoint = load_latest_checkpoint(run_dir, on_skip) if backend_for(cfg, scheme).resumable else None
        except CheckpointError as exc:
            raise ResumeError(str(exc)) from None
        if checkpoint is None:
            planned.append(PlannedRun(scheme, cfg, "restart", status=status))
        else:
            planned.append(PlannedRun(scheme, cfg, "resume", checkpoint=checkpoint, status=status))
    return planned


def _analysis_of(run_dir: Path, row: dict[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """A reused run's ``runs.summary.analysis_fields`` under this config's ``report`` section, from its
    metrics.csv (the same values as when it trained, whatever target it was summarised with then)."""
    try:
        metrics = read_csv(run_dir / "metrics.csv")
        evals = read_csv(run_dir / "eval.csv") if config.report.target_rms > 0 else None
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot reuse {run_dir}: unreadable metrics.csv or eval.csv ({exc})") from None
    diverged_at = row.get("diverged_at") if row.get("status") == "diverged" else None
    return analysis_fields(metrics, diverged_at, config.report, evals)


def check_unlocked(results_root: Path, plan: Sequence[tuple[str, ExperimentConfig]], take_over: bool) -> None:
    """Before anything trains: no run of the plan is owned by a live process, and a stale lock is
    only taken over when asked (``--resume``, ``--overwrite``); ``runs.locks.RunLockedError`` otherwise."""
    for scheme, cfg in plan:
        locks.check_free(run_dir_for(results_root, cfg, scheme), take_over)


def check_no_existing_runs(results_root: Path, plan: Sequence[tuple[str, ExperimentConfig]]) -> None:
    for scheme, cfg in plan:
        d = run_dir_for(results_root, cfg, scheme)
        if d.exists() and any(d.iterdir()):
            raise RunExistsError(f"run directory {d} already exists (pass --overwrite to replace it)")


def check_writable(results: Path, plan: list[tuple[str, ExperimentConfig]], overwrite: bool, resume: bool) -> None:
    """No live process owns a run of ``plan`` (a stale lock only with ``resume`` or ``overwrite``), and,
    unless one of those is given, no earlier run is there; first, that results can be written there
    at all (``runs.files.check_writable_folder``)."""
    check_writable_folder(results)
    check_unlocked(results, plan, take_over=resume or overwrite)
    if not (resume or overwrite):
        check_no_existing_runs(results, plan)


class Comparison(NamedTuple):
    folder: Path  # results/<experiment>/ with summary.csv and summary.md
    rows: list[dict[str, Any]]  # one per run
    table: list[dict[str, Any]]  # per scheme: mean ± std over seeds (``runs.summary.MeanStd`` values)


class ComparisonPlan(NamedTuple):
    """A comparison's runs, checked and decided (``plan_compare``)."""

    config: ExperimentConfig
    results: Path
    overwrite: bool
    runs: list[PlannedRun]  # train, reuse, resume or restart
    cluster: str | None = None  # Ray cluster address: each run a Ray task there (``asynccorr.studies.cluster``)
    jobs: int = 1  # runs trained at once here, in spawned processes (``studies.pool``)
    tensorboard: bool = False  # each run also writes TensorBoard event files (``runs.tensorboard``)


def plan_compare(config: ExperimentConfig, schemes: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, results: str | Path = "results", overwrite: bool = False,
                 resume: bool = False, on_warning: Callable[[str], None] | None = None,
                 cluster: str | None = None, jobs: int = 1, tensorboard: bool = False) -> ComparisonPlan:
    """Every scheme on every seed (default: the config's ``[schemes]``), checked before anything
    trains; ``resume`` decides how each run of an interrupted comparison is completed
    (``studies.compare.resume_plan``). With ``cluster`` (a Ray address) the runs are to be Ray tasks there,
    so each must train on ``sim`` (or be the sequential reference); with ``jobs`` > 1, ``jobs`` runs
    train at once in processes here."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other (overwrite starts every run afresh)")
    check_jobs(jobs, cluster)
    if cluster is not None and tensorboard:
        raise ConfigError("TensorBoard files of a cluster's runs: write them afterwards (asynccorr tensorboard PATH)")
    if tensorboard:
        check_available()
    results = Path(results)
    config = with_overrides(config, schemes={k: tuple(v) for k, v in (("compare", schemes), ("seeds", seeds))
                                             if v is not None})
    plan = planned_runs(config, config.schemes.compare, config.schemes.seeds)
    if cluster is not None:
        from asynccorr.studies import cluster as on_cluster

        on_cluster.check_runs(plan)
        on_cluster.check_reachable(cluster)
    check_writable(results, plan, overwrite, resume)
    planned = (resume_plan(results, plan, on_skip=on_warning) if resume
               else [PlannedRun(scheme, cfg, "train") for scheme, cfg in plan])
    return ComparisonPlan(config, results, overwrite, planned, cluster, jobs, tensorboard)


def run_compare(plan: ComparisonPlan, on_run: Callable[[Any], OnChunk | None] | None = None,
                on_done: Callable[[Any], None] | None = None) -> Comparison:
    """Train (or reuse) every planned run, then write summary.csv and summary.md. ``on_run(run)`` is
    called as each run starts and may return its progress callback, ``on_done(run)`` as it ends.
    On a cluster (``plan.cluster``) the runs train there at once and ``on_run`` is not called (a
    task reports no progress); the summary is the same."""
    if plan.cluster is not None:
        from asynccorr.studies.cluster import run_planned

        rows = run_planned(plan.cluster, plan.results, plan.runs, plan.overwrite, on_done)
        return _summarize(plan, rows)
    if plan.jobs > 1:
        return _summarize(plan, _run_in_processes(plan, on_done))
    rows = []
    for run in plan.runs:
        on_chunk = on_run(run) if on_run is not None else None
        if run.action == "reuse":
            rows.append(run.row)
        else:
            rows.append(_train_planned(run, plan.results, plan.overwrite, plan.tensorboard, on_chunk))
        if on_done is not None:
            on_done(run)
    return _summarize(plan, rows)


def _train_planned(run: PlannedRun, results: Path, overwrite: bool, tensorboard: bool = False,
                   on_chunk: OnChunk | None = None) -> dict[str, Any]:
    """One planned run trained (here or in a pool process: ``compare --jobs``); its summary row."""
    return train_run(run.config, run.scheme, results, overwrite=overwrite or run.action == "restart",
                     resume=run.checkpoint if run.action == "resume" else False, on_chunk=on_chunk,
                     tensorboard=tensorboard)[2]


def _run_in_processes(plan: ComparisonPlan, on_done: Callable[[Any], None] | None) -> list[dict[str, Any]]:
    """The planned runs, ``plan.jobs`` at a time in spawned processes (``studies.pool``); the rows in
    plan order, whatever order they finish in."""
    from concurrent.futures import as_completed

    from asynccorr.studies.pool import process_pool

    rows: list[dict[str, Any] | None] = [run.row if run.action == "reuse" else None for run in plan.runs]
    with process_pool(plan.jobs, single_thread=False) as pool:  # XLA's threading changes the last bits
        futures = {pool.submit(_train_planned, run, plan.results, plan.overwrite, plan.tensorboard): i
                   for i, run in enumerate(plan.runs) if run.action != "reuse"}
        for i, run in enumerate(plan.runs):
            if run.action == "reuse" and on_done is not None:
                on_done(run)
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            if on_done is not None:
                on_done(plan.runs[futures[future]])
    return [row for row in rows if row is not None]


def _summarize(plan: ComparisonPlan, rows: list[dict[str, Any]]) -> Comparison:
    """summary.csv and summary.md of the comparison's rows (in plan order)."""
    cfg = plan.config
    folder = plan.results / cfg.name
    write_summary(folder, rows, f"{cfg.name}: {describe(to_dict(cfg))}, {cfg.train.iterations} updates", cfg.report)
    return Comparison(folder, rows, per_scheme(rows))
