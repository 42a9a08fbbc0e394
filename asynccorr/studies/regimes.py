"""The regime study: where does each staleness remedy win?

A study is a grid ``workers x learning rate x delay model`` (the *cells*); in
every cell every scheme trains on every seed on the ``sim`` backend, starting
from one base experiment (``[experiment]`` of the study's TOML,
``experiments/regimes.toml``). Per run it keeps one row of metrics, defined
here and nowhere else:

``final_loss``
    mean policy loss over the last ``tail_fraction`` of the run's updates
    (``runs.summary.final_window``: rounded down, at least one).
``diverged``
    the run diverged as every run does (``RunResult.status``, or a metric row that
    ``backends.protocol.first_diverged_row`` flags with the experiment's
    ``train.divergence_loss``), a parameter is not finite, or, the study's stricter
    rule (``ran_away``), the policy loss ran away: ``|J| > blowup_loss`` or ``J < 0`` at
    some update (``max_abs_loss``, ``min_loss``). ``J`` sums non-negative utilities
    plus the critic's estimate of a non-negative cost-to-go, so it is negative only
    when the critic has run away (the untrained policy's loss is 27-31; runaway
    critics drive it to -1e7), and there the target test would be met spuriously.
    A diverged run reaches nothing: its final loss and target times are ``nan``.
``reaches_sync``
    not diverged and ``final_loss <= sync_final + reach_tolerance``, where
    ``sync_final`` is the final loss of ``sync`` *in the same cell with the same
    seed* (the synchronous baseline with the same workers, step size, initial
    parameters and sampling streams; see ``mark_reaches_sync`` for why paired).
``iters_to_target`` / ``time_to_target``
    the first update ``k >= smooth`` at which the mean policy loss of updates
    ``k-smooth+1 .. k`` is below ``target_loss``, and the simulated time of that
    update; ``nan`` if never (or diverged).
``rms_lateral``, ``left_road``
    closed-loop tracking of the final policy on the fixed scenario.

Outputs in ``<results>/<name>/``: ``regimes.csv`` (one row per cell x scheme x
seed, rewritten after every run, so an interrupted study keeps what it did),
``regimes.md`` (per cell x scheme, mean ± std over seeds, and each scheme's
staleness tolerance) and the heat maps in ``figures/`` (``asynccorr.figures.regimes``);
``asynccorr.studies.regime_runs`` runs the study and writes them.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from asynccorr.backends.protocol import diverged as run_diverged
from asynccorr.config import (
    DELAY_KINDS,
    ConfigError,
    ExperimentConfig,
    apply_settings,
    from_dict,
    read_toml,
    with_overrides,
)
from asynccorr.runs.files import atomic_write_text, write_csv
from asynccorr.runs.summary import (
    FINAL_FRACTION,
    MeanStd,
    final_window,
    mean_std,
    mean_std_text,
    smoothed_first_below,
)
from asynccorr.schemes.registry import NAMES, names_help, realisable, resolve

ROW_FIELDS = (
    "delay", "policy_lr", "value_lr", "workers", "scheme", "seed", "iterations", "dropped", "diverged",
    "max_abs_loss", "min_loss",
    "final_loss", "reaches_sync", "sync_final_loss", "iters_to_target", "time_to_target", "sim_time",
    "mean_staleness", "max_staleness", "grad_error_mean", "rms_lateral", "left_road", "wall_time_s",
)


def _require(cond: bool, name: str, message: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name} {message}, got {value!r}")


@dataclass(frozen=True)
class RegimeConfig:
    """A regime study: the grid, the schemes and seeds, the metrics' constants, the base experiment."""

    name: str = "regimes"  # outputs go to <results>/<name>/
    workers: tuple[int, ...] = (1, 4, 16, 64)  # grid axis: number of simulated workers N
    learning_rates: tuple[tuple[float, ...], ...] = ((3e-4, 1e-3), (1e-3, 3e-3))  # grid axis: (policy, value)
    delays: tuple[str, ...] = ("homogeneous", "stragglers")  # grid axis: delay model
    # the remedies on the default nets (a dense Hessian does not fit), with the protocol axis: the oracle
    # (an upper bound), the best realisable protocol, and the actor-learner split
    schemes: tuple[str, ...] = ("sync", "async", "sync-pipelined", "learner", "modify@oracle", "modify@server",
                                "modify-safe@server", "dc-asgd", "dc-asgd-a", "staleness-lr", "gap-aware",
                                "drop-stale")
    seeds: tuple[int, ...] = (0, 1, 2)
    target_loss: float = 2.5  # iterations / simulated time until the smoothed policy loss is below this
    smooth: int = 20  # moving-mean window (updates) of that test
    tail_fraction: float = FINAL_FRACTION  # final loss = mean over this last fraction of the updates
    reach_tolerance: float = 0.1  # reaches sync: final loss <= sync's final loss (same cell and seed) + this
    blowup_loss: float = 1000.0  # diverged: |policy loss| above this (or the loss below 0) at some update
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)  # base of every cell

    def __post_init__(self) -> None:
        ExperimentConfig(name=self.name)  # same rule for the folder name
        for axis in ("workers", "learning_rates", "delays", "schemes", "seeds"):
            values = getattr(self, axis)
            _require(len(values) >= 1, f"regimes.{axis}", "must list at least one value (empty grid)", values)
            _require(len(set(values)) == len(values), f"regimes.{axis}", "has duplicates", values)
        _require(all(n >= 1 for n in self.workers), "regimes.workers", "must be >= 1", self.workers)
        for pair in self.learning_rates:
            _require(len(pair) == 2 and all(math.isfinite(x) and x > 0 for x in pair), "regimes.learning_rates",
                     "must hold [policy_lr, value_lr] pairs of numbers > 0", pair)
        for d in self.delays:
            _require(d in DELAY_KINDS, "regimes.delays", f"must hold names from {list(DELAY_KINDS)}", d)
        for s in self.schemes:
            _require(s in NAMES, "regimes.schemes", f"must hold scheme names ({names_help()})", s)
        # a bare modify / modify-safe is the experiment's protocol: the study's names are the registered ones
        resolved = tuple(resolve(s, self.experiment.schemes.protocol) for s in self.schemes)
        _require(len(set(resolved)) == len(resolved), "regimes.schemes", "names a scheme twice", self.schemes)
        object.__setattr__(self, "schemes", resolved)
        _require("sync" in self.schemes, "regimes.schemes", "must include sync (the baseline of reaches_sync)",
                 self.schemes)
        _require(all(s >= 0 for s in self.seeds), "regimes.seeds", "must be >= 0", self.seeds)
        _require(math.isfinite(self.target_loss), "regimes.target_loss", "must be a finite number",
                 self.target_loss)
        _require(self.smooth >= 1, "regimes.smooth", "must be >= 1", self.smooth)
        _require(math.isfinite(self.blowup_loss) and self.blowup_loss > 0, "regimes.blowup_loss",
                 "must be a finite number > 0", self.blowup_loss)
        _require(0 < self.tail_fraction <= 1, "regimes.tail_fraction", "must be in (0, 1]", self.tail_fraction)
        _require(math.isfinite(self.reach_tolerance) and self.reach_tolerance >= 0, "regimes.reach_tolerance",
                 "must be a finite number >= 0", self.reach_tolerance)


