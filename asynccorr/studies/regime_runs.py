"""Running a regime study (``asynccorr.studies.regimes``) and writing its outputs.

Runs go to a ``spawn`` process pool (``jobs`` processes, each single-threaded
XLA) in bundles that share compiled code, longest first; the simulation is
deterministic, so the numbers do not depend on ``jobs`` (up to XLA's threading).
After every run ``regimes.csv`` is rewritten, so an interrupted study keeps what it
did; at the end ``write_outputs`` writes ``regimes.md`` (``asynccorr.studies.regimes``); the heat
maps are the figures layer's (``asynccorr.figures.regimes``, drawn by ``api.regimes``). With ``cluster`` (a Ray address) every run is one
Ray task there instead (``asynccorr.studies.cluster``), submitted in the same bundle order so
that a node's worker process tends to reuse what it compiled; the rows come back here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from asynccorr.backends.registry import run
from asynccorr.config import ConfigError, to_dict
from asynccorr.runs.files import RunExistsError, check_writable_folder, write_json
from asynccorr.runs.run import first_difference
from asynccorr.studies.pool import check_jobs, process_pool
from asynccorr.studies.regimes import (
    RegimeConfig,
    Task,
    plan,
    read_rows,
    run_metrics,
    study_rows,
    write_rows,
    write_table,
)


def _run_task(study: RegimeConfig, task: Task) -> dict[str, Any]:
    start = time.perf_counter()
    result = run(task.config, task.scheme)
    row = {"delay": task.cell.delay, "policy_lr": task.cell.policy_lr, "value_lr": task.cell.value_lr,
           "workers": task.cell.workers, "scheme": task.scheme, "seed": task.seed, **run_metrics(study, result),
           "sync_final_loss": float("nan"), "reaches_sync": False}
    row["wall_time_s"] = round(time.perf_counter() - start, 3)
    return row


def _run_bundle(study: RegimeConfig, tasks: Sequence[Task]) -> list[dict[str, Any]]:
    return [_run_task(study, t) for t in tasks]


def bundles(tasks: Sequence[Task]) -> list[list[Task]]:
    """Tasks that share jit-compiled code (same step size and scheme; sync: also the same N), longest first.

    A bundle runs in one process, so each process compiles only what its bundles need
    (compiling is several seconds per function; a study has dozens of them).
    """
    out: dict[tuple, list[Task]] = {}
    for t in tasks:
        key = (t.cell.policy_lr, t.cell.value_lr, t.scheme, t.cell.workers if t.scheme == "sync" else 0)
        out.setdefault(key, []).append(t)
    return sorted(out.values(), key=lambda b: -sum(t.cost for t in b))


def study_dir(results_root: Path, study: RegimeConfig) -> Path:
    return Path(results_root) / study.name


def check_no_existing_study(folder: Path) -> None:
    if (folder / "regimes.csv").exists() or (folder / "regimes.md").exists():
        raise RunExistsError(f"study folder {folder} already holds a study (pass --overwrite to replace it)")


def check_study_folder(study: RegimeConfig, results_root: Path, overwrite: bool) -> Path:
    """The study's folder, once it is known that results can be written there and (unless
    ``overwrite``) that no earlier study is there; a one-line error otherwise."""
    folder = study_dir(results_root, study)
    check_writable_folder(folder, "study folder")
    if not overwrite:
        check_no_existing_study(folder)
    return folder


STUDY_RECORD = "study.json"  # the resolved study a folder's rows belong to (what --resume checks)


def finished_rows(study: RegimeConfig, folder: Path) -> list[dict[str, Any]]:
    """For ``--resume``: the rows an interrupted study already wrote (its runs are reused; a run
    that was training when it stopped has no row and runs again from its start: a study's runs
    keep no checkpoints). A ``ConfigError`` when the folder holds another study."""
    if not (folder / "regimes.csv").is_file():
        return []
    try:
        stored = json.loads((folder / STUDY_RECORD).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"cannot resume the study in {folder}: no readable {STUDY_RECORD} says which study its "
                          "rows belong to (start it again with --overwrite)") from None
    current = json.loads(json.dumps(to_dict(study)))
    if (field := first_difference(stored, current)) is not None:
        raise ConfigError(f"cannot resume the study in {folder}: it differs in {field} (start it again with "
                          "--overwrite, or give the same study)")
    return study_rows(study, read_rows(folder / "regimes.csv"))


def run_study(study: RegimeConfig, results_root: Path, jobs: int = 1, overwrite: bool = False,
              on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
              cluster: str | None = None, resume: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Run every cell x scheme x seed (in ``jobs`` processes, or as Ray tasks on ``cluster``), write
    ``regimes.csv`` and ``regimes.md``; with ``resume``, the runs an interrupted study finished are
    reused and only the others run."""
    check_jobs(jobs, cluster)
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other (overwrite starts the study afresh)")
    folder = check_study_folder(study, results_root, overwrite or resume)
    done = finished_rows(study, folder) if resume else []
    have = {_key(r) for r in done}
    tasks = [t for t in plan(study) if (t.cell.delay, t.cell.policy_lr, t.cell.value_lr, t.cell.workers, t.scheme,
                                        t.seed) not in have]
    if cluster is None:
        return _run_tasks(study, folder, tasks, jobs, on_run, None, done)
    from asynccorr.studies import cluster as on_cluster

    on_cluster.check_runs([(t.scheme, t.config) for t in tasks])
    with on_cluster.connected(cluster):  # before anything of an earlier study is removed
        return _run_tasks(study, folder, tasks, jobs, on_run, cluster, done)


