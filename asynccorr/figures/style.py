"""The look every figure of the project shares, so a scheme reads the same everywhere.

* colour = the scheme's **family** (``modify``, ``modify-safe``, ``async``, ...): Okabe and Ito's
  colour-blind-safe palette for the main families, Tol's muted palette for the literature's
  other remedies; a name this registry does not know takes the next of the spare colours;
* line style = the **protocol** (how a correction gets its product): solid for none and for the
  server protocol, a distinct dash for each other one;
* marker = the **scheme** (sparse, staggered along the curve), so curves that lie on top of
  each other stay distinguishable;
* a non-realisable upper bound (``@oracle``) is drawn thin and dotted with hollow markers, on
  top of everything else, and its legend entry says what it is (``UPPER_BOUND``);
* heat maps use perceptually uniform, colour-blind-safe maps (``SEQUENTIAL_MAP``, ``FRACTION_MAP``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any, NamedTuple

from asynccorr.schemes.registry import DISPLAY_ORDER, SCHEMES, display_order, realisable

FAMILY_COLORS = {  # Okabe & Ito (2008) for the main families, Tol's muted for the others
    "sequential": "#555555",
    "sync": "#0072B2",
    "async": "#D55E00",
    "sync-pipelined": "#56B4E9",
    "learner": "#CC79A7",
    "modify": "#009E73",
    "modify-safe": "#E69F00",
    "modify-dense": "#882255",
    "dc-asgd": "#999933",
    "dc-asgd-a": "#DDCC77",
    "staleness-lr": "#332288",
    "gap-aware": "#44AA99",
    "drop-stale": "#AA4499",
}
SPARE_COLORS = ("#CC6677", "#117733", "#88CCEE", "#661100", "#6699CC", "#888888")
PROTOCOL_LINES: dict[str | None, Any] = {
    None: "-", "server": "-", "deferred": (0, (6, 2)), "pull-first": (0, (6, 2, 1.5, 2)),
    "look-ahead": (0, (3, 1.5)), "secant": (0, (8, 2, 1.5, 2, 1.5, 2)), "oracle": (0, (1, 1.5)),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*", "d", "H", "8")
UPPER_BOUND = "not realisable: an upper bound"
SEQUENTIAL_MAP = "viridis"  # heat maps of a quantity (reversed where lower is better)
FRACTION_MAP = "cividis"  # heat maps of a fraction of seeds


class Style(NamedTuple):
    """How one scheme is drawn."""

    color: str
    linestyle: Any
    marker: str
    upper_bound: bool  # not realisable: thin, dotted, hollow markers, drawn on top

    def line_kwargs(self, index: int = 0, markers: bool = True) -> dict[str, Any]:
        """``Axes.plot`` keywords: with ``markers``, one every tenth of the axes' diagonal along the
        curve (on any scale), the first staggered by ``index`` so coinciding curves show every marker."""
        kwargs: dict[str, Any] = {"color": self.color, "ls": self.linestyle, "lw": 1.2 if self.upper_bound else 1.8,
                                  "zorder": 4 if self.upper_bound else 2}
        if markers:
            kwargs.update(marker=self.marker, ms=5, markevery=(0.01 + 0.014 * (index % 7), 0.1),
                          mfc="white" if self.upper_bound else self.color, mec=self.color)
        return kwargs


def family(name: str) -> str:
    """``modify-safe@server`` -> ``modify-safe``; ``sync-pipelined-modify`` -> ``sync-pipelined``."""
    base = name.split("@", 1)[0]
    return "sync-pipelined" if base == "sync-pipelined-modify" else base


def protocol(name: str) -> str | None:
    return SCHEMES[name].protocol if name in SCHEMES else None


def scheme_styles(names: Sequence[str]) -> dict[str, Style]:
    """A fixed style per scheme (the same in every figure); unknown names take the spare colours."""
    order = display_order(names)
    spare = iter(SPARE_COLORS * (1 + len(order)))
    colors: dict[str, str] = {}
    out = {}
    for name in order:
        fam = family(name)
        if fam not in FAMILY_COLORS and fam not in colors:
            colors[fam] = next(spare)
        color = FAMILY_COLORS.get(fam) or colors[fam]
        rank = DISPLAY_ORDER.index(name) if name in DISPLAY_ORDER else len(DISPLAY_ORDER) + order.index(name)
        out[name] = Style(color, PROTOCOL_LINES.get(protocol(name), "-"), MARKERS[rank % len(MARKERS)],
                          not realisable(name))
    return out


def scheme_colors(names: Sequence[str]) -> dict[str, str]:
    """The colour of each scheme (its family's)."""
    return {name: style.color for name, style in scheme_styles(names).items()}


def marked(name: str) -> str:
    """A legend or table name: a non-realisable scheme says it is an upper bound."""
    return name if realisable(name) else f"{name} ({UPPER_BOUND})"


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped (each of its lines) to ``width_in`` inches of ``fontsize``-point text (a
    character is about 0.55 em wide), so titles never run off the canvas."""
    chars = max(30, int(width_in * 72 / (0.58 * fontsize)))
    return "\n".join(part for line in text.split("\n") for part in textwrap.wrap(line, chars) or [""])
