"""Specification of asynchronous training on the simulated backend."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small import quadratic_learner, sgd, small_config

from asynccorr.backends.sequential import run_sequential
from asynccorr.backends.sim import run_sim
from asynccorr.backends.update import Shipped, init_server, make_update
from asynccorr.config import ConfigError, ExperimentConfig, with_overrides
from asynccorr.learners.base import Losses
from asynccorr.learners.build import make_optimizer
from asynccorr.runs.run import train_run
from asynccorr.schemes import corrections
from asynccorr.schemes.registry import get_scheme, make_correction

# ----------------------------------------------------------------------------- a quadratic objective


def _drifted(staleness):
    """theta_i, and theta_k after `staleness` server steps (a random walk) away from it."""
    worker_params = jax.random.normal(jax.random.PRNGKey(staleness + 1), (6,))
    steps = jax.random.normal(jax.random.PRNGKey(100 + staleness), (max(staleness, 1), 6))
    return worker_params, worker_params + 0.3 * steps[:staleness].sum(axis=0)


def _shipped(learner, scheme, theta_i, target, batch=None):
    """What the worker of ``scheme`` ships (the worker role's own compute) after aiming at ``target``."""
    from asynccorr.backends.worker import WorkerOps, post_pull, pre_pull, ships

    ops = WorkerOps(learner)
    g, gap, losses = post_pull(ops, scheme, theta_i, batch, target, pre_pull(ops, scheme, theta_i, batch))
    _, ship_params = ships(scheme, True)
    return Shipped(g, gap, theta_i if ship_params else None, batch,
                   losses if losses is not None else Losses(jnp.zeros(()), jnp.zeros(())))


@pytest.mark.parametrize("protocol", ["oracle", "server"])
@pytest.mark.parametrize("staleness", [0, 1, 7, 50])
def test_the_server_side_protocols_apply_exactly_the_fresh_gradient_on_a_quadratic_at_any_staleness(
        protocol, staleness):
    learner, a, b = quadratic_learner()
    optimizer, scheme = sgd(learner), get_scheme(f"modify@{protocol}")
    correction = make_correction(scheme.name)
    update = make_update(learner, optimizer, scheme, correction, True)
    theta_i, theta_k = _drifted(staleness)
    server = init_server(theta_k, optimizer, correction)
    new_server, metrics = update(server, _shipped(learner, scheme, theta_i, theta_i), jnp.int32(staleness))
    applied = (theta_k - new_server.params) / 0.01
    np.testing.assert_allclose(np.asarray(applied), np.asarray(a @ theta_k - b), rtol=1e-5, atol=1e-5)
    assert float(metrics.grad_error) < 1e-5
    if staleness > 0:
        assert float(metrics.stale_grad_error) > 1e-3  # the uncorrected gradient was wrong


@pytest.mark.parametrize("protocol", ["deferred", "pull-first", "look-ahead"])
def test_a_worker_side_product_is_exact_when_it_aimed_at_theta_k_and_misses_by_what_it_could_not_see(protocol):
    learner, _, _ = quadratic_learner()
    optimizer, scheme = sgd(learner), get_scheme(f"modify@{protocol}")
    correction = make_correction(scheme.name)
    update = make_update(learner, optimizer, scheme, correction, True)
    theta_i, theta_k = _drifted(7)
    server = init_server(theta_k, optimizer, correction)
    _, exact = update(server, _shipped(learner, scheme, theta_i, theta_k), jnp.int32(7))
    _, residual = update(server, _shipped(learner, scheme, theta_i, (theta_i + theta_k) / 2), jnp.int32(7))
    assert float(exact.grad_error) < 1e-5
    assert 1e-3 < float(residual.grad_error) < float(residual.stale_grad_error)  # half the gap seen: half the error


def test_the_learner_applies_the_fresh_direction_at_theta_k_from_the_shipped_states():
    learner, a, b = quadratic_learner()
    optimizer, scheme = sgd(learner), get_scheme("learner")
    update = make_update(learner, optimizer, scheme, make_correction("learner"), True)
    theta_i, theta_k = _drifted(7)
    server = init_server(theta_k, optimizer, make_correction("learner"))
    new_server, metrics = update(server, _shipped(learner, scheme, theta_i, theta_i, batch=jnp.zeros(3)),
                                 jnp.int32(7))
    np.testing.assert_allclose(np.asarray((theta_k - new_server.params) / 0.01), np.asarray(a @ theta_k - b),
                               rtol=1e-5, atol=1e-5)
    assert float(metrics.grad_error) == 0.0


def test_async_applies_the_stale_gradient_on_a_quadratic():
    learner, a, b = quadratic_learner()
    optimizer = make_optimizer(ExperimentConfig().optim.__class__(name="sgd"), learner.num_policy, learner.num_value)
    correction = make_correction("async")
    update = make_update(learner, optimizer, get_scheme("async"), correction, True)
    worker_params, server_params = jnp.zeros(6), jnp.ones(6)
    shipped = _shipped(learner, get_scheme("async"), worker_params, worker_params)
    _, metrics = update(init_server(server_params, optimizer, correction), shipped, jnp.int32(3))
    expected = np.linalg.norm(a @ worker_params - b - (a @ server_params - b)) / np.linalg.norm(a @ server_params - b)
    assert float(metrics.grad_error) == pytest.approx(float(expected), rel=1e-5)


def test_dense_correction_equals_hessian_vector_correction_on_a_quadratic():
    _, a, b = quadratic_learner()
    g_at = lambda p: a @ p - b
    theta_i, theta_k = jnp.zeros(6), jnp.arange(6.0)
    dense = corrections.dense_hessian_correction()
    hvp = corrections.hessian_correction()
    out_dense, _ = dense.update(g_at(theta_i), dense.init(theta_k), theta_k, worker_params=theta_i, hessian=a)
    out_hvp, _ = hvp.update(g_at(theta_i), hvp.init(theta_k), theta_k, worker_params=theta_i, jvp=lambda v: a @ v)
    np.testing.assert_allclose(np.asarray(out_dense), np.asarray(out_hvp), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out_hvp), np.asarray(g_at(theta_k)), rtol=1e-5)


