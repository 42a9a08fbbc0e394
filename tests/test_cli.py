"""Specification of the command line: results on disk, one-line errors, exit status 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import run_cli, tiny_toml
from rich.console import Console

from asynccorr.cli import print_table

REPO = Path(__file__).resolve().parents[1]

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
    run = tmp_path / "r" / "tiny" / "modify@server-seed0"  # a bare modify takes schemes.protocol
    assert {p.name for p in run.iterdir()} == {"config.json", "meta.json", "metrics.csv", "eval.csv",
                                               "trajectory.csv", "params.npy"}
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["iterations"] == 4 and config["learner"]["horizon"] == 5
    meta = json.loads((run / "meta.json").read_text())
    assert meta["backend"] == "sim" and meta["scheme"] == "modify@server" and meta["seed"] == 0 and "jax" in meta
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


# Bad input (config files, arguments, plot folders, resume): tests/test_bad_input.py


def test_a_repeated_run_loads_its_programs_and_gives_the_bits_of_a_run_without_any_cache(tmp_path, tiny_config):
    """The persistent cache goes to $ASYNCCORR_JAX_CACHE, whole programs to its programs/ folder. A run
    with another seed and length than the run that kept them compiles nothing new and writes the same
    files as the same run with ``--no-jax-cache`` (which writes nothing there); it loads them ahead, in the
order the first run called them, and leaves that manifest as it was. Every run records when its
    first evaluation point was reached (the start-up benchmark's signal)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ASYNCCORR_JAX_CACHE": str(cache)}
    env.pop("ASYNCCORR_PROGRAMS", None)  # the CLI's default (the suite's other CLI calls keep none)

    def train(results: Path, *options: str, flags: tuple[str, ...] = ()) -> Path:
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "asynccorr", *flags, "train", "--scheme", "async",
                               "--config", str(tiny_config), "--results", str(results), "--quiet", *options],
                              capture_output=True, text=True, timeout=300, check=False, env=env)
        assert proc.returncode == 0, proc.stderr
        [run] = (results / "tiny").iterdir()
        meta = json.loads((run / "meta.json").read_text())
        assert started < meta["first_flush"]["unix_time"] < time.time()
        return run

    plain = train(tmp_path / "plain", "--seed", "1", "--iterations", "3", flags=("--no-jax-cache",))
    assert not cache.exists()
    train(tmp_path / "first", "--iterations", "2")
    kept = {p.name: p.stat().st_ino for p in (cache / "programs").iterdir()}  # a rewrite is a new inode
    assert any(name.startswith("server.update") for name in kept)
    assert sum(name.endswith(".scope") for name in kept) == 1  # what the next run of this scope loads ahead
    again = train(tmp_path / "again", "--seed", "1", "--iterations", "3")
    assert {p.name: p.stat().st_ino for p in (cache / "programs").iterdir()} == kept
    for name in ("metrics.csv", "eval.csv", "params.npy", "trajectory.csv"):
        assert (again / name).read_bytes() == (plain / name).read_bytes(), name


def test_the_cache_folder_is_the_env_override_else_the_user_cache_folder_and_off_turns_it_off(tmp_path):
    from asynccorr.compile.cache import cache_folder

    home = tmp_path / "home"
    assert cache_folder({}, home) == home / ".cache" / "asynccorr" / "jax"
    assert cache_folder({"XDG_CACHE_HOME": "/xdg"}, home) == Path("/xdg/asynccorr/jax")
    assert cache_folder({"JAX_COMPILATION_CACHE_DIR": "/j", "XDG_CACHE_HOME": "/xdg"}, home) == Path("/j")
    assert cache_folder({"ASYNCCORR_JAX_CACHE": "/a", "JAX_COMPILATION_CACHE_DIR": "/j"}, home) == Path("/a")
    assert cache_folder({"ASYNCCORR_JAX_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": "/j"}, home) is None


def test_train_help_lists_every_registered_scheme_and_protocol(capsys):
    from asynccorr.schemes.registry import PROTOCOLS, SCHEMES, SEQUENTIAL

    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    for name in [SEQUENTIAL, *{s.split("@")[0] for s in SCHEMES}, *PROTOCOLS]:
        assert name in text, name


def _table(width: int, rows: int) -> str:
    out = Console(file=io.StringIO(), width=width)
    headers = ("scheme", "final policy loss", "gradient error", "RMS lateral [m]", "left road", "diverged",
               "mean staleness", "sim time [s]", "wall [s]")  # the compare table's
    body = [(f"scheme-{i}", "1.911 ± 0.163", "2.96e-06", "1.4057", "2/2", "0/2", "1.12", "0.03", "1.4")
            for i in range(rows)]
    print_table(out, "a title", headers, body)
    return out.file.getvalue()


