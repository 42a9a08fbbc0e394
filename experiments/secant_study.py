"""The secant protocol measured where the project's finding was made (docs/secant.md).

Settings, each on ``sim`` (runs under ``results/secant/<setting>/``):

* ``default``: the default experiment (experiments/paper.toml: plain SGD, 8 workers), 3 seeds;
* ``adam``: a held-out-like setting: Adam (steps 3e-4 / 1e-3), amplitude 3 m, wavelength 80 m, 2 seeds;
* ``fast``: experiments/paper-fast.toml (a 3.3x step), 2 seeds;
* ``n16``, ``n64``: the default experiment with 16 and 64 workers (the regime study's protocol axis), seed 0;
* ``a3c``: the model-free learner (experiments/a3c.toml), 2 seeds;
* ``w8``, ``w32``: the default experiment with a window of 8 and 32 pairs (the default is 2N = 16), 2 seeds.

Every setting runs the secant protocol with both tangents (``previous``: the worker's last
direction times the step; ``applied``: the update the server applied to its last message,
from the reply) beside async, learner, sync-pipelined, the ``server`` protocol and the oracle
(not realisable; shown only as a reference line, marked). The summary
(``results/secant/summary.md``) gives per scheme and seed: updates and simulated seconds until
the 20-update mean policy loss is below the setting's target, the mean gradient error over
updates >= 50, the final loss (mean of the last 100 updates), the simulated server seconds per
update, and the fit's diagnostics (gap coverage, cosine and relative error against the exact
product, how often the cap acts); ``diagnostics.md`` gives the fit's diagnostics by staleness and
by training time, and ``figures/`` draws them.

    python experiments/secant_study.py [--settings default,adam,...] [--jobs 2] [--summary-only]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "secant"
SMOOTH = 20  # updates in the loss's moving mean (the regime study's rule)
SECANT = ("modify@secant", "modify-safe@secant")
BASELINES = ("sync", "async", "learner", "sync-pipelined", "modify@server", "modify-safe@server", "modify@oracle")


class Setting(NamedTuple):
    name: str
    config: str  # experiment TOML under experiments/
    overrides: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    target: float  # the policy-loss target of "time to target"
    baselines: tuple[str, ...]
    summary: str


SETTINGS = {s.name: s for s in (
    Setting("default", "paper.toml", {}, (0, 1, 2), 2.5, BASELINES,
            "the default experiment: plain SGD, 8 workers (staleness ~7)"),
    Setting("adam", "paper.toml", {"optim": {"name": "adam"}, "env": {"params": {"amplitude": 3.0, "wavelength": 80.0}}},
            (0, 1), 2.5, ("async", "learner", "sync-pipelined", "modify-safe@server", "modify@oracle"),
            "held-out-like: Adam, amplitude 3 m, wavelength 80 m, 8 workers"),
    Setting("fast", "paper-fast.toml", {}, (0, 1), 2.5,
            ("async", "learner", "sync-pipelined", "modify-safe@server", "modify@oracle"),
            "paper-fast: plain SGD with a 3.3x step, 8 workers"),
    Setting("n16", "paper.toml", {"workers": {"count": 16}}, (0,), 2.5,
            ("async", "learner", "sync-pipelined", "modify-safe@server", "modify@oracle"),
            "the default experiment with 16 workers (staleness ~15)"),
    Setting("n64", "paper.toml", {"workers": {"count": 64}}, (0,), 2.5,
            ("async", "learner", "sync-pipelined", "modify-safe@server", "modify@oracle"),
            "the default experiment with 64 workers (staleness ~63)"),
    Setting("a3c", "a3c.toml", {}, (0, 1), 2.5,
            ("async", "learner", "sync-pipelined", "modify-safe@server", "modify@oracle"),
            "the model-free A3C learner (experiments/a3c.toml), 8 workers"),
    Setting("w8", "paper.toml", {"schemes": {"secant_window": 8}}, (0, 1), 2.5, (),
            "the default experiment, a window of 8 pairs (N) instead of 16 (2N)"),
    Setting("w32", "paper.toml", {"schemes": {"secant_window": 32}}, (0, 1), 2.5, (),
            "the default experiment, a window of 32 pairs (4N)"),
)}
TANGENTS = ("previous", "applied")


class Job(NamedTuple):
    setting: str
    tangent: str  # the secant tangent ("" for the other schemes)
    scheme: str
    seed: int

    @property
    def folder(self) -> str:
        return f"{self.setting}-{self.tangent}" if self.tangent else self.setting


def config_of(job: Job):
    from asynccorr.api import experiment
    from asynccorr.config import with_overrides

    setting = SETTINGS[job.setting]
    cfg = experiment(ROOT / "experiments" / setting.config)
    overrides = {k: dict(v) for k, v in setting.overrides.items()}
    if "env" in overrides:  # the env's physical parameters are one field
        overrides["env"] = {"params": {**cfg.env.params, **overrides["env"]["params"]}}
    overrides.setdefault("train", {}).update(seed=job.seed)
    overrides.setdefault("workers", {}).update(backend="sim")
    if job.tangent:
        overrides.setdefault("schemes", {}).update(secant_tangent=job.tangent)
    return with_overrides(cfg, name=job.folder, **overrides)


def jobs_of(settings: list[str]) -> list[Job]:
    out = []
    for name in settings:
        s = SETTINGS[name]
        for seed in s.seeds:
            out += [Job(name, "", scheme, seed) for scheme in s.baselines]
            out += [Job(name, tangent, scheme, seed) for tangent in TANGENTS for scheme in SECANT]
    return out


def run_one(job: Job) -> str:
    """Train one run unless it finished already (its meta.json says completed or diverged)."""
    import json

    from asynccorr.runs.run import train_run

    cfg = config_of(job)
    run_dir = OUT / job.folder / f"{job.scheme}-seed{job.seed}"
    meta = run_dir / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("status") in ("completed", "diverged"):
        return f"{job} kept"
    train_run(cfg, job.scheme, OUT, overwrite=True)
    return f"{job} done"


# ----------------------------------------------------------------------------- the summary


def _load(job: Job) -> dict[str, np.ndarray] | None:
    from asynccorr.runs.files import read_csv

    path = OUT / job.folder / f"{job.scheme}-seed{job.seed}" / "metrics.csv"
    return read_csv(path) if path.exists() else None


def first_below(loss: np.ndarray, target: float) -> int | None:
    """The first update index whose SMOOTH-update mean loss (that update and the ones before) is below target."""
    from asynccorr.runs.summary import smoothed_first_below

    return smoothed_first_below(loss, target, SMOOTH)


def outcome(job: Job, loss: np.ndarray) -> str | None:
    """``diverged at update k`` (the run protocol's rule, from meta.json), ``ran away at update k``
    (the policy loss went negative: the critic's bootstrap broke; the regime study's rule), or None."""
    import json

    meta = json.loads((OUT / job.folder / f"{job.scheme}-seed{job.seed}" / "meta.json").read_text())
    if meta.get("status") == "diverged":
        return f"diverged at update {len(loss)}"
    negative = np.flatnonzero(loss < 0)
    return f"ran away at update {negative[0] + 1}" if negative.size else None


def row_of(job: Job, m: dict[str, np.ndarray], target: float) -> dict[str, Any]:
    loss = np.asarray(m["policy_loss"], float)
    failed = outcome(job, loss)
    hit = None if failed else first_below(loss, target)
    late = slice(49, None)
    ge = np.asarray(m["grad_error"], float)
    out = {
        "updates": len(loss),
        "reach": None if hit is None else int(m["iteration"][hit]),
        "reach_time": None if hit is None else float(m["time"][hit]),
        "ge50": float(np.nanmean(ge[late])),
        "ge50_median": float(np.nanmedian(ge[late])),
        "final": float(np.mean(loss[-100:])),
        "per_update_ms": 1e3 * float(m["time"][-1]) / len(loss),
        "server_ms": 1e3 * server_cost(job),
        "failed": failed,
    }
    if "gap_coverage" in m and job.scheme in SECANT:
        cov, cos, err, share, cap = (np.asarray(m[c], float)[late] for c in
                                     ("gap_coverage", "product_cosine", "product_error", "residual_share",
                                      "cap_scale"))
        out.update(coverage=float(np.nanmedian(cov)), cosine=float(np.nanmedian(cos)),
                   error=float(np.nanmedian(err)), share=float(np.nanmedian(share)), capped=float(np.mean(cap < 1)))
    return out


def server_cost(job: Job) -> float:
    """The server's simulated seconds per message (sync: per round) in the setting's cost model."""
    from asynccorr.backends.sim import costs
    from asynccorr.schemes.registry import get_scheme

    return costs(get_scheme(job.scheme), config_of(job)).server


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def label_of(job: Job) -> str:
    from asynccorr.schemes.registry import label

    return f"{label(job.scheme)}, {job.tangent} tangent" if job.tangent else label(job.scheme)


def summary(settings: list[str]) -> str:
    lines = ["# The secant protocol, measured", "",
             ("Generated by `python experiments/secant_study.py` (sim; the cost model of experiments/*.toml). "
             f"Reach: the first update whose {SMOOTH}-update mean policy loss is below the target, and its "
             "simulated time; gradient error: mean (median) over updates >= 50; final: mean loss of the last 100 "
             "updates; server: the server's simulated milliseconds per message (sync: per round) in the cost model; "
             "time: the run's simulated milliseconds per update (its last update's time / updates: the server's or "
             "the workers' pace, whichever binds); fit: medians over "
             "updates >= 50 of the gap's coverage by the window's span, the cosine and relative error of the fitted "
             "correction against the exact product, the uncovered share (the norm of the exact product of the part of the "
             "gap outside the window's span, relative to the exact product's: the error the fit cannot avoid, "
             "however good its products), and the share of updates where the cap acted. "
             "`modify@oracle` is not realisable (its product is free): a reference, not a result."), ""]
    for name in settings:
        s = SETTINGS[name]
        lines += [f"## {name}: {s.summary}", "", f"Target: policy loss {s.target}.", "",
                  ("| scheme | seed | reach [updates] | reach [s] | gradient error >= 50: mean (median) | final loss "
                  "| server [ms/msg] | time [ms/update] | coverage | cosine | rel. error | uncovered share | capped |"),
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        jobs = [j for j in jobs_of([name])]
        order = {k: i for i, k in enumerate((*s.baselines, *SECANT))}
        jobs.sort(key=lambda j: (j.tangent != "", j.tangent, order[j.scheme], j.seed))
        for job in jobs:
            m = _load(job)
            if m is None:
                lines.append(f"| {label_of(job)} | {job.seed} | (not run) |||||||||||")
                continue
            r = row_of(job, m, s.target)
            reach = "never" if r["reach"] is None else str(r["reach"])
            if r["failed"]:
                reach += f" ({r['failed']})"
            lines.append(
                f"| {label_of(job)} | {job.seed} | {reach} | {_fmt(r['reach_time'])} | {_fmt(r['ge50'])} "
                f"({_fmt(r['ge50_median'])}) | {_fmt(r['final'], 4)} | {r['server_ms']:.2f} | {r['per_update_ms']:.2f} | "
                f"{_fmt(r.get('coverage'))} | {_fmt(r.get('cosine'))} | {_fmt(r.get('error'))} | {_fmt(r.get('share'))} | "
                f"{_fmt(r.get('capped'), 2)} |")
        lines.append("")
    return "\n".join(lines)


def diagnostics(settings: list[str]) -> str:
    """The fit's diagnostics of modify-safe@secant by staleness and by training time (all seeds pooled)."""
    lines = ["# The secant fit's diagnostics", "",
             ("Generated by `python experiments/secant_study.py`: `modify-safe@secant`, all seeds pooled; medians "
             "per bin. Coverage: 1 - |V c - gap|^2 / |gap|^2; cosine and rel. error: the fitted correction "
             "Y c (before the cap) against the exact product dF/dtheta(theta_i) (theta_k - theta_i); uncovered: "
             "|dF/dtheta(theta_i) (gap - V c)| / |exact product|; capped: share "
             "of updates where the cap scaled the correction down; gradient error: of the applied direction."), ""]
    for name in settings:
        for tangent in TANGENTS:
            ms = [m for seed in SETTINGS[name].seeds
                  if (m := _load(Job(name, tangent, "modify-safe@secant", seed))) is not None]
            if not ms:
                continue
            cols = {c: np.concatenate([np.asarray(m[c], float) for m in ms]) for c in
                    ("iteration", "staleness", "gap_coverage", "product_cosine", "product_error", "residual_share",
                     "cap_scale", "grad_error")}
            lines += [f"## {name}, {tangent} tangent", "",
                      "| updates | coverage | cosine | rel. error | uncovered | capped | gradient error |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            edges = (1, 10, 25, 50, 100, 200, 400, 700, 1001)
            for lo, hi in itertools.pairwise(edges):
                sel = (cols["iteration"] >= lo) & (cols["iteration"] < hi)
                if sel.any():
                    lines.append(_diag_row(f"{lo}-{hi - 1}", cols, sel))
            lines += ["", "| staleness | coverage | cosine | rel. error | uncovered | capped | gradient error |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            st = cols["staleness"]
            late = cols["iteration"] >= 50
            for lo, hi in _staleness_bins(int(st.max())):
                sel = late & (st >= lo) & (st <= hi)
                if sel.sum() >= 5:
                    lines.append(_diag_row(f"{lo}" if lo == hi else f"{lo}-{hi}", cols, sel))
            lines.append("")
    return "\n".join(lines)


def _staleness_bins(top: int) -> list[tuple[int, int]]:
    if top <= 20:
        return [(s, s) for s in range(top + 1)]
    step = max(1, top // 8)
    return [(lo, lo + step - 1) for lo in range(0, top + 1, step)]


def _diag_row(name: str, cols: dict[str, np.ndarray], sel: np.ndarray) -> str:
    med = {c: float(np.nanmedian(cols[c][sel])) if np.any(np.isfinite(cols[c][sel])) else float("nan")
           for c in ("gap_coverage", "product_cosine", "product_error", "residual_share", "grad_error")}
    capped = float(np.mean(cols["cap_scale"][sel] < 1))
    return (f"| {name} | {_fmt(med['gap_coverage'])} | {_fmt(med['product_cosine'])} | {_fmt(med['product_error'])} "
            f"| {_fmt(med['residual_share'])} | {capped:.2f} | {_fmt(med['grad_error'])} |")


def figure(settings: list[str]) -> None:
    """Per setting: the fit's coverage, cosine and relative error over training (modify-safe@secant,
    seed 0, 20-update medians), and the loss of the realisable schemes against simulated time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asynccorr.figures.style import scheme_styles

    styles = scheme_styles(["async", "learner", "sync-pipelined", "modify-safe@server", "modify-safe@secant"])
    secant = styles["modify-safe@secant"].color
    (OUT / "figures").mkdir(parents=True, exist_ok=True)
    for name in settings:
        s = SETTINGS[name]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for tangent, style in zip(TANGENTS, ("-", "--")):
            m = _load(Job(name, tangent, "modify-safe@secant", s.seeds[0]))
            if m is None:
                continue
            it = np.asarray(m["iteration"])
            for ax, col, title in ((axes[0], "gap_coverage", "gap coverage by the window's span"),
                                   (axes[1], "product_cosine", "cosine(fit, exact product)")):
                ax.plot(*_binned(it, np.asarray(m[col], float)), style, color=secant, label=f"{tangent} tangent")
                ax.set_title(title)
                ax.set_xlabel("server update")
            axes[1].set_ylim(-1.05, 1.05)
            axes[0].set_ylim(-0.05, 1.05)
        for scheme in ("async", "learner", "sync-pipelined", "modify-safe@server"):
            m = _load(Job(name, "", scheme, s.seeds[0]))
            if m is not None and scheme in s.baselines:
                axes[2].plot(np.asarray(m["time"]), _smooth(np.asarray(m["policy_loss"], float)), label=scheme,
                             color=styles[scheme].color, ls=styles[scheme].linestyle)
        for tangent, style, marker in zip(TANGENTS, ("-", "--"), ("v", "^")):
            m = _load(Job(name, tangent, "modify-safe@secant", s.seeds[0]))
            if m is not None:  # both secant variants drawn on top of the others, told apart by line and marker
                axes[2].plot(np.asarray(m["time"]), _smooth(np.asarray(m["policy_loss"], float)), style,
                             color=secant, lw=2.0, marker=marker, markevery=(0.02, 0.1), zorder=3,
                             label=f"modify-safe@secant ({tangent})")
        ends = [float(np.asarray(m["time"])[-1]) for t in TANGENTS
                if (m := _load(Job(name, t, "modify-safe@secant", s.seeds[0]))) is not None]
        if ends:  # the secant runs' span (a slower scheme's tail is cut, not squeezed in)
            axes[2].set_xlim(0, 1.3 * max(ends))
        axes[2].axhline(s.target, color="grey", lw=0.8, ls=":")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("simulated time [s] (modelled compute)")
        axes[2].set_title(f"policy loss ({SMOOTH}-update mean), seed {s.seeds[0]}")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.suptitle(f"secant protocol: {s.summary}")
        fig.tight_layout()
        fig.savefig(OUT / "figures" / f"{name}.png", dpi=90)
        plt.close(fig)


def _binned(x: np.ndarray, y: np.ndarray, width: int = 20) -> tuple[np.ndarray, np.ndarray]:
    n = len(x) // width
    xs = x[: n * width].reshape(n, width).mean(axis=1)
    ys = np.array([np.nanmedian(b) if np.any(np.isfinite(b)) else np.nan for b in y[: n * width].reshape(n, width)])
    return xs, ys


def _smooth(y: np.ndarray) -> np.ndarray:
    c = np.cumsum(np.insert(y, 0, 0.0))
    k = np.minimum(np.arange(1, len(y) + 1), SMOOTH)
    return (c[1:] - c[1:][np.maximum(np.arange(len(y)) - SMOOTH, -1)] * (np.arange(len(y)) >= SMOOTH)) / k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--summary-only", action="store_true", help="only rewrite the summary from the runs on disk")
    args = p.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        print(f"error: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    if not args.summary_only:
        todo = jobs_of(settings)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for line in pool.map(run_one, todo):
                print(line, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    everything = [s for s in SETTINGS if any((OUT / f).exists() for f in (s, f"{s}-previous", f"{s}-applied"))]
    (OUT / "summary.md").write_text(summary(everything) + "\n")
    (OUT / "diagnostics.md").write_text(diagnostics(everything) + "\n")
    figure(everything)
    print(f"wrote {OUT / 'summary.md'}, {OUT / 'diagnostics.md'}, {OUT / 'figures'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ASYNCCORR_PROGRAMS", "off")
    sys.exit(main())
