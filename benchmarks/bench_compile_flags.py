"""What an XLA flag does to the test suite's compile cost, and to its bits.

The suite's time is mostly XLA compiling many small, distinct programs once each (docs/testing.md).
This compiles one fixed set of them from scratch -- six short runs on the suite's small GPI and A3C
configs: ``modify-dense``, ``modify@server``, ``async`` and ``sync`` on ``sim`` with 3 workers, the
sequential learner, ``modify@server`` of A3C on ``sim`` -- in a fresh process per flag set, with no
compilation cache, and prints the process's wall and CPU time and a digest of the six runs' final
parameters: a flag that changes the digest changes what the suite computes (its outcome tests may
move), not only how fast it compiles.

    python benchmarks/bench_compile_flags.py [--flags=--xla_backend_optimization_level=0 ...] [--json PATH]

Each ``--flags=`` value is one ``XLA_FLAGS`` string (written with ``=``: it starts with ``--``); the default compares the suite's flag (backend
optimisation off) with XLA's default and with two alternatives tried on 2026-12-07.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import NamedTuple

DEFAULT_FLAGS = ("--xla_backend_optimization_level=0", "",
                 "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
                 "--xla_backend_optimization_level=0 --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


class Timing(NamedTuple):
    flags: str
    wall: float  # the child process, spawn to exit [s]
    cpu: float  # its user + system time [s]
    digest: str  # sha256 prefix of the six runs' final parameters


def six_runs() -> str:
    """Run the six small runs in this process; the digest of their final parameters."""
    import numpy as np

    from asynccorr.backends.sequential import run_sequential
    from asynccorr.backends.sim import run_sim
    from asynccorr.config import A3CConfig, ExperimentConfig, with_overrides

    small = with_overrides(ExperimentConfig(), name="bench",
                           learner={"policy_hidden": (8,), "value_hidden": (8,), "rollout_states": 8,
                                    "reset_states": 8, "horizon": 5},
                           train={"iterations": 6, "eval_every": 3}, workers={"count": 1})
    three = with_overrides(small, workers={"count": 3, "dense_cost_ratio": 3.1}, train={"iterations": 8, "eval_every": 8})
    a3c = with_overrides(small, learner={"kind": "a3c", "a3c": A3CConfig(envs=4, n_steps=6)},
                         optim={"policy_lr": 1e-2, "value_lr": 1e-3}, workers={"count": 2})
    params = [run_sim(three, s).params for s in ("modify-dense", "modify@server", "async", "sync")]
    params += [run_sequential(small).params, run_sim(a3c, "modify@server").params]
    return hashlib.sha256(b"".join(np.asarray(p).tobytes() for p in params)).hexdigest()[:12]


def time_flags(flags: str) -> Timing:
    """The six runs in a fresh process with ``XLA_FLAGS=flags`` and no compilation cache."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_ENABLE_COMPILATION_CACHE": "false", "ASYNCCORR_PROGRAMS": "off"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"XLA_FLAGS={flags!r}: {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(flags, wall, cpu, proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", action="append", help="one XLA_FLAGS string (repeatable)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(six_runs())
        return 0
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    timings = [time_flags(f) for f in (args.flags or DEFAULT_FLAGS)]
    print(f"{'wall':>8} {'cpu':>8}  digest        XLA_FLAGS")
    for t in timings:
        print(f"{t.wall:7.1f}s {t.cpu:7.1f}s  {t.digest}  {t.flags or '(XLA default)'}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([t._asdict() for t in timings], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
