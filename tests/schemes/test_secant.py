"""Specification of the secant protocol: the correction fitted on a window of carried products,
with no product at the server (``modify@secant``, ``modify-safe@secant``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small import quadratic_learner, sgd, small_config

from asynccorr.backends.sequential import run_sequential
from asynccorr.backends.sim import costs, run_sim
from asynccorr.backends.update import Shipped, init_server, make_update
from asynccorr.config import ConfigError, with_overrides
from asynccorr.schemes import corrections
from asynccorr.schemes.registry import PROTOCOLS, correction_for, get_scheme, make_correction, secant_window


def _window(a: jax.Array, tangents: jax.Array, tx, theta: jax.Array):
    """The window after the pairs (v, A v) of ``tangents`` (each fed with a zero direction)."""
    state = tx.init(theta)
    for v in tangents:
        _, state = tx.update(jnp.zeros_like(theta), state, theta, worker_params=theta, tangent=v,
                             tangent_product=a @ v)
    return state


def test_on_a_quadratic_the_fit_recovers_the_exact_correction_when_the_gap_lies_in_the_window_span():
    _, a, b = quadratic_learner()
    key = jax.random.PRNGKey(3)
    tangents = jax.random.normal(key, (3, 6))  # 3 earlier messages' tangents
    theta_i = jax.random.normal(jax.random.PRNGKey(4), (6,))
    own = jax.random.normal(jax.random.PRNGKey(5), (6,))  # this message's tangent
    theta_k = theta_i + 0.3 * tangents[0] - 0.7 * tangents[2] + 0.2 * own  # in the span of the window
    tx = corrections.secant_correction(window=4)
    state = _window(a, tangents, tx, theta_i)
    g = a @ theta_i - b
    applied, state = tx.update(g, state, theta_k, worker_params=theta_i, tangent=own, tangent_product=a @ own)
    np.testing.assert_allclose(np.asarray(applied), np.asarray(a @ theta_k - b), rtol=1e-4, atol=1e-4)
    assert float(state.coverage) == pytest.approx(1.0, abs=1e-4)
    assert float(state.scale) == 1.0


def test_a_gap_outside_the_span_is_corrected_by_its_projection_and_its_coverage_says_how_much():
    _, a, b = quadratic_learner()
    tangents = jnp.eye(6)[:2]  # the window spans the first two coordinates
    theta_i = jnp.zeros(6)
    theta_k = jnp.array([1.0, 2.0, 0.0, 0.0, 0.0, 2.0])  # |gap|^2 = 9, 5 of it in the span
    tx = corrections.secant_correction(window=3)
    state = _window(a, tangents, tx, theta_i)
    g = a @ theta_i - b
    applied, state = tx.update(g, state, theta_k, worker_params=theta_i, tangent=jnp.zeros(6),
                               tangent_product=jnp.zeros(6))
    projected = jnp.array([1.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(applied), np.asarray(g + a @ projected), rtol=1e-4, atol=1e-4)
    assert float(state.coverage) == pytest.approx(5 / 9, rel=1e-4)


def test_the_window_keeps_the_last_pairs_only_and_its_gram_matrix_stays_exact():
    _, a, _ = quadratic_learner()
    tangents = jax.random.normal(jax.random.PRNGKey(7), (7, 6))
    tx = corrections.secant_correction(window=3)
    state = _window(a, tangents, tx, jnp.zeros(6))
    kept = tangents[4:]  # the ring holds the last three, in slot order 4 -> 1, 5 -> 2, 6 -> 0
    rows = jnp.stack([kept[2], kept[0], kept[1]])
    np.testing.assert_allclose(np.asarray(state.tangents), np.asarray(rows), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.products), np.asarray(rows @ a.T), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.gram), np.asarray(rows @ rows.T), rtol=1e-5)
    assert int(state.slot) == 1


def test_the_safe_variant_caps_the_fitted_correction_at_the_trust_ratio_times_the_direction():
    _, a, b = quadratic_learner()
    tangents = jax.random.normal(jax.random.PRNGKey(3), (6, 6))
    theta_i = jnp.zeros(6)
    theta_k = 5.0 * tangents[1]  # a large gap: the correction dwarfs G
    g = a @ theta_i - b
    for ratio in (1.0, 0.25):
        tx = corrections.secant_correction(window=6, max_ratio=ratio)
        state = _window(a, tangents, tx, theta_i)
        applied, state = tx.update(g, state, theta_k, worker_params=theta_i, tangent=jnp.zeros(6),
                                   tangent_product=jnp.zeros(6))
        assert float(jnp.linalg.norm(applied - g)) == pytest.approx(ratio * float(jnp.linalg.norm(g)), rel=1e-4)
        assert 0 < float(state.scale) < 1


def test_an_empty_window_or_no_gap_gives_no_correction_and_nothing_is_nan():
    _, a, b = quadratic_learner()
    tx = corrections.secant_correction(window=4, max_ratio=1.0)
    theta = jnp.ones(6)
    g = a @ theta - b
    applied, state = tx.update(g, tx.init(theta), theta + 1.0, worker_params=theta, tangent=jnp.zeros(6),
                               tangent_product=jnp.zeros(6))  # a first message: no tangent yet
    np.testing.assert_array_equal(np.asarray(applied), np.asarray(g))
    applied, state = tx.update(g, state, theta, worker_params=theta, tangent=jnp.ones(6),
                               tangent_product=a @ jnp.ones(6))  # a fresh message: gap 0
    np.testing.assert_array_equal(np.asarray(applied), np.asarray(g))
    assert np.isnan(float(state.coverage))  # nothing to cover


def test_the_secant_rule_accepts_any_pytree_like_every_correction():
    _, a, b = quadratic_learner()
    tx = corrections.secant_correction(window=2)
    split = lambda x: {"w": x[:4].reshape(2, 2), "b": x[4:]}
    theta_i, theta_k, v = jnp.zeros(6), jnp.arange(6.0) / 10, jnp.arange(6.0)
    flat_out, _ = tx.update(a @ theta_i - b, tx.init(theta_i), theta_k, worker_params=theta_i, tangent=v,
                            tangent_product=a @ v)
    tree_out, _ = tx.update(split(a @ theta_i - b), tx.init(split(theta_i)), split(theta_k),
                            worker_params=split(theta_i), tangent=split(v), tangent_product=split(a @ v))
    for leaf, expected in zip(jax.tree.leaves(tree_out), jax.tree.leaves(split(flat_out))):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(expected), rtol=1e-6)


def test_the_server_update_applies_the_fit_on_shipped_pairs_and_reports_its_diagnostics():
    learner, a, b = quadratic_learner()
    optimizer, scheme = sgd(learner), get_scheme("modify@secant")
    correction = make_correction(scheme.name, secant_window=2)
    update = make_update(learner, optimizer, scheme, correction, True, True)
    theta_i = jax.random.normal(jax.random.PRNGKey(1), (6,))
    v = jax.random.normal(jax.random.PRNGKey(2), (6,))
    theta_k = theta_i + 0.5 * v
    server = init_server(theta_k, optimizer, correction)
    shipped = Shipped(a @ theta_i - b, None, theta_i, None, None, v, a @ v)
    new, metrics = update(server, shipped, jnp.int32(3))
    np.testing.assert_allclose(np.asarray((theta_k - new.params) / 0.01), np.asarray(a @ theta_k - b), rtol=1e-4)
    assert float(metrics.grad_error) < 1e-4 and float(metrics.stale_grad_error) > 1e-2
    assert float(metrics.gap_coverage) == pytest.approx(1.0, abs=1e-4)
    assert float(metrics.product_cosine) == pytest.approx(1.0, abs=1e-4)
    assert float(metrics.product_error) < 1e-3 and float(metrics.cap_scale) == 1.0


def test_secant_is_a_realisable_protocol_with_one_fused_pass_per_job_and_no_product_at_the_server():
    protocol = PROTOCOLS["secant"]
    assert protocol.realisable and not protocol.server_product
    for name in ("modify@secant", "modify-safe@secant"):
        scheme = get_scheme(name)
        assert scheme.realisable and scheme.phases == ("sample", "direction_jvp") and scheme.needs_worker_params
    cfg = small_config(workers={"count": 8})
    assert secant_window(cfg) == 16  # default: two messages per worker
    assert secant_window(with_overrides(cfg, schemes={"secant_window": 5})) == 5
    c_secant, c_async = costs(get_scheme("modify@secant"), cfg), costs(get_scheme("async"), cfg)
    w = cfg.workers
    assert c_secant.phases["direction_jvp"] == pytest.approx(w.direction_time * w.jvp_cost_ratio)
    assert c_secant.server - c_async.server == pytest.approx(16 * w.secant_pair_cost_ratio * w.direction_time)
    assert correction_for("modify@secant", cfg) is correction_for("modify@secant", cfg)  # memoised


@pytest.mark.parametrize("scheme", ["modify@secant", "modify-safe@secant"])
@pytest.mark.parametrize("tangent", ["previous", "applied"])
def test_with_one_worker_the_secant_protocol_equals_the_sequential_trainer(scheme, tangent):
    cfg = small_config(schemes={"secant_tangent": tangent})
    reference = run_sequential(cfg)
    result = run_sim(cfg, scheme)
    assert np.all(result.metrics["staleness"] == 0)
    np.testing.assert_allclose(result.params, reference.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tangent", ["previous", "applied"])
def test_on_sim_the_fit_covers_the_gap_and_the_correction_is_measured_against_the_exact_product(tangent):
    cfg = small_config(workers={"count": 4}, train={"iterations": 40, "eval_every": 20},
                       schemes={"secant_tangent": tangent})
    m = run_sim(cfg, "modify-safe@secant").metrics
    late = slice(20, None)
    assert np.all(m["staleness"][late] > 0) and np.all(m["residual_staleness"] == 0)
    assert np.nanmedian(m["gap_coverage"][late]) > 0.5
    assert np.all(np.isfinite(m["product_cosine"][late])) and np.all(m["product_error"][late] >= 0)
    assert np.all((m["cap_scale"] > 0) & (m["cap_scale"] <= 1))
    assert np.any(m["correction_norm"][late] > 0)
    assert np.all(np.isnan(run_sim(cfg, "async").metrics["gap_coverage"]))  # other schemes fit nothing


def test_secant_knobs_are_validated():
    for fields, match in (({"secant_window": -1}, "schemes.secant_window"),
                          ({"secant_window": 10**6}, "schemes.secant_window"),
                          ({"secant_tangent": "current"}, "schemes.secant_tangent")):
        with pytest.raises(ConfigError, match=match):
            with_overrides(small_config(), schemes=fields)