def test_a_shipped_gap_product_replaces_the_jvp_callable():
    _, a, b = quadratic_learner()
    theta_i, theta_k = jnp.zeros(6), jnp.arange(6.0)
    g = a @ theta_i - b
    for tx in (corrections.hessian_correction(), corrections.trust_region_hessian_correction(2.0)):
        via_jvp, _ = tx.update(g, tx.init(g), theta_k, worker_params=theta_i, jvp=lambda v: a @ v)
        via_product, _ = tx.update(g, tx.init(g), theta_k, gap_product=a @ (theta_k - theta_i))
        np.testing.assert_allclose(np.asarray(via_jvp), np.asarray(via_product), rtol=1e-6)


def test_trust_region_caps_the_correction_at_the_ratio_of_the_gradient_norm():
    tx = corrections.trust_region_hessian_correction(max_ratio=0.5)
    g = jnp.array([3.0, 4.0])  # |g| = 5
    big = lambda v: jnp.array([100.0, 0.0])
    out, _ = tx.update(g, tx.init(g), jnp.ones(2), worker_params=jnp.zeros(2), jvp=big)
    np.testing.assert_allclose(np.asarray(out), [5.5, 4.0], rtol=1e-6)
    small = lambda v: jnp.array([1.0, 0.0])
    out, _ = tx.update(g, tx.init(g), jnp.ones(2), worker_params=jnp.zeros(2), jvp=small)
    np.testing.assert_allclose(np.asarray(out), [4.0, 4.0], rtol=1e-6)


def test_corrections_say_which_extra_argument_is_missing():
    tx = corrections.hessian_correction()
    with pytest.raises(ValueError, match="jvp"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2), worker_params=jnp.zeros(2))


# ----------------------------------------------------------------------------- the GPI learner


