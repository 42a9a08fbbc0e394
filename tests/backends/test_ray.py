"""Specification of the ``ray`` backend: the worker/server roles as Ray actors, fault tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from realworkers import (  # noqa: F401
    assert_complete_async_run,
    assert_replays_bit_for_bit,
    assert_secant_run,
    assert_worker_corrected_modify_run,
    interrupt_cli_run,
    run_with_a_killed_and_a_hung_worker,
    tiny_config,
)

ray = pytest.importorskip("ray")

from asynccorr.backends.ray_backend import run_ray, start_ray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's in-process runs (run_ray joins a Ray that is already up)."""
    started = start_ray("", 2)
    yield
    if started:
        ray.shutdown()


def test_the_local_ray_binds_and_advertises_loopback_only(local_ray):
    """The suite runs in a loopback-only namespace (``make test``): Ray must not reach other interfaces."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert nodes and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_two_ray_workers_run_modify_with_measured_staleness_and_worker_corrected_directions(local_ray):
    result = run_ray(tiny_config("ray", workers={"slowdown": (1.0, 2.0)}), "modify@deferred")
    assert_worker_corrected_modify_run(result)
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_the_secant_protocol_runs_on_ray_workers_with_the_applied_tangent_from_the_store(local_ray):
    cfg = tiny_config("ray", schemes={"secant_tangent": "applied"})
    assert_secant_run(run_ray(cfg, "modify-safe@secant"))


def test_the_a3c_learner_runs_on_ray_workers_with_the_server_side_correction(local_ray):
    from asynccorr.config import A3CConfig

    cfg = tiny_config("ray", learner={"kind": "a3c", "a3c": A3CConfig(envs=4, n_steps=6)},
                      train={"iterations": 20, "eval_every": 20})
    m = run_ray(cfg, "modify@server").metrics
    assert len(m["iteration"]) == 20 and m["staleness"].max() > 0 and np.all(m["residual_staleness"] == 0)
    assert np.all(np.isfinite(m["importance_ratio"])) and np.all(m["policy_kl"][m["staleness"] > 0] > 0)


def test_a_killed_ray_worker_and_a_hung_one_are_replaced_and_the_run_completes_and_it_replays_bit_for_bit(local_ray):
    """Ray keeps two jobs in flight per actor: the replay computes a worker's jobs in their own
    order whatever order their results were applied in."""
    cfg, result, recorded = run_with_a_killed_and_a_hung_worker(run_ray, "ray")
    assert_replays_bit_for_bit(cfg, "async", result, recorded)


def test_sync_on_ray_averages_one_direction_per_worker_per_version(local_ray):
    result = run_ray(tiny_config("ray", train={"iterations": 6, "eval_every": 3}), "sync")
    m = result.metrics
    assert list(m["iteration"]) == [1, 2, 3, 4, 5, 6]
    assert set(m["worker"]) == {-1} and not m["staleness"].any()
    assert np.all(m["grad_error"] == 0)


def test_ctrl_c_on_a_ray_run_stops_within_5_s_keeps_its_metrics_and_leaves_no_process(tmp_path):
    elapsed, code, err, leftover, run = interrupt_cli_run(tmp_path, "ray")
    assert code == 130, err
    assert elapsed < 5.0
    assert leftover == []
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["backend"] == "ray"
    assert len((run / "metrics.csv").read_text().splitlines()) > 1
