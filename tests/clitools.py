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
