"""``compare --jobs N``: runs trained in parallel processes write exactly what one at a time writes."""

from __future__ import annotations

from pathlib import Path

from clitools import run_cli, tiny_toml

RUN_FILES = ("metrics.csv", "eval.csv", "trajectory.csv", "params.npy", "config.json")


def files(folder: Path) -> dict[str, bytes]:
    out = {"summary.md": (folder / "summary.md").read_bytes()}
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and "-seed" in p.name):
        out.update({f"{run.name}/{name}": (run / name).read_bytes() for name in RUN_FILES})
    return out


def test_compare_in_two_processes_writes_byte_identical_runs_and_summary(capsys, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_toml("tiny", iterations=12, eval_every=6, workers=3))
    common = ["compare", "--config", str(config), "--schemes", "sync,async,modify,learner", "--seeds", "0,1",
              "--quiet"]
    assert run_cli(capsys, *common, "--results", str(tmp_path / "one"))[0] == 0
    assert run_cli(capsys, *common, "--results", str(tmp_path / "two"), "--jobs", "2")[0] == 0
    one, two = files(tmp_path / "one" / "tiny"), files(tmp_path / "two" / "tiny")
    assert len(one) == 1 + 8 * len(RUN_FILES) and one == two


def test_compare_jobs_must_be_positive_and_not_on_a_cluster(capsys, tmp_path):
    assert run_cli(capsys, "compare", "--jobs", "0", "--results", str(tmp_path))[:2] == (2, "")
    code, _, err = run_cli(capsys, "compare", "--jobs", "2", "--cluster", "127.0.0.1:1", "--results", str(tmp_path))
    assert code == 2 and "--jobs and --cluster" in err
