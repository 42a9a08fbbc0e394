"""Mechanical checks of a rendered figure (shared by the figure tests of experiments and studies)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from asynccorr.figures.style import UPPER_BOUND
from asynccorr.schemes.registry import SCHEMES

NOT_REALISABLE = tuple(name for name, scheme in SCHEMES.items() if not scheme.realisable)


def texts_outside(fig: Figure) -> list[str]:
    """The visible texts reaching beyond the canvas once drawn at the saved size (tick labels of
    ticks outside the view, which are never drawn, do not count: the figure's tight box decides)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box, tight = fig.bbox, fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    if tight.x0 >= box.x0 - 1 and tight.y0 >= box.y0 - 1 and tight.x1 <= box.x1 + 1 and tight.y1 <= box.y1 + 1:
        return []
    out = []
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip():
            ext = text.get_window_extent(renderer)
            if ext.x0 < box.x0 - 1 or ext.y0 < box.y0 - 1 or ext.x1 > box.x1 + 1 or ext.y1 > box.y1 + 1:
                out.append(text.get_text())
    return out or [f"the figure's drawn extent {tight.bounds} exceeds its canvas {box.bounds}"]


def legend_entries(fig: Figure) -> list[str]:
    return [t.get_text() for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if legend
            for t in legend.get_texts()]


def drawn_labels(fig: Figure) -> list[str]:
    """The labels of the series drawn in the axes (lines, patches, collections), leaving out the unlabelled."""
    labels = []
    for ax in fig.axes:
        for artist in [*ax.get_lines(), *ax.patches, *ax.collections]:
            label = artist.get_label()
            if label and not label.startswith("_"):
                labels.append(label)
    return labels


def unmarked_upper_bounds(texts: list[str]) -> list[str]:
    """Texts naming a non-realisable scheme without saying that it is one."""
    return [t for t in texts if any(name in t for name in NOT_REALISABLE)
            and UPPER_BOUND not in t and "not realisable" not in t]
