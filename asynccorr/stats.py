"""The statistics every results table and figure shares, defined once.

* ``final_window``: how many of a run's last updates its final values (final loss,
  final gradient error) average over;
* ``mean_std``: a quantity over seeds, as mean and (population) standard deviation of
  the seeds that have a finite value, with their count (a diverged run has no final
  loss and is left out, not averaged in);
* ``mean_std_text``: how such a value is written in tables and figure annotations
  (``mean ± std``, only the mean for one value, a placeholder for none).

Used by the comparison summary (``asynccorr.runs``), the regime study
(``asynccorr.regimes``), its heat maps and the ``compare`` command's table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

FINAL_FRACTION = 0.1  # final values average over the last 10 % of a run's updates


def final_window(n: int, fraction: float = FINAL_FRACTION) -> int:
    """Number of trailing updates (of ``n``) that final values average over: ``fraction`` of
    them, rounded down, at least one.

    Rounded down, so a diverged run that stopped after 12 updates averages its last one,
    not two. The product is rounded to 9 decimals first so that float noise (0.7 * 10 =
    7.000000000000001) never changes the count.
    """
    return max(1, math.floor(round(fraction * n, 9)))


class MeanStd(NamedTuple):
    """A quantity over seeds: mean and population std of the finite values, and their count."""

    mean: float
    std: float
    count: int


def mean_std(values: Iterable[float | None]) -> MeanStd:
    """Mean ± std over the finite values (``None`` counts as missing); ``(nan, nan, 0)`` if none."""
    v = np.asarray(list(values), np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return MeanStd(float("nan"), float("nan"), 0)
    return MeanStd(float(v.mean()), float(v.std()), int(v.size))


def mean_std_text(stat: MeanStd, fmt: str, sep: str = " ± ", missing: str = "–", std_fmt: str | None = None) -> str:
    """``mean ± std`` in format ``fmt`` (the std in ``std_fmt`` if given); only the mean when one seed
    has a value; ``missing`` when none."""
    if stat.count == 0 or not math.isfinite(stat.mean):
        return missing
    std = f"{sep}{stat.std:{std_fmt or fmt}}" if stat.count > 1 else ""
    return f"{stat.mean:{fmt}}{std}"
