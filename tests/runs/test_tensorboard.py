"""TensorBoard event files of a run: written live with ``--tensorboard`` or afterwards with
``asynccorr tensorboard PATH``, and read back (tensorboard's own reader) equal to metrics.csv."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from clitools import run_cli, tiny_toml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asynccorr.runs.files import read_csv
from asynccorr.runs.tensorboard import FOLDER, SKIP, THROUGHPUT, tag


def events(folder) -> dict[str, list[tuple[int, float, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value, e.wall_time) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def expected(run_dir) -> dict[str, list[tuple[int, float, float]]]:
    """What the files say, as TensorBoard stores it (float32 values)."""
    m, e = read_csv(run_dir / "metrics.csv"), read_csv(run_dir / "eval.csv")
    out = {}
    for column, values in m.items():
        if column not in SKIP:
            out[tag(column)] = [(int(s), float(np.float32(v)), float(t)) for s, v, t in
                                zip(m["iteration"], values, m["time"]) if np.isfinite(v)]
    out[THROUGHPUT] = [(int(s), float(np.float32(s / t)), float(t)) for s, t in zip(m["iteration"], m["time"])]
    when = dict(zip(m["iteration"].astype(int), m["time"]))
    for column, values in e.items():
        if column != "iteration":
            out[f"eval/{column}"] = [(int(s), float(np.float32(v)), float(when.get(int(s), 0.0)))
                                     for s, v in zip(e["iteration"], values)]
    return {k: v for k, v in out.items() if v}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    (root / "tiny.toml").write_text(tiny_toml("tiny", iterations=6, eval_every=3))
    from asynccorr import api  # a module fixture has no capsys: it trains through the API

    api.train(api.experiment(root / "tiny.toml"), "modify", results=root / "r", tensorboard=True)
    return root / "r" / "tiny" / "modify@server-seed0"


def test_a_run_trained_with_tensorboard_has_event_files_equal_to_its_metrics_and_evaluations(trained):
    got = events(trained / FOLDER)
    want = expected(trained)
    assert {"loss/policy", "gradient_error/applied", "gradient_error/stale", "staleness/residual",
            "norm/update", THROUGHPUT, "eval/rms_lateral"} <= set(got)
    assert got.keys() == want.keys()
    for name in want:
        assert [s for s, _, _ in got[name]] == [s for s, _, _ in want[name]], name
        np.testing.assert_allclose([v for _, v, _ in got[name]], [v for _, v, _ in want[name]], rtol=0, atol=0,
                                   err_msg=name)
        np.testing.assert_allclose([w for _, _, w in got[name]], [w for _, _, w in want[name]], rtol=1e-12)


def test_converting_an_existing_run_writes_the_same_scalars(capsys, trained, tmp_path):
    import shutil

    copy = tmp_path / "tiny" / trained.name
    shutil.copytree(trained, copy)
    shutil.rmtree(copy / FOLDER)
    code, out, err = run_cli(capsys, "tensorboard", str(tmp_path))
    assert code == 0 and out.strip() == str(copy / FOLDER) and "tensorboard --logdir" in err
    assert events(copy / FOLDER) == events(trained / FOLDER)


def test_without_the_writer_package_tensorboard_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_toml("tiny", iterations=2))
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--results", str(tmp_path / "r"),
                           "--tensorboard", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "asynccorr[tensorboard]" in err
    assert not (tmp_path / "r").exists()


def test_tensorboard_on_a_path_without_runs_is_one_line_and_exit_2(capsys, tmp_path):
    for path in (tmp_path / "none", tmp_path):
        code, _, err = run_cli(capsys, "tensorboard", str(path))
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