@pytest.mark.parametrize(("width", "rows", "layout"), [(140, 4, "wide"), (80, 4, "transposed"), (40, 4, "blocks")])
def test_summary_tables_stay_readable_in_a_narrow_terminal(width, rows, layout):
    """No line is wider than the terminal and no cell is cut; units in brackets are kept (not markup)."""
    text = _table(width, rows)
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    assert "…" not in text and "sim time [s]" in text and text.count("1.911 ± 0.163") == rows
    header = next(line for line in lines if "scheme-0" in line or "gradient error" in line)
    assert {"wide": "gradient error" in header and "scheme" in header,
            "transposed": header.split()[:1] == ["scheme-0"],
            "blocks": lines[1] == "scheme-0"}[layout], text


def test_compare_prints_its_table_within_80_columns(capsys, monkeypatch, tmp_path, tiny_config):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(capsys, "compare", "--schemes", "sync,async,modify,modify-safe", "--seeds", "0,1",
                             "--config", str(tiny_config), "--results", str(tmp_path), "--quiet")
    assert code == 0, err
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80 and "…" not in out
    assert "modify-safe" in out and "mean staleness" in out


def test_schemes_lists_every_registered_scheme_and_protocol_from_the_registry(capsys):
    from asynccorr.schemes.registry import PROTOCOLS, SCHEMES

    code, out, _ = run_cli(capsys, "schemes")
    assert code == 0
    blocks = [line for line in out.splitlines() if line and not line.startswith(" ")]
    names = [line for line in blocks if not line.startswith(("schemes:", "protocols:"))]
    assert names == [*SCHEMES, *PROTOCOLS]  # every one, once, in the registry's order
    oracle = out[out.index("\nmodify@oracle\n"):]
    assert "no: an upper bound" in oracle.split("\n\n")[0].splitlines()[2]


def test_the_catalogue_prices_each_message_with_the_cost_model():
    from asynccorr import api

    entries = {e.name: e for e in api.schemes()}
    assert entries["async"].worker_cost == pytest.approx(1.16) and entries["async"].server_cost == pytest.approx(0.2)
    assert entries["modify@server"].server_cost == pytest.approx(0.2 + 3.1)  # the product on the server
    assert entries["learner"].worker_cost == pytest.approx(0.16) and entries["learner"].server_cost == 1.2
    assert not entries["modify@oracle"].realisable and entries["modify@server"].realisable
    assert "pull theta_k'" in entries["modify@pull-first"].worker


def test_version_prints_the_package_version_before_or_after_a_command(capsys):
    from asynccorr import __version__

    for args in (["--version"], ["train", "--version"]):
        assert run_cli(capsys, *args) == (0, f"asynccorr {__version__}\n", "")


def test_a_global_option_after_the_command_is_the_same_as_before_it(capsys, tmp_path):
    for args in (["--no-jax-cache", "plot", str(tmp_path / "none")], ["plot", str(tmp_path / "none"), "--no-jax-cache"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "does not exist" in err  # the folder is the problem, not the option


def test_set_changes_any_field_is_recorded_in_config_json_and_is_part_of_the_runs_identity(capsys, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml("tiny", iterations=2))
    args = ["train", "--scheme", "async", "--config", str(cfg), "--results", str(tmp_path / "r"), "--quiet",
            "--set", "optim.policy_lr=1e-3", "--set", "workers.count=3", "--set", "optim.name=adam"]
    assert run_cli(capsys, *args, "--iterations", "3")[0] == 0
    record = json.loads((tmp_path / "r" / "tiny" / "async-seed0" / "config.json").read_text())
    assert (record["optim"]["policy_lr"], record["optim"]["name"], record["workers"]["count"]) == (1e-3, "adam", 3)
    assert record["train"]["iterations"] == 3  # the named option comes after --set
    code, out, _ = run_cli(capsys, *args, "--iterations", "3", "--resume")
    assert code == 0 and "already finished" in out  # the same settings: the same run
    other = [a.replace("policy_lr=1e-3", "policy_lr=2e-3") for a in args]
    code, _, err = run_cli(capsys, *other, "--iterations", "3", "--resume")
    assert code == 2 and "optim.policy_lr" in err  # another value: another run


def test_set_on_a_study_sets_any_field_of_its_toml():
    from asynccorr import api

    study = api.regime_study(REPO / "experiments" / "regimes.toml",
                             ["seeds=[0]", "experiment.train.iterations=20", "workers=[1, 4]"])
    assert study.seeds == (0,) and study.experiment.train.iterations == 20 and study.workers == (1, 4)


def test_compare_env_trains_every_run_on_that_environment(capsys, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml("tiny", iterations=2))
    code, _, _ = run_cli(capsys, "compare", "--config", str(cfg), "--schemes", "async", "--seeds", "0", "--env",
                         "dynamic", "--results", str(tmp_path / "r"), "--quiet")
    record = json.loads((tmp_path / "r" / "tiny" / "async-seed0" / "config.json").read_text())
    assert code == 0 and record["env"]["name"] == "dynamic"
