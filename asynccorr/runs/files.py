"""Run directories and crash-safe writing of results.

Every file is written to a temporary sibling and moved into place with
``os.replace``, so a crash never leaves a half-written file; an existing run
directory is never replaced unless the caller asks to overwrite it. The one
exception is a training run's growing metrics table (``CsvLog``): rows are appended
at each evaluation point (a full rewrite each time would cost the square of the run's
length), so a crash may leave a torn last line, which ``read_csv`` drops.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from asynccorr.errors import ResultsPathError


class RunExistsError(FileExistsError):
    """The run directory already holds results and overwriting was not requested."""


_RUN_DIR_NAME = re.compile(r"^(?P<scheme>.+)-seed(?P<seed>\d+)$")


def run_dir_name(scheme: str, seed: int) -> str:
    """The name of a run's directory in its experiment folder: ``<scheme>-seed<k>``."""
    return f"{scheme}-seed{seed}"


def parse_run_dir_name(name: str) -> tuple[str, int] | None:
    """(scheme, seed) of a ``run_dir_name``; None for any other name (``figures``, ``summary.csv``)."""
    match = _RUN_DIR_NAME.match(name)
    return (match["scheme"], int(match["seed"])) if match else None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, flush it to disk, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_csv(path: Path, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
    """Write equal-length columns as CSV (floats with repr precision, deterministic)."""
    atomic_write_text(path, csv_text(columns))


def csv_text(columns: Mapping[str, Sequence[Any] | np.ndarray], start: int = 0, header: bool = True) -> str:
    """Rows ``start ..`` of equal-length columns as CSV text (with the header line if asked)."""
    names = list(columns)
    arrays = [np.asarray(columns[n]) for n in names]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {dict(zip(names, (a.shape[0] for a in arrays)))}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(names)
    for row in zip(*(a[start:] for a in arrays)):
        writer.writerow([_fmt(v) for v in row])
    return buf.getvalue()


class CsvLog:
    """A CSV table that only grows while a run trains: its first ``write`` (of this process) writes
    the whole table atomically, each later one appends the rows beyond those written, flushed to
    disk. The text is the same as ``write_csv``'s of the same columns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: int | None = None  # rows on disk, once this log has written the table

    def write(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        n = len(np.asarray(next(iter(columns.values())))) if columns else 0
        if self.rows is None or n < self.rows:
            write_csv(self.path, columns)
        elif n > self.rows:
            with open(self.path, "a", newline="") as f:
                f.write(csv_text(columns, start=self.rows, header=False))
                f.flush()
                os.fsync(f.fileno())
        self.rows = n


class ScheduleLog:
    """A run's ``schedule.jsonl`` while it trains (``backends.schedule``): the header and the first
    lines written atomically, later lines appended and flushed to disk (a crash leaves a file
    without its end line, which ``schedule.parse`` calls truncated). A run continued from a
    checkpoint at update ``resumed_at`` keeps the lines already there (less a torn last line and
    the end line of the part that stopped) and goes on after a resume line."""

    def __init__(self, path: Path, header: dict[str, Any], resumed_at: int | None = None) -> None:
        self.path, self.header, self.resumed_at, self.started = Path(path), header, resumed_at, False

    def __call__(self, lines: list) -> None:
        from asynccorr.backends.schedule import encode, resume_line

        if not self.started:
            before = encode([self.header])
            if self.resumed_at is not None:
                before = self._kept() or before
                lines = [resume_line(self.resumed_at), *lines]
            atomic_write_text(self.path, before + encode(lines))
            self.started = True
            return
        with open(self.path, "a") as f:
            f.write(encode(lines))
            f.flush()
            os.fsync(f.fileno())

    def _kept(self) -> str:
        """The earlier part's complete lines, without its end line ("" when there is none)."""
        try:
            kept = [line for line in self.path.read_text().splitlines(keepends=True) if line.endswith("\n")]
        except (OSError, UnicodeDecodeError):
            return ""
        if kept and kept[-1].startswith('{"end"'):
            kept.pop()
        return "".join(kept)


def _fmt(value: Any) -> str:
    if isinstance(value, (np.floating, float)):
        return repr(float(value))
    if isinstance(value, (np.bool_, bool)):
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """Read a CSV written by ``write_csv`` (or a ``CsvLog``) back into float columns; a torn last
    line (no line end: a crash during an append) is dropped."""
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"empty CSV file: {path}")
    header, body = rows[0], rows[1:]
    data = np.asarray(body, dtype=np.float64).reshape(len(body), len(header))
    return {name: data[:, i] for i, name in enumerate(header)}


def read_text_csv(path: Path) -> dict[str, list[str]]:
    """A CSV's columns as text (a table with names or statuses in it, such as summary.csv)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    return {name: [row[i] if i < len(row) else "" for row in rows[1:]] for i, name in enumerate(rows[0])}


def check_writable_folder(path: Path, what: str = "results folder") -> None:
    """That ``path`` is a folder this process can write in, or can be created as one; else a
    ``ResultsPathError`` saying why (a file, a path through a file, permission denied, a read-only
    file system). Nothing is left behind: the probe is a temporary file, removed at once, in the
    deepest folder of the path that exists."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:  # the deepest part that exists
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"goes through {existing},"
        raise ResultsPathError(f"{what} {path} {where} a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".asynccorr-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        where = "" if existing == path else f" (in {existing})"
        raise ResultsPathError(f"cannot write the {what} {path}: {reason}{where}") from None


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create an empty run directory; refuse to clobber an existing one unless ``overwrite``."""
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise RunExistsError(f"run directory {path} already exists (pass --overwrite to replace it)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_meta(backend: str, scheme: str, seed: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Provenance of a run: versions, commit, host, backend."""
    import flax
    import jax
    import optax

    from asynccorr import __version__

    meta = {
        "asynccorr": __version__,
        "backend": backend,
        "scheme": scheme,
        "seed": seed,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "jax_backend": jax.default_backend(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if extra:
        meta.update(extra)
    return meta
