"""Checkpoints: a run's whole state as arrays plus JSON, one file per checkpoint.

A checkpoint is ``<run dir>/checkpoint/ckpt-<iteration>.npz``: a plain ``.npz``
(no pickle) holding named arrays -- the pytree leaves of the backend's state,
flattened with ``jax.tree_util`` in a fixed order, and the metric columns so
far -- plus one entry ``__info__``, a JSON document with everything that is not
an array (numpy generator state, event heap, counters, evaluations so far).
Pytrees are rebuilt against a template of the same structure (e.g. from
``jax.eval_shape`` of the backend's init), so no code object is ever stored.

Each file is written to a temporary sibling, flushed to disk and moved into
place with ``os.replace``: a crash leaves either the previous checkpoint or the
new one, never a torn file. The two latest are kept. Each records a SHA-256 of its
arrays, verified on load: a checkpoint damaged afterwards (a failing disk, an
interrupted copy) is skipped, with a note, for the newest one that loads and verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.evaluation import EvalRecord, TrackingSummary
from asynccorr.results import atomic_write_bytes

CHECKPOINT_DIR = "checkpoint"
KEEP = 2  # checkpoints kept on disk (the newest first)
_NAME_RE = re.compile(r"^ckpt-(\d+)\.npz$")
_INFO = "__info__"


class Checkpoint(NamedTuple):
    """One saved state: the server iteration it was taken at, named arrays and JSON-able info."""

    iteration: int
    arrays: dict[str, np.ndarray]
    info: dict[str, Any]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the run it is loaded into."""


# ----------------------------------------------------------------------------- files


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
    for old in checkpoint_files(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


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


# ----------------------------------------------------------------------------- packing


def pack_tree(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    """A pytree's leaves as ``{prefix.00000: array, ...}`` in ``tree_leaves`` order."""
    leaves = jax.device_get(jax.tree_util.tree_leaves(tree))
    return {f"{prefix}.{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def unpack_tree(prefix: str, arrays: Mapping[str, np.ndarray], template: Any) -> Any:
    """Rebuild a pytree shaped like ``template`` (arrays or ``ShapeDtypeStruct``s) from ``pack_tree`` output."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    stored = sorted(k for k in arrays if k.startswith(prefix + "."))
    if len(stored) != len(leaves):
        raise CheckpointError(f"checkpoint holds {len(stored)} arrays for {prefix}, the run needs {len(leaves)}")
    out = []
    for key, like in zip(stored, leaves):
        value = arrays[key]
        if value.shape != tuple(like.shape) or value.dtype != like.dtype:
            raise CheckpointError(f"checkpoint array {key} is {value.dtype}{list(value.shape)}, "
                                  f"the run needs {like.dtype}{list(like.shape)}")
        out.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, out)


def pack_columns(columns: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Metric columns as arrays ``metrics.<name>`` plus their order."""
    return {f"metrics.{k}": np.asarray(v) for k, v in columns.items()}, list(columns)


def unpack_columns(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: arrays[f"metrics.{k}"] for k in names}


def evals_to_json(evals: Sequence[EvalRecord]) -> list[list[Any]]:
    """``EvalRecord``s as ``[iteration, {summary field: value}]`` (floats round-trip exactly)."""
    return [[int(e.iteration), {k: _plain(v) for k, v in e.summary._asdict().items()}] for e in evals]


def evals_from_json(data: Sequence[Any]) -> list[EvalRecord]:
    return [EvalRecord(int(it), TrackingSummary(**summary)) for it, summary in data]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- a run's state


def run_checkpoint(iteration: int, identity: Mapping[str, Any], trees: Mapping[str, Any],
                   metrics: Mapping[str, np.ndarray], evals: Sequence[EvalRecord],
                   info: Mapping[str, Any] | None = None) -> Checkpoint:
    """A trainer's or backend's state after ``iteration`` updates: named pytrees, the metric
    columns and evaluations so far, ``identity`` (what the run must match to be resumed from it:
    backend, scheme, ...) and any other JSON-able ``info``."""
    arrays, columns = pack_columns(metrics)
    for name, tree in trees.items():
        arrays.update(pack_tree(name, tree))
    return Checkpoint(iteration, arrays, {**identity, **(info or {}), "columns": columns,
                                          "evals": evals_to_json(evals)})


def restore_run(checkpoint: Checkpoint, identity: Mapping[str, Any], templates: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[EvalRecord]]:
    """Inverse of ``run_checkpoint``: the pytrees (shaped like ``templates``), the metric columns
    and the evaluations; a ``CheckpointError`` when the checkpoint's identity is not ``identity``."""
    info = checkpoint.info
    if any(info.get(k) != v for k, v in identity.items()):
        stored = ", ".join(f"{k} {info.get(k)!r}" for k in identity)
        wanted = ", ".join(f"{k} {v!r}" for k, v in identity.items())
        raise CheckpointError(f"checkpoint is of {stored}; this run is {wanted}")
    trees = {name: unpack_tree(name, checkpoint.arrays, template) for name, template in templates.items()}
    return trees, unpack_columns(checkpoint.arrays, info["columns"]), evals_from_json(info["evals"])
