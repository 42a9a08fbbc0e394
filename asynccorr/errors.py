"""The project's user-facing errors, each reported as one line: an invalid setting (naming the
field), a results path that cannot hold results (naming the path and why)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


class ResultsPathError(ValueError):
    """A results path that cannot be written: a file, a path through a file, no permission, a
    read-only file system; the message names the path and the reason."""
