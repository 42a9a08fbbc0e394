"""The simulation checked against the real thing: the same configs on ``mp`` and on ``sim``.

For each setting (N workers, with or without a straggler) and each realisable
protocol, ``sim_vs_mp`` trains the scheme on real worker processes (``mp``), then on
``sim`` calibrated with what that run measured (``calibrated``): the mean seconds of
every job phase and of the server's work per message (``RunResult.timing``), the
jitter of the jobs' compute times, and the same ``workers.slowdown``. It compares mean
staleness, mean residual staleness and mean gradient error, and whether the protocols
rank the same by gradient error on both. Target (issue 12): staleness and residual
staleness within 20 %, the same ranking.

    python -m asynccorr.studies.calibrate [--iterations 300] [--out results/sim-vs-mp]      (or: make sim-vs-mp)
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asynccorr.backends.registry import run
from asynccorr.config import ExperimentConfig, load_config, with_overrides
from asynccorr.runs.files import atomic_write_text
from asynccorr.schemes.registry import get_scheme

SCHEMES = ("async", "modify@server", "modify@deferred", "modify@pull-first", "modify@look-ahead", "learner")
SETTINGS = (("N=2", 2, ()), ("N=4", 4, ()), ("N=2, straggler x3", 2, (1.0, 3.0)),
            ("N=4, straggler x3", 4, (1.0, 1.0, 1.0, 3.0)))
TOLERANCE = 0.2  # relative agreement targeted for staleness and residual staleness
PHASE_RATIOS = {"sample": "sample_cost_ratio", "direction_jvp": "jvp_cost_ratio",
                "linearise": "linearise_cost_ratio", "apply": "apply_cost_ratio"}


def calibrated(config: ExperimentConfig, scheme: str, timing: dict[str, float], direction_time: float,
               compute_times: np.ndarray) -> ExperimentConfig:
    """``config`` on ``sim`` with the phase costs an ``mp`` run of ``scheme`` measured.

    ``direction_time``: the measured direction phase (of this run, or of ``async`` in the same
    setting when the scheme has none). The server's whole measured time per message becomes its
    cost (``server_apply_cost_ratio`` net of the product or fresh direction ``sim`` adds for the
    scheme; the gradient-error measurement is in it). Jitter: the spread of the jobs' compute
    times (log-normal sigma).
    """
    s = get_scheme(scheme)
    d = timing.get("direction", direction_time)
    workers: dict[str, Any] = {"backend": "sim", "direction_time": d, "delay": "homogeneous",
                               "charge_measurement": False}
    for phase, field in PHASE_RATIOS.items():
        if phase in timing:
            workers[field] = timing[phase] / d
    jvp = workers.get("jvp_cost_ratio", config.workers.jvp_cost_ratio)
    extra = jvp if s.protocol == "server" else 1.0 if s.compute == "sample" else 0.0
    workers["server_apply_cost_ratio"] = max(0.0, timing.get("server", 0.0) / d - extra)
    if s.protocol == "server" and timing.get("server", 0.0) / d < jvp:
        workers["jvp_cost_ratio"] = timing["server"] / d  # the server's own product, as measured
        workers["server_apply_cost_ratio"] = 0.0
    logs = np.log(compute_times[compute_times > 0])
    workers["jitter"] = float(np.std(logs)) if len(logs) > 1 else 0.0
    return with_overrides(config, workers=workers)


def _summary(result: Any) -> dict[str, float]:
    m = result.metrics
    return {"staleness": float(np.mean(m["staleness"])), "residual": float(np.mean(m["residual_staleness"])),
            "grad_error": float(np.nanmean(m["grad_error"])), "updates": len(m["iteration"])}


def agreement(mp: float, sim: float) -> float:
    """|sim - mp| relative to mp (to 1 when mp is below 1: staleness counts whole updates)."""
    return abs(sim - mp) / max(abs(mp), 1.0)


def sim_vs_mp(base: ExperimentConfig, iterations: int, settings: Sequence = SETTINGS,
              schemes: Sequence[str] = SCHEMES, log: Any = print) -> list[dict[str, Any]]:
    """One row per setting x scheme: mp's and calibrated sim's figures."""
    rows = []
    for label, count, slowdown in settings:
        cfg = with_overrides(base, train={"iterations": iterations, "eval_every": iterations, "seed": 0,
                                          "checkpoint_every": 0},
                             workers={"count": count, "slowdown": slowdown, "timeout": 120.0,
                                      "measure_grad_error": True})
        direction_time = cfg.workers.direction_time
        for scheme in schemes:
            real = run(with_overrides(cfg, workers={"backend": "mp"}), scheme)
            timing = real.timing or {}
            direction_time = timing.get("direction", direction_time)
            sim_cfg = calibrated(cfg, scheme, timing, direction_time, real.metrics["compute_time"])
            simulated = run(sim_cfg, scheme)
            row = {"setting": label, "scheme": scheme, **{f"mp_{k}": v for k, v in _summary(real).items()},
                   **{f"sim_{k}": v for k, v in _summary(simulated).items()},
                   "phases": " ".join(f"{k}={1e3 * v:.1f}ms" for k, v in timing.items())}
            row["staleness_diff"] = agreement(row["mp_staleness"], row["sim_staleness"])
            row["residual_diff"] = agreement(row["mp_residual"], row["sim_residual"])
            rows.append(row)
            log(f"{label:<20} {scheme:<18} staleness mp {row['mp_staleness']:.2f} sim {row['sim_staleness']:.2f}  "
                f"residual mp {row['mp_residual']:.2f} sim {row['sim_residual']:.2f}  grad error mp "
                f"{row['mp_grad_error']:.4f} sim {row['sim_grad_error']:.4f}  ({row['phases']})")
    return rows


def rankings(rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[str]]]:
    """Per setting: the protocols (modify@*) by gradient error on mp and on sim."""
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting and "@" in r["scheme"]]
        out[setting] = ([r["scheme"] for r in sorted(mine, key=lambda r: r["mp_grad_error"])],
                        [r["scheme"] for r in sorted(mine, key=lambda r: r["sim_grad_error"])])
    return out


def table_markdown(rows: list[dict[str, Any]], iterations: int) -> str:
    lines = [f"# sim vs mp ({iterations} updates of the default experiment per run, seed 0)", "",
             ("Regenerate: `make sim-vs-mp` (python -m asynccorr.studies.calibrate). sim is calibrated with each mp run's "
              "measured phase times, server time per message and job-time jitter (asynccorr/studies/calibrate.py). "
              f"Target: staleness and residual staleness within {TOLERANCE:.0%} (relative to max(mp, 1)), the "
              "protocols ranked the same by gradient error."), "",
             "| setting | scheme | staleness mp | sim | diff | residual mp | sim | diff | grad error mp | sim |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['scheme']} | {r['mp_staleness']:.2f} | {r['sim_staleness']:.2f} | "
                     f"{r['staleness_diff']:.0%} | {r['mp_residual']:.2f} | {r['sim_residual']:.2f} | "
                     f"{r['residual_diff']:.0%} | {r['mp_grad_error']:.4f} | {r['sim_grad_error']:.4f} |")
    within = sum(r["staleness_diff"] <= TOLERANCE and r["residual_diff"] <= TOLERANCE for r in rows)
    lines += ["", (f"Within {TOLERANCE:.0%} on both: {within} of {len(rows)} rows; worst staleness diff "
                   f"{max(r['staleness_diff'] for r in rows):.0%}, worst residual diff "
                   f"{max(r['residual_diff'] for r in rows):.0%}."), "", "Protocols by gradient error (best first):", ""]
    for setting, (on_mp, on_sim) in rankings(rows).items():
        same = "same" if on_mp == on_sim else "DIFFERENT"
        lines.append(f"- {setting}: mp {', '.join(on_mp)}; sim {', '.join(on_sim)} ({same})")
    lines += ["", "Measured phase times per run (mp):", ""]
    lines += [f"- {r['setting']}, {r['scheme']}: {r['phases']}" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="experiment TOML (default: the built-in default experiment)")
    p.add_argument("--iterations", type=int, default=300, help="server updates per run")
    p.add_argument("--out", default="results/sim-vs-mp", help="folder for table.md and table.csv")
    args = p.parse_args(argv)
    from asynccorr.compile.cache import compilation_cache

    compilation_cache()  # the workers of 24 runs compile once
    base = load_config(args.config)
    rows = sim_vs_mp(base, args.iterations)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", table_markdown(rows, args.iterations))
    fields = list(rows[0])
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})
    atomic_write_text(out / "table.csv", buf.getvalue())
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
