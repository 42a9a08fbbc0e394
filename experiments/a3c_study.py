"""The A3C staleness sweep, and GPI and A3C side by side: how many updates, environment steps,
directions and simulated seconds each needs to reach the tracking target.

    python experiments/a3c_study.py sweep   [--workers 1,4,16] [--seeds 0,1,2] [--learners a3c,gpi]
                                            [--results results/a3c-sweep] [--redraw]
    python experiments/a3c_study.py targets results/a3c [results/paper ...]

``sweep`` trains, for each learner (``a3c``: experiments/a3c.toml; ``gpi``: experiments/paper.toml)
and each worker count N, the schemes ``async``, ``modify`` and ``modify-safe`` (server protocol) on
every seed (N = 1: ``async`` alone, which is the sequential learner), into
``<results>/<learner>-N<N>/``, then writes ``sweep.csv``, ``sweep.md`` and two figures
(gradient error and simulated time to target against N). ``--redraw`` only reads the runs back.
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
    else:
        env = learner["rollout_states"] * learner["sampler_steps"]
        model = (learner["rollout_states"] + learner["reset_states"]) * learner["horizon"]
    products = 1 if scheme.startswith("modify") and not scheme.endswith("@oracle") else 0
    return env * batches, model * batches, batches, products * batches


def run_row(run: Any) -> dict[str, Any]:
    """One run's row of the table (``run``: ``runs.read.Run``)."""
    from asynccorr.schemes.registry import label

    config, m, evals = run.config, run.metrics, run.evals
    kind = config["learner"].get("kind", "gpi")
    ok = (evals["rms_lateral"] < TARGET_M) & (evals["left_road"] == 0) & (evals["iteration"] > 0)
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


def rows_of(folder: Path) -> list[dict[str, Any]]:
    from asynccorr.api import load

    return [run_row(r) for r in sorted(load(folder).runs, key=lambda r: (r.scheme, r.seed))]


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


def figures(folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Gradient error and simulated time to target against N, per learner and scheme (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, ylabel, name in (("grad_error", "mean gradient error (updates before any divergence)",
                                  "sweep_gradient_error"),
                                 ("time_to_target", "sim. time to the tracking target [s]\n(mean over the seeds that reach it)",
                                  "sweep_time_to_target")):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
        for ax, learner in zip(axes, ("a3c", "gpi")):
            mine = [r for r in rows if r["learner"] == learner]
            for scheme in sorted({r["scheme"] for r in mine}, key=_rank):
                ns = sorted({r["workers"] for r in mine if r["scheme"] == scheme or r["workers"] == 1})
                ys = [np.nanmean([float(r[metric]) for r in mine
                                  if r["workers"] == n and (r["scheme"] == scheme or n == 1)] or [np.nan])
                      for n in ns]
                if metric == "grad_error":  # 0 at N = 1 (fresh): off a log axis
                    ns, ys = zip(*[(n, y) for n, y in zip(ns, ys) if y > 0]) if any(y > 0 for y in ys) else ((), ())
                line, = ax.plot(ns, ys, marker="o", label=scheme)
                if metric == "time_to_target":  # a mean over the seeds that reached it: say how many did
                    for n, y in zip(ns, ys):
                        group = [r for r in mine if r["workers"] == n and (r["scheme"] == scheme or n == 1)]
                        hit = sum(np.isfinite(float(r[metric])) for r in group)
                        if hit < len(group):
                            ax.annotate(f"{hit}/{len(group)} reach it", (n, y) if np.isfinite(y) else (n, 0),
                                        textcoords="offset points", xytext=(4, 4), fontsize=7,
                                        color=line.get_color())
            ax.set_xscale("log", base=2)
            if metric == "grad_error":
                ax.set_yscale("log")
            ax.set_title(learner.upper())
            ax.set_xlabel("workers N")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        fig.tight_layout()
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            fig.savefig(path, dpi=120, metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
            written.append(path)
        plt.close(fig)
    return written


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
                continue
            cfg = with_overrides(base, name=name, workers={"count": n})
            schemes = ["async"] if n == 1 else list(SCHEMES)
            print(f"{name}: {', '.join(schemes)} x seeds {args.seeds}", flush=True)
            api.compare(cfg, schemes=schemes, seeds=args.seeds, results=root, overwrite=True)
    rows = [row for folder in folders for row in rows_of(folder)]
    write_csv(root / "sweep.csv", rows)
    (root / "sweep.md").write_text(f"# Staleness sweep: tracking target {TARGET_M} m\n\n" + table(rows))
    for path in figures(root, rows):
        print(f"wrote {path}")
    print(table(rows))
    return 0


def targets(args: argparse.Namespace) -> int:
    rows = [row for folder in args.folders for row in rows_of(Path(folder))]
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
    s.add_argument("--redraw", action="store_true", help="only read the runs back and write the outputs")
    t = sub.add_parser("targets", help="the per-run table of existing experiment folders")
    t.add_argument("folders", nargs="+")
    args = p.parse_args(argv)
    from asynccorr.compile.cache import compilation_cache

    compilation_cache()
    return sweep(args) if args.command == "sweep" else targets(args)


if __name__ == "__main__":
    sys.exit(main())
