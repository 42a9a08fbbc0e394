"""A small Python API for notebooks and scripts: the same operations as the command line,
which is a thin layer over it.

    from asynccorr import api

    cfg = api.experiment("experiments/paper.toml", train={"iterations": 200})
    run = api.train(cfg, "modify", results="results")        # one run: its directory, result, summary row
    comp = api.compare(cfg, schemes=["async", "modify"], seeds=[0, 1])
    comp.table                                               # per scheme: mean ± std over seeds
    api.compare(cfg, cluster="head:6379")                    # each run a Ray task on a cluster
    api.replay("results/paper/async-seed0", "modify@server")  # an mp/ray run's schedule, another scheme
    res = api.load("results/paper")                          # a results folder read back
    study = api.regime_study("experiments/regimes.toml")     # the regime study: run it, or redraw it
    api.regimes(study, jobs=2)
    res.runs[0].metrics["grad_error"], res.summary

Every function validates its input as the CLI does and raises the same errors
(``ConfigError``, ``RunExistsError``, ``ResumeError``); nothing is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from asynccorr.backends.checkpoint import Checkpoint
from asynccorr.backends.protocol import OnChunk, RunResult
from asynccorr.config import ExperimentConfig, apply_settings, from_dict, load_config, to_dict, with_overrides
from asynccorr.runs.read import Run, load_runs
from asynccorr.runs.run import resume_checkpoint, run_dir_for, train_run
from asynccorr.runs.tensorboard import check_available, convert
from asynccorr.studies.compare import (  # the comparison's operations are the API's (api.plan_compare, ...)
    Comparison,
    ComparisonPlan,
    check_writable,
    plan_compare,
    planned_runs,
    run_compare,
)

if TYPE_CHECKING:
    from asynccorr.runs.replay import ReplayPlan
    from asynccorr.studies.regimes import RegimeConfig

__all__ = [
    "Comparison", "ComparisonPlan", "ExperimentConfig", "Results", "TrainPlan", "TrainedRun", "compare",
    "experiment", "load", "plan_compare", "plan_train", "redraw_regimes", "regime_study", "regimes",
    "run_compare", "run_train", "schemes", "tensorboard", "train",
]

DEFAULT_CONFIG = Path("experiments/paper.toml")

def experiment(config: str | Path | ExperimentConfig | None = None, settings: Sequence[str] = (),
               **sections: dict[str, Any]) -> ExperimentConfig:
    """An experiment config: a TOML file (default: ``experiments/paper.toml`` when it exists, else the
    built-in defaults) or a config, with ``settings`` (``["optim.policy_lr=1e-3"]``, as ``--set``)
    applied to it, then section overrides (``train={"iterations": 200}``; a value of None leaves the
    field as it is)."""
    if isinstance(config, ExperimentConfig):
        base = from_dict(ExperimentConfig, apply_settings(to_dict(config), settings)) if settings else config
    else:
        path = Path(config) if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        base = load_config(path, settings)
    return with_overrides(base, **{k: {f: v for f, v in d.items() if v is not None} for k, d in sections.items()})


class TrainedRun(NamedTuple):
    run_dir: Path
    result: RunResult
    summary: dict[str, Any]  # the run's row of a comparison table


class TrainPlan(NamedTuple):
    """One run, checked and ready to train (``plan_train``)."""

    scheme: str
    config: ExperimentConfig
    results: Path
    overwrite: bool
    checkpoint: Checkpoint | None  # where a resumed run continues from
    tensorboard: bool = False  # also write TensorBoard event files (``runs.tensorboard``)


def plan_train(config: ExperimentConfig, scheme: str = "modify", results: str | Path = "results",
               overwrite: bool = False, resume: bool = False,
               on_warning: Callable[[str], None] | None = None, tensorboard: bool = False) -> TrainPlan:
    """Check a run before anything trains: the scheme fits the config and backend, no live process
    owns the run, no earlier run is there unless ``overwrite``; with ``resume``, the checkpoint it
    continues from. Raises ``runs.run.RunFinished`` when resuming a run that already finished."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other (overwrite starts the run afresh)")
    results = Path(results)
    if tensorboard:
        check_available()
    [(scheme, config)] = planned_runs(config, [scheme], [config.train.seed])
    check_writable(results, [(scheme, config)], overwrite, resume)
    checkpoint = resume_checkpoint(run_dir_for(results, config, scheme), config, scheme,
                                        on_skip=on_warning) if resume else None
    return TrainPlan(scheme, config, results, overwrite, checkpoint, tensorboard)


