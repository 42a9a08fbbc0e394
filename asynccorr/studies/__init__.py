"""Studies: many runs. ``compare`` (one experiment, every scheme x seed), ``regimes`` and
``regime_runs`` (the grid study), ``calibrate`` (sim against real workers) and ``cluster``
(any of them as Ray tasks on a cluster)."""
