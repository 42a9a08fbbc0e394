"""Updates and simulated time until each run's policy loss reaches a target, per scheme and seed.

The figures the README quotes for "time to the loss plateau": the first update k at
which the mean policy loss of updates k-19..k is below the target (the regime study's
rule, ``studies.regimes.smoothed_first_below``), and the simulated time of that update.

    python experiments/time_to_target.py results/paper [--target 2.5] [--smooth 20]
"""

from __future__ import annotations

import argparse
import sys

from asynccorr.api import load
from asynccorr.schemes.registry import display_order, label
from asynccorr.studies.regimes import smoothed_first_below


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="an experiment folder (results/<experiment>)")
    p.add_argument("--target", type=float, default=2.5, help="policy-loss target")
    p.add_argument("--smooth", type=int, default=20, help="updates in the moving mean")
    args = p.parse_args(argv)
    runs = load(args.folder).runs
    print(f"| scheme | updates until the {args.smooth}-update mean loss < {args.target} (per seed) "
          "| simulated time then [s] |")
    print("| --- | --- | --- |")
    for scheme in display_order([r.scheme for r in runs]):
        group = sorted((r for r in runs if r.scheme == scheme), key=lambda r: r.seed)
        hits = [(r, smoothed_first_below(r.metrics["policy_loss"], args.target, args.smooth)) for r in group]
        updates = " / ".join("never" if k is None else str(int(r.metrics["iteration"][k])) for r, k in hits)
        times = " / ".join("–" if k is None else f"{r.metrics['time'][k]:.2f}" for r, k in hits)
        print(f"| {label(scheme)} | {updates} | {times} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
