"""The A3C staleness sweep, and GPI and A3C side by side: how many updates, environment steps,
directions and simulated seconds each needs to reach the tracking target.

    python experiments/a3c_study.py sweep   [--workers 1,4,16] [--seeds 0,1,2] [--learners a3c,gpi]
                                            [--results results/a3c-sweep] [--redraw]
    python experiments/a3c_study.py targets results/a3c [results/paper ...] [--target-m 0.25]

``sweep`` trains, for each learner (``a3c``: experiments/a3c.toml; ``gpi``: experiments/paper.toml)
and each worker count N, the schemes ``async``, ``modify`` and ``modify-safe`` (server protocol) on
every seed (N = 1: ``async`` alone, which is the sequential learner), into
``<results>/<learner>-N<N>/``, then writes ``sweep.csv``, ``sweep.md`` and two figures
(gradient error and simulated time to target against N). ``--redraw`` redraws the table and
figures from ``sweep.csv`` (the per-run rows; like the regime study's ``regimes.csv`` it stays
local, out of git), without the run directories.
``targets`` prints the same per-run table for existing experiment folders.

The **tracking target** is the README's: RMS lateral error below 0.10 m on the fixed scenario,
on the road for the whole episode, at an evaluation point (``train.eval_every`` apart, so a
time to target is rounded up to the next evaluation). Counted per applied server update
(messages in flight at the end are not counted):

* env steps: transitions of the real environment the update's batches took: A3C
  ``envs x n_steps``; GPI ``rollout_states x sampler_steps`` (its reset states take none; its
  20-step model rollouts are counted apart, as model steps). A synchronous update takes N batches.
* directions: evaluations of the direction field F (N for a synchronous update, else 1), and
  separately the Jacobian-vector products (one per update for the server protocol's ``modify``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"a3c": REPO / "experiments" / "a3c.toml", "gpi": REPO / "experiments" / "paper.toml"}
SCHEMES = ("async", "modify", "modify-safe")
TARGET_M = 0.10  # docs/performance.md "Tracking threshold"
FIELDS = ("learner", "workers", "scheme", "seed", "status", "updates", "mean_staleness", "grad_error",
          "stale_grad_error", "policy_kl", "final_rms", "updates_to_target", "env_steps_to_target",
          "model_steps_to_target", "directions_to_target", "products_to_target", "time_to_target")


def per_update(config: dict[str, Any], scheme: str) -> tuple[int, int, int, int]:
    """(env steps, model steps, directions, products) one applied update of ``scheme`` costs."""
    learner, n = config["learner"], int(config["workers"]["count"])
    batches = n if scheme in ("sync", "sync-pipelined", "sync-pipelined-modify") else 1
    if learner.get("kind", "gpi") == "a3c":
        env, model = learner["a3c"]["envs"] * learner["a3c"]["n_steps"], 0
    elif learner.get("kind") == "q":  # the real env steps sampled (a replayed batch is not new experience)
        env, model = learner["q"]["envs"] * learner["q"]["n_steps"], 0
    else:
        env = learner["rollout_states"] * learner["sampler_steps"]
        model = (learner["rollout_states"] + learner["reset_states"]) * learner["horizon"]
    products = 1 if scheme.startswith("modify") and not scheme.endswith("@oracle") else 0
    return env * batches, model * batches, batches, products * batches


def run_row(run: Any, target_m: float = TARGET_M) -> dict[str, Any]:
    """One run's row of the table (``run``: ``runs.read.Run``): the tracking target is ``target_m``."""
    from asynccorr.schemes.registry import label

    config, m, evals = run.config, run.metrics, run.evals
    kind = config["learner"].get("kind", "gpi")
    ok = (evals["rms_lateral"] < target_m) & (evals["left_road"] == 0) & (evals["iteration"] > 0)
    valid = run.valid_rows
    reached = [int(k) for k in evals["iteration"][ok] if k <= valid]
    k = reached[0] if reached else None
    env, model, directions, products = per_update(config, run.scheme)
    kl = m.get("policy_kl", np.full(run.rows, np.nan))[:valid]
    time_at = float(m["time"][np.flatnonzero(m["iteration"] == k)[0]]) if k else math.nan
    return {
        "learner": kind, "workers": int(config["workers"]["count"]), "scheme": label(run.scheme),
        "seed": run.seed, "status": "diverged" if run.diverged else "completed", "updates": valid,
        "mean_staleness": float(np.mean(m["staleness"][:valid])) if valid else math.nan,
        "grad_error": float(np.mean(m["grad_error"][:valid])) if valid else math.nan,
        "stale_grad_error": float(np.mean(m["stale_grad_error"][:valid])) if valid else math.nan,
        "policy_kl": float(np.mean(kl)) if valid and np.isfinite(kl).any() else math.nan,
        "final_rms": float(evals["rms_lateral"][-1]) if not run.diverged else math.nan,
        "updates_to_target": k if k else math.nan,
        "env_steps_to_target": k * env if k else math.nan,
        "model_steps_to_target": k * model if k and model else math.nan,
        "directions_to_target": k * directions if k else math.nan,
        "products_to_target": k * products if k else math.nan,
        "time_to_target": time_at,
    }


