"""Command-line interface: a thin layer over the library.

Bad input (invalid config, unknown option value, existing results, a run that
cannot be resumed, an unplottable folder) prints one line ``error: ...`` on
stderr and exits with status 2; nothing is overwritten. Ctrl-C writes the
partial run, prints ``error: interrupted; partial results in <dir>`` and exits
with status 130.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from asynccorr.backends.registry import backend_help
from asynccorr.config import ConfigError, describe, to_dict, with_overrides
from asynccorr.errors import ResultsPathError
from asynccorr.runs.files import RunExistsError
from asynccorr.schemes.registry import label, names_help

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Stale-gradient correction for asynchronous model-based RL (vehicle path tracking).",
)
console = Console(stderr=True)

BACKEND_HELP = backend_help()
SCHEME_HELP = names_help() + "."
ADDRESS_HELP = "Ray cluster address (overrides workers.address); default: start a local Ray."
CLUSTER_HELP = ("Run each run of the study as a one-CPU Ray task on the running Ray cluster at this address "
                "(host:port of its head, or auto); results are written here. Not --address, which is where "
                "one ray-backend run's workers go.")


def print_table(out: Console, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table that stays readable in a narrow terminal: as it is when it fits the console; else
    transposed (a column per row, e.g. per scheme) when that fits; else one block per row. No cell
    is ever cut or wrapped."""
    def table(heads: Sequence[str], body: Sequence[Sequence[str]]) -> Table | None:
        """The table, or None when its widest cells do not fit side by side."""
        widths = [max(len(str(cell)) for cell in column) for column in zip(heads, *body)]
        if sum(widths) + 2 * (len(widths) - 1) > out.width:  # two spaces between columns, no edges
            return None
        t = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
        for head, width in zip(heads, widths):
            t.add_column(Text(head), no_wrap=True, min_width=width)
        for row in body:
            t.add_row(*(Text(str(cell)) for cell in row))  # Text: "[s]" is a unit, not markup
        return t

    transposed = [[h, *(r[i] for r in rows)] for i, h in enumerate(headers) if i]
    for candidate in (table(headers, rows), table(["", *(r[0] for r in rows)], transposed)):
        if candidate is not None:
            out.print(candidate)
            return
    out.print(title, markup=False)
    width = max(len(h) for h in headers)
    for row in rows:
        out.print(row[0], markup=False)
        for head, cell in zip(headers[1:], row[1:]):
            out.print(f"  {head:<{width}}  {cell}", markup=False, soft_wrap=True)


def _warn(message: str) -> None:
    """One line on stderr that does not stop the command."""
    console.print(f"warning: {message}", markup=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from asynccorr import __version__

        typer.echo(f"asynccorr {__version__}")
        raise typer.Exit()


GLOBAL_FLAGS = ("--jax-cache", "--no-jax-cache", "--version")  # accepted before or after the command


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    jax_cache: Annotated[bool, typer.Option(
        "--jax-cache/--no-jax-cache",
        help="Keep each run's compiled programs (its programs/ folder; the mp/ray workers share a JAX "
             "compilation cache there): a repeated run starts in about 2 s. Folder: $ASYNCCORR_JAX_CACHE, else "
             "$XDG_CACHE_HOME/asynccorr/jax (~/.cache/asynccorr/jax); ASYNCCORR_JAX_CACHE=off turns it off too, "
             "ASYNCCORR_PROGRAMS=off keeps no programs (compilation cache only).",
    )] = True,
) -> None:
    """asynccorr: train, compare and plot asynchronous-SGD schemes on vehicle path tracking."""
    from asynccorr.compile.cache import compilation_cache

    compilation_cache(enabled=jax_cache)


class CliError(Exception):
    """A user error: reported as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C inside a command (typer would turn a ``KeyboardInterrupt`` into a silent exit code)."""

    def __init__(self, run_dir: Path | None) -> None:
        super().__init__("interrupted" + (f"; partial results in {run_dir}" if run_dir is not None else ""))


def _interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """Report Ctrl-C in ``command`` as ``Interrupted`` (naming the partial run if one was written)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted(getattr(exc, "run_dir", None)) from None

    return wrapper


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("rms lateral {task.fields[rms]}"), TimeElapsedColumn(),
                    console=console, disable=quiet)


def _logging(verbose: bool) -> None:
    """Backend events on stderr: replaced workers always, every start/ready with ``--verbose``."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("asynccorr").setLevel(logging.INFO if verbose else logging.WARNING)


