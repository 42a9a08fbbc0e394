"""Summaries: a run's row of the comparison table, the statistics over seeds, the tables.

* ``summarize_run``: one run's row (``SUMMARY_FIELDS``), kept in its ``meta.json``;
* ``per_scheme``: each numeric field over seeds, per scheme (``mean_std``), and counts;
* ``write_summary``: ``summary.csv`` and ``summary.md`` of an experiment folder;
* ``analysis_fields``: what a row derives from the metrics under the config's ``report`` section
  (time to the target loss, the gradient error after the first 10 % of updates), recomputed
  when a finished run is reused, so a changed target re-summarises without retraining;
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
from asynccorr.config import ExperimentConfig, ReportConfig
from asynccorr.learners.evaluation import TrackingSummary, eval_columns
from asynccorr.runs.files import atomic_write_text, write_csv
from asynccorr.schemes.registry import label, realisable

FINAL_FRACTION = 0.1  # final values average over the last 10 % of a run's updates
DEFAULT_REPORT = ReportConfig()
WARMUP_FRACTION = 0.1  # "after the first 10 %": the gradient error without its first updates, which dominate the mean


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
    "max_staleness", "final_policy_loss", "target_loss", "target_rms", "updates_to_target", "time_to_target", "grad_error_mean",
    "grad_error_after_warmup", "grad_error_final", "stale_grad_error_mean", "rms_lateral", "left_road", "finite",
    "wall_time_s",
)


def _mean(values: np.ndarray) -> float:
    """Mean, NaN for no values (a run interrupted before its first update)."""
    return float(np.mean(values)) if len(values) else float("nan")


def smoothed_first_below(loss: np.ndarray, target: float, window: int) -> int | None:
    """0-based index k of the first update with ``mean(loss[k-window+1 : k+1]) < target`` (``None``: never)."""
    loss = np.asarray(loss, np.float64)
    if len(loss) < window:
        return None
    csum = np.concatenate([[0.0], np.cumsum(loss)])
    means = (csum[window:] - csum[:-window]) / window  # means[j] covers loss[j : j+window]
    below = np.flatnonzero(np.isfinite(means) & (means < target))
    return int(below[0]) + window - 1 if below.size else None


def first_tracked(evals: dict[str, np.ndarray], target_m: float, last: int) -> int | None:
    """The first evaluated server update ``k`` in ``(0, last]`` whose RMS lateral error is below
    ``target_m`` on the road (``evals``: eval.csv's columns); ``None``: never."""
    k = np.asarray(evals.get("iteration", []), np.float64)
    ok = ((np.asarray(evals.get("rms_lateral", []), np.float64) < target_m)
          & (np.asarray(evals.get("left_road", []), np.float64) == 0) & (k > 0) & (k <= last))
    return int(k[ok][0]) if ok.any() else None


def analysis_fields(metrics: dict[str, np.ndarray], diverged_at: int | None, report: ReportConfig,
                    evals: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The row's fields that ``report`` decides, from the metrics columns (computed in float64, so the
    metrics read back from ``metrics.csv`` give the same values as the ones in memory).

    ``updates_to_target`` / ``time_to_target``: the server update (and its simulated time) at which
    the ``report.target_window``-update moving mean of the policy loss first falls below
    ``report.target_loss`` -- or, with ``report.target_rms`` > 0, the first evaluation (``evals``:
    eval.csv's columns) tracking below that RMS lateral error; NaN when it never does (a diverged
    run: before ``diverged_at``). ``grad_error_after_warmup``: the mean gradient error over the
    updates after the first 10 %.
    """
    n = len(metrics["iteration"]) if "iteration" in metrics else 0
    loss = np.asarray(metrics.get("policy_loss", np.zeros(n)), np.float64)
    if diverged_at is not None:  # the rows from the diverging update on are the blow-up itself
        loss = loss[: int(np.searchsorted(np.asarray(metrics["iteration"]), diverged_at))]
    if report.target_rms > 0:
        last = int(diverged_at) - 1 if diverged_at is not None else (int(metrics["iteration"][-1]) if n else 0)
        k = first_tracked(evals or {}, report.target_rms, last)
        rows = np.flatnonzero(np.asarray(metrics["iteration"]) == k) if k is not None else np.zeros(0, int)
        hit = int(rows[0]) if rows.size else None
    else:
        hit = smoothed_first_below(loss, report.target_loss, report.target_window)
    errors = np.asarray(metrics.get("grad_error", np.zeros(n)), np.float64)
    return {
        "target_loss": report.target_loss,
        "target_rms": report.target_rms,
        "updates_to_target": float("nan") if hit is None else int(metrics["iteration"][hit]),
        "time_to_target": float("nan") if hit is None or "time" not in metrics else float(metrics["time"][hit]),
        "grad_error_after_warmup": _mean(errors[math.floor(round(WARMUP_FRACTION * n, 9)):]),
    }


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
        **analysis_fields(m, result.diverged_at if result.status == "diverged" else None, config.report,
                          eval_columns(result.evals)),
        "stale_grad_error_mean": _mean(stale_error),
        "rms_lateral": final.rms_lateral,
        "left_road": final.left_road,
        "finite": bool(np.all(np.isfinite(result.params))),
        "wall_time_s": round(wall, 3),
    }


def _number(value: Any) -> float:
    return float("nan") if value is None or value == "" else float(value)


def per_seed_text(values: Sequence[float], fmt: str, never: str = "never") -> str:
    """Per-seed values as ``39 / 67 / never``."""
    return " / ".join(never if not math.isfinite(v) else format(v, fmt) for v in values)


def per_scheme(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scheme: each numeric summary field over seeds (``runs.summary.MeanStd``), and counts.

    Means are over the seeds with a finite value: a diverged run has no final loss,
    and the ``diverged`` count says how many seeds are left out."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        group = [r for r in rows if r["scheme"] == scheme]
        agg: dict[str, Any] = {"scheme": scheme, "seeds": len(group)}
        for key in ("final_policy_loss", "grad_error_mean", "grad_error_after_warmup", "grad_error_final",
                    "rms_lateral", "mean_staleness", "mean_residual_staleness", "sim_time", "wall_time_s",
                    "updates_to_target", "time_to_target"):
            agg[key] = mean_std(r.get(key, float("nan")) for r in group)
        # per seed, in the rows' order: when each seed reached the target (NaN: never)
        agg["updates_per_seed"] = [_number(r.get("updates_to_target")) for r in group]
        agg["time_per_seed"] = [_number(r.get("time_to_target")) for r in group]
        agg["reached"] = sum(math.isfinite(t) for t in agg["updates_per_seed"])
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


def write_summary(folder: Path, rows: Sequence[dict[str, Any]], title: str,
                  report: ReportConfig = DEFAULT_REPORT) -> None:
    """summary.csv (one row per run) and summary.md (per scheme, mean ± std over seeds)."""
    write_csv(folder / "summary.csv", {k: ["" if r.get(k) is None else r.get(k) for r in rows]
                                       for k in SUMMARY_FIELDS})
    target = report.target_loss
    reached = (f"RMS lateral error < {report.target_rms:g} m" if report.target_rms > 0
               else f"loss < {target:g}")
    head = ("scheme", "seeds", "diverged", "final policy loss", f"updates to {reached} (per seed)",
            "sim time then [s]", "gradient error (mean, all updates)", "gradient error (after the first 10%)",
            "RMS lateral [m]", "left road", "mean staleness", "residual staleness", "sim time [s]")
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def pm(a: dict[str, Any], key: str, fmt: str) -> str:
        return mean_std_text(a[key], fmt, missing="nan")

    for a in per_scheme(rows):
        lines.append(f"| {label(a['scheme'])} | {a['seeds']} | {diverged_text(a)} | "
                     f"{pm(a, 'final_policy_loss', '.3f')} | "
                     f"{per_seed_text(a['updates_per_seed'], '.0f')} ({a['reached']}/{a['seeds']}) | "
                     f"{per_seed_text(a['time_per_seed'], '.2f', never='–')} | "
                     f"{pm(a, 'grad_error_mean', '.3g')} | {pm(a, 'grad_error_after_warmup', '.3g')} | "
                     f"{pm(a, 'rms_lateral', '.4f')} | {a['left_road']}/{a['seeds']} | "
                     f"{pm(a, 'mean_staleness', '.2f')} | {pm(a, 'mean_residual_staleness', '.2f')} | "
                     f"{pm(a, 'sim_time', '.2f')} |")
    when = (f"the first evaluation (every `train.eval_every` updates) at which the RMS lateral error on the "
            f"fixed scenario is below {report.target_rms:g} m, on the road" if report.target_rms > 0 else
            f"the first server update at which the mean policy loss of the last {report.target_window} updates "
            f"is below {target:g}")
    lines += ["", (f"Time to target: {when} (`[report]` in the config), and the simulated "
                   "time of that update, per seed. Simulated time is the modelled compute and communication "
                   "time of every party (`[workers]` cost model), not this machine's wall clock. The "
                   "gradient error is |applied direction - fresh gradient| / |fresh gradient|; its mean over all "
                   "updates weighs the first ones, where it is largest, as much as the rest: the next column "
                   "leaves out the first 10 % of updates.")]
    if any(not realisable(a["scheme"]) for a in per_scheme(rows)):
        lines += ["", ("An oracle row is not a result of any realisable scheme: its product is evaluated against "
                       "theta_k at the instant of application, for free (an upper bound).")]
    atomic_write_text(folder / "summary.md", "\n".join(lines) + "\n")