def load_regimes(path: str | Path, settings: Sequence[str] = ()) -> RegimeConfig:
    """Load and validate a study TOML, with ``--set`` settings applied to it first (unknown keys,
    wrong types, bad values: ``ConfigError``)."""
    return from_dict(RegimeConfig, apply_settings(read_toml(path, "study file"), settings), prefix="regimes.")


# ---------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Cell:
    delay: str
    policy_lr: float
    value_lr: float
    workers: int


@dataclass(frozen=True)
class Task:
    cell: Cell
    scheme: str
    seed: int
    config: ExperimentConfig = dataclasses.field(compare=False)

    @property
    def cost(self) -> float:
        """Relative compute of the run, to start the longest first (sync evaluates N directions per update)."""
        per_update = {"sync": self.cell.workers, "modify": 2.0, "modify-safe": 2.0}.get(self.scheme, 1.3)
        return self.config.train.iterations * per_update


def cells(study: RegimeConfig) -> list[Cell]:
    return [Cell(d, lr[0], lr[1], n) for d in study.delays for lr in study.learning_rates for n in study.workers]


def cell_config(study: RegimeConfig, cell: Cell, seed: int) -> ExperimentConfig:
    return with_overrides(study.experiment, name=study.name, train={"seed": seed},
                          optim={"policy_lr": cell.policy_lr, "value_lr": cell.value_lr},
                          workers={"count": cell.workers, "delay": cell.delay, "backend": "sim"})