def _parse_list(text: str | None, name: str, cast: type) -> tuple | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CliError(f"{name} must be a comma-separated list, got {text!r}")
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise CliError(f"{name} must be a comma-separated list of {cast.__name__}s, got {text!r}") from None


def _check_scheme(scheme: str) -> None:
    from asynccorr.schemes.registry import check_name

    try:
        check_name(scheme)
    except ValueError as exc:
        raise CliError(str(exc)) from None


@app.command()
@_interruptible
def train(
    scheme: Annotated[str, typer.Option(help=SCHEME_HELP)] = "modify",
    config: Annotated[Path | None, typer.Option(help="Experiment TOML (default: experiments/paper.toml).")] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    workers: Annotated[int | None, typer.Option(help="Number of workers (overrides workers.count).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides train.seed).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Server updates (overrides train.iterations).")] = None,
    env: Annotated[str | None, typer.Option(help="Environment: kinematic or dynamic.")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="section.key=value: set any config field "
                                                        "(repeatable; read and checked as in the TOML), e.g. "
                                                        "--set optim.policy_lr=1e-3.")] = None,
    results: Annotated[Path, typer.Option(help="Root folder for run directories.")] = Path("results"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run from its latest checkpoint (same options).")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard event files into each run directory "
                                                   "(tensorboard/), live as it trains; needs asynccorr[tensorboard].")
                           ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option(help="Log worker events (mp, ray: started, ready, replaced).")] = False,
) -> None:
    """Train one run of a scheme and write results/<experiment>/<scheme>-seed<k>/."""
    _logging(verbose)
    from asynccorr import api
    from asynccorr.runs.run import RunFinished

    if resume and overwrite:
        raise CliError("--resume and --overwrite exclude each other (--overwrite starts the run afresh)")
    _check_scheme(scheme)
    cfg = api.experiment(config, settings or (), train={"seed": seed, "iterations": iterations},
                         workers={"count": workers, "backend": backend, "address": address})
    if env is not None and env != cfg.env.name:
        cfg = with_overrides(cfg, env={"name": env, "params": {}})

    try:
        plan = api.plan_train(cfg, scheme, results, overwrite=overwrite, resume=resume, on_warning=_warn,
                              tensorboard=tensorboard)
    except RunFinished as exc:
        print(str(exc))
        return

    with _progress(quiet) as progress:
        task = progress.add_task(f"{plan.scheme} seed {cfg.train.seed}", total=cfg.train.iterations, rms="-")

        def on_chunk(done: int, record: Any) -> None:
            progress.update(task, completed=done, rms=f"{record.summary.rms_lateral:.3f} m")

        run_dir, result, summary = api.run_train(plan, on_chunk)

    _report_run(cfg, scheme, run_dir, result, summary)


def _report_run(cfg: Any, scheme: str, run_dir: Path, result: Any, summary: dict[str, Any]) -> None:
    """The initial and final tracking of one run, its staleness and gradient error, where it is."""
    first, last = result.evals[0].summary, result.evals[-1].summary
    workers_text = "1 worker" if summary["workers"] == 1 else f"{summary['workers']} workers"
    out = Console()
    print_table(out, f"{cfg.name}: {scheme}, {workers_text}, seed {cfg.train.seed}, {cfg.train.iterations} updates",
                ("policy", "rms lateral [m]", "max lateral [m]", "rms heading [rad]", "utility", "on road"),
                [(label, f"{s.rms_lateral:.4f}", f"{s.max_lateral:.4f}", f"{s.rms_heading:.4f}",
                  f"{s.total_utility:.3f}", f"{s.steps_on_road}/{len(result.trajectory.x)}")
                 for label, s in (("initial", first), ("final", last))])
    out.print(f"mean staleness {summary['mean_staleness']:.2f}, gradient error {summary['grad_error_mean']:.4f} "
              f"(stale: {summary['stale_grad_error_mean']:.4f}), final policy loss {summary['final_policy_loss']:.4f}",
              soft_wrap=True)
    if result.status == "diverged":
        out.print(f"[bold red]diverged[/] at update {result.diverged_at} (train.divergence_loss = "
                  f"{cfg.train.divergence_loss:g}); results up to there")
    out.print(f"results: {run_dir}")


