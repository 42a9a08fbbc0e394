"""Studies on a Ray cluster: every run of a ``compare`` or ``regimes`` study as one Ray task.

``--cluster ADDRESS`` (``compare``, ``regimes``) is where the *runs of a study* go: each
run is one Ray task (``num_cpus=1``) on any node of the running cluster at ``ADDRESS``
(``host:port`` of its head, or ``auto`` on a node of it). It is not ``--address`` /
``workers.address``, which is where the *workers of one run* of the ``ray`` backend go;
a run on a cluster trains on ``sim`` (or is the sequential reference), so it needs one
CPU and is reproducible.

The driver (the ``asynccorr`` process) plans and checks the study as a local one does,
takes the locks of the run directories it will write, submits the runs and writes what
each returns. A task needs nothing of the driver's filesystem: it trains into a
temporary directory on its node and returns the bytes of every file of the run
directory (``RunFiles``); the driver writes them with the same atomic writes into
``<results>/<experiment>/<scheme>-seed<k>/`` (``meta.json`` last, with ``cluster``: the
address and the node that trained it), then the summary, as a local comparison does.
The simulation is deterministic, so every file of a run but ``meta.json`` is
byte-identical to the local run's, and so are ``summary.md`` and ``summary.csv`` but for
its ``wall_time_s`` column. ``meta.json`` differs where it records the machine and the
moment: ``host``, ``platform``, ``created``, ``git_commit`` (None: the package shipped
to the nodes is no git checkout), ``wall_time_s`` (also in its ``summary``),
``first_flush`` (a wall-clock moment) and ``cluster``.

Every node needs the project's dependencies (``pip install asynccorr`` there, or a
shared environment); this copy of the ``asynccorr`` package is shipped to the tasks
with ``py_modules`` (``ray_backend.runtime_env``), so they run the driver's code.
Ctrl-C cancels the tasks still running; the runs that had finished are written, the
others are not (``compare --resume`` trains them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from asynccorr.backends.checkpoint import Checkpoint
from asynccorr.backends.registry import backend_for
from asynccorr.config import ConfigError, ExperimentConfig
from asynccorr.runs import locks
from asynccorr.runs.checkpoints import prune
from asynccorr.runs.files import atomic_write_bytes, prepare_run_dir, write_json
from asynccorr.runs.run import PlannedRun, run_dir_for, train_run


class ClusterError(ConfigError):
    """The cluster cannot be used (bad address, unreachable, no Ray, a run it cannot take): bad input."""


class RunFiles(NamedTuple):
    """What a task returns for one trained run."""

    files: dict[str, bytes]  # every file of the run directory, by path relative to it ("checkpoint/ckpt-…")
    summary: dict[str, Any]  # the run's row of the comparison table


# ---------------------------------------------------------------------------------------------- checks


def check_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port``, None for ``auto``; ``ClusterError`` for anything else."""
    if address == "auto":
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--cluster must be host:port of the Ray head (or auto), got {address!r}")
    return host.strip("[]"), int(port)


def check_runs(configs: Sequence[tuple[str, ExperimentConfig]]) -> None:
    """Every run can be one task on one CPU: it trains on ``sim`` (or is the sequential reference)."""
    for scheme, config in configs:
        backend = backend_for(config, scheme)
        if not backend.in_process:
            raise ClusterError(f"--cluster runs each run as a one-CPU Ray task on the sim backend; "
                               f"workers.backend = {backend.name!r} cannot be (use --address for a ray-backend run)")


def check_reachable(address: str) -> None:
    """``check_address``, and something answers there (a refused or timed-out connection is a
    ``ClusterError`` at once, where Ray would retry for a long while)."""
    hostport = check_address(address)
    if hostport is None:
        return
    try:
        socket.create_connection(hostport, timeout=5).close()
    except OSError as exc:
        raise ClusterError(f"--cluster: cannot reach a Ray cluster at {address!r} "
                           f"({exc.strerror or type(exc).__name__})") from None


