"""The literature's staleness remedies, each on small hand-worked numbers.

The expected values are written out literally (worked by hand from the papers'
formulas), not recomputed by re-implementing them.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from asynccorr.config import ConfigError, ExperimentConfig, with_overrides
from asynccorr.schemes import corrections
from asynccorr.schemes.registry import SCHEMES, correction_for, make_correction


def apply(tx, g, state, theta_k, theta_i=None, staleness=None):
    extra = {}
    if theta_i is not None:
        extra["worker_params"] = jnp.asarray(theta_i, jnp.float32)
    if staleness is not None:
        extra["staleness"] = jnp.int32(staleness)
    return tx.update(jnp.asarray(g, jnp.float32), state, jnp.asarray(theta_k, jnp.float32), **extra)


def test_dc_asgd_adds_lambda_g_squared_times_the_gap():
    # G = [1, -2, 0.5], theta_k - theta_i = [1, -1, -2], lambda = 0.04:
    # lambda G*G*gap = 0.04 * [1, 4, 0.25] * [1, -1, -2] = [0.04, -0.16, -0.02]
    tx = corrections.delay_compensation(0.04)
    out, _ = apply(tx, [1.0, -2.0, 0.5], tx.init(jnp.zeros(3)), [1.0, 1.0, 1.0], [0.0, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(out), [1.04, -2.16, 0.48], rtol=1e-6)


def test_dc_asgd_a_adapts_lambda_to_the_running_mean_square_across_calls():
    tx = corrections.adaptive_delay_compensation(lam0=2.0, momentum=0.95, eps=1e-7)
    state = tx.init(jnp.zeros(2))
    np.testing.assert_array_equal(np.asarray(state.mean_square), [0.0, 0.0])  # MS_0 = 0
    # call 1: G = [1, -2], gap = [1, -1]; MS_1 = 0.05 * [1, 4] = [0.05, 0.2]
    # lambda = 2 / sqrt([0.05, 0.2]) = [8.944272, 4.472136]; lambda G*G*gap = [8.944272, -17.888544]
    out, state = apply(tx, [1.0, -2.0], state, [1.0, 1.0], [0.0, 2.0])
    np.testing.assert_allclose(np.asarray(state.mean_square), [0.05, 0.2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), [9.944272, -19.888544], rtol=1e-5)
    # call 2: G = [2, 0]; MS_2 = 0.95 * [0.05, 0.2] + 0.05 * [4, 0] = [0.2475, 0.19]
    # lambda_0 = 2 / sqrt(0.2475) = 4.020151; + 4.020151 * 4 * 1 = 16.080605
    out, state = apply(tx, [2.0, 0.0], state, [1.0, 1.0], [0.0, 2.0])
    np.testing.assert_allclose(np.asarray(state.mean_square), [0.2475, 0.19], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), [18.080605, 0.0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("staleness", "expected"), [(0, [3.0, -6.0]), (1, [3.0, -6.0]), (3, [1.0, -2.0]),
                                                     (6, [0.5, -1.0])])
def test_staleness_lr_divides_by_the_staleness_and_leaves_fresh_directions_alone(staleness, expected):
    tx = corrections.staleness_scaling()
    out, _ = apply(tx, [3.0, -6.0], tx.init(jnp.zeros(2)), [0.0, 0.0], staleness=staleness)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


def test_gap_aware_divides_by_the_gap_in_units_of_the_mean_server_step():
    tx = corrections.gap_aware(decay=0.5)
    state = tx.init(jnp.zeros(3))
    g = [6.0, 6.0, 6.0]
    # call 1: no server step observed yet -> no scale, no penalty, whatever the distance
    out, state = apply(tx, g, state, [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(out), g)
    # call 2: the server stepped [1, 2, 0]; EMA = 0.5 * [1, 2, 0] = [0.5, 1, 0], bias-corrected C = [1, 2, 0]
    # distance |theta_k - theta_i| = [3, 0, 1]; gap = max(1, [3/1, 0/2, -]) = [3, 1, 1 (never moved: C = 0)]
    out, state = apply(tx, g, state, [1.0, 2.0, 0.0], [-2.0, 2.0, 1.0])
    np.testing.assert_allclose(np.asarray(state.mean_step), [0.5, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), [2.0, 6.0, 6.0], rtol=1e-6)
    # call 3: step [0, 2, 0]; EMA = 0.5 * [0.5, 1, 0] + 0.5 * [0, 2, 0] = [0.25, 1.5, 0]; C = EMA / 0.75 = [1/3, 2, 0]
    # distance [1, 4, 0]; gap = [3, 2, 1]
    out, state = apply(tx, g, state, [1.0, 4.0, 0.0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(state.mean_step), [0.25, 1.5, 0.0], rtol=1e-6)
    assert int(state.steps) == 2
    np.testing.assert_allclose(np.asarray(out), [2.0, 3.0, 6.0], rtol=1e-5)


@pytest.mark.parametrize(("staleness", "kept"), [(0, True), (2, True), (3, False), (40, False)])
def test_drop_stale_zeroes_exactly_the_directions_above_the_bound(staleness, kept):
    tx = corrections.drop_stale(bound=2)
    out, _ = apply(tx, [1.5, -2.0], tx.init(jnp.zeros(2)), [0.0, 0.0], staleness=staleness)
    np.testing.assert_array_equal(np.asarray(out), [1.5, -2.0] if kept else [0.0, 0.0])


def test_a_remedy_chains_before_an_optimizer():
    tx = optax.chain(corrections.staleness_scaling(), optax.sgd(0.1))
    params = jnp.zeros(2)
    updates, _ = tx.update(jnp.array([3.0, -6.0]), tx.init(params), params, staleness=jnp.int32(3))
    np.testing.assert_allclose(np.asarray(updates), [-0.1, 0.2], rtol=1e-6)


def test_remedies_say_which_extra_argument_is_missing():
    for tx, name in ((corrections.delay_compensation(), "worker_params"),
                     (corrections.staleness_scaling(), "staleness"), (corrections.drop_stale(), "staleness")):
        with pytest.raises(ValueError, match=name):
            tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))


def test_remedies_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="lam"):
        corrections.delay_compensation(-1.0)
    with pytest.raises(ValueError, match="momentum"):
        corrections.adaptive_delay_compensation(momentum=1.0)
    with pytest.raises(ValueError, match="decay"):
        corrections.gap_aware(1.5)
    with pytest.raises(ValueError, match="bound"):
        corrections.drop_stale(-1)


def test_the_registry_passes_the_configured_hyperparameters():
    cfg = with_overrides(ExperimentConfig(), schemes={"dc_lambda": 0.5})
    tx = correction_for("dc-asgd", cfg)
    out, _ = apply(tx, [2.0], tx.init(jnp.zeros(1)), [1.0], [0.0])
    np.testing.assert_allclose(np.asarray(out), [4.0])  # 2 + 0.5 * 4 * 1
    assert correction_for("dc-asgd", cfg) is correction_for("dc-asgd", cfg)  # memoised
    assert SCHEMES["drop-stale"].drops_stale and not SCHEMES["async"].drops_stale
    with pytest.raises(TypeError, match="unknown"):
        make_correction("dc-asgd", dc_lamda=0.1)


@pytest.mark.parametrize(("field", "value"), [("dc_lambda", -0.1), ("dc_momentum", 1.0), ("dc_eps", 0.0),
                                              ("gap_decay", 1.0), ("dc_lambda0", float("nan"))])
def test_scheme_hyperparameters_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"schemes.{field}"):
        with_overrides(ExperimentConfig(), schemes={field: value})


# ----------------------------------------------------------------------------- any pytree of parameters

PYTREE_CORRECTIONS = {
    "hessian_correction": corrections.hessian_correction,
    "trust_region_hessian_correction": lambda: corrections.trust_region_hessian_correction(0.5),
    "dense_hessian_correction": corrections.dense_hessian_correction,
    "delay_compensation": corrections.delay_compensation,
    "adaptive_delay_compensation": corrections.adaptive_delay_compensation,
    "staleness_scaling": corrections.staleness_scaling,
    "gap_aware": corrections.gap_aware,
    "drop_stale": lambda: corrections.drop_stale(2),
    "no_correction": corrections.no_correction,
}


def _tree(seed: int) -> dict:
    """A flax-like parameter dict with leaves of several shapes."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"dense": {"kernel": jax.random.normal(keys[0], (3, 2)), "bias": jax.random.normal(keys[1], (2,))},
            "scale": jax.random.normal(keys[2], ())}