def plan(study: RegimeConfig) -> list[Task]:
    """Every run of the study, validated up front (e.g. modify-dense on a large net), longest first."""
    from asynccorr.learners.build import build
    from asynccorr.schemes.registry import check_scheme_fits, get_scheme

    learner, _ = build(study.experiment)
    schemes = study.schemes
    for scheme in schemes:
        check_scheme_fits(get_scheme(scheme), learner.num_params, study.experiment.schemes)
    tasks = [Task(c, s, seed, cell_config(study, c, seed)) for c in cells(study) for s in schemes
             for seed in study.seeds]
    return sorted(tasks, key=lambda t: -t.cost)


# ---------------------------------------------------------------------------------------------- metrics


def ran_away(study: RegimeConfig, max_abs_loss: float, min_loss: float) -> bool:
    """The study's runaway rule on top of divergence: ``|J| > blowup_loss`` or ``J < 0`` at some update."""
    return max_abs_loss > study.blowup_loss or min_loss < 0


def run_metrics(study: RegimeConfig, result: Any) -> dict[str, Any]:
    """The per-run metrics of the module docstring (all but ``reaches_sync``, which needs sync's runs)."""
    m = result.metrics
    loss = np.asarray(m["policy_loss"], np.float64)
    n = len(loss)
    with np.errstate(invalid="ignore"):
        max_abs = float(np.max(np.abs(loss))) if n else float("nan")
        lowest = float(np.min(loss)) if n else float("nan")
    # the study counts as diverged a run that diverged (``protocol.diverged``) or ran away
    diverged = (run_diverged(getattr(result, "status", "completed"), m, study.experiment.train.divergence_loss)
                or not np.all(np.isfinite(result.params)) or ran_away(study, max_abs, lowest))
    tail = final_window(n, study.tail_fraction)
    hit = None if diverged else smoothed_first_below(loss, study.target_loss, study.smooth)
    staleness = np.asarray(m.get("staleness", np.zeros(n)))
    final = result.evals[-1].summary
    return {
        "iterations": n,
        "dropped": int(getattr(result, "dropped", 0)),
        "diverged": bool(diverged),
        "max_abs_loss": max_abs,
        "min_loss": lowest,
        "final_loss": float("nan") if diverged else float(np.mean(loss[-tail:])),
        "iters_to_target": float("nan") if hit is None else float(m["iteration"][hit]),
        "time_to_target": float("nan") if hit is None else float(m["time"][hit]),
        "sim_time": float(m["time"][-1]),
        "mean_staleness": float(np.mean(staleness)),
        "max_staleness": int(np.max(staleness)),
        "grad_error_mean": float(np.mean(m["grad_error"])) if "grad_error" in m else float("nan"),
        "rms_lateral": float(final.rms_lateral),
        "left_road": bool(final.left_road),
    }


