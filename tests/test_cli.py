"""Specification of the command line: results on disk, one-line errors, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asynccorr.cli import main

TINY = """
name = "tiny"
[learner]
rollout_states = 8
reset_states = 8
horizon = 5
[train]
iterations = 4
eval_every = 2
[workers]
count = 2
"""


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_runs_modify_by_default_and_writes_a_complete_run_directory(capsys, tmp_path, tiny_config):
    code, out, _ = run_cli(capsys, "train", "--config", str(tiny_config), "--results", str(tmp_path / "r"), "--quiet")
    assert code == 0
    run = tmp_path / "r" / "tiny" / "modify-seed0"
    assert {p.name for p in run.iterdir()} == {"config.json", "meta.json", "metrics.csv", "eval.csv",
                                               "trajectory.csv", "params.npy"}
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["iterations"] == 4 and config["learner"]["horizon"] == 5
    meta = json.loads((run / "meta.json").read_text())
    assert meta["backend"] == "sim" and meta["scheme"] == "modify" and meta["seed"] == 0 and "jax" in meta
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 4
    assert len((run / "trajectory.csv").read_text().splitlines()) == 1 + 200
    assert "rms lateral" in out


def test_cli_overrides_take_precedence_over_the_config(capsys, tmp_path, tiny_config):
    code, _, _ = run_cli(capsys, "train", "--scheme", "sequential", "--config", str(tiny_config),
                         "--results", str(tmp_path), "--seed", "3", "--iterations", "2", "--quiet")
    assert code == 0
    config = json.loads((tmp_path / "tiny" / "sequential-seed3" / "config.json").read_text())
    assert config["train"]["seed"] == 3 and config["train"]["iterations"] == 2


def test_an_existing_run_is_never_overwritten_without_the_flag(capsys, tmp_path, tiny_config):
    args = ("train", "--config", str(tiny_config), "--results", str(tmp_path), "--quiet")
    assert run_cli(capsys, *args)[0] == 0
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert snapshot(tmp_path) == before
    assert run_cli(capsys, *args, "--overwrite")[0] == 0


BAD_TOML = {
    "malformed TOML": ("[train\niterations = 3", "malformed TOML"),
    "unknown key": ("[train]\nspeed = 3", "train.speed"),
    "unknown section": ("[trian]\niterations = 3", "trian"),
    "wrong type": ("[train]\niterations = 'many'", "train.iterations"),
    "negative learning rate": ("[optim]\npolicy_lr = -0.1", "optim.policy_lr"),
    "empty network": ("[learner]\npolicy_hidden = []", "learner.policy_hidden"),
    "zero wheelbase": ("[env]\nparams = { wheelbase = 0.0 }", "wheelbase"),
    "non-finite amplitude": ("[env]\nparams = { amplitude = nan }", "amplitude"),
    "unknown env": ("[env]\nname = 'boat'", "env"),
    "unknown env parameter": ("[env]\nparams = { wingspan = 3.0 }", "wingspan"),
    "bad experiment name": ("name = '../escape'", "name"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_bad_config_gives_one_line_error_and_status_2(capsys, tmp_path, case):
    text, needle = BAD_TOML[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    (tmp_path / "results").mkdir()
    code, out, err = run_cli(capsys, "train", "--config", str(path), "--results", str(tmp_path / "results"))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err
    assert list((tmp_path / "results").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("train", "--iterations", "0"), "train.iterations"),
        (("train", "--seed", "-1"), "train.seed"),
        (("train", "--seed", "abc"), "--seed"),
        (("train", "--env", "boat"), "boat"),
        (("train", "--config", "does/not/exist.toml"), "not found"),
        (("train", "--no-such-flag"), "--no-such-flag"),
        (("fly",), "fly"),
        (("train", "--scheme", "hogwild"), "hogwild"),
        (("train", "--workers", "0"), "workers.count"),
        (("train", "--backend", "mpi"), "workers.backend"),
        (("train", "--scheme", "modify-dense"), "dense_max_params"),
        (("compare", "--schemes", "async,teleport"), "schemes.compare"),
        (("compare", "--schemes", ","), "--schemes"),
        (("compare", "--seeds", "0,x"), "--seeds"),
        (("compare", "--seeds", "1,1"), "schemes.seeds"),
        (("plot", "no/such/folder"), "does not exist"),
    ],
)
def test_bad_arguments_give_one_line_error_and_status_2(capsys, tmp_path, args, needle):
    code, _, err = run_cli(capsys, *args, *(("--results", str(tmp_path)) if args[0] in ("train", "compare") else ()))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err


def test_console_script_runs_as_a_module(tmp_path, tiny_config):
    proc = subprocess.run([sys.executable, "-m", "asynccorr", "train", "--scheme", "async", "--config",
                           str(tiny_config), "--results", str(tmp_path), "--quiet", "--iterations", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tiny" / "async-seed0" / "meta.json").is_file()
