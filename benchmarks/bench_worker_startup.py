"""Start-up of real ``mp`` workers: every worker compiling at once, or the first alone and the others
loading its programs from the shared compilation cache (``backends/supervisor.py``).

Each figure is one ``run_mp`` in a fresh process (``--child``), a config's short run with N workers
and a persistent compilation cache in a folder of its own: *cold* (the folder empty, as on a new
config or scheme) then *warm* (the same folder again). Printed per case: the start-up (the run's
start to the last initial worker's ``ready`` event: imports, tracing, compiling or loading), the
worker processes' CPU seconds (``RUSAGE_CHILDREN``: every worker's start-up and its few jobs) and
the whole run's wall time. ``together`` starts every worker at once (as without a shared cache);
``first alone`` is what the backends do where the workers share one.

    python benchmarks/bench_worker_startup.py [--config experiments/paper.toml] [--workers 2]
                                              [--iterations 10] [--scheme async] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"together": False, "first alone": True}


def child(config_path: str, workers: int, iterations: int, scheme: str, first_alone: bool) -> dict[str, float]:
    """One run in this process (the cache folder comes in the environment); its figures."""
    from asynccorr.backends import supervisor
    from asynccorr.backends.mp import run_mp
    from asynccorr.compile.cache import compilation_cache
    from asynccorr.config import load_config, with_overrides

    os.environ["ASYNCCORR_PROGRAMS"] = "off"  # no programs kept: each case traces as a new process would
    compilation_cache()
    supervisor.compile_once = lambda environ: first_alone  # the mode under test
    config = with_overrides(load_config(Path(config_path)),
                            train={"iterations": iterations, "eval_every": iterations, "checkpoint_every": 0},
                            workers={"backend": "mp", "count": workers, "timeout": 300.0})
    ready: list[float] = []
    start = time.monotonic()
    run_mp(config, scheme, on_event=lambda e: ready.append(time.monotonic()) if e["kind"] == "ready" else None)
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"startup_s": max(ready) - start, "worker_cpu_s": usage.ru_utime + usage.ru_stime, "run_s": wall}


def measure(args: argparse.Namespace, mode: str, cache: Path) -> dict[str, float]:
    """``child`` in a fresh process with ``cache`` as its compilation cache."""
    cmd = [sys.executable, __file__, "--child", mode, "--config", args.config, "--workers", str(args.workers),
           "--iterations", str(args.iterations), "--scheme", args.scheme]
    env = {**os.environ, "ASYNCCORR_JAX_CACHE": str(cache)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "experiments" / "paper.toml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--scheme", default="async")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=list(MODES), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.config, args.workers, args.iterations, args.scheme, MODES[args.child])))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{args.workers} mp workers, {args.scheme}, {Path(args.config).name}, {args.iterations} updates")
    print(f"{'mode':<12} {'cache':<5} {'start-up [s]':>12} {'worker CPU [s]':>15} {'run [s]':>8}")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for mode in MODES:
        with tempfile.TemporaryDirectory(prefix="bench-worker-startup-") as folder:
            figures[mode] = {}
            for state in ("cold", "warm"):
                f = figures[mode][state] = measure(args, mode, Path(folder))
                print(f"{mode:<12} {state:<5} {f['startup_s']:12.2f} {f['worker_cpu_s']:15.2f} {f['run_s']:8.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
                                         "figures": figures}, indent=2, default=str))


if __name__ == "__main__":
    main()