def rows_of(folder: Path, target_m: float = TARGET_M) -> list[dict[str, Any]]:
    from asynccorr.api import load

    return [run_row(r, target_m) for r in sorted(load(folder).runs, key=lambda r: (r.scheme, r.seed))]


def _fmt(values: list[float], fmt: str) -> str:
    """Per-seed values, '–' for never."""
    return " / ".join("–" if not np.isfinite(v) else format(v, fmt) for v in values)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per (learner, N, scheme), per-seed values."""
    head = ("| learner | N | scheme | mean staleness | gradient error (mean) | uncorrected error | "
            "KL(pi_i, pi_k) (mean) | updates to target | env steps to target | directions + products to target "
            "| sim time to target [s] | final RMS [m] |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    keys = sorted({(r["learner"], r["workers"], r["scheme"]) for r in rows},
                  key=lambda t: (t[0], t[1], _rank(t[2])))
    for learner, n, scheme in keys:
        group = sorted((r for r in rows if (r["learner"], r["workers"], r["scheme"]) == (learner, n, scheme)),
                       key=lambda r: r["seed"])
        def col(name: str, group: list[dict[str, Any]] = group) -> list[float]:
            return [float(r[name]) for r in group]

        diverged = sum(r["status"] == "diverged" for r in group)
        compute = [f"{int(d)} + {int(p)}" if np.isfinite(d) else "–"
                   for d, p in zip(col("directions_to_target"), col("products_to_target"))]
        name = scheme if diverged == 0 else f"{scheme} (diverged {diverged}/{len(group)})"
        lines.append(
            f"| {learner} | {n} | {name} | {np.nanmean(col('mean_staleness')):.2f} | "
            f"{np.nanmean(col('grad_error')):.3g} | {np.nanmean(col('stale_grad_error')):.3g} | "
            f"{'–' if np.all(np.isnan(col('policy_kl'))) else format(np.nanmean(col('policy_kl')), '.2g')} | "
            f"{_fmt(col('updates_to_target'), '.0f')} | {_fmt([v / 1e3 for v in col('env_steps_to_target')], '.0f')} | "
            f"{' / '.join(compute)} | {_fmt(col('time_to_target'), '.2f')} | {_fmt(col('final_rms'), '.3f')} |")
    return "\n".join(lines) + "\n"


def _rank(scheme: str) -> tuple[int, str]:
    """Tables and legends order schemes as the registry does (``schemes.registry.DISPLAY_ORDER``)."""
    from asynccorr.schemes.registry import DISPLAY_ORDER

    return (DISPLAY_ORDER.index(scheme) if scheme in DISPLAY_ORDER else len(DISPLAY_ORDER), scheme)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _seed_values(rows: list[dict[str, Any]], learner: str, scheme: str, n: int, metric: str) -> list[float]:
    """Per seed, ``metric`` of (learner, N, scheme); at N = 1 every scheme is the sequential learner."""
    return [float(r[metric]) for r in sorted(rows, key=lambda r: r["seed"]) if r["learner"] == learner
            and int(r["workers"]) == n and (r["scheme"] == scheme or n == 1)]


def figures(folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Gradient error and simulated time to the tracking target against N, per learner and scheme:
    every seed drawn (a seed that never reaches the target on the 'never' line at the top), the
    median line only where every seed has a value; styles of ``asynccorr.figures.style``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    from asynccorr.figures.experiment import write_figures
    from asynccorr.figures.style import scheme_styles, wrap

    names = sorted({r["scheme"] for r in rows}, key=_rank)
    styles = scheme_styles(names)
    made = []
    for metric, ylabel, name in (
            ("grad_error", "gradient error, mean over updates\n(before any divergence; lower is better)",
             "sweep_gradient_error"),
            ("time_to_target", "simulated time to the tracking target [s]\n(lower is better)",
             "sweep_time_to_target")):
        fig = Figure(figsize=(9.0, 4.4), layout="constrained")
        axes = fig.subplots(1, 2)
        handles: dict[str, Line2D] = {}
        for ax, learner in zip(axes, ("a3c", "gpi")):
            workers = sorted({int(r["workers"]) for r in rows if r["learner"] == learner})
            values = [float(r[metric]) for r in rows if r["learner"] == learner and float(r[metric]) > 0]
            finite = [v for v in values if math.isfinite(v)]
            never = max(finite) * 2.2 if finite else 1.0  # where a seed that never gets there is drawn
            for k, scheme in enumerate(names):
                style = styles[scheme]
                ns, medians = [], []
                for n in workers:
                    seeds = _seed_values(rows, learner, scheme, n, metric)
                    if not seeds or (n == 1 and k > 0) or (metric == "grad_error" and n == 1):
                        continue  # N = 1 is drawn once (the sequential learner, error 0: off a log axis)
                    x = n * 1.09 ** (k - (len(names) - 1) / 2)  # schemes side by side around N
                    hit = [v for v in seeds if math.isfinite(v)]
                    ax.plot([x] * len(hit), hit, ls="none", marker=style.marker, ms=5, color=style.color,
                            alpha=0.85)
                    if len(hit) < len(seeds):
                        ax.plot([x] * (len(seeds) - len(hit)), [never] * (len(seeds) - len(hit)), ls="none",
                                marker=style.marker, ms=6, mfc="white", mec=style.color)
                    ns.append(x)  # a gap where a seed has no value: no line drawn across it
                    medians.append(float(np.median(hit)) if len(hit) == len(seeds) else math.nan)
                label = scheme if scheme != "async" else "async (N = 1: the sequential learner)"
                ax.plot(ns, medians, ls=style.linestyle, color=style.color, lw=1.6)
                handles[label] = Line2D([], [], ls=style.linestyle, color=style.color, lw=1.6, marker=style.marker)
            if metric == "time_to_target":
                ax.axhline(never, color="0.6", lw=0.6, ls=":")
                ax.text(0.01, never, "never", transform=ax.get_yaxis_transform(), va="bottom", fontsize=7,
                        color="0.4")
            ax.set_xscale("log", base=2)
            ax.set_xticks(workers, [str(n) for n in workers])
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title({"a3c": "model-free A3C (experiments/a3c.toml)",
                          "gpi": "model-based GPI (experiments/paper.toml)"}[learner], fontsize=9)
            ax.set_xlabel("workers N")
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(True, alpha=0.3)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3, fontsize=8,
                   frameon=False)
        fig.suptitle(wrap(("Gradient error" if metric == "grad_error" else "Time to the tracking target (RMS "
                           f"lateral error < {TARGET_M} m)") + " vs workers N\nmarkers: each seed"
                          + (" (hollow, top: never reached)" if metric == "time_to_target" else "")
                          + "; line: median over seeds, drawn where every seed has a value",
                          9.0, 10), fontsize=10)
        made.append((name, fig))
    return write_figures(made, folder / "figures")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """sweep.csv back into rows (numbers as floats, NaN for never)."""
    with path.open(newline="") as f:
        return [{k: (v if k in ("learner", "scheme", "status") else int(v) if k in ("workers", "seed", "updates")
                     else float(v) if v != "" else math.nan) for k, v in r.items()} for r in csv.DictReader(f)]


def sweep(args: argparse.Namespace) -> int:
    from asynccorr import api
    from asynccorr.config import with_overrides

    root = Path(args.results)
    folders = []
    for learner in args.learners:
        base = api.experiment(CONFIGS[learner])
        for n in args.workers:
            name = f"{learner}-N{n}"
            folders.append(root / name)
            if args.redraw:
                break
            cfg = with_overrides(base, name=name, workers={"count": n})
            schemes = ["async"] if n == 1 else list(SCHEMES)
            print(f"{name}: {', '.join(schemes)} x seeds {args.seeds}", flush=True)
            api.compare(cfg, schemes=schemes, seeds=args.seeds, results=root, overwrite=True)
    if args.redraw:  # the per-run rows written with the table: no run directory needed
        if not (root / "sweep.csv").is_file():
            print(f"error: no {root / 'sweep.csv'} to redraw from (run the sweep first)", file=sys.stderr)
            return 2
        rows = read_rows(root / "sweep.csv")
    else:
        rows = [row for folder in folders for row in rows_of(folder)]
        write_csv(root / "sweep.csv", rows)
    (root / "sweep.md").write_text(f"# Staleness sweep: tracking target {TARGET_M} m\n\n" + table(rows))
    for path in figures(root, rows):
        print(f"wrote {path}")
    print(table(rows))
    return 0


def targets(args: argparse.Namespace) -> int:
    rows = [row for folder in args.folders for row in rows_of(Path(folder), args.target_m)]
    print(table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="train (or --redraw) the staleness sweep")
    s.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4, 16])
    s.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    s.add_argument("--learners", type=lambda t: t.split(","), default=["a3c", "gpi"])
    s.add_argument("--results", default="results/a3c-sweep")
    s.add_argument("--redraw", action="store_true", help="only redraw the table and figures from sweep.csv")
    t = sub.add_parser("targets", help="the per-run table of existing experiment folders")
    t.add_argument("folders", nargs="+")
    t.add_argument("--target-m", type=float, default=TARGET_M,
                   help=f"the tracking target, RMS lateral error in m (default {TARGET_M}; docs/q.md: 0.25)")
    args = p.parse_args(argv)
    from asynccorr.compile.cache import compilation_cache

    compilation_cache()
    return sweep(args) if args.command == "sweep" else targets(args)


if __name__ == "__main__":
    sys.exit(main())
