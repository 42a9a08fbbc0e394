"""Running the command line in-process, as a test sees it: exit status, stdout, stderr."""

from __future__ import annotations

import pytest

from asynccorr.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``asynccorr *args`` through ``cli.main``; a command that returns normally is status 0."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def tiny_toml(name: str, iterations: int, eval_every: int = 2, workers: int = 2, **train: int) -> str:
    """An experiment TOML with the suite's tiny nets and batch (8-unit layers, 8 + 8 states,
    horizon 5): fast to compile and to run in a CLI test."""
    extra = "".join(f"{key} = {value}\n" for key, value in train.items())
    return (f'name = "{name}"\n[learner]\npolicy_hidden = [8]\nvalue_hidden = [8]\nrollout_states = 8\n'
            f"reset_states = 8\nhorizon = 5\n[train]\niterations = {iterations}\neval_every = {eval_every}\n"
            f"{extra}[workers]\ncount = {workers}\n")
