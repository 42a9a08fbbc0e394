"""Checkpoint files: a run's checkpoints on disk, ``<run dir>/checkpoint/ckpt-<iteration>.npz``.

Each is a plain ``.npz`` (no pickle) of a ``backends.checkpoint.Checkpoint``'s named arrays
plus one entry ``__info__``, a JSON document with everything that is not an array and a
SHA-256 of the arrays, verified on load: a checkpoint damaged afterwards (a failing disk,
an interrupted copy) is skipped, with a note, for the newest one that loads and verifies.
Each file is written to a temporary sibling, flushed and moved into place with
``os.replace``: a crash leaves either the previous checkpoint or the new one, never a torn
file. The ``KEEP`` latest are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from asynccorr.backends.checkpoint import Checkpoint, CheckpointError
from asynccorr.runs.files import atomic_write_bytes

CHECKPOINT_DIR = "checkpoint"


KEEP = 2  # checkpoints kept on disk (the newest first)


_NAME_RE = re.compile(r"^ckpt-(\d+)\.npz$")


_INFO = "__info__"


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, newest (highest iteration) first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint, keep: int = KEEP) -> Path:
    """Write ``checkpoint`` atomically and delete all but the ``keep`` newest."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    info = json.dumps({"iteration": checkpoint.iteration, **checkpoint.info, "sha256": digest(checkpoint.arrays)},
                      sort_keys=True)
    np.savez(buf, **checkpoint.arrays, **{_INFO: np.array(info)})
    path = folder / f"ckpt-{checkpoint.iteration:09d}.npz"
    atomic_write_bytes(path, buf.getvalue())
    prune(run_dir, keep)
    return path


def prune(run_dir: Path, keep: int = KEEP) -> None:
    """Delete all but the ``keep`` newest checkpoint files of a run directory."""
    for old in checkpoint_files(run_dir)[keep:]:
        old.unlink(missing_ok=True)


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint file, verified against its recorded digest; ``CheckpointError`` saying why not."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        info = json.loads(str(arrays.pop(_INFO)))
        iteration = int(info.pop("iteration"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    recorded = info.pop("sha256", None)
    if recorded is not None and recorded != digest(arrays):
        raise CheckpointError(f"checkpoint {path} is corrupt: its arrays do not match their recorded SHA-256")
    return Checkpoint(iteration, arrays, info)


def load_latest_checkpoint(run_dir: Path, on_skip: Callable[[str], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint of a run directory that loads and verifies, or None if it has none.

    A damaged one is skipped for the one before it (``on_skip`` then gets one line about
    each skipped); when none loads, a ``CheckpointError`` names the run and the newest one's
    fault. Nothing is deleted."""
    files = checkpoint_files(run_dir)
    errors: list[CheckpointError] = []
    for path in files:
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as exc:  # fall back to the previous one
            errors.append(exc)
            continue
        for skipped in errors if on_skip is not None else ():
            on_skip(f"skipped {skipped}")
        return checkpoint
    if errors:
        raise CheckpointError(f"no checkpoint of {run_dir} loads ({len(files)} tried; newest: {errors[0]})")
    return None
