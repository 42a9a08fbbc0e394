"""Heat maps of a regime study (rows of ``asynccorr.studies.regimes``), PNG and PDF.

Per delay model and metric, one figure with a panel per scheme: x = workers N,
y = policy learning rate, colour = the metric's mean over seeds, each cell
annotated with mean ± std over seeds and how many seeds count:

* ``reach_<delay>``      colour: fraction of seeds reaching sync's final loss; text: that
                         fraction and the final loss (mean ± std)
* ``updates_<delay>``    server updates to the target loss (seeds that got there; grey: none)
* ``time_<delay>``       simulated time to the target loss
* ``tracking_<delay>``   final RMS lateral error of the tracking scenario

and ``best_scheme``: per delay model, the fastest realisable scheme of each cell
(``studies.regimes.cell_winner``, the rule the docs state) in its scheme colour; ties are
drawn as ties (hatched, every name), and a cell where the non-realisable upper bound would
have been faster gets a dashed outline and that bound's time, marked as such. Colours come
from ``figures.style``: the same per scheme as in every other figure; heat maps use
perceptually uniform, colour-blind-safe maps.
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
from matplotlib.patches import Patch, Rectangle

from asynccorr.config import describe, to_dict
from asynccorr.figures.experiment import write_figures
from asynccorr.figures.style import FRACTION_MAP, SEQUENTIAL_MAP, UPPER_BOUND, marked, scheme_colors, wrap
from asynccorr.runs.summary import mean_std_text
from asynccorr.schemes.registry import realisable
from asynccorr.studies.regimes import RegimeConfig, Winner, group, summarize_cell, winners

METRICS = {  # name -> (summary key, title, colour map, log scale, format)
    "reach": ("reached", "fraction of seeds reaching sync's final loss (higher is better)", FRACTION_MAP, False,
              ".2f"),
    "updates": ("iters_to_target", "server updates to the target loss (lower is better)", SEQUENTIAL_MAP + "_r",
                True, ".0f"),
    "time": ("time_to_target", "simulated time to the target loss [s] (lower is better)", SEQUENTIAL_MAP + "_r",
             True, ".3g"),
    "tracking": ("rms_lateral", "final RMS lateral error [m] (lower is better)", SEQUENTIAL_MAP + "_r", True,
                 ".3f"),
}
SHORT = {"reach": "fraction reaching sync", "updates": "updates to target", "time": "sim time to target [s]",
         "tracking": "RMS lateral [m]"}  # the colour bars' labels
TEXTS = {  # what a cell's text says, per metric
    "reach": "text: seeds reaching sync's final loss, and the final loss (mean ± std over seeds)",
    "other": "text: mean ± std over the seeds that got there (their count in brackets); grey: no seed did",
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
        _frame(ax, study, marked(scheme))
        if not realisable(scheme):  # an upper bound's panel: hatched frame, so it is never read as a result
            for spine in ax.spines.values():
                spine.set_linestyle((0, (2, 2)))
            ax.title.set_fontstyle("italic")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=SHORT[metric])
    fig.suptitle(wrap(f"{title}\n{_study_line(study, delay)}\n{TEXTS['reach' if metric == 'reach' else 'other']}",
                      fig.get_figwidth(), 10), fontsize=10)
    return fig


def _study_line(study: RegimeConfig, delays: str) -> str:
    """What the study's grid holds, in words: learner, optimizer, N, delay model, length, seeds."""
    exp = study.experiment
    learner = describe(to_dict(exp)).split(", ")[0]
    return (f"{learner}, {exp.optim.name.upper()} (policy step per row), N = "
            f"{', '.join(map(str, study.workers))}, {delays} delays, {exp.train.iterations} updates, "
            f"{len(study.seeds)} seeds")


def _cell(ax: Axes, j: int, i: int, w: Winner, palette: dict[str, str]) -> None:
    """One cell of the best-scheme map: the winner's colour (hatched across the colours of a tie),
    its name(s) and time; a dashed outline and the bound's time where the upper bound was faster."""
    colors = [palette[s] for s in w.schemes] or ["#d9d9d9"]
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=colors[0], lw=0))
    if len(colors) > 1:  # a tie: stripes of the other winners' colours
        for k, color in enumerate(colors[1:]):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor=color,
                                   hatch="//" if k % 2 == 0 else "\\\\", lw=0))
    lines = [" = ".join(w.schemes) if w.schemes else "none"]
    lines[0] = lines[0].replace(" = ", " =\n") if len(lines[0]) > 20 else lines[0]
    lines.append(f"t = {mean_std_text(w.time, '.3g', std_fmt='.2g')} s" if w.time is not None else f"({w.note})")
    if w.bound is not None:
        ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, facecolor="none", edgecolor="black", lw=1.2,
                               ls=(0, (3, 2))))
        lines.append(f"(bound: {w.bound[1].mean:.2g} s)")
    ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=7,
            color=_text_color(mcolors.to_rgba(colors[0])),
            bbox={"facecolor": "white", "alpha": 0.75, "lw": 0, "pad": 1.5} if len(colors) > 1 else None)


def best_figure(study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> Figure:
    found = winners(study, rows)
    palette = scheme_colors(list(study.schemes))
    fig = Figure(figsize=(6.6 * len(study.delays), 2.6 + 1.2 * len(study.learning_rates)), layout="constrained")
    axes = fig.subplots(1, len(study.delays), squeeze=False)[0]
    for ax, delay in zip(axes, study.delays):
        for i, (plr, vlr) in enumerate(study.learning_rates):
            for j, n in enumerate(study.workers):
                _cell(ax, j, i, found[(delay, plr, vlr, n)], palette)
        ax.set_xlim(-0.5, len(study.workers) - 0.5)
        ax.set_ylim(-0.5, len(study.learning_rates) - 0.5)
        _frame(ax, study, f"{delay} delays")
    drawn = [s for s in study.schemes if any(s in w.schemes for w in found.values())]
    handles: list[Any] = [Patch(color=palette[s], label=s) for s in drawn]
    if any(len(w.schemes) > 1 for w in found.values()):
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="hatched: a tie (within 5 %)"))
    bounds = sorted({w.bound[0] for w in found.values() if w.bound})
    if bounds:
        handles.append(Patch(facecolor="none", edgecolor="black", ls=(0, (3, 2)),
                             label=f"dashed: {' / '.join(bounds)} ({UPPER_BOUND}) would be faster: its time as "
                                   "'bound'"))
    if any(not w.schemes for w in found.values()):
        handles.append(Patch(color="#d9d9d9", label="none reaches sync's final loss"))
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=min(4, len(handles)), frameon=False)
    fig.suptitle(wrap(f"Fastest realisable scheme per cell\n{_study_line(study, ', '.join(study.delays))}\n"
                      f"the fastest in simulated time to the target loss {study.target_loss} among the schemes "
                      "that reach sync's final loss and the target on every seed (mean ± std over seeds)",
                      fig.get_figwidth(), 9), fontsize=9)
    return fig


def plot_study(study: RegimeConfig, rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Write every heat map of the study as PNG and PDF into ``out``."""
    figures: dict[str, Figure] = {}
    for delay in study.delays:
        for metric in METRICS:
            figures[f"{metric}_{delay}"] = metric_figure(study, rows, delay, metric)
    figures["best_scheme"] = best_figure(study, rows)
    return write_figures(figures.items(), out)