@app.command()
@_interruptible
def replay(
    run: Annotated[Path, typer.Argument(help="A run directory of an mp or ray run (it holds schedule.jsonl).")],
    scheme: Annotated[str | None, typer.Option(help="Replay the schedule under this scheme instead (a what-if on "
                                                    "the same interleaving); default: the recorded one.")] = None,
    results: Annotated[Path | None, typer.Option(help="Root folder for the replay's run directory (default: the "
                                                      "recorded run's).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing replay.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Re-execute a real run's recorded schedule on one process: <results>/<experiment>-replay/<scheme>-seed<k>/."""
    from asynccorr import api

    if scheme is not None:
        _check_scheme(scheme)
    plan = api.plan_replay(run, scheme, results, overwrite)
    cfg = plan.config
    with _progress(quiet) as progress:
        task = progress.add_task(f"replay {plan.scheme}", total=cfg.train.iterations, rms="-")

        def on_chunk(done: int, record: Any) -> None:
            progress.update(task, completed=done, rms=f"{record.summary.rms_lateral:.3f} m")

        run_dir, result, summary = api.run_replay(plan, on_chunk)
    _report_run(cfg, plan.scheme, run_dir, result, summary)


@app.command()
@_interruptible
def compare(
    config: Annotated[Path | None, typer.Option(help="Experiment TOML (default: experiments/paper.toml).")] = None,
    schemes: Annotated[str | None, typer.Option(help="Comma-separated schemes (overrides schemes.compare).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (overrides schemes.seeds).")] = None,
    workers: Annotated[int | None, typer.Option(help="Number of workers (overrides workers.count).")] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    iterations: Annotated[int | None, typer.Option(help="Server updates (overrides train.iterations).")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="section.key=value: set any config field "
                                                        "(repeatable; read and checked as in the TOML), e.g. "
                                                        "--set optim.policy_lr=1e-3.")] = None,
    results: Annotated[Path, typer.Option(help="Root folder for run directories.")] = Path("results"),
    overwrite: Annotated[bool, typer.Option(help="Replace existing run directories.")] = False,
    resume: Annotated[bool, typer.Option(help="Complete an interrupted comparison: reuse finished runs, continue "
                                              "unfinished ones from their checkpoints, train the missing ones.")] = False,
    cluster: Annotated[str | None, typer.Option(help=CLUSTER_HELP)] = None,
    jobs: Annotated[int, typer.Option(help="Runs trained at once (spawned processes, single-threaded XLA each); "
                                           "the results are the same as one at a time.")] = 1,
    env: Annotated[str | None, typer.Option(help="Environment: kinematic or dynamic.")] = None,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard event files into each run directory "
                                                   "(tensorboard/), live as it trains; needs asynccorr[tensorboard].")
                           ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option(help="Log worker events (mp, ray: started, ready, replaced).")] = False,
) -> None:
    """Run every scheme of the experiment on every seed; print and save a summary table."""
    _logging(verbose)
    from asynccorr import api
    from asynccorr.runs.summary import diverged_text, mean_std_text, per_seed_text

    if resume and overwrite:
        raise CliError("--resume and --overwrite exclude each other (--overwrite starts every run afresh)")
    from asynccorr.studies.pool import check_jobs

    check_jobs(jobs, cluster)
    scheme_list = _parse_list(schemes, "--schemes", str)
    seed_list = _parse_list(seeds, "--seeds", int)
    cfg = api.experiment(config, settings or (), train={"iterations": iterations},
                         workers={"count": workers, "backend": backend, "address": address},
                         schemes={"compare": scheme_list, "seeds": seed_list})
    if env is not None and env != cfg.env.name:
        cfg = with_overrides(cfg, env={"name": env, "params": {}})

    plan = api.plan_compare(cfg, results=results, overwrite=overwrite, resume=resume, on_warning=_warn,
                            cluster=cluster, jobs=jobs, tensorboard=tensorboard)
    if resume:
        counts = {a: sum(p.action == a for p in plan.runs) for a in ("reuse", "resume", "restart", "train")}
        dead = sum(p.status == "dead" for p in plan.runs)
        console.print(f"resume: {counts['reuse']} finished runs reused, {counts['resume']} continued from a "
                      f"checkpoint, {counts['restart']} restarted, {counts['train']} to train"
                      + (f" ({dead} of the unfinished dead: their process is gone)" if dead else ""))

    with _progress(quiet) as progress:
        overall = progress.add_task("compare", total=len(plan.runs), rms="")

        def on_run(run: Any) -> Any:
            if run.action == "reuse":
                return None
            task = progress.add_task(f"{run.scheme} seed {run.config.train.seed}",
                                     total=run.config.train.iterations, rms="-")

            def on_chunk(done: int, record: Any) -> None:
                progress.update(task, completed=done, rms=f"{record.summary.rms_lateral:.3f} m")

            return on_chunk

        folder, _, table = api.run_compare(plan, on_run, on_done=lambda run: progress.advance(overall))

    title = (f"{cfg.name}: {describe(to_dict(cfg))}, {cfg.train.iterations} updates, "
             f"seeds {','.join(map(str, cfg.schemes.seeds))}")
    reached = (f"RMS < {cfg.report.target_rms:g} m" if cfg.report.target_rms > 0 else f"loss < {cfg.report.target_loss:g}")
    headers = ("scheme", "final policy loss", f"sim time to {reached} [s]", "gradient error",
               "RMS lateral [m]", "left road", "diverged", "mean staleness", "residual staleness", "time [s]",
               "wall [s]")
    body = [(label(a["scheme"]), mean_std_text(a["final_policy_loss"], ".3f"),
             per_seed_text(a["time_per_seed"], ".2f"), f"{a['grad_error_mean'].mean:.3g}",
             f"{a['rms_lateral'].mean:.4f}", f"{a['left_road']}/{a['seeds']}", diverged_text(a),
             f"{a['mean_staleness'].mean:.2f}", f"{a['mean_residual_staleness'].mean:.2f}",
             f"{a['sim_time'].mean:.2f}", f"{a['wall_time_s'].mean:.1f}")
            for a in table]
    print_table(Console(), title, headers, body)
    Console().print(f"summary: {folder / 'summary.md'}")


