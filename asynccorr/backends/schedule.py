"""A real run's schedule: the order in which the server received its workers' messages.

The ``mp`` and ``ray`` backends record, for every message the server role receives
(``ServerRole.receive``), what a replay needs to re-execute it (``backends.replay``):

* who computed it: the ``worker``, its ``incarnation`` (0, then +1 per replacement) and
  its ``job`` index in that incarnation (1-based) -- the worker's key stream and sampler
  state after ``job - 1`` jobs are a function of these and of the parameters it used;
* which parameters it used: ``version`` (theta_i, pulled at the job's start) and
  ``version_k`` (its mid-job pull, = ``version`` without one); for ``look-ahead`` the
  worker's clock at that pull and its lead (``worker.aim``'s inputs);
* what the server did with it, in this order: ``outcome`` ``applied``, ``dropped`` (a
  drop-stale scheme), ``held`` (sync: kept for its round), ``round`` (sync: completed
  its round, which was applied), ``late`` (sync: computed for an older version, ignored);
  ``at``, the server's clock (the metrics' ``time``), and the job's measured
  ``compute_time`` and ``phase_times``.

The file (``schedule.jsonl`` in the run directory) is JSON lines: a header (the format,
the package version that wrote it, backend, scheme, workers, seed, the server's XLA flags),
one line per message,
appended at every evaluation point like ``metrics.csv``, and an end line (the run's
status and its update count) once the run is over. A run continued from a checkpoint
(``train --resume``) keeps the lines of its first part (less that part's end line) and
goes on after a resume line (``{"resume": update}``). ``parse`` checks all of it and says
in one line what is wrong (``ScheduleError``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

from asynccorr import __version__
from asynccorr.errors import ConfigError

FORMAT = "asynccorr-schedule"
FORMAT_VERSION = 1
FILE = "schedule.jsonl"
OUTCOMES = ("applied", "dropped", "held", "round", "late")

_INT_FIELDS = ("worker", "incarnation", "job", "version", "version_k")
_FLOAT_FIELDS = ("at", "compute_time", "pulled", "lead")


class ScheduleError(ConfigError):
    """A schedule that cannot be replayed (missing, truncated, another version's, inconsistent)."""


class Entry(NamedTuple):
    """One received message (see the module docstring)."""

    worker: int
    incarnation: int
    job: int
    version: int
    version_k: int
    outcome: str
    at: float
    compute_time: float
    phase_times: tuple[float, ...] = ()
    pulled: float = 0.0
    lead: float = 0.0


class Schedule(NamedTuple):
    """A whole schedule: its header, its entries in the order received, its end line."""

    header: dict[str, Any]
    entries: tuple[Entry | Resume, ...]  # a resumed run's parts, each after its ``Resume``
    end: dict[str, Any]

    @property
    def scheme(self) -> str:
        return str(self.header["scheme"])

    @property
    def backend(self) -> str:
        return str(self.header["backend"])


def header(backend: str, scheme: str, workers: int, seed: int) -> dict[str, Any]:
    """The first line of a schedule file; ``xla_flags``: the server process's (its updates' numerics)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "package": __version__, "backend": backend,
            "scheme": scheme, "workers": workers, "seed": seed, "xla_flags": server_xla_flags()}


def server_xla_flags() -> str:
    """This process's ``XLA_FLAGS``: a replay's server computes as the recorded one only with the same."""
    return os.environ.get("XLA_FLAGS", "")


class Resume(NamedTuple):
    """Where a run continued from its checkpoint after ``iteration`` updates: what its first part
    received after that update is not part of the run; new worker incarnations follow."""

    iteration: int


def resume_line(iteration: int) -> dict[str, Any]:
    return {"resume": iteration}


def end_line(status: str, updates: int, dropped: int) -> dict[str, Any]:
    """The last line: how the run ended."""
    return {"end": status, "updates": updates, "dropped": dropped}


def encode(lines: Iterable[Entry | Resume | dict[str, Any]]) -> str:
    """Lines of a schedule file (floats as their shortest round-trip repr: exact)."""
    return "".join(json.dumps(_record(line), separators=(",", ":")) + "\n" for line in lines)


def _record(line: Entry | Resume | dict[str, Any]) -> dict[str, Any]:
    if isinstance(line, Entry):
        return line._asdict()
    return resume_line(line.iteration) if isinstance(line, Resume) else line


def parse(text: str, where: str = FILE) -> Schedule:
    """A schedule file's text, checked: ``ScheduleError`` names the first problem (the line)."""
    if not text.strip():
        raise ScheduleError(f"{where} is empty")
    if not text.endswith("\n"):
        raise ScheduleError(f"{where} is truncated (its last line is cut off)")
    lines = text.splitlines()
    head = _json(lines[0], where, 1)
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise ScheduleError(f"{where} is not an asynccorr schedule (line 1)")
    if head.get("format_version") != FORMAT_VERSION or head.get("package") != __version__:
        raise ScheduleError(f"{where} was recorded by asynccorr {head.get('package')} (schedule format "
                            f"{head.get('format_version')}); this is asynccorr {__version__} (format {FORMAT_VERSION}): "
                            "its key streams and programs may differ, so it cannot be replayed exactly")
    for field in ("backend", "scheme", "workers", "seed"):
        if field not in head:
            raise ScheduleError(f"{where}: the header has no {field!r} (line 1)")
    last = _json(lines[-1], where, len(lines)) if len(lines) > 1 else None
    if not isinstance(last, dict) or "end" not in last:
        raise ScheduleError(f"{where} is truncated (no end line: the run was cut off or the file shortened)")
    entries = tuple(_entry(_json(line, where, n), where, n) for n, line in enumerate(lines[1:-1], start=2))
    _check_jobs(entries, where)
    return Schedule(head, entries, last)


def _check_jobs(entries: tuple[Entry | Resume, ...], where: str) -> None:
    """Each worker incarnation's jobs are 1, 2, ... with none missing or repeated (a job's keys and
    sampler state follow from the jobs before it), and resume lines go forward."""
    jobs: dict[tuple[int, int], list[int]] = {}
    resumed = 0
    for e in entries:
        if isinstance(e, Resume):
            if e.iteration < resumed:
                raise ScheduleError(f"{where}: it resumes after update {e.iteration} after resuming after {resumed}")
            resumed = e.iteration
        else:
            jobs.setdefault((e.worker, e.incarnation), []).append(e.job)
    for (worker, incarnation), got in jobs.items():
        if sorted(got) != list(range(1, len(got) + 1)):
            raise ScheduleError(f"{where}: worker {worker}'s jobs (incarnation {incarnation}) are not 1 to "
                                f"{len(got)} without a gap: it is inconsistent")


def _json(line: str, where: str, n: int) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise ScheduleError(f"{where}: line {n} is not JSON (a damaged or truncated file)") from None


def _entry(record: Any, where: str, n: int) -> Entry | Resume:
    if not isinstance(record, dict):
        raise ScheduleError(f"{where}: line {n} is not a schedule entry")
    if "resume" in record:
        if not isinstance(record["resume"], int) or record["resume"] < 0:
            raise ScheduleError(f"{where}: line {n} is a malformed resume line")
        return Resume(record["resume"])
    try:
        fields = {name: int(record[name]) for name in _INT_FIELDS}
        fields.update({name: float(record.get(name, 0.0)) for name in _FLOAT_FIELDS})
        phases = tuple(float(x) for x in record.get("phase_times", ()))
        outcome = record["outcome"]
    except (KeyError, TypeError, ValueError):
        raise ScheduleError(f"{where}: line {n} is not a schedule entry (a field is missing or malformed)") from None
    if outcome not in OUTCOMES:
        raise ScheduleError(f"{where}: line {n} has an unknown outcome {outcome!r}")
    return Entry(outcome=outcome, phase_times=phases, **fields)