def _key(row: dict[str, Any]) -> tuple:
    return row["delay"], row["policy_lr"], row["value_lr"], row["workers"], row["scheme"], row["seed"]


def _run_tasks(study: RegimeConfig, folder: Path, tasks: Sequence[Task], jobs: int,
               on_run: Callable[[int, int, dict[str, Any]], None] | None,
               cluster: str | None, finished: Sequence[dict[str, Any]] = ()) -> tuple[Path, list[dict[str, Any]]]:
    """``run_study`` once checked: the runs here, in a process pool or on the cluster, then the outputs
    (``finished``: the rows of a resumed study's earlier runs, kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("regimes.csv", "regimes.md"):
        (folder / stale).unlink(missing_ok=True)
    write_json(folder / STUDY_RECORD, to_dict(study))
    rows: list[dict[str, Any]] = list(finished)
    if rows:
        write_rows(folder / "regimes.csv", study, rows)

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        write_rows(folder / "regimes.csv", study, rows)
        if on_run is not None:
            on_run(len(rows) - len(finished), len(tasks), row)

    if cluster is not None:
        from asynccorr.studies.cluster import run_tasks

        ordered = [t for b in bundles(tasks) for t in b]
        run_tasks(cluster, _run_task, [(study, t) for t in ordered], lambda i, row, node: done(row))
    elif jobs == 1:
        for task in tasks:
            done(_run_task(study, task))
    else:
        with process_pool(jobs, keep_programs=False) as pool:
            futures = [pool.submit(_run_bundle, study, b) for b in bundles(tasks)]
            for future in as_completed(futures):
                for row in future.result():
                    done(row)
    return folder, write_outputs(study, folder, rows)


def write_outputs(study: RegimeConfig, folder: Path, rows: Sequence[dict[str, Any]] | None = None
                  ) -> list[dict[str, Any]]:
    """(Re)write ``regimes.csv`` and ``regimes.md`` from ``rows`` (default: ``regimes.csv``); the rows, in
    the study's order.

    Cells or runs missing from the rows (an interrupted study) are shown as missing.
    """
    folder = Path(folder)
    if rows is None:
        if not (folder / "regimes.csv").is_file():
            raise ConfigError(f"no regimes.csv in {folder} to redraw")
        rows = read_rows(folder / "regimes.csv")
    rows = study_rows(study, rows)
    write_rows(folder / "regimes.csv", study, rows)
    write_table(folder / "regimes.md", study, rows)
    return rows
