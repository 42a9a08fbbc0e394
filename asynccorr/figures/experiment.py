"""Figures of one experiment folder (``results/<experiment>/``; layout in ``asynccorr.runs.run``).

``plot_experiment`` reads every ``<scheme>-seed<k>/`` run directory (``runs.read``, read only)
and writes five figures, each as PNG and PDF, into ``<experiment>/figures/``:

* ``loss_vs_iteration``           policy loss vs server update
* ``gradient_error_vs_iteration`` relative error of the applied direction (and of the stale one)
* ``tracking``                    final policies on the fixed scenario: path and lateral error
* ``loss_vs_time``                policy loss vs simulated time (log axis: the early seconds, where
                                  the schemes differ, are as readable as the long tails)
* ``staleness``                   distribution of the staleness of applied updates (integer bins)
* ``residual_staleness``          the staleness a correction could not see: distribution, and over
                                  training (what tells the protocols apart)

Curves are the mean over seeds of a centred moving average, drawn only where every seed
has data (beyond, each remaining seed is drawn thin on its own); the band spans the
seeds' minimum to maximum. Each scheme keeps its style in every figure (``figures.style``:
colour = family, line = protocol, marker = scheme), and a non-realisable upper bound is
drawn thin and dotted on top, its legend entry saying so. Titles name the learner,
optimizer, step sizes, N and delay model. A run
that diverged (``runs.read.Run.diverged``: ``"status": "diverged"`` with ``"diverged_at": k``
in ``meta.json``, or a row that ``backends.protocol.first_diverged_row`` flags, with the
run's own ``train.divergence_loss``) is drawn up to the update before its divergence point, marked
with an ``x`` at update k on the loss and gradient-error figures; its diverged tail
never sets the axis limits.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)  # files only; never open a window (set before pyplot is ever imported)

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from asynccorr.config import describe
from asynccorr.figures.style import UPPER_BOUND, Style, marked, scheme_colors, scheme_styles, wrap
from asynccorr.runs import locks
from asynccorr.runs.files import atomic_write_bytes, check_writable_folder, parse_run_dir_name
from asynccorr.runs.read import (
    UNFINISHED,
    ResultsError,
    Run,
    experiment_folders,
    is_run_dir,
    load_run,
    load_runs,
)
from asynccorr.schemes.registry import display_order, realisable

__all__ = ["FIGURES", "FORMATS", "curve_band", "moving_average", "plot_experiment", "plot_path", "scheme_colors",
           "write_figures"]

FORMATS = ("png", "pdf")  # every figure is written in each
MAX_POINTS = 2000  # points per plotted curve (long runs are resampled after smoothing)
DPI = 150


# ---------------------------------------------------------------------------------------------- styling


def _by_scheme(runs: Sequence[Run]) -> dict[str, list[Run]]:
    return {s: [r for r in runs if r.scheme == s] for s in display_order([r.scheme for r in runs])}


def _same_metrics(a: Sequence[Run], b: Sequence[Run]) -> bool:
    """Whether two schemes produced the same metrics for the same seeds (their curves coincide)."""
    if [r.seed for r in a] != [r.seed for r in b]:
        return False
    for ra, rb in zip(a, b):
        if ra.metrics.keys() != rb.metrics.keys() or ra.rows != rb.rows:
            return False
        if not all(np.array_equal(ra.metrics[k], rb.metrics[k], equal_nan=True) for k in ra.metrics):
            return False
    return True


def duplicates(runs: Sequence[Run]) -> dict[str, str]:
    """Scheme -> the earlier scheme whose runs it reproduces exactly (drawn thinner, on top, and labelled)."""
    groups = _by_scheme(runs)
    out: dict[str, str] = {}
    for i, (scheme, group) in enumerate(groups.items()):
        for other in list(groups)[:i]:
            if other not in out and _same_metrics(groups[other], group):
                out[scheme] = other
                break
    return out


def _label(scheme: str, group: Sequence[Run], same_as: str | None = None) -> str:
    """A legend entry: the scheme with its protocol; the oracle marked as an upper bound."""
    bad = sum(r.diverged for r in group)
    notes = [UPPER_BOUND] if not realisable(scheme) else []
    notes += [f"identical to {same_as}"] if same_as else []
    if bad:
        notes.append("diverged" if bad == len(group) else f"diverged: {bad} of {len(group)} seeds")
    return f"{scheme} ({'; '.join(notes)})" if notes else scheme


def _experiment(runs: Sequence[Run]) -> str:
    names = [r.config.get("name") for r in runs if isinstance(r.config.get("name"), str)]
    return names[0] if names else runs[0].path.parent.name


def _workers(runs: Sequence[Run]) -> int | None:
    return next((r.workers for r in runs if r.workers is not None), None)


def _title(fig: Figure, runs: Sequence[Run], what: str) -> None:
    """``what``, then what tells the experiment apart (learner, optimizer, step, N, delays) and the seeds."""
    seeds = sorted({r.seed for r in runs})
    seed_text = f"{len(seeds)} seeds" if len(seeds) > 4 else ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(
        map(str, seeds))
    config = runs[0].config if runs else {}
    workers = _workers(runs)
    record = {**config, "workers": {**config.get("workers", {}), **({"count": workers} if workers else {})}}
    fig.suptitle(wrap(f"{what}: {_experiment(runs)}\n{describe(record)}; {seed_text}", fig.get_figwidth(), 10),
                 fontsize=10)


def _new_figure(rows: int = 1, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(8.0, height), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig, list(axes)


def _set_log_if_positive(ax: Axes, values: Sequence[np.ndarray]) -> None:
    """Log y axis (plain-number tick labels) when every plotted value is > 0; otherwise symmetric-log
    (linear within +-1), so a run blowing up to -1e6 does not flatten the ones near 2."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values] or [np.zeros(0)])
    if finite.size and np.all(finite > 0):
        _log_y(ax)
    elif finite.size and np.ptp(finite) > 100:
        ax.set_yscale("symlog", linthresh=1.0)


