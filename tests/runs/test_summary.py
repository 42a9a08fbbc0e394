"""Specification of the statistics shared by the summary, the regime study and their figures."""

from __future__ import annotations

import math

import pytest

from asynccorr.runs.summary import MeanStd, final_window, mean_std, mean_std_text


@pytest.mark.parametrize(("n", "fraction", "window"), [
    (1000, 0.1, 100), (150, 0.1, 15), (112, 0.1, 11), (12, 0.1, 1), (8, 0.1, 1), (0, 0.1, 1),
    (8, 0.25, 2), (10, 0.7, 7), (10, 1.0, 10),
])
def test_the_final_window_is_the_fraction_of_the_updates_rounded_down_and_at_least_one(n, fraction, window):
    assert final_window(n, fraction) == window


def test_the_final_window_is_a_tenth_by_default():
    assert [final_window(n) for n in (9, 10, 19, 20, 999)] == [1, 1, 1, 2, 99]


def test_a_quantity_over_seeds_leaves_out_the_seeds_without_a_value():
    assert mean_std([2.0, float("nan"), 4.0, None, float("inf")]) == MeanStd(3.0, 1.0, 2)
    assert mean_std([5.0]) == MeanStd(5.0, 0.0, 1)
    stat = mean_std([float("nan")])
    assert stat.count == 0 and math.isnan(stat.mean) and math.isnan(stat.std)


def test_mean_and_std_are_written_together_only_when_several_seeds_have_a_value():
    assert mean_std_text(MeanStd(2.0, 0.25, 3), ".2f") == "2.00 ± 0.25"
    assert mean_std_text(MeanStd(2.0, 0.0, 1), ".2f") == "2.00"
    assert mean_std_text(mean_std([]), ".2f") == "–"
    assert mean_std_text(mean_std([]), ".2f", missing="nan") == "nan"
    assert mean_std_text(MeanStd(0.3421, 0.117, 3), ".3g", sep="±", std_fmt=".2g") == "0.342±0.12"
