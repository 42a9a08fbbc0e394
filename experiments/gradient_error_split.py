"""Mean gradient error over all updates, the first ones and the rest, per scheme, on any backend.

The README's real-worker figures: the mean over a run is dominated by its first updates
(the nonlinear regime, where a first-order correction cannot help), so this prints it
split, from runs of the default experiment (or ``--config``) trained in memory.

    python experiments/gradient_error_split.py --backend mp --workers 2 --iterations 300 async modify@server
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from asynccorr.backends.registry import run
from asynccorr.config import load_config, with_overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("schemes", nargs="+")
    p.add_argument("--config", default="experiments/paper.toml")
    p.add_argument("--backend", default="sim")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--early", type=int, default=20, help="the first updates (the nonlinear regime)")
    p.add_argument("--after", type=int, default=50, help="the rest starts after this update")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from asynccorr.compile.cache import compilation_cache

    compilation_cache()
    cfg = with_overrides(load_config(args.config),
                         train={"iterations": args.iterations, "eval_every": args.iterations, "seed": args.seed,
                                "checkpoint_every": 0},
                         workers={"backend": args.backend, "count": args.workers, "timeout": 120.0})
    print(f"{args.backend}, {args.workers} workers, {args.iterations} updates, seed {args.seed}")
    print(f"| scheme | staleness | residual | gradient error: mean | first {args.early} | after {args.after} "
          "| median |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for scheme in args.schemes:
        m = run(cfg, scheme).metrics
        e = m["grad_error"]
        print(f"| {scheme} | {m['staleness'].mean():.2f} | {m['residual_staleness'].mean():.2f} | {e.mean():.4f} "
              f"| {e[:args.early].mean():.4f} | {e[args.after:].mean():.2e} | {np.median(e):.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
