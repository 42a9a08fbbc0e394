"""Many simulated workers: ``sim``'s set-up time and server updates/s against N.

For N = 16, 256, 1,024 (``--workers``) and the schemes ``async`` and ``modify`` (server
protocol), on the default experiment (kinematic env, 64x64 nets, batch 256), in this process:

* **set-up**: a run of one update, from the call (``backends.registry.run``) to its first update
  (``RunResult.first_flush``, stamped when the update's metrics reached the run protocol).
  It covers everything N-dependent: the batched initialisation of the N workers' key streams
  and samplers (one jitted call), every worker's first batch and job, and the first server
  update. The first run at each N (``first``) also compiles the N-shaped batched initialisation
  (a hit in the persistent compilation cache once any process compiled it); the other
  compilation is excluded: one run at N = 2 of each scheme first warms up the functions;
* **updates/s**: a run of ``(repeats + 1) x chunk`` updates with ``eval_every = chunk``; each
  chunk after the first (warm-up) gives a rate from the evaluation-point callbacks (each chunk
  holds one ~ms tracking evaluation, as in ``bench_backends.py``); best and median;
* **memory**: the process's peak RSS after each N (N rises, so the growth is N's).

Target: ``sim`` with 1,024 workers reaches its first update in <= 5 s (best set-up of
``--repeats``), PASS/FAIL. The printed figures are a single process's simulation speed: one
process computes every worker's direction and the server's fresh one.

    python benchmarks/bench_workers.py [--workers 16,256,1024] [--schemes async,modify] [--chunk 50]
                                       [--repeats 3] [--config PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from pathlib import Path

from asynccorr import api
from asynccorr.backends.protocol import RunHooks
from asynccorr.backends.registry import run
from asynccorr.compile.cache import compilation_cache
from asynccorr.config import ExperimentConfig

TARGET_WORKERS, TARGET_S = 1024, 5.0


def config_for(base: ExperimentConfig, workers: int, iterations: int, eval_every: int) -> ExperimentConfig:
    """``base`` on ``sim`` with N workers, no checkpoints (nothing is written anywhere)."""
    return api.experiment(base, workers={"count": workers, "backend": "sim"},
                          train={"iterations": iterations, "eval_every": eval_every, "checkpoint_every": 0})


def setup_seconds(base: ExperimentConfig, scheme: str, workers: int) -> float:
    """Call start to the first update of a one-update run."""
    start = time.time()
    result = run(config_for(base, workers, 1, 1), scheme)
    assert result.first_flush is not None and result.first_flush.updates == 1
    return result.first_flush.unix_time - start


def chunk_rates(base: ExperimentConfig, scheme: str, workers: int, chunk: int, repeats: int) -> list[float]:
    """Server updates/s of each chunk after the first (warm-up) of one run."""
    stamps: list[float] = []
    hooks = RunHooks(on_chunk=lambda done, record: stamps.append(time.perf_counter()))
    run(config_for(base, workers, chunk * (repeats + 1), chunk), scheme, hooks)
    return [chunk / (b - a) for a, b in itertools.pairwise(stamps)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="16,256,1024", help="comma-separated worker counts N")
    p.add_argument("--schemes", default="async,modify", help="comma-separated asynchronous schemes")
    p.add_argument("--chunk", type=int, default=50, help="updates per timed chunk (train.eval_every)")
    p.add_argument("--repeats", type=int, default=3, help="set-up runs (the first compiles) and timed chunks per case")
    p.add_argument("--config", help="experiment TOML (default: experiments/paper.toml)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    counts = sorted(int(n) for n in args.workers.split(","))
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    compilation_cache()
    base = api.experiment(args.config)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for scheme in schemes:  # compile everything once, at a small N
        setup_seconds(base, scheme, 2)
        chunk_rates(base, scheme, 2, 2, 1)
    rows = []
    for n in counts:
        for scheme in schemes:
            setups = [setup_seconds(base, scheme, n) for _ in range(args.repeats)]
            rates = chunk_rates(base, scheme, n, args.chunk, args.repeats)
            rows.append({"workers": n, "scheme": scheme, "setup_s": setups, "setup_best": min(setups[1:] or setups),
                         "rates": rates, "rate_best": max(rates), "rate_median": median(rates),
                         "peak_rss_mb": peak_rss_mb()})
            print(f"  N={n} {scheme}: set-up best {min(setups):.2f} s, {max(rates):.1f} updates/s", flush=True)
    load = os.getloadavg()
    print(f"sim, call start -> first update (first run at N, then best of the other {args.repeats - 1}); "
          f"updates/s over chunks of {args.chunk}")
    print(f"{'N':>6} {'scheme':<8} {'first':>8} {'set-up best':>12} {'median':>8} {'upd/s best':>11} {'median':>8} "
          f"{'peak RSS':>10}")
    for r in rows:
        print(f"{r['workers']:>6} {r['scheme']:<8} {r['setup_s'][0]:>6.2f} s {r['setup_best']:>10.2f} s "
              f"{median(r['setup_s'][1:] or r['setup_s']):>6.2f} s "
              f"{r['rate_best']:>11.1f} {r['rate_median']:>8.1f} {r['peak_rss_mb']:>7.0f} MB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load)} ({os.cpu_count()} CPUs)")
    at_target = [r for r in rows if r["workers"] == TARGET_WORKERS]
    passed = bool(at_target) and all(r["setup_best"] <= TARGET_S for r in at_target)
    worst = max((r["setup_best"] for r in at_target), default=float("nan"))
    print(f"target: sim with {TARGET_WORKERS:,} workers reaches its first update in <= {TARGET_S:g} s: "
          f"worst {worst:.2f} s -> {'PASS' if passed else 'FAIL' if at_target else 'not measured'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "workers", "rows": rows, "loadavg": load,
                                               "target_pass": passed}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
