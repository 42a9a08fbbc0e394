"""Start-up of ``asynccorr train``, cold and warm: process start to the first update.

Each run is the installed command line in a fresh process, ``asynccorr train --scheme S
--iterations N --quiet`` (default experiment: kinematic env, 64x64 nets, batch 256; ``sim``
backend for the asynchronous schemes), into a temporary results folder. *Cold*: an empty
compilation cache (``ASYNCCORR_JAX_CACHE`` = a fresh folder), so everything compiles; *warm*:
the same folder again, filled by the cold run (it holds the compiled programs too: ``asynccorr.compile.programs``);
*another seed*: one more warm run with ``--seed 1``, which the programs serve too (their key leaves the
seed out). The start-up figure is the wall clock from
just before the process is spawned (``time.time()`` here) to the run's first evaluation point
(``meta.json["first_flush"]``, stamped by the run protocol when the first rows reach it:
``min(eval_every, iterations)`` updates done, their metrics on the host). With the default
``--iterations 1`` that is the first update; a larger N includes N - 1 more updates
(~5-10 ms each). The process's whole wall time (it also writes the run) is printed too.

Target: warm start-up <= 2 s for every scheme timed (best of ``--repeats``), PASS/FAIL.

    python benchmarks/bench_startup.py [--schemes sequential,async] [--iterations 1] [--repeats 3]
                                       [--config PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

TARGET_S = 2.0


class Timing(NamedTuple):
    startup: float  # spawn to the first evaluation point [s]
    process: float  # spawn to exit [s]
    updates: int  # updates done at the first evaluation point


def cli_path() -> Path:
    """The ``asynccorr`` console script installed next to this interpreter (the venv's)."""
    return Path(sys.executable).with_name("asynccorr")


def run_once(cache: Path, scheme: str, iterations: int, config: str | None, results: Path, seed: int = 0) -> Timing:
    """One ``asynccorr train`` in a fresh process with ``cache`` as its compilation cache."""
    args = [str(cli_path()), "train", "--scheme", scheme, "--iterations", str(iterations), "--quiet",
            "--overwrite", "--results", str(results), "--seed", str(seed), *(["--config", config] if config else [])]
    env = {**os.environ, "ASYNCCORR_JAX_CACHE": str(cache)}
    spawned = time.time()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    [meta_path] = results.glob("*/*/meta.json")  # one run per results folder
    first = json.loads(meta_path.read_text())["first_flush"]
    return Timing(first["unix_time"] - spawned, ended - spawned, int(first["updates"]))


def cold_and_warm(scheme: str, iterations: int, repeats: int, config: str | None,
                  tmp: Path) -> tuple[Timing, list[Timing], Timing]:
    """One cold run (empty cache), then ``repeats`` warm runs with the cache it filled, then one warm run
    with another seed."""
    cache = tmp / f"cache-{scheme}"
    cache.mkdir()
    cold = run_once(cache, scheme, iterations, config, tmp / f"cold-{scheme}")
    warm = [run_once(cache, scheme, iterations, config, tmp / f"warm-{scheme}-{i}") for i in range(repeats)]
    return cold, warm, run_once(cache, scheme, iterations, config, tmp / f"seed1-{scheme}", seed=1)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemes", default="sequential,async", help="comma-separated schemes to start")
    p.add_argument("--iterations", type=int, default=1, help="server updates of each run (--iterations)")
    p.add_argument("--repeats", type=int, default=3, help="warm runs per scheme; the best counts")
    p.add_argument("--config", help="experiment TOML (default: the CLI's, experiments/paper.toml)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in schemes:
            cold, warm, other = cold_and_warm(scheme, args.iterations, args.repeats, args.config, Path(tmp))
            figures[scheme] = {"cold": cold._asdict(), "warm": [w._asdict() for w in warm],
                               "another_seed": other._asdict(),
                               "warm_best": min(w.startup for w in warm),
                               "warm_median": median([w.startup for w in warm])}
    load = os.getloadavg()
    print(f"asynccorr train --iterations {args.iterations}: spawn -> first evaluation point "
          f"({next(iter(figures.values()))['cold']['updates']} updates done); process = spawn -> exit")
    print(f"{'scheme':<12} {'cold':>8} {'warm best':>10} {'warm median':>12} {'another seed':>13} "
          f"{'process (warm best)':>20}")
    for scheme, f in figures.items():
        process = min(w["process"] for w in f["warm"])
        print(f"{scheme:<12} {f['cold']['startup']:>6.2f} s {f['warm_best']:>8.2f} s {f['warm_median']:>10.2f} s "
              f"{f['another_seed']['startup']:>11.2f} s {process:>18.2f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load)} ({os.cpu_count()} CPUs)")
    worst = max(f["warm_best"] for f in figures.values())
    passed = worst <= TARGET_S
    print(f"target: warm start-up (process start to first update) <= {TARGET_S:g} s for every scheme: "
          f"worst {worst:.2f} s -> {'PASS' if passed else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "startup", "iterations": args.iterations,
                                               "schemes": figures, "loadavg": load, "target_s": TARGET_S,
                                               "target_pass": passed}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