@app.command()
def plot(
    folder: Annotated[Path, typer.Argument(help="A results root (every experiment beneath it), an experiment "
                                                "folder (results/paper) or one run directory.")],
    out: Annotated[Path | None, typer.Option(help="Where to write figures (default: <folder>/figures for each "
                                                  "experiment or run).")] = None,
) -> None:
    """Write the loss, gradient-error, tracking, loss-vs-time and staleness figures (PNG and PDF)."""
    from asynccorr.figures.experiment import plot_path
    from asynccorr.runs.read import ResultsError

    try:
        paths = plot_path(folder, out, on_note=_warn)
    except ResultsError as exc:
        raise CliError(str(exc)) from None
    for p in paths:  # one path a line, never wrapped: for the reader and for scripts
        typer.echo(str(p))


@app.command("tensorboard")
def tensorboard_(
    path: Annotated[Path, typer.Argument(help="A run directory, an experiment folder (results/paper) or a "
                                              "results root.")],
) -> None:
    """Write TensorBoard event files for existing runs (into each run's tensorboard/), then view them
    with: tensorboard --logdir PATH."""
    from asynccorr import api
    from asynccorr.runs.read import ResultsError

    try:
        folders = api.tensorboard(path)
    except ResultsError as exc:
        raise CliError(str(exc)) from None
    for folder in folders:
        typer.echo(str(folder))
    console.print(f"view them: tensorboard --logdir {path}", markup=False)


@app.command("schemes")
def schemes_(
    config: Annotated[Path | None, typer.Option(help="Experiment TOML whose cost model prices the messages "
                                                     "(default: experiments/paper.toml).")] = None,
) -> None:
    """List every scheme and protocol: what a worker computes, what the server does, whether a real
    cluster can run it, its cost per message in the cost model, and what it is."""
    from asynccorr import api
    from asynccorr.schemes.registry import PROTOCOLS

    cfg = api.experiment(config)
    out = Console()
    print_table(out, f"schemes: costs in directions of {cfg.workers.direction_time * 1e3:g} ms",
                ("scheme", "realisable", "worker computes", "worker cost", "server does",
                 "server cost (per message; sync: per round)", "what"),
                [(e.name, "yes" if e.realisable else "no: an upper bound", e.worker, f"{e.worker_cost:g}",
                  e.server, f"{e.server_cost:g}", e.summary) for e in api.schemes(cfg)])
    print_table(out, "protocols: how modify and modify-safe get their product",
                ("protocol", "realisable", "what"),
                [(p.name, "yes" if p.realisable else "no: an upper bound", p.summary) for p in PROTOCOLS.values()])