def run_train(plan: TrainPlan, on_chunk: OnChunk | None = None) -> TrainedRun:
    """Train a planned run into ``results/<experiment>/<scheme>-seed<k>/``."""
    return TrainedRun(*train_run(plan.config, plan.scheme, plan.results, overwrite=plan.overwrite,
                                 on_chunk=on_chunk, resume=plan.checkpoint or False, tensorboard=plan.tensorboard))


def train(config: ExperimentConfig, scheme: str = "modify", results: str | Path = "results",
          overwrite: bool = False, resume: bool = False, on_chunk: OnChunk | None = None,
          on_warning: Callable[[str], None] | None = None, tensorboard: bool = False) -> TrainedRun:
    """``plan_train`` then ``run_train``: one run, checked, trained and written (``tensorboard``: with its
    TensorBoard event files)."""
    return run_train(plan_train(config, scheme, results, overwrite, resume, on_warning, tensorboard), on_chunk)


def compare(config: ExperimentConfig, schemes: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            results: str | Path = "results", overwrite: bool = False, resume: bool = False,
            on_warning: Callable[[str], None] | None = None, cluster: str | None = None, jobs: int = 1,
            tensorboard: bool = False) -> Comparison:
    """``plan_compare`` then ``run_compare``: every scheme on every seed (on a Ray ``cluster`` if given,
    else ``jobs`` at a time here), and the summary files."""
    return run_compare(plan_compare(config, schemes, seeds, results, overwrite, resume, on_warning, cluster, jobs,
                                    tensorboard))


def plan_replay(run: str | Path, scheme: str | None = None, results: str | Path | None = None,
                overwrite: bool = False) -> ReplayPlan:
    """Check a replay of a real (``mp``, ``ray``) run before anything is written (``runs.replay``): its
    schedule is there, whole and of this version, can drive ``scheme`` (default: the recorded one),
    and the replay's run directory ``<results>/<experiment>-replay/<scheme>-seed<k>/`` may be written
    (``results`` defaults to the recorded run's results root). Raises ``ScheduleError`` (a
    ``ConfigError``), ``RunExistsError``, ``ResultsPathError``."""
    from asynccorr.runs.replay import plan_replay as plan

    checked = plan(Path(run), scheme, None if results is None else Path(results), overwrite)
    check_writable(checked.results, [(checked.scheme, checked.config)], overwrite, False)
    return checked


def run_replay(plan: ReplayPlan, on_chunk: OnChunk | None = None) -> TrainedRun:
    """Re-execute a planned replay in this process: under the recorded scheme the run again, bit for
    bit; under another a what-if on the same interleaving."""
    from asynccorr.runs.replay import replay_run

    return TrainedRun(*replay_run(plan, on_chunk))


def replay(run: str | Path, scheme: str | None = None, results: str | Path | None = None, overwrite: bool = False,
           on_chunk: OnChunk | None = None) -> TrainedRun:
    """``plan_replay`` then ``run_replay``."""
    return run_replay(plan_replay(run, scheme, results, overwrite), on_chunk)


def tensorboard(path: str | Path) -> list[Path]:
    """Write the TensorBoard event files of every run at ``path`` (a run directory, an experiment
    folder or a results root) from its metrics.csv and eval.csv; the event folders written."""
    from asynccorr.runs.read import ResultsError, experiment_folders, is_run_dir

    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"results path {path} does not exist" if not path.exists() else f"{path} is not a directory")
    runs = [path] if is_run_dir(path) else [r.path for folder in experiment_folders(path) for r in load_runs(folder)]
    if not runs:
        raise ResultsError(f"no run directories (<scheme>-seed<k>/) in {path} or beneath it")
    return [convert(run) for run in runs]


class Results(NamedTuple):
    folder: Path
    runs: list[Run]  # scheme, seed, path, metrics / evals / trajectory columns, meta, config
    summary: dict[str, Any]  # summary.csv's columns (empty when the folder has none)


def load(folder: str | Path) -> Results:
    """An experiment folder read back: every run's tables, and the comparison's summary if any."""
    from asynccorr.runs.files import read_text_csv

    folder = Path(folder)
    summary_path = folder / "summary.csv"
    return Results(folder, load_runs(folder), read_text_csv(summary_path) if summary_path.is_file() else {})


