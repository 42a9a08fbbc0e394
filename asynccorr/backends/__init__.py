"""The execution backends, in one registry: where the workers run.

Every backend runs the same server role (``serving.ServerRole``) and returns the same
``run_protocol.RunResult``; each declares here its name, what it is, whether a run
continues bit-exactly from a checkpoint, which schemes it cannot run, and its run
function ``run(config, scheme_name, hooks=...)``. Config validation, ``runs``
(training, ``compare --resume``) and the CLI's help read this registry, so adding a
backend is one module plus one entry below.

The run function is named as ``"module:function"`` and imported only when a run
starts (Ray is an optional dependency).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from asynccorr.errors import ConfigError
from asynccorr.schemes import get_scheme


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # a few words for the CLI help
    run: str  # "module:function" of the run function
    resumable: bool  # a checkpoint reproduces the run bit for bit (so --resume is allowed)
    refuses: tuple[str, ...] = ()  # the scheme kinds it cannot run (``scheme_kinds``)

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
        Backend("sim", "a deterministic simulation on one process", "asynccorr.backends.sim:run_sim", True),
        Backend("mp", "worker processes on this machine", "asynccorr.backends.mp:run_mp", False,
                refuses=REAL_REFUSES),
        Backend("ray", "Ray actors on a local or remote cluster", "asynccorr.backends.ray_backend:run_ray", False,
                refuses=REAL_REFUSES),
    )
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"workers.backend must be one of {list(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def check_backend_runs(backend_name: str, scheme_name: str) -> None:
    """A ``ConfigError`` naming the backends that can, when ``backend_name`` cannot run the scheme."""
    if not get_backend(backend_name).supports(scheme_name):
        able = [b.name for b in BACKENDS.values() if b.supports(scheme_name)]
        raise ConfigError(f"scheme {scheme_name} ({get_scheme(scheme_name).summary}) runs on workers.backend = "
                          f"{' or '.join(repr(n) for n in able)} only, not {backend_name!r}")


def backend_help() -> str:
    """One line for the CLI's ``--backend`` option, from the registry."""
    return "Execution backend (overrides workers.backend): " + ", ".join(
        f"{b.name} ({b.summary})" for b in BACKENDS.values()) + "."