def _log_y(ax: Axes) -> None:
    ax.set_yscale("log", nonpositive="mask")
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.grid(True, which="minor", alpha=0.12)


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (0.01, 30) on the ticks ``LogFormatter`` would label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _legend(fig: Figure, ax: Axes, handles: list[Any] | None = None, labels: list[str] | None = None,
            ncols: int = 3) -> None:
    """One legend below the axes, outside the data (it never hides a curve)."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        longest = max(len(label) for label in labels)
        fits = max(1, int(fig.get_figwidth() * 15) // (longest + 8))  # ~15 characters of 8-pt text per inch
        columns = min(ncols, len(labels), fits)
        fig.set_figheight(fig.get_figheight() + 0.17 * math.ceil(len(labels) / columns))  # room for it
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=columns, frameon=False)


def _subtitle(ax: Axes, text: str) -> None:
    """The axes' small grey title, wrapped to the axes' width (~17 characters of 8-pt text per inch)."""
    width = ax.get_position().width * ax.get_figure().get_figwidth()  # type: ignore[union-attr]
    ax.set_title(wrap(text, width, 8), fontsize=8, color="0.3")


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.35")


# ---------------------------------------------------------------------------------------------- series


def smoothing_window(runs: Sequence[Run], smooth: int | None) -> int:
    """The moving-average window: ``smooth`` if given, else about 1/50 of the longest run."""
    if smooth is not None:
        return max(1, int(smooth))
    return max(1, max(r.rows for r in runs) // 50)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at both ends so the output has the input's length."""
    y = np.asarray(y, np.float64)
    if window <= 1 or y.size == 0:
        return y.copy()
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(y.size)
    lo, hi = np.maximum(0, i - (window - 1) // 2), np.minimum(y.size, i + window // 2 + 1)
    # the clip guards against cancellation in the running sum after a huge value
    return np.clip((c[hi] - c[lo]) / (hi - lo), y.min(), y.max())


def _series(run: Run, column: str, x_column: str = "iteration") -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) up to the divergence point and the column's first non-finite value; None if absent/empty."""
    if column not in run.metrics or x_column not in run.metrics:
        return None
    n = run.valid_rows
    x, y = run.metrics[x_column][:n], run.metrics[column][:n]
    bad = ~(np.isfinite(y) & np.isfinite(x))
    if bad.any():
        x, y = x[: np.argmax(bad)], y[: np.argmax(bad)]
    return (x, y) if x.size else None


