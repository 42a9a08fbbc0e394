"""The project's user-facing error: an invalid setting, reported as one line naming the field."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""
