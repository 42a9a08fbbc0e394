"""Heat maps of a regime study (rows of ``asynccorr.studies.regimes``), PNG and PDF.

Per delay model and metric, one figure with a panel per scheme: x = workers N,
y = policy learning rate, colour = the metric's mean over seeds, each cell
annotated with mean ± std over seeds and how many seeds count:

* ``reach_<delay>``      colour: fraction of seeds reaching sync's final loss; text: that
                         fraction and the final loss (mean ± std)
* ``updates_<delay>``    server updates to the target loss (seeds that got there; grey: none)
* ``time_<delay>``       simulated time to the target loss
* ``tracking_<delay>``   final RMS lateral error of the tracking scenario

and ``best_scheme``: per delay model, the winner of each cell (defined in
``best_scheme``) in its scheme colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from asynccorr.figures.experiment import scheme_colors, write_figures
from asynccorr.runs.summary import mean_std_text
from asynccorr.studies.regimes import RegimeConfig, group, summarize_cell

METRICS = {  # name -> (summary key, title, colour map, log scale, format)
    "reach": ("reached", "fraction of seeds reaching sync's final loss (text: final loss)", "RdYlGn", False, ".2f"),
    "updates": ("iters_to_target", "server updates to the target loss", "viridis_r", True, ".0f"),
    "time": ("time_to_target", "simulated time to the target loss [s]", "viridis_r", True, ".3g"),
    "tracking": ("rms_lateral", "final RMS lateral error [m]", "magma_r", True, ".3f"),
}


def _cell_grid(study: RegimeConfig, summaries: dict[tuple, dict[str, Any]], delay: str, scheme: str,
               key: str) -> tuple[np.ndarray, list[list[str]]]:
    workers = list(study.workers)
    values = np.full((len(study.learning_rates), len(workers)), np.nan)
    texts = [["" for _ in workers] for _ in study.learning_rates]
    for i, (plr, vlr) in enumerate(study.learning_rates):
        for j, n in enumerate(workers):
            c = summaries.get((delay, plr, vlr, n, scheme))
            if c is None:
                continue
            seeds = c["seeds"]
            if key == "reached":
                values[i, j] = c["reached"] / seeds
                texts[i][j] = f"{c['reached']}/{seeds}\n{mean_std_text(c['final_loss'], '.2f', sep='±')}"
            else:
                values[i, j] = c[key].mean
                fmt = METRICS[next(k for k, v in METRICS.items() if v[0] == key)][4]
                texts[i][j] = f"{mean_std_text(c[key], fmt, sep='±')}\n({c[key].count}/{seeds})"
            if c["diverged"]:
                texts[i][j] += f"\ndiv {c['diverged']}/{seeds}"
    return values, texts


def _axes_grid(fig: Figure, count: int) -> list[Axes]:
    cols = min(3, count)
    rows = math.ceil(count / cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return list(axes[:count])


def _frame(ax: Axes, study: RegimeConfig, title: str) -> None:
    ax.set_xticks(range(len(study.workers)), [str(n) for n in study.workers])
    ax.set_yticks(range(len(study.learning_rates)), [f"{p:g}" for p, _ in study.learning_rates])
    ax.set_xlabel("workers N")
    ax.set_ylabel("policy lr")
    ax.set_title(title, fontsize=10)


def _text_color(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def metric_figure(study: RegimeConfig, rows: Sequence[dict[str, Any]], delay: str, metric: str) -> Figure:
    key, title, cmap_name, log, _ = METRICS[metric]
    summaries = {k: summarize_cell(v) for k, v in group(rows).items()}
    grids = {s: _cell_grid(study, summaries, delay, s, key) for s in study.schemes}
    finite = np.concatenate([g[0][np.isfinite(g[0])] for g in grids.values()] + [np.array([])])
    if key == "reached":
        norm = mcolors.Normalize(0.0, 1.0)
    elif finite.size and log and finite.min() > 0:
        lo, hi = float(finite.min()), float(finite.max())
        norm = mcolors.LogNorm(lo, hi if hi > lo else lo * 1.01)
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = mcolors.Normalize(lo, hi if hi > lo else lo + 1.0)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="#d9d9d9")
    cols = min(3, len(study.schemes))
    fig = Figure(figsize=(4.3 * cols + 1.0, 0.9 + 2.3 * math.ceil(len(study.schemes) / cols)
                          * max(1.0, len(study.learning_rates) / 2.5)), layout="constrained")
    axes = _axes_grid(fig, len(study.schemes))
    image = None
    for ax, scheme in zip(axes, study.schemes):
        values, texts = grids[scheme]
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", origin="lower")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                color = "black" if not np.isfinite(values[i, j]) else _text_color(cmap(norm(values[i, j])))
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=7, color=color)
        _frame(ax, study, scheme)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=title.split(" (")[0])
    fig.suptitle(f"{study.name}, {delay} delays: {title}\nmean ± std over seeds "
                 f"({len(study.seeds)} seeds; count of seeds in brackets; grey: none)", fontsize=11)
    return fig


def best_scheme(study: RegimeConfig, summaries: dict[tuple, dict[str, Any]], delay: str, plr: float, vlr: float,
                n: int) -> tuple[str | None, str]:
    """The cell's winner and a label.

    Among the schemes that reached the target loss on every seed, the one with the
    smallest mean simulated time to it; if none did, the one that reached sync's
    final loss on the most seeds (ties: lowest mean final loss); ``None`` if nothing
    reached anything.
    """
    cands = {s: summaries[(delay, plr, vlr, n, s)] for s in study.schemes if (delay, plr, vlr, n, s) in summaries}
    at_target = {s: c for s, c in cands.items() if c["at_target"] == c["seeds"]}
    if at_target:
        s = min(at_target, key=lambda s: at_target[s]["time_to_target"].mean)
        return s, f"{s}\nt={mean_std_text(at_target[s]['time_to_target'], '.3g', sep='±', std_fmt='.2g')}s"
    reached = {s: c for s, c in cands.items() if c["reached"] > 0}
    if reached:
        s = max(reached, key=lambda s: (reached[s]["reached"], -reached[s]["final_loss"].mean))
        return s, f"{s}\n{reached[s]['reached']}/{reached[s]['seeds']} reach\n(no target)"
    return None, "none"


def best_figure(study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> Figure:
    summaries = {k: summarize_cell(v) for k, v in group(rows).items()}
    palette = scheme_colors(list(study.schemes))
    fig = Figure(figsize=(4.6 * len(study.delays) + 1.6, 1.6 + 1.1 * len(study.learning_rates)),
                 layout="constrained")
    axes = fig.subplots(1, len(study.delays), squeeze=False)[0]
    for ax, delay in zip(axes, study.delays):
        for i, (plr, vlr) in enumerate(study.learning_rates):
            for j, n in enumerate(study.workers):
                scheme, label = best_scheme(study, summaries, delay, plr, vlr, n)
                color = palette.get(scheme, "#d9d9d9") if scheme else "#d9d9d9"
                ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, color=color, alpha=0.8))
                ax.text(j, i, label, ha="center", va="center", fontsize=7,
                        color=_text_color(mcolors.to_rgba(color)))
        ax.set_xlim(-0.5, len(study.workers) - 0.5)
        ax.set_ylim(-0.5, len(study.learning_rates) - 0.5)
        _frame(ax, study, f"{delay} delays")
    handles = [Patch(color=c, label=s) for s, c in palette.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"{study.name}: best scheme per cell\nfastest in simulated time to the target loss "
                 f"{study.target_loss} on all {len(study.seeds)} seeds (mean ± std over seeds);\n"
                 "if none gets there: most seeds reaching sync's final loss", fontsize=10)
    return fig


def plot_study(study: RegimeConfig, rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Write every heat map of the study as PNG and PDF into ``out``."""
    figures: dict[str, Figure] = {}
    for delay in study.delays:
        for metric in METRICS:
            figures[f"{metric}_{delay}"] = metric_figure(study, rows, delay, metric)
    figures["best_scheme"] = best_figure(study, rows)
    return write_figures(figures.items(), out)
