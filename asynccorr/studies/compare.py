"""A comparison: every scheme x seed of one experiment, planned and validated before anything
trains, and how ``compare --resume`` completes an interrupted one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from asynccorr.backends.checkpoint import Checkpoint, CheckpointError
from asynccorr.backends.registry import backend_for, check_backend_runs
from asynccorr.config import ConfigError, ExperimentConfig, with_overrides
from asynccorr.learners.build import build
from asynccorr.runs import locks
from asynccorr.runs.checkpoints import load_latest_checkpoint
from asynccorr.runs.files import RunExistsError
from asynccorr.runs.run import FINISHED, ResumeError, check_same_run, run_dir_for
from asynccorr.schemes.registry import check_scheme_fits, get_scheme, resolve


def planned_runs(config: ExperimentConfig, schemes: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, ExperimentConfig]]:
    """(scheme, config-with-seed) for every run of a comparison, validated up front."""
    learner, _ = build(config)
    schemes = [resolve(s, config.schemes.protocol) for s in schemes]
    repeated = sorted({s for s in schemes if schemes.count(s) > 1})
    if repeated:
        raise ConfigError(f"schemes.compare names {repeated[0]} twice (a bare modify is modify@<schemes.protocol>)")
    for scheme in schemes:
        if backend_for(config, scheme).workers:  # (the sequential reference is no scheme of the registry)
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
    status: str | None = None  # an existing run's status as read (``runs.locks.run_status``: "dead" if its owner is gone)


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
            checkpoint = load_latest_checkpoint(run_dir, on_skip) if backend_for(cfg, scheme).resumable else None
        except CheckpointError as exc:
            raise ResumeError(str(exc)) from None
        if checkpoint is None:
            planned.append(PlannedRun(scheme, cfg, "restart", status=status))
        else:
            planned.append(PlannedRun(scheme, cfg, "resume", checkpoint=checkpoint, status=status))
    return planned


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
