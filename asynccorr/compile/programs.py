"""Compiled programs kept on disk between processes, so that a repeated run starts without tracing.

The persistent compilation cache (``asynccorr.compile.cache``) skips XLA's compile, but a process still
traces and lowers every jitted function before it can look its compile up: for a short run that is
most of the start-up (about 4 s of the default experiment's 6 s before its first update, measured
with cProfile). ``jit`` here keeps a function's *executable* (``jax.experimental.serialize_executable``)
in ``<cache folder>/programs`` under a key of everything that determines it:

* the run's **scope** (``scope(config, scheme)``, entered by ``asynccorr.backends.registry.run``): every program
  a run jits is a function of its experiment config, its scheme and the code. The seed and the run's
  length are left out (no program captures them: they enter as arguments or as static chunk lengths,
  which are part of the signature), so the runs of a study share their programs;
* the function's **name** in that scope (one name per jitted function), its arguments' tree structure,
  shapes, dtypes and weak types, and its static arguments' values;
* a digest of the asynccorr sources, the versions of jax, jaxlib, optax, flax and numpy, the device and
  ``XLA_FLAGS``.

A process with the same key loads the executable instead of tracing, lowering and compiling: the same
machine code, so bit-identical results. A process that keeps programs should not read JAX's compilation
cache (``asynccorr.compile.cache`` turns it off there): on jax 0.10 (CPU), once a process has loaded an
executable from that cache, what it compiles afterwards can serialise without some of its kernels. Every
program is therefore read back before it is written, and kept only if it gives the same bits. Outside a scope (a learner built by hand, the tests' direct
calls), or with no folder (``enable`` not called, or ``ASYNCCORR_JAX_CACHE=off``), ``jit`` is
``jax.jit``. A file that cannot be read back is compiled again and replaced. The folder is kept under
``$ASYNCCORR_PROGRAMS_MAX_MB`` (default 2 GB; a study of many configs keeps a few MB per run scope),
least recently used first out. The files are pickles: the cache folder is the user's own, as JAX's is.

Loading a kept executable is most of a warm run's start-up after the imports (about 0.1 s each, six
for a run of the default experiment). So a scope also records which files its run loaded, in order
(``<key digest>.scope``), and the next scope with that key starts loading them on two background
threads as it is entered (``Prefetch``), while the run builds its learner and calls its first
programs; a call then takes its executable from there (after the same key check) or, if that file
was not prefetched or did not load, reads it as before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import jax
import numpy as np

UNCAPTURED = ("seed", "iterations")  # the ``train`` fields no program captures (left out of a scope's key)
MAX_MB = 2048  # the folder's size limit (``ASYNCCORR_PROGRAMS_MAX_MB``): the least recently used go first

_FOLDER: list[Path | None] = [None]  # where executables are kept (None: nowhere)
_SCOPE: ContextVar[str | None] = ContextVar("asynccorr_program_scope", default=None)
_PREFETCH: ContextVar[Prefetch | None] = ContextVar("asynccorr_program_prefetch", default=None)
PREFETCH_THREADS = 2  # background threads loading a scope's executables (deserialising releases the GIL)
_PROGRAMS: weakref.WeakSet[Program] = weakref.WeakSet()  # every live Program (``forget``)


def enable(folder: Path | None) -> None:
    """Keep executables in ``folder`` (created on first write); None: keep none (plain ``jax.jit``)."""
    _FOLDER[0] = None if folder is None else Path(folder)


def folder() -> Path | None:
    return _FOLDER[0]


def scope_key(config: Any, scheme: str) -> str:
    """What determines every program of a run of ``scheme`` on ``config`` (an ``ExperimentConfig``),
    less ``UNCAPTURED``."""
    from asynccorr.config import to_dict

    parts = to_dict(config)
    parts["train"] = {k: v for k, v in parts["train"].items() if k not in UNCAPTURED}
    return json.dumps([parts, scheme], sort_keys=True, default=str)


@contextlib.contextmanager
def scope(config: Any, scheme: str) -> Iterator[None]:
    """The programs jitted inside are those of one run of ``scheme`` on ``config``: kept and reused; the
    ones the last scope with this key loaded start loading in the background as it is entered."""
    key = scope_key(config, scheme)
    token = _SCOPE.set(key)
    prefetch = None if _FOLDER[0] is None else Prefetch(_FOLDER[0], key)
    prefetch_token = _PREFETCH.set(prefetch)
    try:
        yield
    finally:
        _PREFETCH.reset(prefetch_token)
        _SCOPE.reset(token)
        if prefetch is not None:
            prefetch.close()


class _Loaded:
    """A kept file read and loaded ahead of its first call: the key it was stored under, its parts and
    the loaded executable."""

    def __init__(self, key: str, parts: tuple, executable: Callable) -> None:
        self.key, self.parts, self.executable = key, parts, executable


class Prefetch:
    """One scope's executables loaded on background threads, in the order its last run first called
    them (its ``.scope`` manifest), and the order this run calls them in (written back at ``close``)."""

    def __init__(self, folder: Path, scope_id: str) -> None:
        self.manifest = manifest_path(folder, scope_id)
        self.expected = _read_manifest(self.manifest)
        self.used: list[str] = []  # the file names this run called, in order
        self.futures: dict[str, Future[_Loaded | None]] = {}
        self.pool = None
        if self.expected:
            self.pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="asynccorr-programs")
            self.futures = {name: self.pool.submit(_load, folder / name) for name in self.expected}

    def take(self, path: Path, key: str) -> _Loaded | None:
        """``path``'s executable if it was prefetched under ``key`` (once), else None; notes the call."""
        if path.name not in self.used:
            self.used.append(path.name)
        future = self.futures.pop(path.name, None)
        loaded = None if future is None else future.result()
        return loaded if loaded is not None and loaded.key == key else None

    def close(self) -> None:
        """Drop what was not used, and record this run's order for the next scope with this key, unless it
        called fewer programs than the manifest lists (a run that stopped early, or whose programs this
        process already held)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.futures.clear()
        if len(self.used) >= len(self.expected) and self.used != self.expected:
            with contextlib.suppress(*_UNWRITABLE):
                _write(self.manifest, json.dumps(self.used).encode())


def manifest_path(folder: Path, scope_id: str) -> Path:
    """Where a scope's manifest (the kept files its last run called, in order) lives."""
    return folder / f"{hashlib.sha256(scope_id.encode()).hexdigest()[:32]}.scope"


