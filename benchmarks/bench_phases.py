"""The phase costs of ``sim``'s clock, measured with the worker and server roles' own code.

On an experiment's learner (default: ``experiments/paper.toml``) this times, round-robin
after a compiling warm-up, every phase a job or the server can run
(``asynccorr.backends.worker`` / ``asynccorr.backends.update``):

* ``sample``         ``WorkerOps.sample``: a worker's batch from its exploratory rollouts;
* ``direction``      ``WorkerOps.direction``: F(theta, batch);
* ``direction_jvp``  the fused F + dF/dtheta . t pass (pull-first, look-ahead; the
                     ``server`` protocol's product on the server);
* ``linearise``      ``WorkerOps.linearise`` (``jax.linearize`` of the jitted field, as a
                     ``deferred`` worker runs it), and ``apply``: one application of the map;
* ``server_apply``   the server's rule and optimizer step for an ``async`` message without
                     the gradient-error measurement (``make_update(..., measure=False)``);
* ``secant_M``       the same for a ``modify-safe@secant`` message with a full window of M
                     pairs (M = 16 and 128: N = 8 and 64 at the default window): the rule, the
                     fit and the step; the cost model charges ``secant_pair_cost_ratio`` per
                     pair, the larger window's (server_apply subtracted, per pair; the fit's
                     matrix products grow faster than M, so the small window is over-charged).
* ``learner_replay`` (a Q config with ``replay = "central"`` only) the ``learner`` scheme's server
                     step through Ape-X's replay, the buffer full: insert the message, the
                     prioritised draw, the direction on it, the re-prioritisation and the step;
                     ``server_apply_cost_ratio`` is then this less one direction (what the cost
                     model adds to the direction it charges the learner scheme's server).

It prints each phase's best and median milliseconds and its ratio to ``direction``
(medians: what a run sees), and the ``[workers]`` lines that set them as the cost
model's config defaults (``direction_time``, ``sample_cost_ratio``, ``jvp_cost_ratio``,
``linearise_cost_ratio``, ``apply_cost_ratio``, ``server_apply_cost_ratio``,
``secant_pair_cost_ratio``). Single
threaded like a worker process (``worker.WORKER_ENV``), unless ``--threads all``.

    python benchmarks/bench_phases.py [--config experiments/paper.toml] [--repeats 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SECANT_WINDOWS = (16, 128)  # the secant fit's windows timed: N = 8 and 64 at the default window 2N


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="experiments/paper.toml", help="experiment TOML whose learner is timed")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per phase")
    p.add_argument("--threads", choices=("one", "all"), default="one",
                   help="one XLA thread, as a worker process runs (default), or all cores")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads == "one":
        from asynccorr.backends.worker import worker_env

        os.environ.update(worker_env({k: v for k, v in os.environ.items() if k == "XLA_FLAGS"}))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from asynccorr.backends.update import Shipped, init_server, make_update
    from asynccorr.backends.worker import worker_ops
    from asynccorr.config import load_config, with_overrides
    from asynccorr.learners.base import Losses
    from asynccorr.learners.build import build, run_keys, worker_stream
    from asynccorr.schemes.registry import correction_for, get_scheme

    config = load_config(args.config)
    learner, optimizer = build(config)
    ops = worker_ops(learner)
    k_params, k_workers = run_keys(0)
    key, k_sampler = worker_stream(k_workers, 0)
    params = learner.init(k_params)
    sampler = learner.sampler_init(k_sampler)
    batch, _ = ops.sample(key, sampler, params)
    tangent = 1e-3 * jax.random.normal(jax.random.PRNGKey(1), params.shape, params.dtype)
    g, _, product = ops.linearise(params, batch)
    scheme = get_scheme("async")
    correction = correction_for("async", config)
    server = init_server(params, optimizer, correction)
    update = make_update(learner, optimizer, scheme, correction, False)
    shipped = Shipped(np.asarray(g), None, None, None, Losses(np.float32(0), np.float32(0)))
    secant_cases = {}
    for window in SECANT_WINDOWS:
        secant = get_scheme("modify-safe@secant")
        tx = correction_for(secant.name, with_overrides(config, schemes={"secant_window": window}))
        full = init_server(params, optimizer, tx)
        for j in range(window):  # a full window of distinct pairs
            v = jax.random.normal(jax.random.PRNGKey(10 + j), params.shape, params.dtype)
            _, full = jax.jit(lambda s, v=v, tx=tx: (None, s._replace(correction_state=tx.update(
                g, s.correction_state, params + 1e-3, worker_params=params, tangent=v, tangent_product=v)[1])))(full)
        msg = Shipped(np.asarray(g), None, np.asarray(params), None, Losses(np.float32(0), np.float32(0)),
                      np.asarray(tangent), np.asarray(tangent))
        secant_update = make_update(learner, optimizer, secant, tx, False)
        secant_cases[f"secant_{window}"] = (lambda u=secant_update, s=full, m=msg: u(s, m, jnp.int32(7)))

    replay_cases = {}
    if learner.server_direction is not None:  # Ape-X: the learner scheme's server step through its replay
        learner_scheme = get_scheme("learner")
        tx = correction_for("learner", config)
        replay_server = init_server(params, optimizer, tx, learner, jax.random.PRNGKey(2))
        replay_update = make_update(learner, optimizer, learner_scheme, tx, False)
        msg = Shipped(None, None, None, batch, Losses(np.float32(0), np.float32(0)))
        rows_per_message = int(np.asarray(batch.cost).size)
        for _ in range(-(-config.learner.q.replay_capacity // rows_per_message)):  # a full buffer
            replay_server, _ = replay_update(replay_server, msg, jnp.int32(0))
        replay_cases["learner_replay"] = lambda: replay_update(replay_server, msg, jnp.int32(0))

    cases = {
        "sample": lambda: ops.sample(key, sampler, params),
        "direction": lambda: ops.direction(params, batch),
        "direction_jvp": lambda: ops.direction_jvp(params, batch, tangent),
        "linearise": lambda: ops.linearise(params, batch)[0],
        "apply": lambda: product(tangent),
        "server_apply": lambda: update(server, shipped, jnp.int32(3)),
        **secant_cases,
        **replay_cases,
    }
    for fn in cases.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    rows = {name: {"best_ms": 1e3 * min(ts), "median_ms": 1e3 * statistics.median(ts)} for name, ts in times.items()}
    base = rows["direction"]["median_ms"]
    for row in rows.values():
        row["ratio"] = row["median_ms"] / base

    print(f"jax {jax.__version__}, {args.threads} thread(s); {args.config}: {config.learner.kind}, "
          f"{learner.num_params} params, batch {config.learner.batch_size}"
          + ("" if config.learner.kind in ("a3c", "q") else f", horizon {config.learner.horizon}")
          + f"; {args.repeats} repeats; load average {os.getloadavg()[0]:.1f}")
    print(f"{'phase':<15} {'best ms':>9} {'median ms':>10} {'median x dir':>13}")
    for name, row in rows.items():
        print(f"{name:<15} {row['best_ms']:>9.2f} {row['median_ms']:>10.2f} {row['ratio']:>13.2f}")
    defaults = {
        "direction_time": round(base / 1e3, 4),
        "sample_cost_ratio": round(rows["sample"]["ratio"], 2),
        "jvp_cost_ratio": round(rows["direction_jvp"]["ratio"], 2),
        "linearise_cost_ratio": round(rows["linearise"]["ratio"], 2),
        "apply_cost_ratio": round(rows["apply"]["ratio"], 2),
        "server_apply_cost_ratio": round(rows["server_apply"]["ratio"], 2),
        "secant_pair_cost_ratio": round(max(0.0, rows[f"secant_{SECANT_WINDOWS[-1]}"]["ratio"]
                                            - rows["server_apply"]["ratio"]) / SECANT_WINDOWS[-1], 4),
    }
    if "learner_replay" in rows:  # the learner scheme charges a direction plus server_apply per message
        defaults["server_apply_cost_ratio"] = round(rows["learner_replay"]["ratio"] - 1.0, 2)
    # one worker's throughput (one thread, medians): real env steps it samples, directions it computes
    lc = config.learner
    steps = {"a3c": lc.a3c.envs * lc.a3c.n_steps, "q": lc.q.envs * lc.q.n_steps}.get(
        lc.kind, lc.rollout_states * lc.sampler_steps)
    throughput = {
        "env_steps_per_s": steps / (rows["sample"]["median_ms"] / 1e3),
        "directions_per_s": 1e3 / base,
        "jvps_per_s": 1e3 / rows["direction_jvp"]["median_ms"],
        "jobs_per_s": 1e3 / (rows["sample"]["median_ms"] + base),  # an async job: sample + direction
    }
    print(f"one worker ({lc.kind}, one thread): {throughput['env_steps_per_s']:,.0f} env steps/s while sampling "
          f"({steps} real env steps per batch), {throughput['directions_per_s']:,.0f} directions/s, "
          f"{throughput['jvps_per_s']:,.0f} direction + JVP/s, {throughput['jobs_per_s']:,.0f} async jobs/s")
    print("as [workers] config (sim's cost model):")
    for name, value in defaults.items():
        print(f"  {name} = {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "threads": args.threads, "phases": rows, "defaults": defaults,
                       "throughput": throughput}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
