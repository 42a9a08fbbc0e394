"""Specification of the value-based learner (one-step Q, one-step SARSA, n-step Q): its targets held
to rlax and to their definitions, its direction field and JVP, the server's target-network refresh,
the workers' epsilon-greedy exploration and replay, and every scheme running it unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from small import ONE_WORKER_SCHEMES, q_config, sample, small_q

from asynccorr.backends import registry
from asynccorr.backends.sequential import run_sequential
from asynccorr.backends.sim import run_sim
from asynccorr.config import ConfigError, QConfig, describe, load_config, to_dict, with_overrides
from asynccorr.learners import q
from asynccorr.learners.build import build
from asynccorr.runs.checkpoints import checkpoint_files
from asynccorr.runs.run import train_run

REPO = Path(__file__).resolve().parents[2]


def q_of(learner, block, obs):
    """Q(obs, .) of a parameter block (online or target), computed outside the learner."""
    net = q.network(q.action_grid(learner.config.q.levels, learner.env.action_dim).shape[0], learner.config,
                    block.dtype)
    return q.q_values(net.apply(learner.unravel(jnp.concatenate([block, block]))[0], obs),
                      learner.config.q.dueling)


# ----------------------------------------------------------------------------- actions and targets


def test_the_action_grid_spreads_each_dimensions_levels_over_the_box_and_holds_the_rest_at_zero():
    grid = q.action_grid((5, 3), 2)
    assert grid.shape == (15, 2)
    assert sorted(set(grid[:, 0])) == [-1.0, -0.5, 0.0, 0.5, 1.0] and sorted(set(grid[:, 1])) == [-1.0, 0.0, 1.0]
    np.testing.assert_array_equal(q.action_grid((4, 3), 1), np.linspace(-1, 1, 4, dtype=np.float32)[:, None])
    np.testing.assert_array_equal(q.action_grid((3,), 2)[:, 1], 0.0)  # acceleration not listed: held at 0


def test_n_step_targets_are_mnih_et_al_s_backward_recursion_cut_at_episode_ends():
    rng = np.random.default_rng(0)
    T, E, gamma = 7, 3, 0.9
    cost, boot = rng.uniform(0, 1, (T, E)), rng.normal(size=(T, E))
    done = rng.uniform(size=(T, E)) < 0.25
    expected = np.zeros((T, E))
    for e in range(E):
        after = None
        for t in reversed(range(T)):
            after = cost[t, e] + gamma * (boot[t, e] if (done[t, e] or t == T - 1) else after)
            expected[t, e] = after
    with jax.enable_x64(True):
        got = q.n_step_targets(jnp.asarray(cost), jnp.asarray(boot), jnp.asarray(done), gamma)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)


def test_n_step_targets_equal_rlax_bootstrapped_returns_over_the_whole_rollout():
    """Without episode ends every state's return runs to the rollout's end: rlax's n-step return
    with n = T, in reward units (reward = -cost, value = -Q)."""
    rlax = pytest.importorskip("rlax")
    rng = np.random.default_rng(1)
    T, gamma = 6, 0.95
    cost, boot = rng.uniform(0, 1, (T,)).astype(np.float32), rng.normal(size=(T,)).astype(np.float32)
    ours = q.n_step_targets(jnp.asarray(cost)[:, None], jnp.asarray(boot)[:, None], jnp.zeros((T, 1), bool), gamma)
    theirs = rlax.n_step_bootstrapped_returns(-cost, np.full(T, gamma, np.float32), -boot, n=T)
    np.testing.assert_allclose(np.asarray(ours[:, 0]), -np.asarray(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["one-step", "sarsa"])
def test_one_step_targets_equal_rlax_q_learning_and_sarsa_at_the_target_network(target):
    """The targets bootstrap from the target block (not the online one): rlax's TD error with
    q_tm1 = 0 is the target, in reward units."""
    rlax = pytest.importorskip("rlax")
    learner = small_q(target=target)
    params, batch, _ = sample(learner)
    online = params[:learner.num_policy]
    target_block = online + 0.5 * jax.random.normal(jax.random.PRNGKey(9), online.shape)
    flat = jnp.concatenate([online, target_block])
    y = np.asarray(jax.jit(learner.returns)(flat, batch)).reshape(-1)
    flat_b = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
    keep = ~np.asarray(flat_b.terminated)  # an absorbing end is not in rlax's vocabulary
    assert keep.sum() > 10
    q_next = jax.jit(lambda b, obs: q_of(learner, b, obs))(target_block, flat_b.next_obs)
    zeros = jnp.zeros_like(q_next)
    discount = jnp.full(flat_b.cost.shape, learner.config.gamma)
    if target == "sarsa":
        td = jax.vmap(rlax.sarsa)(zeros, flat_b.actions, -flat_b.cost, discount, -q_next, flat_b.next_actions)
    else:
        td = jax.vmap(rlax.q_learning)(zeros, flat_b.actions, -flat_b.cost, discount, -q_next)
    np.testing.assert_allclose(y[keep], -np.asarray(td)[keep], rtol=1e-5, atol=1e-5)


def test_leaving_the_road_is_absorbing_and_sarsa_bootstraps_from_the_next_action_taken():
    learner = small_q(target="sarsa")
    params, batch, _ = sample(learner, seed=3)
    a, nxt, done = (np.asarray(x) for x in (batch.actions, batch.next_actions, batch.done))
    inner = ~done[:-1]
    assert inner.any()
    np.testing.assert_array_equal(nxt[:-1][inner], a[1:][inner])  # a' is the action taken next
    # off the road: l + gamma * (stage cost for ever), whatever the network says of the next state
    off = np.zeros(batch.done.shape, bool)
    off[1, :2] = True
    ended = batch._replace(terminated=jnp.asarray(off), done=batch.done | off,
                           terminal_value=jnp.full(off.shape, 7.0, batch.cost.dtype))
    y = np.asarray(jax.jit(learner.returns)(params, ended))
    np.testing.assert_allclose(y[off], np.asarray(batch.cost)[off] + learner.config.gamma * 7.0, rtol=1e-6)


# ----------------------------------------------------------------------------- the direction field


def test_the_direction_is_the_td_gradient_on_the_online_block_and_zero_on_the_target_block():
    with jax.enable_x64(True):
        learner = small_q(dtype=jnp.float64)
        params, batch, _ = sample(learner)
        n = learner.num_policy
        params = params.at[n:].add(0.1)  # a target network that differs from the online one
        f, losses = jax.jit(learner.direction)(params, batch)
        np.testing.assert_array_equal(np.asarray(f[n:]), 0.0)
        u = jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float64)
        eps = 1e-6
        loss_at = jax.jit(lambda d: learner.losses(params.at[:n].add(d * u), batch).value_loss)
        fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        np.testing.assert_allclose(float(f[:n] @ u), float(fd), rtol=1e-6)
        assert float(losses.value_loss) > 0


def test_the_jvp_is_the_td_hessian_with_the_targets_as_data():
    """Along the online block the JVP is the central difference of F; a tangent in the target block
    moves the targets, which the first-order term holds fixed: its product is 0."""
    with jax.enable_x64(True):
        learner = small_q(dtype=jnp.float64)
        params, batch, _ = sample(learner)
        n = learner.num_policy
        u = jnp.concatenate([jax.random.normal(jax.random.PRNGKey(2), (n,), jnp.float64), jnp.zeros(n)])
        jvp, direction = jax.jit(learner.direction_jvp), jax.jit(lambda p: learner.direction(p, batch)[0])
        _, jf, _ = jvp(params, batch, u)
        eps = 1e-6
        fd = (direction(params + eps * u) - direction(params - eps * u)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(jf), np.asarray(fd), rtol=1e-5, atol=1e-9)
        only_target = jnp.concatenate([jnp.zeros(n), jnp.ones(n)])
        np.testing.assert_array_equal(np.asarray(jvp(params, batch, only_target)[1]), 0.0)


def test_the_server_refreshes_the_target_network_every_period_updates_and_leaves_it_alone_between():
    n, period = 3, 2
    opt = optax.chain(optax.sgd(0.1), q.target_refresh(n, period))
    params = jnp.concatenate([jnp.ones(n), jnp.zeros(n)])
    state = opt.init(params)
    for k in range(1, 6):
        before = params[n:]
        updates, state = opt.update(jnp.concatenate([jnp.full(n, float(k)), jnp.zeros(n)]), state, params)
        params = optax.apply_updates(params, updates)
        if k % period == 0:
            np.testing.assert_allclose(np.asarray(params[n:]), np.asarray(params[:n]), rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(np.asarray(params[n:]), np.asarray(before))
    assert int(state[1].count) == 5


def test_the_built_optimizer_of_a_q_experiment_refreshes_its_target_network():
    learner, optimizer = build(q_config(learner={"q": QConfig(envs=4, n_steps=4, target_period=1)}))
    params = learner.init(jax.random.PRNGKey(0))
    n = learner.num_policy
    updates, _ = optimizer.update(jnp.ones_like(params), optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    assert not np.allclose(np.asarray(new[:n]), np.asarray(params[:n]))
    np.testing.assert_allclose(np.asarray(new[n:]), np.asarray(new[:n]), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- the workers' exploration


def test_each_worker_draws_its_epsilon_once_with_mnih_et_al_s_probabilities():
    learner = small_q(envs=1)
    draw = jax.jit(jax.vmap(lambda k: learner.sampler_init(k).epsilon))
    eps = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 3000)))
    for value, p in zip((0.1, 0.01, 0.5), (0.4, 0.3, 0.3)):
        assert abs(np.mean(np.isclose(eps, value)) - p) < 0.035, value


def test_epsilon_zero_acts_greedily_and_annealing_starts_from_uniform_actions():
    greedy = small_q(epsilons=(0.0,), epsilon_probs=(1.0,))
    params, batch, _ = sample(greedy)
    expected = jax.jit(lambda p, obs: jnp.argmin(q_of(greedy, p[:greedy.num_policy], obs), axis=-1))
    np.testing.assert_array_equal(np.asarray(batch.actions), np.asarray(expected(params, batch.obs)))
    annealed = small_q(epsilons=(0.0,), epsilon_probs=(1.0,), epsilon_anneal=1000, envs=16)
    _, batch, _ = sample(annealed)
    assert len(np.unique(np.asarray(batch.actions))) > 10  # epsilon 1 at first: every action is tried


def test_a_workers_replay_buffer_keeps_its_last_transitions_and_sends_a_uniform_draw_of_them():
    learner = small_q(target="one-step", replay="worker", envs=2, n_steps=3, replay_capacity=10, replay_batch=5)
    k = jax.random.PRNGKey(0)
    params = learner.init(k)
    sampler = learner.sampler_init(k)
    step = jax.jit(learner.sample)
    seen = []
    for i in range(4):
        batch, sampler = step(jax.random.fold_in(k, i), sampler, params)
        assert batch.obs.shape[:2] == (1, 5)
        assert int(sampler.replay.size) == min(6 * (i + 1), 10)
        stored = np.asarray(sampler.replay.data.obs)[:int(sampler.replay.size)]
        for row in np.asarray(batch.obs[0]):  # every sent transition is one the buffer holds
            assert np.any(np.all(stored == row, axis=1))
        seen.append(stored)
    assert int(sampler.replay.cursor) == 24 % 10  # a ring: the oldest were overwritten


@pytest.mark.parametrize(("knobs", "field"), [
    ({"target": "expected"}, "learner.q.target"),
    ({"levels": (1, 3)}, "learner.q.levels"),
    ({"levels": ()}, "learner.q.levels"),
    ({"epsilon_probs": (0.5, 0.5)}, "learner.q.epsilon_probs"),
    ({"epsilon_probs": (0.5, 0.3, 0.3)}, "learner.q.epsilon_probs"),
    ({"epsilons": (0.1, 1.5, 0.5)}, "learner.q.epsilons"),
    ({"target_period": 0}, "learner.q.target_period"),
    ({"replay": "worker"}, "learner.q.replay"),  # n-step returns cannot be replayed
    ({"replay": "central"}, "learner.q.replay"),  # likewise
    ({"replay": "prioritised"}, "learner.q.replay"),
    ({"target": "one-step", "replay": "central", "priority_exponent": -1.0}, "learner.q.priority_exponent"),
    ({"target": "one-step", "replay": "worker", "replay_capacity": 8}, "learner.q.replay_capacity"),
])
def test_bad_q_settings_are_rejected_naming_the_field(knobs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        QConfig(**knobs)


def test_the_q_experiment_is_n_step_q_on_the_kinematic_task_and_says_so():
    cfg = load_config(REPO / "experiments" / "q.toml")
    assert (cfg.learner.kind, cfg.learner.q.target, cfg.env.name) == ("q", "n-step", "kinematic")
    assert describe(to_dict(cfg)).startswith("value-based n-step Q, SGD step 0.003")


# ----------------------------------------------------------------------------- Ape-X's central replay

APEX = {"target": "one-step", "replay": "central", "envs": 4, "n_steps": 4, "target_period": 2,
        "replay_capacity": 40, "replay_batch": 16}


def test_an_actor_sends_its_transitions_with_their_td_errors_at_its_own_parameters_as_priorities():
    learner = small_q(**{k: v for k, v in APEX.items() if k != "target_period"})
    params, batch, _ = sample(learner)
    y = jax.jit(learner.returns)(params, batch)
    chosen = jnp.take_along_axis(q_of(learner, params[:learner.num_policy], batch.obs), batch.actions[..., None], -1)
    np.testing.assert_allclose(np.asarray(batch.priority), np.abs(np.asarray(chosen[..., 0] - y)), rtol=1e-5, atol=1e-6)


def test_the_server_draws_by_priority_weights_by_importance_and_reprioritises_what_it_drew():
    learner = small_q(**{k: v for k, v in APEX.items() if k != "target_period"})
    params, batch, _ = sample(learner)
    step = jax.jit(learner.server_direction)
    state = learner.server_init(jax.random.PRNGKey(5))
    only_first = batch._replace(priority=jnp.zeros_like(batch.priority).at[0, 0].set(1.0))
    _, _, state = step(state, params, only_first)  # 16 rows in; every draw is row 0 (the others: 1e-6)
    assert int(state.size) == 16 and int(state.cursor) == 16
    drawn = np.flatnonzero(np.asarray(state.data.priority[:16]) != np.asarray(only_first.priority).reshape(-1))
    np.testing.assert_array_equal(drawn, [0])  # row 0 was drawn and re-prioritised, nothing else
    y = jax.jit(learner.returns)(params, batch)
    chosen = jnp.take_along_axis(q_of(learner, params[:learner.num_policy], batch.obs), batch.actions[..., None], -1)
    td0 = abs(float(chosen[0, 0, 0] - y[0, 0]))
    np.testing.assert_allclose(float(state.data.priority[0]), td0, rtol=1e-5)
    for _ in range(3):  # 64 rows into 40: a ring
        _, losses, state = step(state, params, batch)
    assert int(state.size) == 40 and int(state.cursor) == 64 % 40
    uniform = state._replace(data=state.data._replace(priority=jnp.ones(40)))
    direction, losses, _ = step(uniform, params, batch._replace(priority=jnp.ones_like(batch.priority)))
    assert np.all(np.isfinite(np.asarray(direction))) and float(losses.value_loss) > 0


def test_central_replay_runs_with_the_learner_scheme_only_and_resumes_with_its_buffer(tmp_path):
    """The buffer, its cursor, the server's key and the target refresh count are server state: a
    run resumed from a checkpoint equals the uninterrupted one, file for file."""
    cfg = q_config(learner={"q": QConfig(**APEX)}, workers={"count": 3},
                   train={"iterations": 12, "eval_every": 4, "checkpoint_every": 4})
    with pytest.raises(ConfigError, match="needs the learner scheme"):
        registry.run(cfg, "async")
    a, _, _ = train_run(cfg, "learner", tmp_path / "a")
    c = tmp_path / "c" / a.parent.name / a.name
    shutil.copytree(a, c)
    checkpoint_files(c)[0].unlink()  # the one at 8: resume from the one at 4
    for name in ("params.npy", "trajectory.csv"):
        (c / name).unlink()
    meta = json.loads((c / "meta.json").read_text())
    (c / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    _, result, _ = train_run(cfg, "learner", tmp_path / "c", resume=True)
    assert result.status == "completed"
    for name in ("params.npy", "metrics.csv", "eval.csv", "trajectory.csv"):
        assert (a / name).read_bytes() == (c / name).read_bytes(), name


# ----------------------------------------------------------------------------- every scheme runs it

@pytest.mark.parametrize("scheme", ONE_WORKER_SCHEMES)
def test_with_one_worker_every_scheme_equals_the_sequential_q_learner(scheme):
    """Target refreshes included (every 2 server updates), and on the dynamic vehicle."""
    cfg = q_config()
    reference = run_sequential(cfg)
    result = run_sim(cfg, scheme)
    assert np.all(result.metrics["staleness"] == 0)
    np.testing.assert_allclose(result.params, reference.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.metrics["value_loss"], reference.metrics["value_loss"], rtol=1e-4)


def test_gorila_replay_and_sarsa_run_on_sim_with_several_workers():
    for knobs in ({"target": "one-step", "replay": "worker", "replay_capacity": 64, "replay_batch": 16},
                  {"target": "sarsa"}):
        cfg = q_config(learner={"q": QConfig(envs=4, n_steps=4, target_period=2, **knobs)}, workers={"count": 3})
        result = run_sim(cfg, "modify")
        assert np.all(np.isfinite(result.params)) and result.metrics["staleness"].max() > 0


def test_at_staleness_7_the_correction_cuts_the_td_gradient_error_only_while_the_steps_are_small():
    """docs/q.md: on the small-step Q experiment the exact correction removes most of the gradient
    error over the first 10 updates (staleness ramping up to 7), then its error passes async's as the
    directions grow (and the run diverges soon after)."""
    cfg = with_overrides(load_config(REPO / "experiments" / "q-small-step.toml"),
                         train={"iterations": 24, "eval_every": 24, "checkpoint_every": 0})
    stale, corrected = (run_sim(cfg, s).metrics for s in ("async", "modify@server"))
    assert corrected["grad_error"][1:10].mean() < 0.5 * stale["grad_error"][1:10].mean()
    assert corrected["grad_error"][12:24].mean() > stale["grad_error"][12:24].mean()


# ----------------------------------------------------------------------------- it learns


@pytest.mark.slow
def test_the_sequential_q_learner_tracks_the_sine_within_its_budget():
    """docs/q.md: below 0.25 m RMS lateral error on the fixed scenario within 3000 updates."""
    cfg = load_config(REPO / "experiments" / "q.toml")
    result = run_sequential(with_overrides(cfg, train={"iterations": 3000, "eval_every": 1000,
                                                         "checkpoint_every": 0}))
    initial, final = result.evals[0].summary, result.evals[-1].summary
    assert initial.left_road and not final.left_road
    assert final.rms_lateral < 0.25, final