def mark_reaches_sync(study: RegimeConfig, rows: list[dict[str, Any]]) -> None:
    """Fill ``sync_final_loss`` and ``reaches_sync`` of every row from the sync run of its cell and seed.

    Paired by seed: a seed fixes the initial parameters and the workers' sampling
    streams, and the final loss is measured on the run's own batches, so it differs
    between seeds far more than between schemes (sync alone: 1.90 / 2.10 / 2.37 on
    seeds 0 / 1 / 2 of the study) but hardly with N for sync. Without a finite sync
    run for that cell and seed (diverged or missing) there is no baseline (``nan``)
    and nothing reaches it.
    """
    def key(r: dict[str, Any]) -> tuple:
        return r["delay"], r["policy_lr"], r["value_lr"], r["workers"], r["seed"]

    for r in rows:  # the runaway rule; rows without max_abs_loss / min_loss (older CSVs): by their final loss
        worst, lowest = r.get("max_abs_loss", float("nan")), r.get("min_loss", float("nan"))
        if not math.isfinite(worst) and math.isfinite(r["final_loss"]):
            worst, lowest = abs(r["final_loss"]), r["final_loss"]
        if not r["diverged"] and ran_away(study, worst, lowest):
            r.update(diverged=True, final_loss=float("nan"), iters_to_target=float("nan"),
                     time_to_target=float("nan"))
    baseline = {key(r): r["final_loss"] for r in rows if r["scheme"] == "sync"}
    for r in rows:
        b = baseline.get(key(r), float("nan"))
        r["sync_final_loss"] = b
        r["reaches_sync"] = bool(not r["diverged"] and math.isfinite(b)
                                 and r["final_loss"] <= b + study.reach_tolerance)