DEFAULT_REGIMES = Path("experiments/regimes.toml")


@app.command()
def regimes(
    config: Annotated[Path, typer.Option(help="Study TOML: grid, schemes, seeds, metrics, base experiment.")]
    = DEFAULT_REGIMES,
    jobs: Annotated[int, typer.Option(help="Runs in parallel (spawned processes, single-threaded XLA each).")] = 1,
    results: Annotated[Path, typer.Option(help="Root folder; the study goes to <results>/<name>/.")]
    = Path("results"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing study of the same name.")] = False,
    resume: Annotated[bool, typer.Option(help="Complete an interrupted study: reuse the runs it finished (its "
                                              "rows in regimes.csv), run the others.")] = False,
    settings: Annotated[list[str] | None, typer.Option("--set", help="key=value: set any field of the study "
                                                        "TOML (repeatable), e.g. --set seeds=[0] or --set "
                                                        "experiment.train.iterations=50.")] = None,
    cluster: Annotated[str | None, typer.Option(help=CLUSTER_HELP)] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    redraw: Annotated[bool, typer.Option(help="Only redraw regimes.md and the figures from regimes.csv.")]
    = False,
) -> None:
    """Regime study: every scheme on a grid of workers x learning rate x delay model, every seed;
    writes regimes.csv, regimes.md and heat maps into <results>/<name>/."""
    import time

    from asynccorr import api
    from asynccorr.studies.pool import check_jobs

    check_jobs(jobs, cluster)
    if resume and overwrite:
        raise CliError("--resume and --overwrite exclude each other (--overwrite starts the study afresh)")
    study = api.regime_study(config, settings or ())
    if cluster is not None and not redraw:
        from asynccorr.studies.cluster import check_reachable

        check_reachable(cluster)
    if redraw:
        folder, rows = api.redraw_regimes(study, results)
        Console().print(f"{len(rows)} runs redrawn: {folder / 'regimes.md'}")
        return
    from asynccorr.studies.regime_runs import check_study_folder

    folder = check_study_folder(study, results, overwrite or resume)  # before the progress bar: errors are one line
    if resume:
        from asynccorr.studies.regime_runs import finished_rows

        console.print(f"resume: {len(finished_rows(study, folder))} finished runs reused")
    start = time.perf_counter()
    with _progress(quiet) as progress:
        task = progress.add_task(f"regimes {study.name}", total=None, rms="-")

        def on_run(done: int, total: int, row: dict[str, Any]) -> None:
            progress.update(task, completed=done, total=total,
                            rms=f"{row['rms_lateral']:.3f} m ({row['scheme']}, N={row['workers']})")

        folder, rows = api.regimes(study, results, jobs=jobs, overwrite=overwrite, on_run=on_run, cluster=cluster,
                                   resume=resume)
    wall = time.perf_counter() - start
    out = Console()
    where = f"on the Ray cluster at {cluster}" if cluster is not None else f"{jobs} job{'s' if jobs > 1 else ''}"
    out.print(f"{len(rows)} runs in {wall / 60:.1f} min wall ({where})")
    out.print(f"table: {folder / 'regimes.md'}")
    out.print(f"figures: {folder / 'figures'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, mapping user errors to one line and exit status 2, Ctrl-C to 130."""
    import signal

    from asynccorr.backends.protocol import clear_interrupt, interrupt_handler
    from asynccorr.runs.run import ResumeError

    clear_interrupt()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where a caller set its own
        signal.signal(signal.SIGINT, interrupt_handler)
    try:
        code = app(args=_hoist_global_flags(sys.argv[1:] if argv is None else list(argv)), standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"error: {exc}" if isinstance(exc, Interrupted) else "error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, RunExistsError, CliError, ResumeError, ResultsPathError) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # click's UsageError family (typer vendors click, so match by shape, not by import)
        if hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2:
            print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
            sys.exit(2)
        raise
    if code == 130:  # typer's answer to a Ctrl-C outside the commands' own handling
        print("error: interrupted", file=sys.stderr)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _hoist_global_flags(argv: list[str]) -> list[str]:
    """``asynccorr train --no-jax-cache`` as ``asynccorr --no-jax-cache train``: the global flags (they
    take no value) move before the command wherever they are given."""
    flags = [a for a in argv if a in GLOBAL_FLAGS]
    return flags + [a for a in argv if a not in GLOBAL_FLAGS]


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    main()
