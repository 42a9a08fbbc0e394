"""Every experiment figure, rendered from a small real comparison, checked mechanically: no text
outside the canvas, legend entries equal to the series drawn (and the notes the figure adds),
every non-realisable scheme marked as such wherever it is named."""

from __future__ import annotations

import pytest
from clitools import tiny_toml
from figcheck import drawn_labels, legend_entries, texts_outside, unmarked_upper_bounds

from asynccorr import api
from asynccorr.figures.experiment import FIGURES
from asynccorr.runs.read import load_runs

SCHEMES = ["sync", "async", "learner", "modify@server", "modify@oracle"]
NOTES = ("dotted: ", "0 throughout: ", ": 0 by construction", "reference")  # entries that are not a series


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("real")
    path = root / "small.toml"
    path.write_text(tiny_toml("small", iterations=12, eval_every=6, workers=3))
    api.compare(api.experiment(path), schemes=SCHEMES, seeds=[0, 1], results=root)
    return load_runs(root / "small")


@pytest.fixture(scope="module", params=list(FIGURES))
def figure(request, runs):
    return request.param, FIGURES[request.param](runs, None)


def test_no_text_of_any_figure_reaches_beyond_its_canvas(figure):
    name, fig = figure
    assert texts_outside(fig) == [], name


def test_every_legend_entry_is_a_drawn_series_or_a_note_and_every_labelled_series_is_in_the_legend(figure):
    name, fig = figure
    entries, drawn = legend_entries(fig), drawn_labels(fig)
    assert entries, name
    strays = [e for e in entries if e not in drawn and not any(note in e for note in NOTES)]
    assert strays == [], (name, strays)
    assert [d for d in drawn if d not in entries] == [], name


def test_every_mention_of_a_non_realisable_scheme_says_so(figure):
    name, fig = figure
    assert unmarked_upper_bounds(legend_entries(fig)) == [], name