def test_modify_dense_equals_the_exact_product_at_application_on_a_small_network():
    """The worker ships G and its dense Hessian; the server forms G + H(theta_k - theta_i): the
    same update as the oracle's product at application, when both jobs take as long."""
    cfg = small_config(workers={"count": 3, "dense_cost_ratio": 3.1}, train={"iterations": 8, "eval_every": 8})
    dense = run_sim(cfg, "modify-dense")
    hvp = run_sim(cfg, "modify@oracle")
    assert dense.metrics["staleness"].max() >= 1
    np.testing.assert_allclose(dense.params, hvp.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dense.metrics["grad_error"], hvp.metrics["grad_error"], rtol=1e-3, atol=1e-5)


def test_modify_dense_refuses_networks_above_its_stated_size():
    with pytest.raises(ConfigError, match="dense_max_params"):
        run_sim(small_config(schemes={"dense_max_params": 100}), "modify-dense")


# every scheme and every protocol (modify-safe's protocols are modify's with another correction)
# Every scheme's one-worker equivalence runs on the A3C learner (tests/learners/test_a3c.py): the schemes,
# the server and the simulation are learner-agnostic. Here, on GPI, one scheme per distinct
# compute path: the plain direction, each protocol's product, a rule reading theta_i, a dense
# Jacobian, the actor-learner split and a synchronous round.
ONE_WORKER = ("async", "modify@server", "modify@deferred", "modify@look-ahead", "modify@oracle", "dc-asgd-a",
              "modify-dense", "learner", "sync")


@pytest.mark.parametrize("scheme", ONE_WORKER)
def test_with_one_worker_every_scheme_equals_the_sequential_trainer(scheme):
    cfg = small_config()
    reference = run_sequential(cfg)
    result = run_sim(cfg, scheme)
    assert np.all(result.metrics["staleness"] == 0)
    np.testing.assert_allclose(result.params, reference.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.metrics["policy_loss"], reference.metrics["policy_loss"], rtol=1e-5)


def test_the_workers_are_set_up_in_blocks_exactly_as_one_batched_call_would_set_them_up():
    """Worker i's key stream and sampler are ``worker_stream(k_workers, i)`` and ``sampler_init`` of its
    sampler key, vmapped; set up in blocks of ``SETUP_BLOCK`` (one compiled shape for any N), bit for bit."""
    from asynccorr.backends import sim
    from asynccorr.backends.server import ServerRole
    from asynccorr.learners.build import run_keys, worker_stream

    n = sim.SETUP_BLOCK + 3  # two blocks, the second padded
    cfg = small_config(workers={"count": n})
    setup = sim.setup(ServerRole(cfg, "async", measure=True))
    workers = sim._fresh_workers(setup)
    keys, samplers = jax.device_get(sim._batched_workers(setup.learner.sampler_init)(
        np.int32(cfg.train.seed), jnp.arange(n)))
    _, k_workers = run_keys(cfg.train.seed)  # op by op: the keys of every backend's workers
    for i in (0, n - 1):
        np.testing.assert_array_equal(keys[i], worker_stream(k_workers, i)[0])
    assert len(workers) == n
    for i, worker in enumerate(workers):
        np.testing.assert_array_equal(worker.key, keys[i])
        for got, want in zip(jax.tree.leaves(worker.sampler), jax.tree.leaves(samplers), strict=True):
            np.testing.assert_array_equal(got, want[i])


@pytest.mark.parametrize("workers", [4, 16])
def test_with_n_homogeneous_workers_the_mean_staleness_is_about_n_minus_1(workers):
    cfg = small_config(workers={"count": workers}, train={"iterations": 20 * workers, "eval_every": 20 * workers})
    staleness = run_sim(cfg, "async").metrics["staleness"]
    steady = staleness[2 * workers:]  # after the first round of jobs
    assert abs(steady.mean() - (workers - 1)) < 0.1 * workers
    assert staleness[:workers].tolist() == list(range(workers))  # first round: 0, 1, ..., N-1


