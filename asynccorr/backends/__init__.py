"""Execution backends: where workers run. All produce the same ``RunResult``."""