def regime_study(config: str | Path, settings: Sequence[str] = ()) -> RegimeConfig:
    """A regime study's config from its TOML with ``settings`` applied to it (``["seeds=[0]",
    "experiment.train.iterations=50"]``, as ``--set``), validated; ``ConfigError`` otherwise."""
    from asynccorr.studies.regimes import load_regimes

    return load_regimes(config, settings)


def regimes(study: RegimeConfig, results: str | Path = "results", jobs: int = 1, overwrite: bool = False,
            on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
            cluster: str | None = None, resume: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Run a regime study (``studies.regime_runs.run_study``; ``resume``: reuse the runs an interrupted one
    finished) and draw its heat maps; returns its folder (``<results>/<name>/``: regimes.csv,
    regimes.md, figures/) and its rows."""
    from asynccorr.studies.regime_runs import run_study

    folder, rows = run_study(study, Path(results), jobs=jobs, overwrite=overwrite, on_run=on_run, cluster=cluster,
                             resume=resume)
    _draw_regimes(study, folder, rows)
    return folder, rows


def redraw_regimes(study: RegimeConfig, results: str | Path = "results") -> tuple[Path, list[dict[str, Any]]]:
    """Rewrite a finished (or interrupted) study's regimes.md and heat maps from its regimes.csv."""
    from asynccorr.studies.regime_runs import study_dir, write_outputs

    folder = study_dir(Path(results), study)
    rows = write_outputs(study, folder)
    _draw_regimes(study, folder, rows)
    return folder, rows


def _draw_regimes(study: RegimeConfig, folder: Path, rows: list[dict[str, Any]]) -> None:
    from asynccorr.figures.regimes import plot_study

    plot_study(study, rows, folder / "figures")


class SchemeEntry(NamedTuple):
    """One line of the scheme catalogue (``schemes``)."""

    name: str
    worker: str  # what a worker computes per job, phase by phase
    server: str  # what the server does with a message
    realisable: bool
    worker_cost: float  # the worker's job in directions (the cost model's ratios; PULL free)
    server_cost: float  # the server's time per message (per round for sync) in directions
    summary: str


PHASE_NAMES = {"sample": "sample", "direction": "direction G", "direction_jvp": "G + product (fused)",
               "linearise": "linearise at theta_i", "apply": "apply the linear map", "dense": "dense Hessian",
               "pull": "pull theta_k'"}


def _server_role(name: str) -> str:
    from asynccorr.schemes.registry import PROTOCOLS, SCHEMES

    s = SCHEMES[name]
    if s.compute == "sample":
        return "computes the fresh direction at theta_k on the shipped states, steps"
    if s.pipelined:
        return "applies round r's mean while round r+1 is computed" + (" (corrected by the workers)"
                                                                       if s.protocol else "")
    if s.synchronous:
        return "waits for all N directions at the same theta, averages, steps"
    if s.drops_stale:
        return "drops messages staler than schemes.staleness_bound, applies the rest"
    if s.protocol is not None and PROTOCOLS[s.protocol].server_product:
        return "evaluates the product at theta_i on the shipped batch, corrects, steps"
    if s.protocol is not None and PROTOCOLS[s.protocol].secant:
        return "fits the gap theta_k - theta_i on a window of (tangent, product) pairs, corrects, steps"
    if s.protocol == "oracle":
        return "gets the product against theta_k for free at application (upper bound), steps"
    if s.protocol is not None:
        return "applies the worker's corrected direction"
    rule = getattr(s.correction, "__name__", "correction").replace("_", " ")
    return "applies the direction" if rule == "no correction" else f"applies the rule: {rule}"


def schemes(config: ExperimentConfig | None = None) -> list[SchemeEntry]:
    """Every registered scheme (each linearising one once per protocol) with what each party does
    and its cost per message under ``config``'s cost model (default: the built-in one), in the
    registry's order: the catalogue ``asynccorr schemes`` prints."""
    from asynccorr.backends.sim import costs
    from asynccorr.schemes.registry import PULL, SCHEMES

    cfg = config if config is not None else ExperimentConfig()
    out = []
    for name, scheme in SCHEMES.items():
        cost = costs(scheme, cfg)
        unit = cfg.workers.direction_time
        work = sum(cost.phases[p] for p in scheme.phases if p != PULL) / unit
        out.append(SchemeEntry(name, " -> ".join(PHASE_NAMES.get(p, p) for p in scheme.phases),
                               _server_role(name), scheme.realisable, round(work, 4),
                               round(cost.server / unit, 4), scheme.summary))
    return out

