"""Specification of the experiment figures (synthetic run directories; no training)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from clitools import run_cli
from matplotlib.collections import PolyCollection

from asynccorr.figures import experiment as plots
from asynccorr.figures.experiment import FIGURES, FORMATS, plot_experiment, plot_path
from asynccorr.figures.style import scheme_styles
from asynccorr.runs.files import parse_run_dir_name, read_csv, run_dir_name, write_csv, write_json
from asynccorr.runs.read import ResultsError, experiment_folders, load_runs
from asynccorr.schemes.registry import DISPLAY_ORDER

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FRESH = ("sequential", "sync")


def make_run(folder: Path, scheme: str, seed: int, n: int = 40, diverge_at: int | None = None,
             meta: dict | None = None) -> Path:
    """A run directory in the layout ``asynccorr.runs.run`` writes, with plausible synthetic curves."""
    rng = np.random.default_rng(seed + 17 * len(scheme))
    run = folder / run_dir_name(scheme, seed)
    it = np.arange(1, n + 1)
    stale = np.zeros(n) if scheme in FRESH else rng.integers(0, 5, n).astype(float)
    loss = 20.0 * np.exp(-it / 15) + 1 + 0.2 * rng.random(n)
    error = np.zeros(n) if scheme in FRESH else 0.05 + 0.1 * rng.random(n)
    stale_error = error * (3.0 if scheme.startswith("modify") else 1.0)
    if diverge_at is not None:
        loss[diverge_at - 3:diverge_at] = [1e3, 1e8, 1e20]
        loss[diverge_at:] = np.nan
        loss[diverge_at + 1:] = np.inf
        error[diverge_at:] = np.nan
    write_csv(run / "metrics.csv", {
        "iteration": it, "time": np.cumsum(0.01 + 0.01 * rng.random(n)), "worker": it % 4, "staleness": stale,
        "policy_loss": loss, "value_loss": 10 * loss, "grad_error": error, "policy_grad_error": error,
        "stale_grad_error": stale_error, "direction_norm": np.ones(n), "correction_norm": np.zeros(n),
        "update_norm": np.ones(n)})
    write_csv(run / "eval.csv", {"iteration": [0, n], "rms_lateral": [1.0, 0.1], "max_lateral": [2.0, 0.3],
                                 "rms_heading": [0.2, 0.05], "total_utility": [50.0, 3.0],
                                 "steps_on_road": [31, 100], "left_road": [1, 0]})
    t = np.arange(100) * 0.1
    x = 0.5 * np.arange(100)
    y_ref = 2 * np.sin(2 * np.pi * x / 40)
    y = y_ref + 0.1 * np.cos(t) * (1 + seed)
    on_road = (np.arange(100) < 70).astype(float) if diverge_at is not None else np.ones(100)
    write_csv(run / "trajectory.csv", {"time": t, "x": x, "y": y, "y_ref": y_ref, "lateral_error": y - y_ref,
                                       "heading_error": np.zeros(100), "utility": np.ones(100), "on_road": on_road,
                                       "action_0": np.zeros(100), "action_1": np.zeros(100)})
    write_json(run / "config.json", {"name": folder.name, "scheme": scheme, "train": {"seed": seed},
                                     "workers": {"count": 4}})
    write_json(run / "meta.json", {"scheme": scheme, "seed": seed, **(meta or {})})
    return run


def make_experiment(folder: Path, schemes=("sequential", "sync", "async", "modify", "modify-safe"),
                    seeds=(0, 1), n: int = 40) -> Path:
    for scheme in schemes:
        for seed in seeds:
            make_run(folder, scheme, seed, n=n)
    write_csv(folder / "summary.csv", {"scheme": list(schemes), "seed": [0] * len(schemes)})
    (folder / "summary.md").write_text("# summary\n")
    return folder


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def bands(fig) -> list[PolyCollection]:
    return [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return make_experiment(tmp_path / "exp")


@pytest.fixture(scope="module")
def plotted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], list[Path]]:
    """An experiment plotted twice (rendering dominates the suite's time): (folder, files before, paths)."""
    folder = make_experiment(tmp_path_factory.mktemp("plotted") / "exp")
    before = snapshot(folder)
    plot_experiment(folder)
    return folder, before, plot_experiment(folder, smooth=3)


# ---------------------------------------------------------------------------------------------- output


def test_every_figure_is_written_as_a_valid_png_and_pdf_into_the_figures_folder(plotted):
    folder, _, paths = plotted
    expected = {folder / "figures" / f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")}
    assert set(paths) == expected and len(paths) == len(expected)
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000
        assert data.startswith(PNG_MAGIC if path.suffix == ".png" else b"%PDF")


def test_plot_writes_exactly_the_figures_the_readme_shows(plotted):
    _, _, paths = plotted
    shown = set(re.findall(r"results/paper/figures/(\w+)\.png", (REPO / "README.md").read_text()))
    assert {p.stem for p in paths} == shown


def test_figures_go_to_the_requested_output_folder_which_is_created(tmp_path: Path):
    folder = tmp_path / "exp"
    make_run(folder, "async", 0)
    out = tmp_path / "elsewhere" / "figs"
    paths = plot_experiment(folder, out_dir=out)
    assert all(p.parent == out for p in paths) and len(paths) == len(FIGURES) * len(FORMATS)
    assert not (folder / "figures").exists()


def test_plotting_never_modifies_the_run_files(plotted):
    folder, before, _ = plotted
    after = {k: v for k, v in snapshot(folder).items() if not k.startswith("figures")}
    assert after == before


def test_plotting_twice_replaces_the_figures_and_leaves_no_temporary_files(plotted):
    folder, _, paths = plotted
    assert sorted((folder / "figures").iterdir()) == sorted(paths)


# ---------------------------------------------------------------------------------------------- loading


def test_runs_are_ordered_by_the_fixed_scheme_order_then_seed_and_schemes_may_contain_dashes(tmp_path: Path):
    folder = tmp_path / "exp"
    for scheme, seed in (("zeta", 0), ("modify-safe", 1), ("async", 0), ("modify-safe", 0), ("sequential", 3)):
        make_run(folder, scheme, seed)
    (folder / "figures").mkdir()
    runs = load_runs(folder)
    assert [(r.scheme, r.seed) for r in runs] == [("sequential", 3), ("async", 0), ("modify-safe", 0),
                                                   ("modify-safe", 1), ("zeta", 0)]
    assert runs[2].path == folder / "modify-safe-seed0"
    assert runs[2].metrics["policy_loss"].shape == (40,) and runs[2].config["workers"]["count"] == 4


def test_run_directory_names_are_read_back_as_written_and_nothing_else_is_a_run():
    for scheme, seed in (("modify-safe", 0), ("dc-asgd-a", 12), ("my-seed-scheme", 3)):
        assert parse_run_dir_name(run_dir_name(scheme, seed)) == (scheme, seed)
    for other in ("figures", "summary.csv", "async-seed", "async-seedx", "async"):
        assert parse_run_dir_name(other) is None


def test_each_scheme_keeps_one_style_whatever_else_is_in_the_folder():
    alone = scheme_styles(["modify@server"])
    together = scheme_styles(["sequential", "sync", "async", "modify@server", "modify-safe@server", "gap-aware"])
    assert alone["modify@server"] == together["modify@server"]
    assert len({s.color for s in together.values()}) == len(together)  # different families, different colours
    every = scheme_styles(list(DISPLAY_ORDER))
    assert len({(s.color, str(s.linestyle), s.marker) for s in every.values()}) == len(every)  # all distinguishable


def test_colour_is_the_family_line_style_the_protocol_and_only_the_oracle_is_an_upper_bound():
    styles = scheme_styles(list(DISPLAY_ORDER))
    assert {styles[s].color for s in DISPLAY_ORDER if s.startswith("modify@")} == {styles["modify@server"].color}
    assert styles["modify@deferred"].linestyle == styles["modify-safe@deferred"].linestyle != "-"
    assert styles["modify@server"].linestyle == styles["async"].linestyle == "-"
    assert {s for s, st in styles.items() if st.upper_bound} == {"modify@oracle", "modify-safe@oracle"}
    assert styles["my-own"].color if "my-own" in styles else scheme_styles(["my-own"])["my-own"].color


# ---------------------------------------------------------------------------------------------- content


def test_several_seeds_give_a_min_to_max_band_and_one_seed_gives_none(tmp_path: Path):
    two = load_runs(make_experiment(tmp_path / "two", schemes=("async",), seeds=(0, 1)))
    one = load_runs(make_experiment(tmp_path / "one", schemes=("async",), seeds=(0,)))
    assert len(bands(plots.loss_vs_iteration(two))) == 1
    assert bands(plots.loss_vs_iteration(one)) == []


def test_the_band_spans_the_seeds_and_the_line_is_their_mean():
    x = np.arange(1.0, 6.0)
    grid, mean, lo, hi, count = plots.curve_band([(x, np.full(5, 1.0)), (x, np.full(5, 3.0))])
    np.testing.assert_allclose(grid, x)
    np.testing.assert_allclose(mean, 2.0)
    np.testing.assert_allclose(lo, 1.0)
    np.testing.assert_allclose(hi, 3.0)
    assert list(count) == [2] * 5


def test_a_seed_that_stops_early_only_counts_where_it_has_data():
    long, short = np.arange(1.0, 11.0), np.arange(1.0, 6.0)
    _, mean, _, _, count = plots.curve_band([(long, np.full(10, 1.0)), (short, np.full(5, 3.0))])
    assert list(count) == [2] * 5 + [1] * 5
    np.testing.assert_allclose(mean, [2.0] * 5 + [1.0] * 5)


def test_the_moving_average_keeps_the_length_and_averages_a_centred_window():
    y = np.array([0.0, 3.0, 6.0, 9.0, 12.0])
    np.testing.assert_allclose(plots.moving_average(y, 3), [1.5, 3.0, 6.0, 9.0, 10.5])
    np.testing.assert_allclose(plots.moving_average(y, 1), y)


def test_fresh_gradient_schemes_are_listed_as_zero_by_construction_not_drawn(experiment: Path):
    fig = plots.gradient_error_vs_iteration(load_runs(experiment))
    texts = legend_texts(fig)
    assert "sequential: 0 by construction (fresh gradient, not drawn)" in texts
    assert "sync: 0 by construction (fresh gradient, not drawn)" in texts
    drawn = {line.get_label() for line in fig.axes[0].get_lines()}
    assert "async" in drawn and not any(label.startswith(("sequential", "sync")) for label in drawn)


def test_corrected_schemes_also_show_the_stale_gradients_error_dotted_under_one_legend_entry(experiment: Path):
    fig = plots.gradient_error_vs_iteration(load_runs(experiment))
    dotted = {line.get_label() for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"}
    assert dotted == {"_modify: stale gradient before correction", "_modify-safe: stale gradient before correction"}
    assert [t for t in legend_texts(fig) if t.startswith("dotted")] == [
        "dotted: the same scheme's stale direction, before its correction"]


def test_the_oracle_is_drawn_thin_with_hollow_markers_on_top_and_labelled_an_upper_bound(tmp_path: Path):
    folder = tmp_path / "exp"
    for scheme in ("async", "modify@server", "modify@oracle"):
        make_run(folder, scheme, 0)
    runs = load_runs(folder)
    for fig in (plots.loss_vs_iteration(runs), plots.gradient_error_vs_iteration(runs)):
        lines = {line.get_label().split(" (")[0]: line for line in fig.axes[0].get_lines()
                 if not line.get_label().startswith("_")}
        oracle = lines["modify@oracle"]
        assert oracle.get_label().startswith("modify@oracle (not realisable: an upper bound")
        assert oracle.get_markerfacecolor() == "white" and oracle.get_linewidth() < lines["async"].get_linewidth()
        assert oracle.get_zorder() > max(lines[s].get_zorder() for s in ("async", "modify@server"))


def test_the_tracking_figure_draws_only_the_on_road_part_and_the_reference(tmp_path: Path):
    folder = tmp_path / "exp"
    make_run(folder, "async", 0, diverge_at=30, meta={"diverged": True})
    fig = plots.tracking(load_runs(folder))
    path = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith("async"))
    assert len(path.get_xdata()) == 70
    assert "left road at t = 6.9 s" in path.get_label()
    assert any(line.get_label() == "reference" for line in fig.axes[0].get_lines())


def test_the_staleness_histogram_draws_the_schemes_with_stale_updates_with_their_mean_and_names_the_rest(
        experiment: Path):
    runs = load_runs(experiment)
    texts = legend_texts(plots.staleness(runs))
    means = {s: np.mean(np.concatenate([r.metrics["staleness"] for r in runs if r.scheme == s]))
             for s in ("async", "modify", "modify-safe")}
    fresh = sorted({r.scheme for r in runs} - set(means))
    assert fresh and texts == [f"{s} (mean {m:.2f})" for s, m in means.items()] + [f"0 throughout: {', '.join(fresh)}"]


def test_the_staleness_histogram_has_integer_bins_one_outline_per_distribution_and_names_the_zero_ones(
        tmp_path: Path):
    folder = tmp_path / "exp"
    for scheme in ("async", "learner", "modify@server", "sync"):
        run = make_run(folder, scheme, 0)
        metrics = read_csv(run / "metrics.csv")
        metrics["staleness"] = np.zeros(40) if scheme == "sync" else np.tile([1.0, 2.0, 2.0, 3.0], 10)
        write_csv(run / "metrics.csv", metrics)
    fig = plots.staleness(load_runs(folder))
    # a scheme that was run but never stale is named, not left out
    assert legend_texts(fig) == ["async = learner = modify@server (mean 2.00)", "0 throughout: sync"]
    (outline,) = [p for p in fig.axes[0].patches]
    edges = outline.get_data().edges
    assert np.all(edges + 0.5 == np.round(edges + 0.5))  # bins centred on the integers


def test_the_residual_staleness_figure_draws_the_distribution_and_its_course_and_lists_the_zero_ones(
        tmp_path: Path):
    folder = tmp_path / "exp"
    for scheme, residual in (("async", 3.0), ("sync-pipelined", 1.0), ("modify@server", 0.0)):
        run = make_run(folder, scheme, 0)
        metrics = read_csv(run / "metrics.csv")
        metrics["residual_staleness"] = np.full(40, residual)
        write_csv(run / "metrics.csv", metrics)
    fig = plots.residual_staleness(load_runs(folder))
    assert legend_texts(fig) == ["async (mean 3.00)", "sync-pipelined (mean 1.00)", "0 throughout: modify@server"]
    assert len(fig.axes[1].get_lines()) == 3  # over training: every scheme, the zero one too


def test_the_title_names_the_learner_optimizer_step_workers_and_delays(experiment: Path):
    fig = plots.loss_vs_iteration(load_runs(experiment))
    title = fig.get_suptitle()
    assert title.startswith("Policy loss vs server update: exp")
    assert "model-based GPI, SGD step 0.0003 (value 0.001), N = 4 workers, homogeneous delays" in title


def test_time_is_drawn_on_a_log_axis_and_a_mean_only_where_every_seed_has_data(tmp_path: Path):
    folder = tmp_path / "exp"
    make_run(folder, "async", 0, n=40)
    make_run(folder, "async", 1, n=20)
    fig = plots.loss_vs_time(load_runs(folder))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "simulated time" in ax.get_xlabel()
    mean = next(line for line in ax.get_lines() if line.get_label() == "async")
    x, y = mean.get_xdata(), mean.get_ydata()
    shorter_end = read_csv(folder / "async-seed1" / "metrics.csv")["time"][-1]
    assert np.nanmax(np.asarray(x)[np.isfinite(y)]) <= shorter_end + 1e-12
    assert any(line.get_label().startswith("_") and line.get_linewidth() < 1 for line in ax.get_lines())


# ---------------------------------------------------------------------------------------------- divergence


def test_diverged_runs_with_nan_and_inf_or_never_finite_metrics_still_plot(tmp_path: Path):
    folder = tmp_path / "exp"
    make_run(folder, "sequential", 0)
    make_run(folder, "async", 0, diverge_at=25, meta={"diverged": True})
    never = make_run(folder, "modify", 0, n=5, meta={"diverged": True})
    write_csv(never / "metrics.csv", {"iteration": [1, 2], "time": [0.1, 0.2], "staleness": [0, 1],
                                      "policy_loss": [np.nan, np.inf], "grad_error": [np.nan, np.nan]})
    paths = plot_experiment(folder)
    assert len(paths) == 2 * len(FIGURES) and all(p.stat().st_size > 1000 for p in paths)
    assert "modify (diverged): no finite loss" in legend_texts(plots.loss_vs_iteration(load_runs(folder)))


def test_a_diverged_seed_is_marked_with_an_x_where_it_stops_and_noted_in_the_legend(tmp_path: Path):
    folder = tmp_path / "exp"
    make_run(folder, "async", 0, diverge_at=25, meta={"diverged": True})
    make_run(folder, "async", 1)
    runs = load_runs(folder)
    for figure in (plots.loss_vs_iteration, plots.loss_vs_time):
        fig = figure(runs)
        assert "async (diverged: 1 of 2 seeds)" in legend_texts(fig)
        crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
        assert len(crosses) == 1
        if figure is plots.loss_vs_iteration:
            assert crosses[0].get_xdata()[0] == 25  # the last finite update before the nan
            assert np.isfinite(crosses[0].get_ydata()[0])


def test_a_run_is_cut_at_the_first_row_the_divergence_rule_flags_with_its_own_bound(tmp_path: Path):
    folder = tmp_path / "exp"
    for seed, column, row, value in ((0, "value_loss", 30, 5e3), (1, "update_norm", 20, np.nan)):
        run = make_run(folder, "async", seed)
        metrics = read_csv(run / "metrics.csv")
        metrics[column][row] = value
        write_csv(run / "metrics.csv", metrics)

    def cut(train: dict) -> list[tuple[bool, int]]:
        for seed in (0, 1):
            write_json(folder / run_dir_name("async", seed) / "config.json",
                       {"name": "exp", "train": {"seed": seed, **train}})
        return [(r.diverged, r.valid_rows) for r in load_runs(folder)]

    assert cut({"divergence_loss": 1e3}) == [(True, 30), (True, 20)]
    assert cut({}) == [(False, 40), (True, 20)]  # no bound recorded: only the non-finite row counts


def test_a_run_that_stopped_early_is_diverged_when_its_meta_says_so(tmp_path: Path):
    folder = tmp_path / "exp"
    make_run(folder, "async", 0, n=12, meta={"status": "diverged"})
    (run,) = load_runs(folder)
    assert run.diverged and run.valid_rows == 12
    assert "async (diverged)" in legend_texts(plots.loss_vs_iteration([run]))


# ---------------------------------------------------------------------------------------------- errors


def test_a_missing_folder_is_a_plot_error(tmp_path: Path):
    with pytest.raises(ResultsError, match="does not exist"):
        plot_experiment(tmp_path / "nope")


def test_a_file_instead_of_a_folder_is_a_plot_error(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="not a directory"):
        plot_experiment(tmp_path / "file")


def test_an_empty_folder_is_a_plot_error(tmp_path: Path):
    with pytest.raises(ResultsError, match="no run directories"):
        plot_experiment(tmp_path)


def test_a_folder_with_only_summary_files_is_a_plot_error(tmp_path: Path):
    write_csv(tmp_path / "summary.csv", {"scheme": ["async"], "seed": [0]})
    (tmp_path / "summary.md").write_text("# summary\n")
    (tmp_path / "figures").mkdir()
    with pytest.raises(ResultsError, match="no run directories"):
        plot_experiment(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "summary.csv", "summary.md"]


@pytest.mark.parametrize("content", ["", "iteration,time,policy_loss\n"], ids=["zero-bytes", "header-only"])
def test_a_run_with_an_empty_metrics_file_is_a_plot_error_naming_the_file(experiment: Path, content: str):
    metrics = experiment / "async-seed1" / "metrics.csv"
    metrics.write_text(content)
    with pytest.raises(ResultsError, match=r"async-seed1/metrics\.csv") as info:
        plot_experiment(experiment)
    assert "\n" not in str(info.value)


def test_a_run_without_a_metrics_file_is_a_plot_error_naming_the_file(experiment: Path):
    (experiment / "sync-seed0" / "metrics.csv").unlink()
    with pytest.raises(ResultsError, match=r"sync-seed0/metrics\.csv is missing"):
        plot_experiment(experiment)


@pytest.mark.parametrize("content", [
    b"iteration,time,policy_loss\n1,0.1,abc\n",
    b"iteration,time,policy_loss\n1,0.1\n",
    b"iteration\n\x00\x01",
    b"\xff\xfe\x00garbage",
], ids=["non-numeric", "ragged", "nul-bytes", "not-utf8"])
def test_a_run_with_a_corrupt_metrics_file_is_a_plot_error_naming_the_file(experiment: Path, content: bytes):
    (experiment / "modify-seed0" / "metrics.csv").write_bytes(content)
    with pytest.raises(ResultsError, match=r"modify-seed0/metrics\.csv") as info:
        plot_experiment(experiment)
    assert "\n" not in str(info.value)
    assert not (experiment / "figures").exists()


def test_a_metrics_file_without_the_loss_column_is_a_plot_error(experiment: Path):
    write_csv(experiment / "async-seed0" / "metrics.csv", {"iteration": [1, 2], "time": [0.1, 0.2]})
    with pytest.raises(ResultsError, match="lacks column"):
        plot_experiment(experiment)


def test_plot_error_is_a_value_error():
    assert issubclass(ResultsError, ValueError)


# ----------------------------------------------------------------------------- plot PATH: a root, an experiment, a run


def test_plotting_a_results_root_plots_every_experiment_beneath_it_and_nothing_else(tmp_path: Path):
    root = tmp_path / "results"
    make_experiment(root / "paper", schemes=("async", "modify"), seeds=(0,))
    make_experiment(root / "studies" / "fast", schemes=("sync",), seeds=(0, 1))
    (root / "regimes").mkdir(parents=True)
    (root / "regimes" / "regimes.md").write_text("# a study without run directories\n")
    paths = plot_path(root)
    per_figure = len(FIGURES) * len(FORMATS)
    assert len(paths) == 2 * per_figure
    assert {p.parent for p in paths} == {root / "paper" / "figures", root / "studies" / "fast" / "figures"}
    assert not (root / "figures").exists() and not (root / "regimes" / "figures").exists()
    assert experiment_folders(root) == [root / "paper", root / "studies" / "fast"]  # figures/ never counted


def test_plotting_a_root_with_out_mirrors_each_experiment_under_it(tmp_path: Path):
    root = tmp_path / "results"
    make_experiment(root / "a", schemes=("async",), seeds=(0,))
    make_experiment(root / "b", schemes=("async",), seeds=(0,))
    paths = plot_path(root, out_dir=tmp_path / "figs")
    assert {p.parent for p in paths} == {tmp_path / "figs" / "a", tmp_path / "figs" / "b"}


def test_plotting_one_run_directory_draws_that_run_into_its_own_figures_folder(tmp_path: Path):
    run = make_run(tmp_path / "exp", "modify", 3)
    make_run(tmp_path / "exp", "async", 3)
    paths = plot_path(run)
    assert len(paths) == len(FIGURES) * len(FORMATS) and {p.parent for p in paths} == {run / "figures"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths if p.suffix == ".png")


def test_the_cli_plots_the_root_and_prints_every_file_it_wrote(capsys, tmp_path: Path):
    root = tmp_path / "results"
    make_experiment(root / "paper", schemes=("async",), seeds=(0,))
    code, out, err = run_cli(capsys, "plot", str(root))
    assert code == 0, err
    written = sorted((root / "paper" / "figures").iterdir())
    assert sorted(Path(line) for line in out.split()) == written


def test_a_root_with_nothing_plottable_beneath_it_is_one_line_and_exit_2(capsys, tmp_path: Path):
    (tmp_path / "results" / "regimes").mkdir(parents=True)
    code, _, err = run_cli(capsys, "plot", str(tmp_path / "results"))
    assert code == 2 and "no run directories" in err and "beneath it" in err and len(err.strip().splitlines()) == 1