def test_heterogeneous_workers_make_slow_workers_staler():
    cfg = small_config(workers={"count": 4, "delay": "heterogeneous", "speed_spread": 4.0},
                       train={"iterations": 120, "eval_every": 120})
    m = run_sim(cfg, "async").metrics
    per_worker = [m["staleness"][m["worker"] == i].mean() for i in range(4)]
    counts = [int((m["worker"] == i).sum()) for i in range(4)]
    assert per_worker[0] < per_worker[3]  # worker 0 is fastest, worker 3 slowest
    assert counts[0] > counts[3]


def test_sync_pipelined_is_one_round_stale_and_its_corrected_variant_sees_the_whole_gap():
    """HTS-RL: round r's directions at theta_{r-1}; the server's apply overlaps the workers'
    compute, so a round costs the slowest worker alone. The corrected variant's workers
    apply their linearisation to theta_r - theta_{r-1}: residual staleness 0."""
    cfg = small_config(workers={"count": 4}, train={"iterations": 10, "eval_every": 10})
    sync, plain, corrected = (run_sim(cfg, s).metrics for s in ("sync", "sync-pipelined", "sync-pipelined-modify"))
    assert plain["staleness"].tolist() == [0] + [1] * 9
    assert plain["residual_staleness"].tolist() == plain["staleness"].tolist()
    assert np.all(corrected["residual_staleness"] == 0) and corrected["staleness"].tolist() == [0] + [1] * 9
    assert plain["time"][-1] < sync["time"][-1]  # no wait for the server's apply
    assert corrected["grad_error"][1:].mean() < 0.5 * plain["grad_error"][1:].mean()


def test_stragglers_give_a_heavy_tail_of_staleness():
    cfg = small_config(workers={"count": 4, "delay": "stragglers", "straggler_prob": 0.1},
                       train={"iterations": 200, "eval_every": 200})
    s = run_sim(cfg, "async").metrics["staleness"]
    assert s.max() > 4 * s.mean()


def test_sync_waits_for_the_slowest_worker_and_is_never_stale():
    cfg = small_config(workers={"count": 4}, train={"iterations": 10, "eval_every": 10})
    sync, async_ = run_sim(cfg, "sync").metrics, run_sim(cfg, "async").metrics
    assert np.all(sync["staleness"] == 0) and np.all(sync["grad_error"] == 0)
    # each sync update costs a whole round (the max of 4 jobs); async updates arrive ~4x as often
    assert sync["time"][-1] > 3 * async_["time"][-1]


def test_the_simulated_clock_charges_a_worker_side_product_its_hessian_vector_cost():
    cfg = small_config(workers={"count": 4, "jitter": 0.0, "jvp_cost_ratio": 2.5, "sample_cost_ratio": 0.0,
                                "server_apply_cost_ratio": 0.0}, train={"iterations": 8, "eval_every": 8})
    t_async = run_sim(cfg, "async").metrics["time"]
    t_modify = run_sim(cfg, "modify@pull-first").metrics["time"]
    np.testing.assert_allclose(t_modify, 2.5 * t_async, rtol=1e-12)


def test_the_server_protocol_charges_the_server_and_the_server_is_a_queue():
    """4 identical workers (no jitter): the server needs 3 direction-times per message for the
    product, the workers produce one message each per direction-time, so messages queue: the
    server works without a pause and every worker waits for its reply."""
    cfg = small_config(workers={"count": 4, "jitter": 0.0, "jvp_cost_ratio": 3.0, "sample_cost_ratio": 0.0,
                                "server_apply_cost_ratio": 0.0}, train={"iterations": 12, "eval_every": 12})
    d = cfg.workers.direction_time
    m = run_sim(cfg, "modify@server").metrics
    np.testing.assert_allclose(np.diff(m["time"]), 3.0 * d, rtol=1e-9)  # one update per server product
    assert np.all(m["residual_staleness"] == 0)  # the product is against theta_k at application
    assert m["grad_error"].max() < 0.2 * m["stale_grad_error"].max()
    learner = run_sim(cfg, "learner").metrics  # the fresh direction costs the server 1 direction-time
    assert learner["time"][-1] < 0.5 * m["time"][-1] and np.all(learner["grad_error"] == 0)