def _read_manifest(path: Path) -> list[str]:
    """The file names a ``.scope`` manifest lists ([] if there is none or it is unreadable)."""
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str) and n.endswith(".bin") and "/" not in n] \
        if isinstance(names, list) else []


def _load(path: Path) -> _Loaded | None:
    """A kept file's key, parts and loaded executable (a background thread's work), or None."""
    from jax.experimental import serialize_executable

    stored = _read(path)
    if stored is None:
        return None
    with contextlib.suppress(*_UNREADABLE):
        return _Loaded(stored[0], stored[1], serialize_executable.deserialize_and_load(*stored[1]))
    return None


@functools.lru_cache(maxsize=1)
def sources_digest() -> str:
    """sha256 of every ``.py`` file of the package (path and contents), once per process: any code
    change is a new key."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


TRACED_PACKAGES = ("jax", "jaxlib", "optax", "flax", "numpy")  # whose code a program's computation comes from


@functools.lru_cache(maxsize=1)
def _platform() -> tuple[str, ...]:
    """What else determines an executable: the versions of the packages traced into it, the device, the
    flags (once per process)."""
    from importlib import metadata

    device = jax.devices()[0]
    versions = []
    for package in TRACED_PACKAGES:
        try:
            versions.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    return (*versions, device.platform, device.device_kind, str(jax.device_count()),
            str(jax.config.jax_enable_x64), os.environ.get("XLA_FLAGS", ""))


def _aval(leaf: Any) -> tuple[tuple[int, ...], str, bool]:
    aval = jax.typeof(leaf)
    return tuple(aval.shape), aval.dtype.name, bool(aval.weak_type)


class _Entry:
    """One signature's executable in this process, its serialised form (None: it did not read back) and
    the scopes it is kept under."""

    def __init__(self, executable: Callable, parts: tuple | None, scope_id: str) -> None:
        self.executable, self.parts, self.scopes = executable, parts, {scope_id}


class Program:
    """``jax.jit(fn, static_argnums)`` whose executables are kept on disk inside a ``scope``."""

    def __init__(self, fn: Callable, name: str, static_argnums: Sequence[int] = ()) -> None:
        self.name = name
        self.static = tuple(static_argnums)
        self.jitted = jax.jit(fn, static_argnums=self.static)
        self._loaded: dict[Hashable, _Entry] = {}  # signature -> this process's executable
        _PROGRAMS.add(self)

    def __call__(self, *args: Any) -> Any:
        scope_id = _SCOPE.get()
        if scope_id is None or _FOLDER[0] is None:
            return self.jitted(*args)
        dynamic = [a for i, a in enumerate(args) if i not in self.static]
        leaves, tree = jax.tree.flatten(dynamic)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):  # called inside a trace: part of that program
            return self.jitted(*args)
        signature = (tree, tuple(_aval(x) for x in leaves), tuple(args[i] for i in self.static))
        entry = self._loaded.get(signature)
        if entry is None:
            entry, out = self._first_call(scope_id, signature, args, dynamic)
            self._loaded[signature] = entry
            return out
        if scope_id not in entry.scopes:  # this function object under another run's scope: the same program
            entry.scopes.add(scope_id)
            if entry.parts is not None:
                key, path = self._key(scope_id, signature)
                _keep(path, key, entry.parts)
        return entry.executable(*dynamic)

    def _key(self, scope_id: str, signature: tuple) -> tuple[str, Path]:
        tree, avals, statics = signature
        key = json.dumps([scope_id, self.name, str(tree), avals, repr(statics), sources_digest(), _platform()])
        return key, _FOLDER[0] / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"

    def _first_call(self, scope_id: str, signature: tuple, args: tuple, dynamic: list) -> tuple[_Entry, Any]:
        """(this signature's entry, its output on ``dynamic``): kept on disk, else compiled and kept. A
        kept executable is only written once it has been read back and has given the same bits."""
        from jax._src import config as jax_config
        from jax.experimental import serialize_executable

        key, path = self._key(scope_id, signature)
        prefetch = _PREFETCH.get()
        kept = None if prefetch is None else prefetch.take(path, key)
        if kept is None:
            kept = _load(path)
        if kept is not None and kept.key == key:
            with contextlib.suppress(RuntimeError, *_UNREADABLE):  # e.g. NOT_FOUND: a kernel the file lacks
                out = kept.executable(*dynamic)
                with contextlib.suppress(OSError):
                    os.utime(path)  # used now: evicted last
                return _Entry(kept.executable, kept.parts, scope_id), out
        # A fresh compile, not JAX's compilation cache: an executable that came out of that cache
        # serialises without its kernels (jax 0.10, CPU). One this process already holds for the same
        # computation may still be reused; the read-back check below keeps such a one off the disk.
        with jax_config.enable_compilation_cache(False):
            compiled = self.jitted.lower(*args).compile()
        out = compiled(*dynamic)
        kept = None
        with contextlib.suppress(*_UNWRITABLE):  # a read-only cache, an unserialisable executable: run it anyway
            parts = serialize_executable.serialize(compiled)
            again = serialize_executable.deserialize_and_load(*pickle.loads(pickle.dumps(parts, protocol=5)))
            if _same_bits(again(*dynamic), out):
                kept = parts
                _keep(path, key, parts)
        return _Entry(compiled, kept, scope_id), out


def _same_bits(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(leaves_a, leaves_b))


def forget() -> None:
    """Drop every executable this process loaded or compiled (the next call reads the disk again)."""
    for program in list(_PROGRAMS):
        program._loaded.clear()


_UNREADABLE = (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError, RuntimeError,
               pickle.UnpicklingError)  # absent, truncated, written by another version
_UNWRITABLE = (OSError, TypeError, ValueError, RuntimeError, pickle.PicklingError, pickle.UnpicklingError)


def _read(path: Path) -> tuple[str, tuple] | None:
    """The key a kept file was stored under and its serialised executable (payload, in tree, out tree),
    or None."""
    try:
        stored_key, *parts = pickle.loads(path.read_bytes())
    except _UNREADABLE:
        return None
    return (stored_key, tuple(parts)) if len(parts) == 3 else None


def _keep(path: Path, key: str, parts: tuple) -> None:
    """Write a serialised executable under ``key``, then keep the folder under its size limit."""
    with contextlib.suppress(*_UNWRITABLE):
        _write(path, pickle.dumps((key, *parts), protocol=5))
        evict(path.parent, limit_bytes())


def limit_bytes() -> int:
    """The size the programs folder is kept under: ``$ASYNCCORR_PROGRAMS_MAX_MB`` (default ``MAX_MB``)."""
    try:
        return int(float(os.environ.get("ASYNCCORR_PROGRAMS_MAX_MB", MAX_MB)) * 2**20)
    except ValueError:
        return MAX_MB * 2**20


def evict(folder: Path, limit: int) -> list[Path]:
    """Remove the least recently used programs (by modification time: a load touches its file) until the
    folder holds at most ``limit`` bytes; the removed paths."""
    with contextlib.suppress(OSError):
        entries = []
        for path in folder.glob("*.bin"):
            with contextlib.suppress(OSError):  # a concurrent eviction took it
                stat = path.stat()
                entries.append((stat.st_mtime_ns, stat.st_size, path))
        total, removed = sum(size for _, size, _ in entries), []
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= limit:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
            total -= size
        return removed
    return []


def _write(path: Path, data: bytes) -> None:
    """Atomically: a reader sees the whole file or none (concurrent runs may write the same one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def jit(fn: Callable, name: str, static_argnums: Sequence[int] = ()) -> Program:
    """``jax.jit`` whose executables a ``scope`` keeps on disk under ``name`` (unique per jitted function
    of a run)."""
    return Program(fn, name, static_argnums)
