"""Runs on disk: one run's directory and everything in it.

``files`` (atomic writes, CSV, the run directory's name), ``locks`` (who owns a run
directory), ``checkpoints`` (checkpoint files), ``run`` (train one run and write its
directory, resume it), ``read`` (read runs back: ``Run``, the one reading of "diverged"),
``summary`` (a run's summary row, statistics over seeds, the tables).
"""