def study_rows(study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the study's cells, schemes and seeds (an edited study drops the others), in table order."""
    known = set(cells(study))
    return sort_rows(study, [r for r in rows if r["scheme"] in study.schemes and r["seed"] in study.seeds
                             and Cell(r["delay"], r["policy_lr"], r["value_lr"], r["workers"]) in known])


def sort_rows(study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {c: i for i, c in enumerate(cells(study))}
    rank = {s: i for i, s in enumerate(study.schemes)}
    return sorted(rows, key=lambda r: (order[Cell(r["delay"], r["policy_lr"], r["value_lr"], r["workers"])],
                                       rank[r["scheme"]], r["seed"]))


def write_rows(path: Path, study: RegimeConfig, rows: list[dict[str, Any]]) -> None:
    mark_reaches_sync(study, rows)
    write_csv(path, {k: [r[k] for r in rows] for k in ROW_FIELDS})


def read_rows(path: Path) -> list[dict[str, Any]]:
    """``regimes.csv`` back as rows (numbers as floats/ints, booleans as bools; a missing column as nan)."""
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    ints = {"workers", "seed", "iterations", "dropped", "max_staleness"}
    bools = {"diverged", "reaches_sync", "left_road"}

    def value(r: dict[str, str], k: str) -> Any:
        if k not in r:
            return float("nan")
        return (r[k] if k in ("delay", "scheme") else bool(int(r[k])) if k in bools
                else int(r[k]) if k in ints else float(r[k]))

    return [{k: value(r, k) for k in ROW_FIELDS} for r in records]


# ---------------------------------------------------------------------------------------------- aggregation


def group(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """(delay, policy_lr, value_lr, workers, scheme) -> that cell's rows for the scheme, one per seed."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["delay"], r["policy_lr"], r["value_lr"], r["workers"], r["scheme"]), []).append(r)
    return out


def summarize_cell(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per cell x scheme: counts over seeds, and each metric over the seeds where it has a value
    (``runs.summary.MeanStd``)."""
    out: dict[str, Any] = {"seeds": len(runs), "reached": sum(r["reaches_sync"] for r in runs),
                           "diverged": sum(r["diverged"] for r in runs)}
    for k in ("final_loss", "iters_to_target", "time_to_target", "rms_lateral", "mean_staleness", "dropped"):
        out[k] = mean_std([r[k] for r in runs])
    out["at_target"] = out["iters_to_target"].count
    return out


TIE = 0.05  # schemes within 5 % of the winner's mean time to target tie with it (N = 1: the same computation)


class Winner(NamedTuple):
    """A cell's fastest realisable scheme(s) (``cell_winner``)."""

    schemes: tuple[str, ...]  # the winner, then the schemes that tie with it; () when none qualifies
    time: MeanStd | None  # the winner's simulated time to the target (None: the fallback rule decided)
    note: str  # how it won: "" for the main rule, else e.g. "2/3 reach sync, no target on every seed"
    bound: tuple[str, MeanStd] | None  # a non-realisable scheme that would be faster, and its time


def cell_winner(cell: dict[str, dict[str, Any]]) -> Winner:
    """The fastest realisable scheme of one cell (``cell``: scheme -> ``summarize_cell``), by the rule
    the docs use: among the schemes that reach sync's final loss **and** the target loss on every
    seed, the smallest mean simulated time to the target; schemes within ``TIE`` of it tie. If none
    qualifies: the one reaching sync's final loss on the most seeds (then the lowest final loss).
    An upper bound (``@oracle``) never wins; ``bound`` names it where it would have been faster."""
    def qualifies(c: dict[str, Any]) -> bool:
        return c["reached"] == c["seeds"] and c["at_target"] == c["seeds"]

    fast = {s: c for s, c in cell.items() if qualifies(c)}
    real = {s: c for s, c in fast.items() if realisable(s)}
    if real:
        best = min(real, key=lambda s: real[s]["time_to_target"].mean)
        time = real[best]["time_to_target"]
        ties = tuple(s for s in real if s != best and real[s]["time_to_target"].mean <= (1 + TIE) * time.mean)
        bounds = {s: c["time_to_target"] for s, c in fast.items() if not realisable(s) and
                  c["time_to_target"].mean < time.mean}
        bound = min(bounds.items(), key=lambda kv: kv[1].mean) if bounds else None
        return Winner((best, *ties), time, "", bound)
    some = {s: c for s, c in cell.items() if realisable(s) and c["reached"] > 0}
    if not some:
        return Winner((), None, "no realisable scheme reaches sync's final loss", None)
    best = max(some, key=lambda s: (some[s]["reached"], -some[s]["final_loss"].mean))
    return Winner((best,), None, f"{some[best]['reached']}/{some[best]['seeds']} reach sync; "
                  "none on every seed", None)


def winners(study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> dict[tuple, Winner]:
    """(delay, policy_lr, value_lr, N) -> that cell's ``Winner``."""
    summaries = {k: summarize_cell(v) for k, v in group(rows).items()}
    return {(d, plr, vlr, n): cell_winner({s: summaries[(d, plr, vlr, n, s)] for s in study.schemes
                                           if (d, plr, vlr, n, s) in summaries})
            for d in study.delays for plr, vlr in study.learning_rates for n in study.workers}


def winner_text(w: Winner) -> str:
    """A winner in one line: ``learner 0.37 s``, ``sync = async = learner 0.38 s``."""
    if not w.schemes:
        return "none"
    name = " = ".join(w.schemes)
    return f"{name} {mean_std_text(w.time, '.3g')} s" if w.time is not None else f"{name} ({w.note})"


def staleness_tolerance(study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> dict[tuple, int | None]:
    """(delay, policy_lr, scheme) -> the largest N of the grid up to which every N reached sync on every seed."""
    g = group(rows)
    out: dict[tuple, int | None] = {}
    for d in study.delays:
        for plr, vlr in study.learning_rates:
            for s in study.schemes:
                best = None
                for n in sorted(study.workers):
                    runs = g.get((d, plr, vlr, n, s), [])
                    if runs and all(r["reaches_sync"] for r in runs):
                        best = n
                    else:
                        break
                out[(d, plr, s)] = best
    return out


def write_table(path: Path, study: RegimeConfig, rows: Sequence[dict[str, Any]]) -> None:
    """``regimes.md``: the metrics' definitions, the per-cell table and the staleness tolerance."""
    exp = study.experiment
    lines = [
        f"# Regime study `{study.name}`", "",
        (f"{len(rows)} runs: workers {list(study.workers)} x (policy, value) learning rate "
         f"{[list(p) for p in study.learning_rates]} x delay {list(study.delays)} x {len(study.schemes)} schemes "
         f"x seeds {list(study.seeds)}; {exp.train.iterations} server updates each, optimizer {exp.optim.name}, "
         f"batch {exp.learner.batch_size}, nets {list(exp.learner.policy_hidden)}/"
         f"{list(exp.learner.value_hidden)}."),
        "",
        (f"* **reached**: seeds whose final loss (mean of the last {study.tail_fraction:.0%} of updates) is at "
         f"most {study.reach_tolerance} above sync's final loss in the same cell with the same seed; a diverged "
         "run reaches nothing."),
        (f"* **updates / sim time to {study.target_loss}**: first update at which the {study.smooth}-update "
         "moving mean of the policy loss is below the target; mean ± std over the seeds that got there (their "
         "count in brackets)."),
        "* **RMS lateral**: final policy on the fixed scenario [m]. Values are mean ± std over seeds.", "",
        ("| delay | policy lr | N | scheme | reached | diverged | final loss | updates to target "
         "| sim time to target [s] | RMS lateral [m] | mean staleness | dropped |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (d, plr, _vlr, n, s), runs in group(sort_rows(study, rows)).items():
        c = summarize_cell(runs)
        k = c["seeds"]
        text = {key: mean_std_text(c[key], fmt) for key, fmt in (
            ("final_loss", ".3f"), ("iters_to_target", ".0f"), ("time_to_target", ".3f"), ("rms_lateral", ".4f"),
            ("mean_staleness", ".1f"), ("dropped", ".0f"))}
        lines.append(
            f"| {d} | {plr:g} | {n} | {s} | {c['reached']}/{k} | {c['diverged']}/{k} | {text['final_loss']} "
            f"| {text['iters_to_target']} ({c['at_target']}/{k}) | {text['time_to_target']} "
            f"| {text['rms_lateral']} | {text['mean_staleness']} | {text['dropped']} |")
    lines += ["", "## Fastest realisable scheme per cell", "",
              (f"Among the schemes that reach sync's final loss and the target loss {study.target_loss} on every "
               f"seed, the smallest mean simulated time to the target [s]; `=`: within {TIE:.0%} of it (a tie). "
               "If none does: the one reaching sync's final loss on the most seeds. A non-realisable upper "
               "bound never wins; where it would have been faster, its time is given apart."), "",
              "| delay | policy lr | N | fastest realisable | faster upper bound (not realisable) |",
              "| --- | --- | --- | --- | --- |"]
    for (d, plr, _vlr, n), w in winners(study, rows).items():
        bound = f"{w.bound[0]} {mean_std_text(w.bound[1], '.3g')} s" if w.bound else "–"
        lines.append(f"| {d} | {plr:g} | {n} | {winner_text(w)} | {bound} |")
    tol = staleness_tolerance(study, rows)
    lines += ["", "## Staleness tolerance", "",
              ("The largest number of workers N of the grid up to which the scheme reached sync's final loss on "
               "every seed of every smaller N (– : not even the smallest)."), "",
              "| delay | policy lr | " + " | ".join(study.schemes) + " |",
              "| --- | --- | " + " | ".join("---" for _ in study.schemes) + " |"]
    for d in study.delays:
        for plr, _ in study.learning_rates:
            cells_text = [str(tol[(d, plr, s)]) if tol[(d, plr, s)] is not None else "–" for s in study.schemes]
            lines.append(f"| {d} | {plr:g} | " + " | ".join(cells_text) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")