def _on_grid(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    out = np.full(grid.shape, np.nan)
    inside = (grid >= x[0]) & (grid <= x[-1])
    out[inside] = np.interp(grid[inside], x, y)
    return out


def _grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], uniform: bool) -> np.ndarray:
    """Common abscissae: the union of the curves' x (or a uniform grid), at most ~MAX_POINTS, plus their ends."""
    ends = np.array([v for x, _ in curves for v in (x.min(), x.max())])
    if uniform:
        n = min(MAX_POINTS, max(len(x) for x, _ in curves))
        base = np.linspace(ends.min(), ends.max(), max(n, 2))
    else:
        base = np.unique(np.concatenate([x for x, _ in curves]))
        if base.size > MAX_POINTS:
            base = base[np.linspace(0, base.size - 1, MAX_POINTS).astype(int)]
    return np.unique(np.concatenate([base, ends]))


def curve_band(curves: Sequence[tuple[np.ndarray, np.ndarray]], uniform: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grid, mean, min, max, count) over the curves on a common grid; each curve counts only within its range."""
    grid = _grid(curves, uniform)
    stack = np.stack([_on_grid(x, y, grid) for x, y in curves])
    have = np.isfinite(stack)
    count = have.sum(axis=0)
    safe = np.where(have, stack, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, safe.sum(axis=0) / np.maximum(count, 1), np.nan)
    lo = np.where(count > 0, np.where(have, stack, np.inf).min(axis=0), np.nan)
    hi = np.where(count > 0, np.where(have, stack, -np.inf).max(axis=0), np.nan)
    return grid, mean, lo, hi, count


def _draw_mean_band(ax: Axes, curves: Sequence[tuple[np.ndarray, np.ndarray]], style: Style, label: str,
                    index: int = 0, uniform: bool = False, thin: bool = False) -> np.ndarray:
    """The seeds' mean where every seed has data, each remaining seed drawn thin on its own beyond
    (so no mean drops where a seed ends), and (with >= 2 curves) a min..max band; returns the mean."""
    grid, mean, lo, hi, count = curve_band(curves, uniform)
    mean = np.where(count == len(curves), mean, np.nan)
    kwargs = style.line_kwargs(index)
    if thin:  # a scheme whose runs reproduce an earlier one's exactly: drawn thin on top of it
        kwargs.update(lw=0.9, zorder=3)
    ax.plot(grid, mean, label=label, **kwargs)
    end = grid[np.isfinite(mean)].max() if np.isfinite(mean).any() else -np.inf
    for x, y in curves:
        beyond = x >= end
        if beyond.sum() > 1:
            ax.plot(x[beyond], y[beyond], color=style.color, ls=style.linestyle, lw=0.7, alpha=0.7,
                    zorder=kwargs["zorder"])
    if len(curves) > 1:
        ax.fill_between(grid, lo, hi, where=count > 1, color=style.color, alpha=0.13, lw=0)
    return mean


def _divergence_point(run: Run, x_column: str, window: int, column: str = "policy_loss"
                      ) -> tuple[float, float] | None:
    """Where a diverged run stops: at its divergence update (``diverged_at``, else the last valid
    row), at the height of its last finite smoothed value; None if it never had one."""
    s = _series(run, column, x_column)
    if s is None:
        return None
    x = float(s[0][-1])
    n = run.valid_rows
    if run.diverged_at is not None and n < run.rows and x_column in run.metrics:
        candidate = float(run.metrics[x_column][n])  # the row of the diverging update
        x = candidate if np.isfinite(candidate) else x
    return x, float(moving_average(s[1], window)[-1])


def _mark_divergence(ax: Axes, point: tuple[float, float], color: str, limits: tuple[float, float] | None) -> None:
    """An ``x`` at the divergence point (on the axis edge if the axis was cut short of it)."""
    x, y = point
    if limits is not None:
        y = min(max(y, limits[0]), limits[1])
    ax.plot([x], [y], ls="none", marker="x", ms=9, mew=2.2, color=color, zorder=5, clip_on=False)


def _cut_blowup(ax: Axes, basis: Sequence[np.ndarray], curves: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """Limit the y axis to the ``basis`` curves (the runs that did not diverge) when a blow-up in
    ``curves`` -- upwards or downwards -- would flatten everything else; returns the limits or None.

    Log axis: from half the basis minimum to 10x its early maximum; linear axis: the basis range
    padded by its span. Nothing is cut when every curve already fits.
    """
    def finite(cs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [f for c in cs if (f := c[np.isfinite(c)]).size]

    base, every = finite(basis), finite(curves)
    if not base or not every:
        return None
    early = max(float(c[: max(1, c.size // 10)].max()) for c in base)
    low = min(float(c.min()) for c in base)
    high = max(float(c.max()) for c in base)
    if ax.get_yscale() == "log":
        bottom, top = low / 2, max(10 * early, 2 * high)
    else:
        span = max(high - low, 1e-12)
        bottom, top = low - span, max(early, high) + 2 * span
    if min(float(c.min()) for c in every) >= bottom and max(float(c.max()) for c in every) <= top:
        return None
    ax.set_ylim(bottom, top)
    return bottom, top


def _smoothed(group: Sequence[Run], column: str, window: int, x_column: str = "iteration"
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(s[0], moving_average(s[1], window)) for r in group if (s := _series(r, column, x_column))]


def _window_note(window: int) -> str:
    return f" (moving average of {window} updates)" if window > 1 else ""


# ---------------------------------------------------------------------------------------------- figures


LOSS_LABELS = {  # learner kind -> what its policy loss is (the y axis of the loss figures)
    "gpi": "policy loss: model-rollout cost + critic's\nbootstrap (lower is better)",
    "a3c": "policy loss: λ-return cost with critic's\nbootstrap (lower is better)",
    "q": "policy loss: mean TD target, bootstrapped\nfrom the target network (lower is better)",
}
TIME_LABEL = "simulated time [s]: modelled compute + communication (log scale)"


def _loss_figure(runs: Sequence[Run], smooth: int | None, x_column: str) -> Figure:
    window = smoothing_window(runs, smooth)
    styles, dups = scheme_styles([r.scheme for r in runs]), duplicates(runs)
    fig, (ax,) = _new_figure()
    plotted: list[np.ndarray] = []
    healthy: list[np.ndarray] = []  # schemes none of whose runs diverged: they set the axis
    points: list[tuple[tuple[float, float], str]] = []
    for index, (scheme, group) in enumerate(_by_scheme(runs).items()):
        style = styles[scheme]
        curves = _smoothed(group, "policy_loss", window, x_column)
        label = _label(scheme, group, dups.get(scheme))
        if curves:
            plotted.append(_draw_mean_band(ax, curves, style, label, index, uniform=x_column == "time",
                                           thin=scheme in dups))
            if not any(r.diverged for r in group):
                healthy.append(plotted[-1])
        else:  # still listed, so a run that never had a finite loss is not silently missing
            missing = "no time column" if all(x_column not in r.metrics for r in group) else "no finite loss"
            ax.plot([], [], color=style.color, ls=style.linestyle, label=f"{label}: {missing}")
        points += [(p, style.color) for r in group if r.diverged
                   and (p := _divergence_point(r, x_column, window)) is not None]
    _set_log_if_positive(ax, plotted)
    if x_column == "time" and plotted:
        ax.set_xscale("log")
    limits = None if ax.get_yscale() == "symlog" else _cut_blowup(ax, healthy or plotted, plotted)
    for point, color in points:
        _mark_divergence(ax, point, color, limits)
    ax.set_xlabel("server update" if x_column == "iteration" else TIME_LABEL)
    kind = next((r.config.get("learner", {}).get("kind", "gpi") for r in runs), "gpi")
    ax.set_ylabel(LOSS_LABELS.get(kind, "policy loss (lower is better)"), fontsize=9)
    _subtitle(ax, "line: mean over seeds" + _window_note(window) + "; band: min to max over seeds"
                 + ("; x: run diverged" if points else "")
                 + (f"; axis cut to [{limits[0]:.3g}, {limits[1]:.3g}]" if limits is not None else ""))
    _title(fig, runs, "Policy loss vs " + ("server update" if x_column == "iteration" else "simulated time"))
    _legend(fig, ax)
    if not plotted:
        _note(ax, f"no finite policy loss{'' if x_column == 'iteration' else ' with a time column'} to plot")
    return fig


def loss_vs_iteration(runs: Sequence[Run], smooth: int | None = None) -> Figure:
    """Policy loss vs server update."""
    return _loss_figure(runs, smooth, "iteration")


def loss_vs_time(runs: Sequence[Run], smooth: int | None = None) -> Figure:
    """Policy loss vs simulated time (seeds interpolated onto a common time grid)."""
    return _loss_figure(runs, smooth, "time")


def _identically_zero(group: Sequence[Run], column: str) -> bool:
    values = np.concatenate([r.metrics[column] for r in group if column in r.metrics] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    return values.size > 0 and bool(np.all(values == 0))


def _differs(group: Sequence[Run], a: str, b: str) -> bool:
    """Whether column ``b`` carries information beyond ``a`` (e.g. the stale error of a corrected scheme)."""
    for r in group:
        if a in r.metrics and b in r.metrics:
            x, y = r.metrics[a], r.metrics[b]
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any() and not np.allclose(x[ok], y[ok], rtol=1e-6, atol=0) and np.any(y[ok] != 0):
                return True
    return False


STALE_LINE = ":"  # the stale direction's error, before a correction


def gradient_error_vs_iteration(runs: Sequence[Run], smooth: int | None = None) -> Figure:
    """Relative error of the applied direction vs the fresh gradient; dotted: the stale direction's error."""
    window = smoothing_window(runs, smooth)
    styles, dups = scheme_styles([r.scheme for r in runs]), duplicates(runs)
    fig, (ax,) = _new_figure(height=4.8)
    plotted: list[np.ndarray] = []
    zero: list[str] = []
    stale_drawn = False
    points: list[tuple[tuple[float, float], str]] = []
    for index, (scheme, group) in enumerate(_by_scheme(runs).items()):
        style = styles[scheme]
        if _identically_zero(group, "grad_error"):
            zero.append(scheme)
            continue
        points += [(p, style.color) for r in group if r.diverged
                   and (p := _divergence_point(r, "iteration", window, "grad_error")) is not None]
        curves = _smoothed(group, "grad_error", window)
        label = _label(scheme, group, dups.get(scheme))
        if curves:
            plotted.append(_draw_mean_band(ax, curves, style, label, index, thin=scheme in dups))
        else:
            ax.plot([], [], color=style.color, ls=style.linestyle, label=f"{label}: no finite gradient error")
        stale = _smoothed(group, "stale_grad_error", window) if _differs(group, "grad_error",
                                                                         "stale_grad_error") else []
        if stale:  # one legend entry says what every dotted line is
            grid, mean, _, _, count = curve_band(stale)
            ax.plot(grid, np.where(count == len(stale), mean, np.nan), color=style.color, ls=STALE_LINE, lw=1.0,
                    alpha=0.8, label=f"_{scheme}: stale gradient before correction")
            plotted.append(mean)
            stale_drawn = True
    _set_log_if_positive(ax, [p[p > 0] for p in plotted])
    for point, color in points:
        if ax.get_yscale() != "log" or point[1] > 0:
            _mark_divergence(ax, point, color, None)
    handles, labels = ax.get_legend_handles_labels()
    if stale_drawn:
        handles.append(Line2D([], [], color="0.3", ls=STALE_LINE, lw=1.0))
        labels.append("dotted: the same scheme's stale direction, before its correction")
    for scheme in zero:
        handles.append(Line2D([], [], color=styles[scheme].color, ls="none", marker=styles[scheme].marker, ms=5))
        labels.append(f"{scheme}: 0 by construction (fresh gradient, not drawn)")
    _legend(fig, ax, handles, labels, ncols=2)
    if not plotted:
        _note(ax, "every scheme applies the fresh gradient: error 0 by construction")
    ax.set_xlabel("server update")
    ax.set_ylabel("relative gradient error (lower is better)", fontsize=9)
    _subtitle(ax, "|applied direction - fresh gradient| / |fresh gradient|; line: mean over seeds"
                 + _window_note(window) + "; band: min to max" + ("; x: run diverged" if points else ""))
    _title(fig, runs, "Gradient error vs server update")
    return fig


