"""The execution backends, in one registry: what trains a run, and where its workers run.

Each entry declares its name, what it is, whether a run continues from a checkpoint (and
whether bit for bit), which schemes it cannot run, and its run function
``run(config, scheme_name, hooks)`` returning a ``protocol.RunResult``. The worker
backends (``sim``, ``mp``, ``ray``: ``workers.backend``) run the same server role
(``backends.server``); ``sequential`` is the single-worker, always-fresh reference
trainer, chosen by the scheme name ``sequential`` rather than by ``workers.backend``.
``run`` trains one run in memory on the backend ``backend_for`` picks; ``runs``
(training, ``compare --resume``) and the CLI's help read this registry, so adding a
backend is one module plus one entry below (and its name in ``config.WORKER_BACKENDS``).

The run function is named as ``"module:function"`` and imported only when a run
starts (Ray is an optional dependency).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from asynccorr.backends.protocol import NO_HOOKS, RunHooks, RunResult
from asynccorr.compile import programs
from asynccorr.config import WORKER_BACKENDS, ExperimentConfig
from asynccorr.errors import ConfigError
from asynccorr.schemes.registry import SEQUENTIAL, get_scheme, resolve


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # a few words for the CLI help
    run: str  # "module:function" of the run function
    resumable: bool  # a run continues from its checkpoint (--resume)
    exact_resume: bool = True  # ... as the uninterrupted run would have, bit for bit (real workers: continued
    # by new worker incarnations; the whole resumed run replays bit for bit from its schedule)
    refuses: tuple[str, ...] = ()  # the scheme kinds it cannot run (``scheme_kinds``)
    workers: bool = True  # a worker backend (a ``workers.backend``); False: the sequential reference
    in_process: bool = True  # the whole run runs in the calling process (so a cluster runs it as one task)

    def supports(self, scheme_name: str) -> bool:
        return not set(scheme_kinds(scheme_name)) & set(self.refuses)

    def run_function(self) -> Callable:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)


def scheme_kinds(scheme_name: str) -> tuple[str, ...]:
    """What a backend may refuse about a scheme: its compute (``dense``), an unrealisable
    protocol (``oracle``), rounds that overlap the server's apply (``pipelined``)."""
    scheme = get_scheme(scheme_name)
    return (scheme.compute, *(("oracle",) if not scheme.realisable else ()), *(("pipelined",) if scheme.pipelined else ()))


REAL_REFUSES = ("dense", "oracle", "pipelined")  # the real backends run what a real cluster can (and we built)

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("sequential", "the single-worker, always-fresh reference trainer",
                "asynccorr.backends.sequential:run_sequential", True, workers=False),
        Backend("sim", "a deterministic simulation on one process", "asynccorr.backends.sim:run_sim", True),
        Backend("mp", "worker processes on this machine", "asynccorr.backends.mp:run_mp", True,
                exact_resume=False, refuses=REAL_REFUSES, in_process=False),
        Backend("ray", "Ray actors on a local or remote cluster", "asynccorr.backends.ray_backend:run_ray", True,
                exact_resume=False, refuses=REAL_REFUSES, in_process=False),
    )
}


assert tuple(b.name for b in BACKENDS.values() if b.workers) == WORKER_BACKENDS, "config.WORKER_BACKENDS"


def get_backend(name: str) -> Backend:
    """A worker backend by its ``workers.backend`` name."""
    if name not in BACKENDS or not BACKENDS[name].workers:
        able = [b.name for b in BACKENDS.values() if b.workers]
        raise ConfigError(f"workers.backend must be one of {able}, got {name!r}")
    return BACKENDS[name]


def backend_for(config: ExperimentConfig, scheme: str) -> Backend:
    """What trains a run: the sequential reference for the scheme ``sequential``, else ``workers.backend``."""
    return BACKENDS["sequential"] if scheme == SEQUENTIAL else get_backend(config.workers.backend)


def run_workers(config: ExperimentConfig, scheme: str) -> int:
    """How many workers a run has (the sequential reference: one)."""
    return config.workers.count if backend_for(config, scheme).workers else 1


def run(config: ExperimentConfig, scheme: str, hooks: RunHooks = NO_HOOKS) -> RunResult:
    """Train one run in memory on its backend (``backend_for``); a bare ``modify`` takes
    ``schemes.protocol``. Its compiled programs are kept for the next run like it."""
    backend = backend_for(config, scheme)
    if backend.workers:
        scheme = resolve(scheme, config.schemes.protocol)
        check_backend_runs(backend.name, scheme)
    check_learner_runs(config, scheme)
    with programs.scope(config, scheme):
        return backend.run_function()(config, scheme, hooks=hooks)


def check_backend_runs(backend_name: str, scheme_name: str) -> None:
    """A ``ConfigError`` naming the backends that can, when ``backend_name`` cannot run the scheme."""
    if not get_backend(backend_name).supports(scheme_name):
        able = [b.name for b in BACKENDS.values() if b.workers and b.supports(scheme_name)]
        raise ConfigError(f"scheme {scheme_name} ({get_scheme(scheme_name).summary}) runs on workers.backend = "
                          f"{' or '.join(repr(n) for n in able)} only, not {backend_name!r}")


def check_learner_runs(config: ExperimentConfig, scheme_name: str) -> None:
    """A ``ConfigError`` when the learner cannot run the scheme: a central replay (Ape-X) lives on the
    server and feeds its direction, so it needs the ``learner`` scheme (workers only sample)."""
    if config.learner.kind == "q" and config.learner.q.replay == "central" and scheme_name != "learner":
        raise ConfigError(f"learner.q.replay = 'central' (Ape-X: the server draws its batches from one "
                          f"replay) needs the learner scheme, not {scheme_name}")


def backend_help() -> str:
    """One line for the CLI's ``--backend`` option, from the registry."""
    return "Execution backend (overrides workers.backend): " + ", ".join(
        f"{b.name} ({b.summary})" for b in BACKENDS.values() if b.workers) + "."