def test_same_seed_gives_byte_identical_results_and_different_seeds_differ(tmp_path: Path):
    cfg = small_config(workers={"count": 3}, train={"iterations": 9, "eval_every": 3})
    dirs = []
    for root, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir, _, _ = train_run(with_overrides(cfg, train={"seed": seed}), "modify", tmp_path / root)
        dirs.append(run_dir)
    for name in ("metrics.csv", "eval.csv", "trajectory.csv", "params.npy"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
    assert (dirs[0] / "metrics.csv").read_bytes() != (dirs[2] / "metrics.csv").read_bytes()


def test_metrics_record_staleness_worker_and_time_per_update():
    cfg = small_config(workers={"count": 3}, train={"iterations": 9, "eval_every": 9})
    m = run_sim(cfg, "modify").metrics
    assert list(m["iteration"]) == list(range(1, 10))
    assert np.all(np.diff(m["time"]) >= 0)
    assert set(m["worker"].tolist()) == {0, 1, 2}
    for name in ("grad_error", "policy_grad_error", "stale_grad_error", "correction_norm", "update_norm"):
        assert np.all(np.isfinite(m[name])), name
    stale = m["staleness"] > 0
    assert np.all(m["correction_norm"][stale] > 0)  # modify corrects every stale direction
    assert np.all(m["correction_norm"][~stale] == 0)


@pytest.mark.slow
def test_on_the_default_experiment_modify_has_a_smaller_gradient_error_than_async():
    """The paper's figure (b), shortened: the same 8 workers, the first 150 updates."""
    from asynccorr.config import load_config

    cfg = with_overrides(load_config(Path(__file__).resolve().parents[2] / "experiments" / "paper.toml"),
                         train={"iterations": 150, "eval_every": 150})
    naive = run_sim(cfg, "async").metrics
    corrected = run_sim(cfg, "modify").metrics  # the server protocol: the product at application
    assert naive["staleness"].mean() > 6 and corrected["staleness"].mean() > 6
    assert np.all(corrected["residual_staleness"] == 0)
    assert corrected["grad_error"].mean() < 0.5 * naive["grad_error"].mean()


def test_drop_stale_discards_exactly_the_messages_above_the_bound():
    """4 identical workers (no jitter), bound 1, worked by hand: each round of 4 simultaneous
    arrivals, workers 0 and 1 apply (staleness 0 then 1 in the first round, 1 and 1 after),
    workers 2 and 3 are staler than 1, are discarded and pull afresh."""
    cfg = small_config(workers={"count": 4, "jitter": 0.0, "sample_cost_ratio": 0.0, "server_apply_cost_ratio": 0.0},
                       schemes={"staleness_bound": 1}, train={"iterations": 6, "eval_every": 6})
    dropped = run_sim(cfg, "drop-stale")
    assert dropped.metrics["staleness"].tolist() == [0, 1, 1, 1, 1, 1]
    assert dropped.metrics["worker"].tolist() == [0, 1, 0, 1, 0, 1]
    assert dropped.dropped == 4  # rounds 1 and 2 each discard workers 2 and 3; round 3 stops after 6 updates
    assert run_sim(cfg, "async").metrics["staleness"].tolist() == [0, 1, 2, 3, 3, 3]  # nothing dropped


def test_staleness_aware_schemes_differ_from_async_only_on_stale_updates():
    cfg = small_config(workers={"count": 3}, train={"iterations": 5, "eval_every": 5})
    for scheme in ("dc-asgd", "dc-asgd-a", "staleness-lr", "gap-aware"):
        m = run_sim(cfg, scheme).metrics
        assert m["staleness"].tolist()[:3] == [0, 1, 2]  # the first round, as for async
        assert m["correction_norm"][0] == 0  # the first update is fresh: applied as it is
        assert np.any(m["correction_norm"][m["staleness"] > 1] > 0), scheme