def task_env(address: str) -> dict[str, Any]:
    """The tasks' runtime environment: ``ray_backend.runtime_env`` (one thread for BLAS, the package
    shipped), but XLA's threading as in this process, so that a run gives the local run's bytes
    (XLA's single-threaded CPU path, which the ray backend's workers take, rounds differently; its
    default path gave the same bytes on 1 and 2 cores)."""
    from asynccorr.backends.ray_backend import runtime_env

    env = runtime_env(address)
    env["env_vars"] = {**env["env_vars"], "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    return env


@contextlib.contextmanager
def connected(address: str) -> Iterator[None]:
    """This process joined to the Ray cluster at ``address`` (and left again afterwards); a Ray
    already initialised in this process is used as it is and left running."""
    check_reachable(address)
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray: pip install 'asynccorr[ray]'") from None
    from ray.exceptions import RayError

    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, runtime_env=task_env(address), logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:  # no Ray there; its token
        raise ClusterError(f"--cluster: cannot join the Ray cluster at {address!r}: {exc} (a cluster with token "
                           "authentication needs its token here too: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, "
                           "or ~/.ray/auth_token)") from None
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------- tasks


def _on_node(fn: Callable[..., Any], args: tuple) -> tuple[Any, str]:
    """Inside a task: ``fn(*args)`` with the node's JAX compilation cache; (its value, the node id)."""
    import ray

    from asynccorr.compile.cache import compilation_cache

    compilation_cache()
    return fn(*args), ray.get_runtime_context().get_node_id()


def run_tasks(address: str, fn: Callable[..., Any], calls: Sequence[tuple],
              on_result: Callable[[int, Any, str], None]) -> None:
    """``fn(*calls[i])`` for every i as one-CPU Ray tasks on the cluster at ``address``, submitted in
    order; ``on_result(i, value, node id)`` in this process as each completes. An error in a task
    is raised here; it, or Ctrl-C, cancels the tasks still pending."""
    with connected(address):
        import ray

        remote = ray.remote(num_cpus=1)(_on_node)
        pending = {remote.remote(fn, args): i for i, args in enumerate(calls)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    value, node = ray.get(ref)
                    on_result(pending.pop(ref), value, node)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):  # best effort while stopping
                    ray.cancel(ref, force=True)


def run_into_files(config: ExperimentConfig, scheme: str, checkpoint: Checkpoint | None = None) -> RunFiles:
    """Train one run into a temporary directory of this node (resumed from ``checkpoint`` if given)
    and return its files."""
    with tempfile.TemporaryDirectory(prefix="asynccorr-run-") as tmp:
        run_dir, _, summary = train_run(config, scheme, Path(tmp), resume=checkpoint or False)
        files = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    return RunFiles(files, summary)


def write_files(run_dir: Path, files: dict[str, bytes], meta_extra: dict[str, Any]) -> None:
    """A run's files into ``run_dir`` (prepared by the caller), atomically each, ``meta.json`` last
    with ``meta_extra`` added; only the newest checkpoints stay (``checkpoints.prune``)."""
    for name, data in files.items():
        if name != "meta.json":
            atomic_write_bytes(run_dir / name, data)
    prune(run_dir)
    write_json(run_dir / "meta.json", {**json.loads(files["meta.json"]), **meta_extra})


# ---------------------------------------------------------------------------------------------- compare


def run_planned(address: str, results: Path, planned: Sequence[PlannedRun], overwrite: bool,
                  on_done: Callable[[PlannedRun], None] | None = None) -> list[dict[str, Any]]:
    """Every planned run of a comparison (``runs.run.PlannedRun``: train, restart and resume on the cluster,
    reuse as it is); returns the summary rows in plan order.

    The run directories' locks are taken before anything is submitted and held until the end, so
    no other process trains into them meanwhile; a run's directory is replaced only when its files
    arrive (``train``: unless it exists and not ``overwrite``; ``restart``: always; ``resume``: the
    files are written over the partial run's).
    """
    check_runs([(run.scheme, run.config) for run in planned])
    rows: list[dict[str, Any] | None] = [run.row for run in planned]
    todo = [i for i, run in enumerate(planned) if run.action != "reuse"]
    owners: dict[int, locks.Owner] = {}
    with connected(address), contextlib.ExitStack() as held:
        held.callback(_release, results, planned, owners)
        for i in todo:
            run = planned[i]
            owners[i] = locks.acquire(run_dir_for(results, run.config, run.scheme),
                                      take_over=overwrite or run.action != "train")
        for run in planned:
            if run.action == "reuse" and on_done is not None:
                on_done(run)

        def arrived(j: int, got: RunFiles, node: str) -> None:
            run = planned[todo[j]]
            run_dir = run_dir_for(results, run.config, run.scheme)
            if run.action != "resume":
                prepare_run_dir(run_dir, overwrite=overwrite or run.action == "restart")
            write_files(run_dir, got.files, {"cluster": {"address": address, "node": node}})
            rows[todo[j]] = got.summary
            if on_done is not None:
                on_done(run)

        calls = [(planned[i].config, planned[i].scheme, planned[i].checkpoint) for i in todo]
        run_tasks(address, run_into_files, calls, arrived)
    return [row for row in rows if row is not None]


def _release(results: Path, planned: Sequence[PlannedRun], owners: dict[int, locks.Owner]) -> None:
    for i, owner in owners.items():
        locks.release(run_dir_for(results, planned[i].config, planned[i].scheme), owner)
