"""Command-line interface: a thin layer over the library.

Bad input (invalid config, unknown option value, existing results) prints one
line ``error: ...`` on stderr and exits with status 2; nothing is overwritten.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asynccorr.config import ConfigError, ExperimentConfig, load_config, with_overrides
from asynccorr.results import RunExistsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Stale-gradient correction for asynchronous model-based RL (vehicle path tracking).",
)
console = Console(stderr=True)

DEFAULT_CONFIG = Path("experiments/paper.toml")


@app.callback()
def _root() -> None:
    """asynccorr: train, compare and plot asynchronous-SGD schemes on vehicle path tracking."""


class CliError(Exception):
    """A user error: reported as one line, exit status 2."""


def resolve_config(config: Path | None, **overrides: dict[str, Any]) -> ExperimentConfig:
    """Load the TOML (or the default experiment if present) and apply CLI overrides."""
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    base = load_config(config)
    return with_overrides(base, **{k: {f: v for f, v in d.items() if v is not None} for k, d in overrides.items()})


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="Experiment TOML (default: experiments/paper.toml).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides train.seed).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Server updates (overrides train.iterations).")] = None,
    env: Annotated[str | None, typer.Option(help="Environment: kinematic or dynamic.")] = None,
    results: Annotated[Path, typer.Option(help="Root folder for run directories.")] = Path("results"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train the GPI controller with the sequential (always-fresh) trainer."""
    from asynccorr.runs import run_dir_for, train_run

    cfg = resolve_config(config, train={"seed": seed, "iterations": iterations})
    if env is not None:
        from asynccorr.config import EnvConfig

        cfg = with_overrides(cfg, env={"name": env, "params": {} if env != cfg.env.name else cfg.env.params})
        del EnvConfig
    run_dir = run_dir_for(results, cfg, "sequential")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunExistsError(f"run directory {run_dir} already exists (pass --overwrite to replace it)")

    with Progress(TextColumn("[bold]train[/] sequential"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("rms lateral {task.fields[rms]}"), TimeElapsedColumn(),
                  console=console, disable=quiet) as progress:
        task = progress.add_task("train", total=cfg.train.iterations, rms="-")

        def on_chunk(done: int, record: Any) -> None:
            progress.update(task, completed=done, rms=f"{record.summary.rms_lateral:.3f} m")

        run_dir, result = train_run(cfg, results, overwrite=overwrite, on_chunk=on_chunk)

    first, last = result.evals[0].summary, result.evals[-1].summary
    table = Table(title=f"{cfg.name}: sequential, seed {cfg.train.seed}, {cfg.train.iterations} iterations")
    for col in ("", "rms lateral [m]", "max lateral [m]", "rms heading [rad]", "utility", "on road"):
        table.add_column(col)
    for label, s in (("initial policy", first), ("final policy", last)):
        table.add_row(label, f"{s.rms_lateral:.4f}", f"{s.max_lateral:.4f}", f"{s.rms_heading:.4f}",
                      f"{s.total_utility:.3f}", f"{s.steps_on_road}/{len(result.trajectory.x)}")
    Console().print(table)
    Console().print(f"results: {run_dir}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, mapping user errors to one line and exit status 2."""
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, RunExistsError, CliError) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # click's UsageError family (typer vendors click, so match by shape, not by import)
        if hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2:
            print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
            sys.exit(2)
        raise


def _one_line(message: str) -> str:
    return " ".join(message.split())

if __name__ == "__main__":
    main()
