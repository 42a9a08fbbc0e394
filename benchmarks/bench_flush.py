"""Cost of flushing a training run's metrics: appended rows (``runs.files.CsvLog``) against
rewriting the whole table at every evaluation point (``runs.files.write_csv``).

A run's metrics are flushed at every evaluation point (``train.eval_every`` updates).
This times the flushes of synthetic metric columns in the layout of a ``sim`` run (12
columns, float64 values at full repr precision), for runs of 1,000 and 10,000 updates
with ``eval_every`` = 10, and prints the total flush time of each way and the growth
from 1,000 to 10,000 updates: about 10x means linear in the run's length, about 100x
quadratic. The target: the appended log grows at most 15x (linear, with slack for
timing noise; each append is flushed to disk with ``fsync``, whose cost varies, so the
best of ``--repeats`` runs counts).

    python benchmarks/bench_flush.py [--every 10] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from asynccorr.runs.files import CsvLog, write_csv

COLUMNS = ("iteration", "time", "worker", "staleness", "policy_loss", "value_loss", "grad_error",
           "policy_grad_error", "stale_grad_error", "direction_norm", "correction_norm", "update_norm")
TARGET_GROWTH = 15.0


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {name: rng.random(n) for name in COLUMNS}
    cols["iteration"] = np.arange(1, n + 1)
    cols["worker"] = rng.integers(0, 8, n)
    cols["staleness"] = rng.integers(0, 10, n)
    return cols


def total_flush_seconds(n: int, every: int, append: bool, folder: Path) -> float:
    """Seconds spent in all the flushes of an ``n``-update run (the file writes only)."""
    cols = synthetic(n)
    path = folder / f"metrics-{n}-{append}.csv"
    log = CsvLog(path)
    spent = 0.0
    for done in range(every, n + 1, every):
        head = {k: v[:done] for k, v in cols.items()}
        t0 = time.perf_counter()
        if append:
            log.write(head)
        else:
            write_csv(path, head)
        spent += time.perf_counter() - t0
    return spent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=int, default=10, help="updates between flushes (train.eval_every)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the best total counts (fsync is noisy)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    results: dict[str, dict[int, float]] = {"append": {}, "rewrite": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for way, seconds in results.items():
            for n in (1_000, 10_000):
                repeats = args.repeats if way == "append" else 1  # a rewrite at 10,000 updates takes ~1 min
                seconds[n] = min(total_flush_seconds(n, args.every, way == "append", Path(tmp))
                                 for _ in range(repeats))
    print(f"flush every {args.every} updates, {len(COLUMNS)} columns; total flush time of a run:")
    print(f"{'':<10} {'1,000 upd':>12} {'10,000 upd':>12} {'growth':>8}")
    for way, t in results.items():
        print(f"{way:<10} {t[1_000]:>10.3f} s {t[10_000]:>10.3f} s {t[10_000] / t[1_000]:>7.1f}x")
    growth = results["append"][10_000] / results["append"][1_000]
    passed = growth <= TARGET_GROWTH
    print(f"target: appended flushes grow <= {TARGET_GROWTH:g}x from 1,000 to 10,000 updates (linear): "
          f"{growth:.1f}x -> {'PASS' if passed else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "flush", "every": args.every, "seconds": results,
                                               "growth": growth, "target_pass": passed}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
