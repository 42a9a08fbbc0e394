"""Summaries: a run's row of the comparison table, the statistics over seeds, the tables.

* ``summarize_run``: one run's row (``SUMMARY_FIELDS``), kept in its ``meta.json``;
* ``per_scheme``: each numeric field over seeds, per scheme (``mean_std``), and counts;
* ``write_summary``: ``summary.csv`` and ``summary.md`` of an experiment folder;
* ``final_window``: how many of a run's last updates its final values (final loss,
  final gradient error) average over;
* ``mean_std``: a quantity over seeds, as mean and (population) standard deviation of
  the seeds that have a finite value, with their count (a diverged run has no final
  loss and is left out, not averaged in);
* ``mean_std_text``: how such a value is written in tables and figure annotations
  (``mean ± std``, only the mean for one value, a placeholder for none).

Used by ``compare`` (``api``), the regime study (``studies.regimes``) and the figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from asynccorr.backends.protocol import RunResult
from asynccorr.backends.registry import run_workers
from asynccorr.config import ExperimentConfig
from asynccorr.learners.evaluation import TrackingSummary
from asynccorr.runs.files import atomic_write_text, write_csv
from asynccorr.schemes.registry import label, realisable

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


SUMMARY_FIELDS = (
    "scheme", "seed", "status", "diverged_at", "workers", "iterations", "sim_time", "mean_staleness",
    "mean_residual_staleness",
    "max_staleness", "final_policy_loss", "grad_error_mean", "grad_error_final", "stale_grad_error_mean",
    "rms_lateral", "left_road", "finite", "wall_time_s",
)


def _mean(values: np.ndarray) -> float:
    """Mean, NaN for no values (a run interrupted before its first update)."""
    return float(np.mean(values)) if len(values) else float("nan")


def summarize_run(scheme: str, config: ExperimentConfig, result: RunResult, wall: float) -> dict[str, Any]:
    """One row of the comparison table."""
    m = result.metrics
    n = len(m["iteration"]) if "iteration" in m else 0
    tail = final_window(n)
    final: TrackingSummary = result.evals[-1].summary
    staleness = m.get("staleness", np.zeros(n))
    grad_error = m.get("grad_error", np.zeros(n))
    stale_error = m.get("stale_grad_error", np.zeros(n))

    return {
        "scheme": scheme,
        "seed": config.train.seed,
        "status": result.status,
        "diverged_at": result.diverged_at,
        "workers": run_workers(config, scheme),
        "iterations": n,
        "sim_time": float(m["time"][-1]) if n and "time" in m else float("nan"),
        "mean_staleness": _mean(staleness),
        "mean_residual_staleness": _mean(m.get("residual_staleness", staleness)),
        "max_staleness": int(np.max(staleness)) if n else 0,
        # a diverged run has no final loss (its last rows are the blow-up itself)
        "final_policy_loss": _mean(m["policy_loss"][-tail:]) if n and result.status != "diverged" else float("nan"),
        "grad_error_mean": _mean(grad_error),
        "grad_error_final": _mean(grad_error[-tail:]),
        "stale_grad_error_mean": _mean(stale_error),
        "rms_lateral": final.rms_lateral,
        "left_road": final.left_road,
        "finite": bool(np.all(np.isfinite(result.params))),
        "wall_time_s": round(wall, 3),
    }


def per_scheme(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scheme: each numeric summary field over seeds (``runs.summary.MeanStd``), and counts.

    Means are over the seeds with a finite value: a diverged run has no final loss,
    and the ``diverged`` count says how many seeds are left out."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        group = [r for r in rows if r["scheme"] == scheme]
        agg: dict[str, Any] = {"scheme": scheme, "seeds": len(group)}
        for key in ("final_policy_loss", "grad_error_mean", "grad_error_final", "rms_lateral", "mean_staleness",
                    "mean_residual_staleness", "sim_time", "wall_time_s"):
            agg[key] = mean_std(r.get(key, float("nan")) for r in group)
        agg["left_road"] = sum(bool(r["left_road"]) for r in group)
        agg["diverged"] = sum(r.get("status") == "diverged" for r in group)
        agg["diverged_at"] = [r["diverged_at"] for r in group if r.get("status") == "diverged"]
        agg["finite"] = all(bool(r["finite"]) for r in group)
        out.append(agg)
    return out


def diverged_text(agg: dict[str, Any]) -> str:
    """'0/3', or '2/3 (at 21, 26)': how many seeds diverged and at which server update."""
    text = f"{agg['diverged']}/{agg['seeds']}"
    return text + f" (at {', '.join(map(str, agg['diverged_at']))})" if agg["diverged"] else text


def write_summary(folder: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """summary.csv (one row per run) and summary.md (per scheme, mean ± std over seeds)."""
    write_csv(folder / "summary.csv", {k: ["" if r.get(k) is None else r.get(k) for r in rows]
                                       for k in SUMMARY_FIELDS})
    lines = [f"# {title}", "",
             ("| scheme | seeds | diverged | final policy loss | gradient error (mean) | gradient error (last 10%) "
              "| RMS lateral [m] | left road | mean staleness | residual staleness | time [s] |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def pm(a: dict[str, Any], key: str, fmt: str) -> str:
        return mean_std_text(a[key], fmt, missing="nan")

    for a in per_scheme(rows):
        lines.append(f"| {label(a['scheme'])} | {a['seeds']} | {diverged_text(a)} | "
                     f"{pm(a, 'final_policy_loss', '.3f')} | "
                     f"{pm(a, 'grad_error_mean', '.3g')} | {pm(a, 'grad_error_final', '.3g')} | "
                     f"{pm(a, 'rms_lateral', '.4f')} | {a['left_road']}/{a['seeds']} | "
                     f"{pm(a, 'mean_staleness', '.2f')} | {pm(a, 'mean_residual_staleness', '.2f')} | "
                     f"{pm(a, 'sim_time', '.2f')} |")
    if any(not realisable(a["scheme"]) for a in per_scheme(rows)):
        lines += ["", ("An oracle row is not a result of any realisable scheme: its product is evaluated against "
                       "theta_k at the instant of application, for free (an upper bound).")]
    atomic_write_text(folder / "summary.md", "\n".join(lines) + "\n")
