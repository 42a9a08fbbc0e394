"""Local parallel runs: a pool of spawned processes for a study's independent runs
(``compare --jobs``, ``regimes --jobs``).

Spawned, not forked: a child starts clean and imports JAX itself, after the pool has put
``XLA_FLAGS`` in its environment. The regime study's children run XLA single-threaded (N
processes share N cores instead of each starting a thread per core); ``compare``'s keep this
process's XLA threading, because the threading changes the last bits of a run's numbers and
``compare --jobs 2`` writes exactly what ``--jobs 1`` does (tested, byte for byte). Each child
keeps compiled programs as the command line does (``compile.cache.compilation_cache``, which
reads the parent's choice from the environment).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context

from asynccorr.errors import ConfigError


def check_jobs(jobs: int, cluster: str | None) -> None:
    """How many runs at once (``--jobs``; the API's ``jobs``): at least one, and not together with a
    cluster, where every run is a Ray task; a one-line ``ConfigError`` otherwise."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs!r}")
    if cluster is not None and jobs > 1:
        raise ConfigError("--jobs and --cluster exclude each other (on a cluster every run is a Ray task)")


SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _start_child() -> None:
    from asynccorr.compile.cache import compilation_cache

    compilation_cache()


@contextmanager
def process_pool(jobs: int, keep_programs: bool = True, single_thread: bool = True) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` spawned processes, each single-threaded XLA unless not ``single_thread`` (then XLA as in
    this process, whose numerics it keeps), with ``keep_programs`` the command line's compiled-program
    cache; the parent's environment is restored afterwards."""
    previous = os.environ.get("XLA_FLAGS")
    if single_thread:
        os.environ["XLA_FLAGS"] = f"{previous} {SINGLE_THREAD_XLA}" if previous else SINGLE_THREAD_XLA
    try:  # spawned children read the environment at start-up, before they import jax
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                 initializer=_start_child if keep_programs else None) as pool:
            yield pool
    finally:
        if previous is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = previous
