"""The persistent JAX compilation cache every entry point (the CLI, the study scripts) shares, and the
folder of whole compiled programs inside it (``asynccorr.compile.programs``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

OFF = "off"  # ASYNCCORR_JAX_CACHE=off (or ``asynccorr --no-jax-cache``): no persistent cache


def cache_folder(environ: Mapping[str, str], home: Path) -> Path | None:
    """Where the cache lives, or None when it is turned off: ``$ASYNCCORR_JAX_CACHE``, else
    ``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/asynccorr/jax`` (``~/.cache/asynccorr/jax``)."""
    chosen = environ.get("ASYNCCORR_JAX_CACHE") or environ.get("JAX_COMPILATION_CACHE_DIR")
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen)
    return Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "asynccorr" / "jax"


def compilation_cache(enabled: bool = True) -> Path | None:
    """Keep each run's whole compiled programs in the cache folder's ``programs/``, so that a repeated
    run neither traces nor compiles them again (``asynccorr.compile.programs``), and give the worker processes
    (``mp``, ``ray``; through the environment) a persistent JAX compilation cache in the folder itself,
    so that N workers compile once; the folder is ``cache_folder``'s. ``enabled=False`` turns both off
    as ``ASYNCCORR_JAX_CACHE=off`` does. ``ASYNCCORR_PROGRAMS=off`` keeps no programs and lets this
    process use the compilation cache too (a new config or scheme then compiles less, but every run
    traces again; the test suite, whose CLI calls are mostly new scopes, runs so)."""
    import jax

    from asynccorr.compile import programs

    if not enabled:
        os.environ["ASYNCCORR_JAX_CACHE"] = OFF
    folder = cache_folder(os.environ, Path.home())
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            folder = None  # a read-only home: compile as before
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        programs.enable(None)
        return None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)  # worker processes: the compilation cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    if os.environ.get("ASYNCCORR_PROGRAMS") == OFF:  # the compilation cache only, as before programs were kept
        jax.config.update("jax_enable_compilation_cache", True)
        programs.enable(None)
        return folder
    # This process keeps whole programs instead, and does not read the compilation cache: on jax 0.10
    # (CPU), once a process has loaded any executable from that cache, the executables it compiles
    # afterwards can serialise without some of their kernels (NOT_FOUND when loaded), so none of its
    # programs could be kept.
    jax.config.update("jax_enable_compilation_cache", False)
    programs.enable(folder / "programs")
    return folder