@pytest.mark.parametrize("name", list(PYTREE_CORRECTIONS))
def test_every_correction_on_a_parameter_dict_equals_it_on_the_flat_vector(name):
    """Three calls (stateful corrections carry state) on a dict and on its ravelled vector agree."""
    theta_k, theta_i, g = _tree(0), _tree(1), _tree(2)
    flat = {n: ravel_pytree(t)[0] for n, t in (("k", theta_k), ("i", theta_i), ("g", g))}
    unravel = ravel_pytree(theta_k)[1]
    hessian = jax.random.normal(jax.random.PRNGKey(3), (flat["k"].size, flat["k"].size))
    tree_tx, flat_tx = PYTREE_CORRECTIONS[name](), PYTREE_CORRECTIONS[name]()
    tree_state, flat_state = tree_tx.init(theta_k), flat_tx.init(flat["k"])
    for step in range(3):
        gap_flat = hessian @ (flat["k"] - flat["i"])
        common = {"staleness": jnp.int32(step + 1), "hessian": hessian}
        tree_out, tree_state = tree_tx.update(g, tree_state, theta_k, worker_params=theta_i,
                                              gap_product=unravel(gap_flat), **common)
        flat_out, flat_state = flat_tx.update(flat["g"], flat_state, flat["k"], worker_params=flat["i"],
                                              gap_product=gap_flat, **common)
        assert jax.tree.structure(tree_out) == jax.tree.structure(g)
        np.testing.assert_allclose(np.asarray(ravel_pytree(tree_out)[0]), np.asarray(flat_out), rtol=1e-5,
                                   atol=1e-6)
        theta_k = jax.tree.map(lambda p, u: p - 0.1 * u, theta_k, tree_out)
        flat["k"] = flat["k"] - 0.1 * flat_out