def _on_road(traj: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows before the vehicle first left the road."""
    n = len(next(iter(traj.values())))
    if "on_road" in traj:
        off = ~(traj["on_road"] > 0.5)
        n = int(np.argmax(off)) if off.any() else n
    return {k: v[:n] for k, v in traj.items()}


def _final_policy_runs(runs: Sequence[Run]) -> dict[str, Run]:
    """Per scheme, the lowest-seed run with a usable trajectory."""
    out: dict[str, Run] = {}
    for scheme, group in _by_scheme(runs).items():
        for r in group:
            if {"x", "y", "time"} <= r.trajectory.keys() and len(r.trajectory["x"]) > 0:
                out[scheme] = r
                break
    return out


def _same_trajectory(a: Run, b: Run) -> bool:
    return a.trajectory.keys() == b.trajectory.keys() and all(
        np.array_equal(a.trajectory[k], b.trajectory[k], equal_nan=True) for k in a.trajectory)


def _path_label(scheme: str, run: Run, on_road: dict[str, np.ndarray], same_as: str | None) -> str:
    notes = [f"seed {run.seed}"] + ([f"identical to {same_as}"] if same_as else [])
    if len(on_road["x"]) < len(run.trajectory["x"]):
        notes.append(f"left road at t = {on_road['time'][-1]:.1f} s" if len(on_road["x"]) else "left road at start")
    return f"{marked(scheme).removesuffix(')')}; {'; '.join(notes)})" if not realisable(scheme) else \
        f"{scheme} ({'; '.join(notes)})"


def _draw_reference(ax: Axes, paths: Sequence[dict[str, np.ndarray]]) -> None:
    """The reference y_ref(x), from the union of the on-road rows of all drawn paths."""
    refs = [(t["x"], t["y_ref"]) for t in paths if "y_ref" in t and len(t["x"])]
    if refs:
        x = np.concatenate([x for x, _ in refs])
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], np.concatenate([y for _, y in refs])[order], "k--", lw=1.1, label="reference", zorder=1)


def tracking(runs: Sequence[Run], smooth: int | None = None) -> Figure:
    """Final policies (lowest seed) on the fixed scenario: x-y path with the reference, and lateral error."""
    colors = scheme_colors([r.scheme for r in runs])
    fig, (top, bottom) = _new_figure(rows=2, height=7.0)
    chosen = _final_policy_runs(runs)
    paths = []
    for i, (scheme, r) in enumerate(chosen.items()):
        t = _on_road(r.trajectory)
        same_as = next((s for s in list(chosen)[:i] if _same_trajectory(chosen[s], r)), None)
        lw = 0.9 if same_as else 1.8
        top.plot(t["x"], t["y"], color=colors[scheme], lw=lw, label=_path_label(scheme, r, t, same_as))
        if len(t["x"]) < len(r.trajectory["x"]) and len(t["x"]):
            top.plot([t["x"][-1]], [t["y"][-1]], ls="none", marker="x", ms=8, mew=2, color=colors[scheme])
        if "lateral_error" in t:
            bottom.plot(t["time"], t["lateral_error"], color=colors[scheme], lw=lw)
        paths.append(t)
    _draw_reference(top, paths)
    _legend(fig, top, ncols=2)
    if chosen:
        bottom.axhline(0.0, color="k", lw=0.8, ls="--")
    else:
        _note(top, "no trajectory.csv to plot")
    top.set_xlabel("x [m]")
    top.set_ylabel("y [m]")
    _subtitle(top, "path of the final policy, on-road part (x: where it left the road)")
    bottom.set_xlabel("time along the scenario [s]")
    bottom.set_ylabel("lateral error [m]")
    _subtitle(bottom, "lateral error of the same runs (on-road part)")
    _title(fig, runs, "Tracking by the final policy")
    return fig


def _pooled(group: Sequence[Run], column: str) -> np.ndarray:
    """A column's finite values, pooled over the group's seeds (empty if no run has it)."""
    values = np.concatenate([r.metrics[column][: r.valid_rows] for r in group if column in r.metrics]
                            or [np.zeros(0)])
    return values[np.isfinite(values)]


def _integer_histograms(ax: Axes, runs: Sequence[Run], column: str) -> list[str]:
    """Per scheme with a nonzero value: the fraction of updates at each integer value, as a step
    outline on integer bins; schemes with the same distribution share one outline and one legend
    entry. Returns the schemes drawn."""
    styles = scheme_styles([r.scheme for r in runs])
    data = {s: v for s, group in _by_scheme(runs).items() if (v := _pooled(group, column)).size and np.any(v != 0)}
    top = int(max((v.max() for v in data.values()), default=0))
    edges = np.arange(-0.5, top + 1.5)
    shares: dict[str, list[str]] = {}  # first scheme of a distribution -> every scheme with it
    fractions: dict[str, np.ndarray] = {}
    for scheme, values in data.items():
        frac = np.histogram(values, edges)[0] / values.size
        first = next((o for o, f in fractions.items() if np.array_equal(f, frac)), None)
        if first is None:
            fractions[scheme], shares[scheme] = frac, [scheme]
        else:
            shares[first].append(scheme)
    for index, (scheme, frac) in enumerate(fractions.items()):
        style, names = styles[scheme], shares[scheme]
        names = [name if realisable(name) else f"{name} (not realisable)" for name in names]
        label = (" = ".join(names) if len(names) < 4 else f"{names[0]} and {len(names) - 1} more with the same")
        label += f" (mean {data[scheme].mean():.2f})"
        ax.stairs(frac, edges, color=style.color, ls=style.linestyle, lw=2.2 - 0.25 * min(index, 4), label=label,
                  zorder=2 + index)
    if data:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(-0.5, top + 0.5)
    return list(data)


def _with_zero_entry(handles: list, labels: list[str], runs: Sequence[Run], drawn: list[str], column: str
                     ) -> tuple[list, list[str]]:
    """The legend's entries plus one naming the schemes whose ``column`` is 0 throughout (no outline
    is drawn for them, but they were run: the legend says so rather than leaving them out)."""
    zero = [s for s, g in _by_scheme(runs).items() if s not in drawn and _pooled(g, column).size]
    if not zero:
        return handles, labels
    names = ", ".join(s if realisable(s) else f"{s} (not realisable)" for s in zero)
    return [*handles, Line2D([], [], ls="none")], [*labels, f"0 throughout: {names}"]


def staleness(runs: Sequence[Run], smooth: int | None = None) -> Figure:
    """Distribution of the staleness of applied updates (pooled over seeds), per scheme with any.

    Integer bins drawn as step outlines (one per distinct distribution: schemes with the same
    one share it), so many schemes stay readable.
    """
    fig, (ax,) = _new_figure()
    drawn = _integer_histograms(ax, runs, "staleness")
    if drawn:
        handles, labels = ax.get_legend_handles_labels()
        _legend(fig, ax, *_with_zero_entry(handles, labels, runs, drawn, "staleness"), ncols=2)
    else:
        _note(ax, "no scheme applied a stale update (staleness 0 throughout)")
    ax.set_xlabel("staleness: server updates between the worker's read and the application")
    ax.set_ylabel("fraction of updates")
    _subtitle(ax, "pooled over seeds; one outline per distinct distribution")
    _title(fig, runs, "Staleness of applied updates")
    return fig


def residual_staleness(runs: Sequence[Run], smooth: int | None = None) -> Figure:
    """The residual staleness (server updates the applied direction still does not account for:
    the staleness for an uncorrected scheme, the updates since the parameters a correction
    linearised at for a corrected one): its distribution, and its mean over training."""
    window = smoothing_window(runs, smooth)
    styles = scheme_styles([r.scheme for r in runs])
    fig, (top, bottom) = _new_figure(rows=2, height=7.0)
    drawn = _integer_histograms(top, runs, "residual_staleness")
    for index, (scheme, group) in enumerate(_by_scheme(runs).items()):
        curves = _smoothed(group, "residual_staleness", window)
        if curves:
            _draw_mean_band(bottom, curves, styles[scheme], "_" + scheme, index)
    handles, labels = top.get_legend_handles_labels()
    _legend(fig, top, *_with_zero_entry(handles, labels, runs, drawn, "residual_staleness"), ncols=2)
    if not any(_pooled(g, "residual_staleness").size for g in _by_scheme(runs).values()):
        _note(top, "no residual_staleness column in these runs")
    top.set_xlabel("residual staleness: server updates the applied direction does not account for")
    top.set_ylabel("fraction of updates")
    _subtitle(top, "distribution, pooled over seeds; one outline per distinct distribution")
    bottom.set_xlabel("server update")
    bottom.set_ylabel("residual staleness")
    _subtitle(bottom, "over training: mean over seeds" + _window_note(window) + "; band: min to max")
    _title(fig, runs, "Residual staleness (lower is better)")
    return fig


FIGURES: dict[str, Callable[[Sequence[Run], int | None], Figure]] = {
    "loss_vs_iteration": loss_vs_iteration,
    "gradient_error_vs_iteration": gradient_error_vs_iteration,
    "tracking": tracking,
    "loss_vs_time": loss_vs_time,
    "staleness": staleness,
    "residual_staleness": residual_staleness,
}


# ---------------------------------------------------------------------------------------------- output


def save_figure(fig: Figure, path: Path) -> None:
    """Render in the format of the suffix (a PDF without a creation date, so it is reproducible)
    and write it with ``runs.files.atomic_write_bytes``."""
    fmt = path.suffix.lstrip(".")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, metadata={"CreationDate": None} if fmt == "pdf" else None)
    atomic_write_bytes(path, buf.getvalue())


def write_figures(figures: Iterable[tuple[str, Figure]], out: Path) -> list[Path]:
    """Save each (name, figure) as ``out/<name>.<format>`` in every one of ``FORMATS``; the paths written.

    ``figures`` may be a generator: each figure is saved before the next is drawn.
    """
    out = Path(out)
    check_writable_folder(out, "figures folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures:
        for ext in FORMATS:
            path = out / f"{name}.{ext}"
            save_figure(fig, path)
            written.append(path)
    return written


def plot_experiment(folder: Path, out_dir: Path | None = None, smooth: int | None = None,
                    on_note: Callable[[str], None] | None = None) -> list[Path]:
    """Write every figure of ``folder`` as PNG and PDF into ``out_dir`` (default ``folder/figures``);
    ``on_note`` hears of every run drawn that did not finish (interrupted, running, dead)."""
    folder = Path(folder)
    return _plot_runs(load_runs(folder), Path(out_dir) if out_dir is not None else folder / "figures", smooth,
                      on_note)


def _plot_runs(runs: Sequence[Run], out: Path, smooth: int | None,
               on_note: Callable[[str], None] | None = None) -> list[Path]:
    for run in runs:
        status = locks.run_status(run.path, run.meta)
        if on_note is not None and status in UNFINISHED:
            why = " (meta.json says running; no live process owns it)" if status == "dead" else ""
            on_note(f"{run.path} is {status}{why}: drawn up to update {int(run.metrics['iteration'][-1])}")
    return write_figures(((name, make(runs, smooth)) for name, make in FIGURES.items()), out)


def plot_path(path: Path, out_dir: Path | None = None, smooth: int | None = None,
              on_note: Callable[[str], None] | None = None) -> list[Path]:
    """Plot what ``path`` holds: one run directory (figures of that run), an experiment folder, or a
    results root (every experiment folder beneath it; with ``out_dir``, each into
    ``out_dir/<its path under the root>``). A ``ResultsError`` when nothing there is plottable."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results path {path} does not exist")
    if not path.is_dir():
        raise ResultsError(f"{path} is not a directory")
    if is_run_dir(path):
        out = Path(out_dir) if out_dir is not None else path / "figures"
        return _plot_runs([load_run(path, *parse_run_dir_name(path.name))], out, smooth, on_note)
    folders = experiment_folders(path)
    if not folders:
        raise ResultsError(f"no run directories (<scheme>-seed<k>/) in {path} or beneath it")
    paths: list[Path] = []
    for folder in folders:
        out = None if out_dir is None else Path(out_dir) / folder.relative_to(path)
        paths.extend(plot_experiment(folder, out, smooth, on_note))
    return paths
