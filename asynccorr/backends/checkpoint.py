"""Checkpoints: a run's whole state as arrays plus JSON, what a backend saves and restores.

A ``Checkpoint`` holds named arrays -- the pytree leaves of the backend's state,
flattened with ``jax.tree_util`` in a fixed order, and the metric columns so far --
and ``info``, everything that is not an array (numpy generator state, event heap,
counters, evaluations so far). Pytrees are rebuilt against a template of the same
structure (e.g. from ``jax.eval_shape`` of the backend's init), so no code object is
ever stored. On disk: ``runs.checkpoints``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.learners.evaluation import EvalRecord, TrackingSummary


class Checkpoint(NamedTuple):
    """One saved state: the server iteration it was taken at, named arrays and JSON-able info."""

    iteration: int
    arrays: dict[str, np.ndarray]
    info: dict[str, Any]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the run it is loaded into."""


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
