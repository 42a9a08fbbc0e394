"""Server updates/s and gradient throughput of the execution backends (sim, mp, ray).

For each backend and worker count, a run of server
updates of ``--scheme`` on the default learner (batch 256, horizon 20, 64x64
nets) with ``workers.measure_grad_error = false`` (the server applies the
worker's direction without re-evaluating it). Start-up and compilation are
excluded: a run is ``--repeats + 1`` chunks of ``--chunk`` updates; the first
warms up, each other one gives a rate (chunk / its wall time), and the script
reports the best and the median (other processes on a 2-core machine make any
single figure noisy).

* ``updates/s``: server updates per second.
* ``directions/s``: worker directions the server consumed per second, the total
  gradient throughput (for an asynchronous scheme one direction per update; for
  ``sync`` N per update).
* ``worker busy``: the workers' compute seconds per wall second and worker (median
  over the chunks; a job's compute is wall time too, so a descheduled worker
  counts as busy). Near 1 the server keeps up and the throughput is
  bounded by the CPU the workers get; below, by the server or the transport.
* ``sim``: the simulated backend's updates/s (one process; every update evaluates
  the direction at the worker's and at the server's parameters).

Writes the figures to ``--json`` (default ``benchmarks/results/backends.json``)
and prints a table, with the PASS/FAIL of the target: 2 ``mp`` workers deliver
at least 1.6x the gradient throughput of one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 1.6


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="sim,mp,ray")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--scheme", default="async")
    p.add_argument("--chunk", type=int, default=100, help="updates per timed chunk (one more chunk warms up)")
    p.add_argument("--repeats", type=int, default=5, help="timed chunks per configuration")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "backends.json"))
    return p.parse_args()


def measure(backend: str, workers: int, args: argparse.Namespace) -> dict:
    """One run of (repeats + 1) chunks; the first is warm-up, each other chunk gives one rate."""
    import numpy as np

    from asynccorr.backends.protocol import RunHooks
    from asynccorr.config import ExperimentConfig, with_overrides
    from asynccorr.schemes.registry import get_scheme

    chunk, total = args.chunk, args.chunk * (args.repeats + 1)
    config = with_overrides(ExperimentConfig(), name="bench",
                            train={"iterations": total, "eval_every": total},
                            workers={"count": workers, "backend": backend, "measure_grad_error": False,
                                     "timeout": 120.0})
    per_update = workers if get_scheme(args.scheme).synchronous else 1
    job_ms = float("nan")
    busy: list[float] = []
    if backend == "sim":
        from asynccorr.backends.sim import run_sim

        marks: dict[int, float] = {}
        # chunk boundaries from on_chunk: each chunk also holds one (compiled, ~ms) tracking evaluation
        run_sim(with_overrides(config, train={"eval_every": chunk}), args.scheme,
                RunHooks(on_chunk=lambda done, _: marks.setdefault(done, time.perf_counter())))
        bounds = np.array([marks[k * chunk] for k in range(1, args.repeats + 2)])
    else:
        if backend == "mp":
            from asynccorr.backends.mp import run_mp as run
        else:
            from asynccorr.backends.ray_backend import run_ray as run
        result = run(config, args.scheme)
        t = result.metrics["time"]
        bounds = np.array([t[k * chunk - 1] for k in range(1, args.repeats + 2)])
        compute = result.metrics["compute_time"]
        job_ms = 1e3 * float(np.median(compute[chunk:]))
        # per chunk: worker compute seconds over (wall seconds x N)
        busy = [compute[k * chunk:(k + 1) * chunk].sum() * per_update / ((bounds[k] - bounds[k - 1]) * workers)
                for k in range(1, args.repeats + 1)]
    rates = chunk / np.diff(bounds)
    row = {"backend": backend, "workers": workers, "scheme": args.scheme,
           "updates_per_s_best": round(float(rates.max()), 1),
           "updates_per_s_median": round(float(np.median(rates)), 1),
           "directions_per_s_best": round(float(rates.max()) * per_update, 1),
           "directions_per_s_median": round(float(np.median(rates)) * per_update, 1)}
    if backend != "sim":
        row["worker_job_ms"] = round(job_ms, 2)  # median sampling + compute per worker job
        # share of the wall time the workers spent computing (median chunk): ~1 means the server and
        # the transport keep up and throughput is bounded by the CPU the workers get
        row["worker_busy"] = round(float(np.median(busy)), 2)
    return row


def main() -> None:
    args = parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counts = [int(n) for n in args.workers.split(",")]
    started_ray = False
    if "ray" in backends:
        from asynccorr.backends.ray_backend import start_ray

        started_ray = start_ray("", max(max(counts), os.cpu_count() or 1))
    rows = []
    try:
        for backend in backends:
            for n in counts:
                row = measure(backend, n, args)
                rows.append(row)
                print(f"{backend:4s} {n} workers: {row['updates_per_s_best']:8.1f} updates/s "
                      f"{row['directions_per_s_best']:8.1f} directions/s (best; median "
                      f"{row['directions_per_s_median']:.1f}; worker job {row.get('worker_job_ms', float('nan')):.2f} ms, "
                      f"busy {row.get('worker_busy', float('nan')):.2f})",
                      flush=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    def throughput(backend: str, n: int) -> float | None:
        return next((r["directions_per_s_best"] for r in rows if r["backend"] == backend and r["workers"] == n), None)

    one, two = throughput("mp", 1), throughput("mp", 2)
    ratio = round(two / one, 3) if one and two else None
    print()
    print("| backend | workers | updates/s (best / median) | directions/s (best / median) | vs 1 worker (best) "
          "| worker job [ms] | worker busy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = throughput(r["backend"], 1)
        speedup = f"{r['directions_per_s_best'] / base:.2f}x" if base else "-"
        print(f"| {r['backend']} | {r['workers']} | {r['updates_per_s_best']:.1f} / {r['updates_per_s_median']:.1f} "
              f"| {r['directions_per_s_best']:.1f} / {r['directions_per_s_median']:.1f} | {speedup} "
              f"| {r.get('worker_job_ms', '-')} | {r.get('worker_busy', '-')} |")
    verdict = None
    if ratio is not None:
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(f"\ntarget: 2 mp workers >= {TARGET}x the gradient throughput of 1: {ratio:.2f}x {verdict}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "bench_backends", "scheme": args.scheme, "chunk": args.chunk, "repeats": args.repeats,
        "measure_grad_error": False, "cpus": os.cpu_count(), "host": platform.node(),
        "load_average": os.getloadavg(), "rows": rows,
        "target": {"mp_2_over_1_throughput": ratio, "required": TARGET, "result": verdict},
    }, indent=2) + "\n")
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
