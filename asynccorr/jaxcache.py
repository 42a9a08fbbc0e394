"""The persistent JAX compilation cache every entry point (the CLI, the study scripts) shares."""

from __future__ import annotations

from pathlib import Path


def compilation_cache() -> Path | None:
    """Use a persistent JAX compilation cache, so that a command does not compile again what an
    earlier one compiled (start-up of a short run is mostly compilation). The folder is
    ``$ASYNCCORR_JAX_CACHE``, else ``$JAX_COMPILATION_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/asynccorr/jax`` (``~/.cache/asynccorr/jax``); ``ASYNCCORR_JAX_CACHE=off``
    turns it off. Set in the environment too, so that worker processes share it."""
    import os

    chosen = os.environ.get("ASYNCCORR_JAX_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if chosen == "off":
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(chosen) if chosen else base / "asynccorr" / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile as before
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    return folder