def test_a_correction_given_jvp_calls_it_on_the_pytree_gap():
    theta_k, theta_i, g = _tree(0), _tree(1), _tree(2)
    seen = []

    def jvp(v):
        seen.append(v)
        return jax.tree.map(lambda x: 2.0 * x, v)

    out, _ = corrections.hessian_correction().update(g, (), theta_k, worker_params=theta_i, jvp=jvp)
    expected = jax.tree.map(lambda g_, k, i: g_ + 2.0 * (k - i), g, theta_k, theta_i)
    assert jax.tree.structure(seen[0]) == jax.tree.structure(theta_k)
    np.testing.assert_allclose(np.asarray(ravel_pytree(out)[0]), np.asarray(ravel_pytree(expected)[0]), rtol=1e-6)


def _readme_example() -> str:
    """The README's "Corrections on your own model" code block."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Corrections on your own model", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _run(code: str) -> dict:
    """Execute a documented example; its module namespace afterwards."""
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace


def test_the_readme_example_trains_a_flax_model_from_stale_gradients_and_the_correction_helps():
    corrected, uncorrected = _run(_readme_example()), _run(_readme_example().replace("hessian_correction(), ", ""))
    final = float(corrected["loss"](corrected["params"]))
    assert final < corrected["first"] / 10
    assert final < float(uncorrected["loss"](uncorrected["params"])) / 2  # at staleness 3, on this problem
