"""``asynccorr replay RUN_DIR``: a recorded real run re-executed into a run directory of its own.

A real run's directory holds its config and its schedule (``schedule.jsonl``,
``backends.schedule``); ``replay_run`` reads both, checks them before anything is
written, and trains the replay (``backends.replay.run_replay``) with the runs layer's
usual files into ``<results>/<experiment>-replay/<scheme>-seed<k>/`` -- beside the
replays of the same schedule under other schemes, so ``asynccorr plot`` and the summary
compare them on one interleaving. Its ``meta.json`` names the run it replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

from asynccorr.backends import schedule as sched
from asynccorr.backends.protocol import OnChunk, RunResult
from asynccorr.backends.schedule import Schedule, ScheduleError
from asynccorr.config import ExperimentConfig, from_dict
from asynccorr.schemes.registry import get_scheme, resolve

REPLAY_SUFFIX = "-replay"  # the replays of experiment X are the experiment X-replay


def read_recorded(run_dir: Path) -> tuple[ExperimentConfig, str, Schedule, str]:
    """A recorded run's config, scheme, schedule and the schedule's sha256; ``ScheduleError`` (one
    line) when it is not a run, has no schedule, or the schedule is damaged or foreign."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScheduleError(f"no run directory {run_dir}")
    try:
        record = json.loads((run_dir / "config.json").read_text())
        scheme = str(record.pop("scheme"))
        config = from_dict(ExperimentConfig, record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ScheduleError(f"no run to replay in {run_dir} (no readable config.json)") from None
    path = run_dir / sched.FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScheduleError(f"no schedule in {run_dir}: only runs on the mp and ray backends record one "
                            f"({sched.FILE})") from None
    except OSError as exc:
        raise ScheduleError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ScheduleError(f"{path} is not an asynccorr schedule (not text)") from None
    schedule = sched.parse(text, str(path))
    head = schedule.header
    if (head["scheme"], head["workers"], head["seed"]) != (scheme, config.workers.count, config.train.seed):
        raise ScheduleError(f"{path} does not belong to the run in {run_dir} (its header says {head['scheme']}, "
                            f"{head['workers']} workers, seed {head['seed']})")
    return config, scheme, schedule, hashlib.sha256(data).hexdigest()


class ReplayPlan(NamedTuple):
    """A replay, checked before anything is written (``plan_replay``)."""

    config: ExperimentConfig  # the recorded run's, named <experiment>-replay
    scheme: str  # the scheme it is replayed under
    schedule: Schedule
    results: Path  # the results root its run directory goes under
    meta: dict[str, Any]  # what its meta.json says of the run it replays
    overwrite: bool = False  # replace an existing replay


def plan_replay(run_dir: Path, scheme: str | None = None, results_root: Path | None = None,
                overwrite: bool = False) -> ReplayPlan:
    """Read and check a replay of the run in ``run_dir`` under its own scheme or ``scheme`` (a what-if);
    its run directory goes under ``results_root`` (default: the recorded run's results root)."""
    from asynccorr.backends.replay import check_replayable

    run_dir = Path(run_dir)
    config, recorded, schedule, digest = read_recorded(run_dir)
    target = resolve(scheme or recorded, config.schemes.protocol)
    check_replayable(schedule, get_scheme(target), config)
    out = dataclasses.replace(config, name=config.name + REPLAY_SUFFIX)
    root = Path(results_root) if results_root is not None else run_dir.parent.parent
    meta = {"replay_of": {"run": str(run_dir), "scheme": recorded, "backend": schedule.backend,
                          "messages": len(schedule.entries), "schedule_sha256": digest}}
    return ReplayPlan(out, target, schedule, root, meta, overwrite)


def replay_run(plan: ReplayPlan, on_chunk: OnChunk | None = None) -> tuple[Path, RunResult, dict[str, Any]]:
    """Train a planned replay into its run directory; returns (run dir, result, summary row) as
    ``train_run`` does."""
    from asynccorr.backends.replay import run_replay
    from asynccorr.runs.run import train_run

    schedule = plan.schedule
    return train_run(plan.config, plan.scheme, plan.results, overwrite=plan.overwrite, on_chunk=on_chunk,
                     execute=("replay", lambda c, s, h: run_replay(c, s, schedule, h), plan.meta))
