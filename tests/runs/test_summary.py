"""Specification of the statistics shared by the summary, the regime study and their figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asynccorr.config import ReportConfig
from asynccorr.runs.summary import (
    MeanStd,
    analysis_fields,
    final_window,
    mean_std,
    mean_std_text,
    smoothed_first_below,
)


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


def test_the_target_is_the_first_update_whose_moving_mean_is_below_it():
    loss = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 9.0])
    # 3-update means: [4, 3, 2, 4] ending at updates (0-based) 2, 3, 4, 5; first < 2.5 ends at index 4
    assert smoothed_first_below(loss, 2.5, 3) == 4
    assert smoothed_first_below(loss, 3.5, 3) == 3
    assert smoothed_first_below(loss, 1.0, 3) is None
    assert smoothed_first_below(loss, 100.0, 7) is None  # shorter than the window
    assert smoothed_first_below(np.array([1.0, np.nan, 1.0]), 2.0, 2) is None


def _metrics(loss, errors=None):
    n = len(loss)
    return {"iteration": np.arange(1, n + 1, dtype=float), "time": 0.5 * np.arange(1, n + 1),
            "policy_loss": np.asarray(loss, float), "grad_error": np.asarray(errors if errors is not None
                                                                          else np.zeros(n), float)}


def test_time_to_target_is_the_update_and_simulated_time_where_the_report_window_first_falls_below_it():
    m = _metrics([5.0, 4.0, 3.0, 2.0, 1.0, 9.0])
    got = analysis_fields(m, None, ReportConfig(target_loss=2.5, target_window=3))
    assert (got["updates_to_target"], got["time_to_target"], got["target_loss"]) == (5, 2.5, 2.5)
    never = analysis_fields(m, None, ReportConfig(target_loss=0.5, target_window=3))
    assert math.isnan(never["updates_to_target"]) and math.isnan(never["time_to_target"])


def test_a_diverged_run_reaches_the_target_only_before_its_diverging_update():
    m = _metrics([5.0, 4.0, -1e9, -1e9])  # the blow-up runs the loss far below any target
    assert math.isnan(analysis_fields(m, 3, ReportConfig(target_loss=2.5, target_window=1))["updates_to_target"])
    assert analysis_fields(m, None, ReportConfig(target_loss=2.5, target_window=1))["updates_to_target"] == 3


def test_with_a_tracking_target_time_to_target_is_the_first_evaluation_tracking_below_it_on_the_road():
    """report.target_rms: for a learner whose policy loss is not a curve to threshold (Q's rises)."""
    m = _metrics([1.0] * 8)  # a loss far below target_loss: ignored when target_rms is set
    evals = {"iteration": np.array([0.0, 2, 4, 6, 8]), "rms_lateral": np.array([0.1, 0.5, 0.2, 0.3, 0.1]),
             "left_road": np.array([0.0, 0, 1, 0, 0])}
    got = analysis_fields(m, None, ReportConfig(target_rms=0.25), evals)
    # not 0 (before any update), not 4 (off the road)
    assert (got["updates_to_target"], got["time_to_target"], got["target_rms"]) == (8, 4.0, 0.25)
    assert math.isnan(analysis_fields(m, 8, ReportConfig(target_rms=0.25), evals)["updates_to_target"])  # diverged at 8
    assert math.isnan(analysis_fields(m, None, ReportConfig(target_rms=0.05), evals)["updates_to_target"])


def test_the_gradient_error_after_warmup_leaves_out_the_first_tenth_of_the_updates():
    errors = [10.0] * 10 + [1.0] * 90
    got = analysis_fields(_metrics([3.0] * 100, errors), None, ReportConfig())
    assert got["grad_error_after_warmup"] == 1.0
