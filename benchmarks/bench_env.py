"""Environment throughput: env steps per second of a jitted, vmapped rollout.

For each env and each batch size N, one jitted call runs ``jax.lax.scan`` over
``--steps`` (200) calls of ``env.step``, vmapped over N envs, and the figure is
``N * steps / seconds``. No policy network: the action comes from a cheap
linear feedback on the previous observation's tracking errors, and a checksum
of every output of ``step`` (the whole observation, reward, terminated,
truncated) is folded into a per-env accumulator that the call returns, so XLA
cannot dead-code-eliminate any part of the step. Episodes are not reset (the
functional ``step`` never auto-resets). Compile time is excluded (one warm-up
call), every timing ends with ``block_until_ready``, and the best and median
over ``--repeats`` calls are reported.

The scan is unrolled by ``--unroll`` (2: two env steps per loop iteration, less
loop overhead; every step is still computed). ``--devices K`` (default 1: plain
``jit``) splits the host CPU into K XLA devices
(``--xla_force_host_platform_device_count``, set only inside this script) and
shards the envs across them with ``shard_map``, one core per device; with the
default single device XLA splits large elementwise kernels over the cores itself.

    python benchmarks/bench_env.py [--envs 1024,4096,16384] [--repeats 20]
                                   [--env kinematic,dynamic] [--unroll 2]
                                   [--devices 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

STEPS = 200  # rollout length (one full default episode)
TARGET_ENVS = 4096
TARGET_RATE = 30e6  # env steps / s, kinematic env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", default="1024,4096,16384", help="comma-separated batch sizes")
    p.add_argument("--env", default="kinematic,dynamic", help="comma-separated env names")
    p.add_argument("--steps", type=int, default=STEPS, help="rollout length per call")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per configuration (best and median reported)")
    p.add_argument("--unroll", type=int, default=2, help="jax.lax.scan unroll factor (2: two env steps per loop iteration)")
    p.add_argument("--devices", type=int, default=1,
                   help="split the CPU into this many XLA host devices and shard the envs over them")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.devices > 1:  # must happen before jax is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.envs import make


def controller(obs: jax.Array, action_dim: int) -> jax.Array:
    """Cheap linear feedback on the tracking errors (first features of every obs)."""
    steer = -(0.5 * obs[..., 0] + 1.0 * obs[..., 1])
    cols = [steer] if action_dim == 1 else [steer, -0.5 * obs[..., 2]]
    return jnp.clip(jnp.stack(cols, axis=-1), -1.0, 1.0)


def checksum(obs: jax.Array) -> jax.Array:
    """Per-env sum of the features, written as a sum of columns: a reduction over
    the minor axis would make XLA store the observation env-major and transpose
    it every step; this keeps whatever layout XLA picks for the loop carry."""
    return sum(obs[..., i] for i in range(obs.shape[-1]))


def make_rollout(env, params, steps: int, unroll: int):
    step = jax.vmap(env.step, in_axes=(None, 0, 0, None))
    key = jax.random.PRNGKey(0)  # step is deterministic; the key is only for API symmetry

    def rollout(obs, states):
        def body(carry, _):
            obs, s, acc = carry
            # The checksum reads each observation from the loop carry (where it is
            # materialised anyway), one step after it was produced, so that XLA
            # cannot fuse the observation's arithmetic a second time into this sum.
            acc = acc + checksum(obs)
            ts = step(key, s, controller(obs, env.action_dim), params)
            acc = acc + ts.reward + ts.terminated.astype(acc.dtype) + 2.0 * ts.truncated.astype(acc.dtype)
            return (ts.obs, ts.state, acc), None

        (obs, states, acc), _ = jax.lax.scan(body, (obs, states, jnp.zeros_like(obs[..., 0])),
                                             None, length=steps, unroll=unroll)
        return obs, states, acc + checksum(obs)  # ... and the last observation

    return rollout


def bench_one(name: str, n: int, args: argparse.Namespace) -> dict:
    env, params = make(name)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    obs, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    rollout = make_rollout(env, params, args.steps, args.unroll)
    if args.devices > 1:
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        try:
            from jax import shard_map
        except ImportError:  # older JAX
            from jax.experimental.shard_map import shard_map
        if n % args.devices:
            raise SystemExit(f"--envs {n} is not divisible by --devices {args.devices}")
        mesh = Mesh(np.array(jax.devices()[: args.devices]), ("env",))
        rollout = shard_map(rollout, mesh=mesh, in_specs=P("env"), out_specs=P("env"))
        obs, states = jax.device_put((obs, states), NamedSharding(mesh, P("env")))
    fn = jax.jit(rollout)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(obs, states))  # warm-up: compile + first run
    compile_s = time.perf_counter() - t0
    total = float(jnp.sum(out[2]))
    if not np.isfinite(total):
        raise RuntimeError(f"{name}: non-finite checksum {total}")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(obs, states))
        times.append(time.perf_counter() - t0)
    best, median = min(times), statistics.median(times)
    work = n * args.steps
    return {
        "env": name, "envs": n, "steps": args.steps, "repeats": args.repeats,
        "best_s": best, "median_s": median,
        "best_steps_per_s": work / best, "median_steps_per_s": work / median,
        "first_call_s": compile_s, "checksum": total,
    }


def main() -> int:
    args = ARGS
    sizes = [int(s) for s in args.envs.split(",") if s]
    names = [s for s in args.env.split(",") if s]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())} "
          f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}); "
          f"{args.steps}-step rollout, {args.repeats} repeats, unroll={args.unroll}, devices={args.devices}")
    print(f"{'env':<10} {'envs':>6} {'best M steps/s':>15} {'median M steps/s':>17} {'best ms':>9} {'median ms':>10}")
    results = []
    for name in names:
        for n in sizes:
            r = bench_one(name, n, args)
            results.append(r)
            print(f"{name:<10} {n:>6} {r['best_steps_per_s'] / 1e6:>15.2f} {r['median_steps_per_s'] / 1e6:>17.2f} "
                  f"{r['best_s'] * 1e3:>9.2f} {r['median_s'] * 1e3:>10.2f}", flush=True)
    target = next((r for r in results if r["env"] == "kinematic" and r["envs"] == TARGET_ENVS), None)
    passed = None
    if target is not None:
        passed = target["best_steps_per_s"] >= TARGET_RATE
        print(f"target: >= {TARGET_RATE / 1e6:.0f} M env steps/s at {TARGET_ENVS:,} envs (kinematic, "
              f"{args.devices} device{'s' if args.devices > 1 else ''}): "
              f"best {target['best_steps_per_s'] / 1e6:.2f} M/s, median {target['median_steps_per_s'] / 1e6:.2f} M/s "
              f"-> {'PASS' if passed else 'FAIL'}")
    else:
        print(f"target: not measured (needs kinematic at {TARGET_ENVS} envs)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "env", "jax": jax.__version__, "devices": args.devices,
                       "unroll": args.unroll, "target_steps_per_s": TARGET_RATE, "target_envs": TARGET_ENVS,
                       "target_pass": passed, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
