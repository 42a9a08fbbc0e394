"""Who owns a run directory: one training process at a time.

A run directory ``<experiment>/<scheme>-seed<k>/`` is owned by the process that trains
in it through a lock file beside it, ``<experiment>/.<scheme>-seed<k>.lock`` (beside,
so that ``--overwrite`` replacing the directory never removes it): JSON with the
owner's pid, host, process start time and the time it took the lock. It is created
atomically (written to a temporary file, then hard-linked into place, which fails if
a lock exists) and removed when the run ends, however it ends.

A lock whose owner is gone (same host; the pid is not running, or is running a
different process, told apart by its start time) is *stale*; a run whose
``meta.json`` says ``"running"`` but whose owner is gone is *dead*. A lock of
another host cannot be checked from here and counts as live.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from asynccorr.runs.files import RunExistsError


class RunLockedError(RunExistsError):
    """The run directory is owned by another live process (or a stale lock was not taken over)."""


class Owner(NamedTuple):
    pid: int
    host: str
    start: int | None  # the process's start time in clock ticks since boot (Linux), to tell pid reuse apart
    since: str  # when it took the lock (UTC, ISO 8601)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` (``/proc/<pid>/stat`` field 22), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(pid, socket.gethostname(), _process_start(pid), datetime.now(UTC).isoformat(timespec="seconds"))


def read_owner(run_dir: Path) -> Owner | None:
    """The owner recorded in the run's lock, or None when there is no (readable) lock."""
    try:
        data: dict[str, Any] = json.loads(lock_path(run_dir).read_text())
        return Owner(int(data["pid"]), str(data["host"]), data.get("start"), str(data.get("since", "?")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_alive(owner: Owner) -> bool:
    """Whether the owner still runs: always True for another host (it cannot be checked)."""
    if owner.host != socket.gethostname():
        return True
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    start = _process_start(owner.pid)
    return owner.start is None or start is None or start == owner.start


def acquire(run_dir: Path, take_over: bool) -> Owner:
    """Take the run's lock for this process, atomically.

    A live owner is refused (``RunLockedError`` naming it), whatever ``take_over`` says; a
    stale lock is taken over only with ``take_over`` (``--resume`` or ``--overwrite``).
    """
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_process()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(me._asdict(), f)
        for _ in range(2):
            try:
                os.link(tmp, path)  # fails when a lock exists: at most one process gets here
                return me
            except FileExistsError:
                _check_takeover(run_dir, path, take_over)
        raise RunLockedError(f"run directory {run_dir} is being locked by another process; try again")
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_takeover(run_dir: Path, path: Path, take_over: bool) -> None:
    """A lock exists: refuse a live owner or an untaken stale lock; clear a stale one to be taken."""
    _check_free(run_dir, read_owner(run_dir), take_over)
    stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, stale)  # only one of two racing takers succeeds
    except FileNotFoundError:
        return
    stale.unlink(missing_ok=True)


def release(run_dir: Path, owner: Owner) -> None:
    """Remove the lock if it is still this owner's."""
    if read_owner(run_dir) == owner:
        lock_path(run_dir).unlink(missing_ok=True)


def check_free(run_dir: Path, take_over: bool) -> None:
    """Raise as ``acquire`` would, without taking the lock (a comparison checks every run up front)."""
    owner = read_owner(run_dir)
    if owner is None and not lock_path(run_dir).exists():
        return
    _check_free(run_dir, owner, take_over)


def _check_free(run_dir: Path, owner: Owner | None, take_over: bool) -> None:
    if owner is not None and is_alive(owner):
        raise RunLockedError(f"run directory {run_dir} is in use by {owner.describe()}; "
                             "wait for it to finish or stop that process")
    if not take_over:
        what = f"a stale lock of {owner.describe()} (no such process)" if owner else "an unreadable lock"
        raise RunLockedError(f"run directory {run_dir} has {what}; pass --resume to continue the run "
                             "or --overwrite to start it again")


def run_status(run_dir: Path, meta: dict[str, Any]) -> str:
    """The run's status as a reader should see it: ``meta.json``'s, except that a run that says
    ``"running"`` while no live process owns it is ``"dead"``."""
    status = str(meta.get("status", "unknown"))
    if status != "running":
        return status
    owner = read_owner(run_dir)
    return "running" if owner is not None and is_alive(owner) else "dead"
