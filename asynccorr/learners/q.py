"""The value-based learners of Mnih et al. (2016) on the same vehicles: asynchronous one-step
Q-learning, one-step SARSA and n-step Q-learning.

The third learner family (``learner.kind = "q"``). The normalised action box is discretised into
a grid (``[learner.q] levels`` per dimension) and one network ``Q(s, .; theta)`` gives the
discounted cost-to-go of each grid action (a dueling head by default); the greedy policy takes the
cheapest. The flat vector
is ``[theta; theta_minus]``: the online network, then the **shared target network**, which lives
on the server like every parameter, is pulled by the workers with the rest, and is refreshed
(``theta_minus <- theta``) every ``target_period`` server updates by ``target_refresh``, an optax
transformation the server chains after its optimizer (``Learner.server_transform``).

A worker rolls its ``envs`` environments ``n_steps`` with its own epsilon-greedy policy (its final
epsilon drawn once from ``epsilons`` with ``epsilon_probs``, reached linearly from 1 over
``epsilon_anneal`` of its batches) and the batch carries the transitions. The direction field is
the TD semi-gradient with the targets bootstrapped from the target block of the point where it is
evaluated and held fixed::

    F([theta; theta_minus], batch) = [ d/dtheta mean((Q(s, a; theta) - y)^2) ; 0 ]
    y = l + gamma min_a' Q(s', a'; theta_minus)              one-step Q
    y = l + gamma Q(s', a'_taken; theta_minus)               one-step SARSA
    y_t = l_t + gamma y_{t+1}, bootstrapped at the rollout's end   n-step Q (Mnih et al.'s forward view)

so ``jax.jvp`` of ``F`` is the Hessian of the squared TD error in ``theta`` with the targets as
data: a target refresh between a worker's pull and the server's update moves ``F`` but is not in
that first-order term. Leaving the road is absorbing (the stage cost there, paid for ever) and the
time limit bootstraps, as for A3C.

``replay = "worker"`` is Gorila's per-worker uniform replay: each worker keeps a ring buffer of its
last ``replay_capacity`` transitions in its sampler state and sends ``replay_batch`` of them,
drawn uniformly (one-step targets only). ``replay = "central"`` is Ape-X's (Horgan et al. 2018),
with the ``learner`` scheme: workers send their rollouts with initial priorities (their |TD
error| at ``theta_i``), and the server keeps one prioritised buffer of everybody's last
``replay_capacity`` transitions, draws its batch from it (``server_direction``) and re-prioritises
what it drew.

``Losses.policy_loss`` is the batch's mean target ``y``: the estimated discounted cost-to-go of the
behaviour from the batch's states (a learning curve, as A3C's mean lambda-return);
``value_loss`` the mean squared TD error.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asynccorr.config import LearnerConfig
from asynccorr.envs import Environment
from asynccorr.learners.base import Learner, Losses, batched_env, flat_params, jvp_forms
from asynccorr.learners.networks import MLP

Array = jax.Array
PRIORITY_FLOOR = 1e-6  # added to every |TD error| so that no stored transition has probability 0


class QBatch(NamedTuple):
    """Transitions in their ``(n_steps, envs)`` shape (``(1, replay_batch)`` from a replay buffer)."""

    obs: Array  # (T, E, obs_dim) the observation before each action
    actions: Array  # (T, E) int32 index into the action grid
    cost: Array  # l(x_t, u_t)
    next_obs: Array  # (T, E, obs_dim) the state after the step, before any reset
    next_actions: Array  # (T, E) the behaviour's action at next_obs (SARSA's a')
    terminated: Array  # left the road: the next value is the absorbing ``terminal_value``
    done: Array  # terminated or truncated: an n-step return bootstraps here
    terminal_value: Array
    # central replay (Ape-X) only, else None: the actor's |TD error| at theta_i (the transition's
    # initial priority) and, in a batch the server drew from its buffer, the importance weights
    priority: Array | None = None
    weight: Array | None = None


class Replay(NamedTuple):
    """A worker's ring buffer of one-step transitions (Gorila), leading axis = capacity."""

    data: QBatch  # each field (capacity, ...)
    size: Array  # entries filled
    cursor: Array  # where the next transition goes


class QSamplerState(NamedTuple):
    env_state: Any  # batched env state, leading axis = envs
    epsilon: Array  # this worker's final epsilon
    batches: Array  # batches sampled so far: the annealing clock
    replay: Replay | None = None


class CentralReplay(NamedTuple):
    """The server's prioritised replay (Ape-X): every worker's transitions, leading axis = capacity."""

    data: QBatch  # each field (capacity, ...); priority = |TD error| when last computed
    size: Array
    cursor: Array
    key: Array  # the server's draws


class TargetRefreshState(NamedTuple):
    count: Array  # server updates so far


def action_grid(levels: tuple[int, ...], action_dim: int) -> np.ndarray:
    """The discrete actions ``(num_actions, action_dim)``: the grid of ``levels[d]`` values evenly
    spread over [-1, 1] in each dimension (one level is 0); dimensions not listed are held at 0."""
    axes = [np.linspace(-1.0, 1.0, k) if k > 1 else np.zeros(1) for k in levels[:action_dim]]
    axes += [np.zeros(1)] * (action_dim - len(axes))
    return np.array(list(itertools.product(*axes)), np.float32)


def network(num_actions: int, config: LearnerConfig, dtype: Any) -> MLP:
    """The Q network: ``value_hidden`` layers, then one output per action (plus one for ``V`` with the
    dueling head)."""
    return MLP(config.value_hidden, num_actions + int(config.q.dueling), config.activation, dtype)


def q_values(out: Array, dueling: bool) -> Array:
    """The network's outputs as ``Q(s, .)``: as they are, or the dueling head's ``V(s) + A(s, a) -
    mean_a A(s, a)`` (Wang et al. 2016: the state's value is learned once, the small differences
    between actions on their own)."""
    if not dueling:
        return out
    adv = out[..., 1:]
    return out[..., :1] + adv - jnp.mean(adv, axis=-1, keepdims=True)


def n_step_targets(cost: Array, bootstrap: Array, done: Array, gamma: float) -> Array:
    """Mnih et al.'s n-step targets of a ``(T, E)`` rollout: ``y_t = l_t + gamma y_{t+1}``, with
    ``y_{t+1}`` replaced by ``bootstrap_t`` (the next state's value) where the episode ended or the
    rollout does: each state's return runs to the rollout's end or its episode's."""
    last = jnp.zeros_like(done).at[-1].set(True)
    cut = jnp.logical_or(done, last)

    def back(after: Array, x: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        c, b, stop = x
        y = c + gamma * jnp.where(stop, b, after)
        return y, y

    _, y = jax.lax.scan(back, jnp.zeros_like(cost[0]), (cost, bootstrap, cut), reverse=True)
    return y


def target_refresh(num_online: int, period: int) -> optax.GradientTransformation:
    """The server's target-network refresh, chained after its optimizer: every ``period``-th update
    sets the target block to the online block as updated (``theta_minus <- theta``); in between the
    target block does not move. Its count is server state, checkpointed with the optimizer's."""

    def init(params: Array) -> TargetRefreshState:
        del params
        return TargetRefreshState(count=jnp.zeros((), jnp.int32))

    def update(updates: Array, state: TargetRefreshState, params: Array | None = None
               ) -> tuple[Array, TargetRefreshState]:
        if params is None:
            raise ValueError("target_refresh needs the parameters")
        count = state.count + 1
        online = params[:num_online] + updates[:num_online]
        refresh = jnp.where(count % period == 0, online - params[num_online:], jnp.zeros_like(updates[num_online:]))
        return jnp.concatenate([updates[:num_online], refresh]), TargetRefreshState(count)

    return optax.GradientTransformation(init, update)


def make_q_learner(env: Environment, env_params: Any, config: LearnerConfig, dtype: Any = jnp.float32) -> Learner:
    """The value-based learner's pure functions for ``env`` (float64 ``dtype`` needs ``jax.enable_x64``)."""
    q = config.q
    obs_dim = env.obs_dim(env_params)
    grid_np = action_grid(q.levels, env.action_dim)
    num_actions = grid_np.shape[0]
    net = network(num_actions, config, dtype)
    dummy = jax.device_put(np.zeros((obs_dim,), dtype))
    layout = flat_params(net, net, dummy, dtype)  # [online; target], the same shapes
    num_online = layout.num_policy
    gamma, envs, n_steps = config.gamma, q.envs, q.n_steps
    worlds = batched_env(env, env_params, envs, gamma)
    epsilons = jax.device_put(np.asarray(q.epsilons, np.float32))
    log_probs = jax.device_put(np.log(np.maximum(np.asarray(q.epsilon_probs, np.float64), 1e-30)).astype(np.float32))

    def init(key: Array) -> Array:
        """Online and target networks start equal (the target is a copy)."""
        online = layout.init(key)[:num_online]
        return jnp.concatenate([online, online])

    def split(flat: Array) -> tuple[Array, Array]:
        return flat[:num_online], flat[num_online:]

    def qvalues(block: Array, obs: Array) -> Array:
        return q_values(net.apply(layout.unravel_policy(block), obs), q.dueling)

    def greedy(block: Array, obs: Array) -> Array:
        return jnp.argmin(qvalues(block, obs), axis=-1).astype(jnp.int32)

    def targets(target_block: Array, batch: QBatch) -> Array:
        """The TD targets bootstrapped from ``target_block`` (held fixed)."""
        q_next = qvalues(target_block, batch.next_obs)
        if q.target == "sarsa":
            nxt = jnp.take_along_axis(q_next, batch.next_actions[..., None], axis=-1)[..., 0]
        else:
            nxt = jnp.min(q_next, axis=-1)
        bootstrap = jnp.where(batch.terminated, batch.terminal_value, nxt)
        if q.target == "n-step":
            y = n_step_targets(batch.cost, bootstrap, batch.done, gamma)
        else:
            y = batch.cost + gamma * bootstrap
        return jax.lax.stop_gradient(y)

    def td_errors(online: Array, y: Array, batch: QBatch) -> Array:
        return jnp.take_along_axis(qvalues(online, batch.obs), batch.actions[..., None], axis=-1)[..., 0] - y

    def td_loss(online: Array, y: Array, batch: QBatch) -> Array:
        """Mean squared TD error; importance-weighted in a prioritised draw (Schaul et al. 2016)."""
        delta = td_errors(online, y, batch)
        return jnp.mean(delta ** 2 if batch.weight is None else batch.weight * delta ** 2)

    def losses(flat: Array, batch: QBatch) -> Losses:
        online, target = split(flat)
        y = targets(target, batch)
        return Losses(policy_loss=jnp.mean(y), value_loss=td_loss(online, y, batch))

    def direction(flat: Array, batch: QBatch) -> tuple[Array, Losses]:
        online, target = split(flat)
        y = targets(target, batch)
        loss, g = jax.value_and_grad(td_loss)(online, y, batch)
        return jnp.concatenate([g, jnp.zeros_like(target)]), Losses(policy_loss=jnp.mean(y), value_loss=loss)

    direction_jvp, linearize = jvp_forms(direction)

    def explore(key: Array, online: Array, obs: Array, epsilon: Array) -> Array:
        """epsilon-greedy actions at ``obs`` (one per row)."""
        k_coin, k_any = jax.random.split(key)
        rows = obs.shape[0]
        uniform = jax.random.randint(k_any, (rows,), 0, num_actions, jnp.int32)
        return jnp.where(jax.random.uniform(k_coin, (rows,)) < epsilon, uniform, greedy(online, obs))

    def empty_buffer() -> QBatch:
        """``replay_capacity`` zero transitions: a replay buffer before anything is stored."""
        cap = q.replay_capacity
        return QBatch(obs=jnp.zeros((cap, obs_dim), dtype), actions=jnp.zeros((cap,), jnp.int32),
                      cost=jnp.zeros((cap,), dtype), next_obs=jnp.zeros((cap, obs_dim), dtype),
                      next_actions=jnp.zeros((cap,), jnp.int32), terminated=jnp.zeros((cap,), bool),
                      done=jnp.zeros((cap,), bool), terminal_value=jnp.zeros((cap,), dtype))

    def sampler_init(key: Array) -> QSamplerState:
        """``envs`` reset states with staggered episode clocks (as the other samplers), this worker's
        epsilon, and (with replay) its empty buffer."""
        k_reset, k_clock, k_eps = jax.random.split(key, 3)
        epsilon = epsilons[jax.random.categorical(k_eps, log_probs)]
        replay = None
        if q.replay == "worker":
            replay = Replay(empty_buffer(), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        return QSamplerState(worlds.reset(k_reset, k_clock), epsilon, jnp.zeros((), jnp.int32), replay)

    def current_epsilon(sampler: QSamplerState) -> Array:
        if q.epsilon_anneal == 0:
            return sampler.epsilon
        frac = jnp.minimum(sampler.batches.astype(jnp.float32) / q.epsilon_anneal, 1.0)
        return 1.0 + frac * (sampler.epsilon - 1.0)

    def rollout(key: Array, sampler: QSamplerState, online: Array) -> tuple[QBatch, Any]:
        """Roll the envs ``n_steps`` epsilon-greedily; a' is the next action taken, or (after an
        episode end and at the rollout's end) one drawn from the same policy at the next state."""
        epsilon = current_epsilon(sampler)
        grid = jnp.asarray(grid_np, dtype)

        def advance(states: Any, k: Array) -> tuple[Any, tuple]:
            k_act, k_boot, k_reset = jax.random.split(k, 3)
            obs = worlds.observe(states)
            a = explore(k_act, online, obs, epsilon)
            out = worlds.step(states, grid[a], k_reset)
            boot_action = explore(k_boot, online, out.obs, epsilon)
            return out.state, (obs, a, out.cost, out.obs, boot_action, out.terminated, out.done, out.terminal_value)

        states, (obs, a, cost, next_obs, boot, terminated, done, stuck) = jax.lax.scan(
            advance, sampler.env_state, jax.random.split(key, n_steps))
        taken_next = jnp.concatenate([a[1:], boot[-1:]])
        last = jnp.zeros_like(done).at[-1].set(True)
        next_actions = jnp.where(jnp.logical_or(done, last), boot, taken_next)
        return QBatch(obs, a, cost, next_obs, next_actions, terminated, done, stuck), states

    def sample(key: Array, sampler: QSamplerState, flat: Array) -> tuple[QBatch, QSamplerState]:
        k_roll, k_draw = jax.random.split(key)
        batch, states = rollout(k_roll, sampler, split(flat)[0])
        if q.replay == "central":  # the actor's initial priorities, at its own theta_i and target block
            online, target = split(flat)
            batch = batch._replace(priority=jnp.abs(td_errors(online, targets(target, batch), batch)))
        replay = sampler.replay
        if replay is not None:
            replay = insert(replay, batch)
            idx = jax.random.randint(k_draw, (q.replay_batch,), 0, replay.size)
            batch = jax.tree.map(lambda x: x[idx][None], replay.data)
        return batch, QSamplerState(states, sampler.epsilon, sampler.batches + 1, replay)

    def insert(replay: Replay, batch: QBatch) -> Replay:
        """Append a rollout's transitions (flattened over step and env) to the ring buffer."""
        cap, rows = q.replay_capacity, envs * n_steps
        pos = (replay.cursor + jnp.arange(rows)) % cap
        flat_batch = jax.tree.map(lambda x: x.reshape((rows,) + x.shape[2:]), batch)
        data = jax.tree.map(lambda buf, x: buf.at[pos].set(x), replay.data, flat_batch)
        return Replay(data, jnp.minimum(replay.size + rows, cap), (replay.cursor + rows) % cap)

    def server_init(key: Array) -> CentralReplay:
        """The server's empty prioritised buffer (central replay only)."""
        data = empty_buffer()._replace(priority=jnp.zeros((q.replay_capacity,), dtype))
        return CentralReplay(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), key)

    def server_direction(state: CentralReplay, flat: Array, batch: QBatch) -> tuple[Array, Losses, CentralReplay]:
        """Ape-X's learner step at ``flat`` (the server's theta_k): add the message's transitions with
        the actor's priorities, draw ``replay_batch`` with probability ``p^alpha / sum p^alpha``, take the
        importance-weighted direction on them (weights ``(n P(i))^-beta`` over their maximum) and set
        their priorities to their TD errors at ``flat``."""
        rows, cap = batch.cost.size, q.replay_capacity
        pos = (state.cursor + jnp.arange(rows)) % cap
        new = jax.tree.map(lambda x: x.reshape((rows,) + x.shape[2:]), batch._replace(weight=None))
        data = jax.tree.map(lambda buf, x: buf.at[pos].set(x), state.data._replace(weight=None), new)
        size = jnp.minimum(state.size + rows, cap)
        key, k_draw = jax.random.split(state.key)
        filled = jnp.arange(cap) < size
        scaled = jnp.where(filled, (data.priority + PRIORITY_FLOOR) ** q.priority_exponent, 0.0)
        probs = scaled / jnp.sum(scaled)
        idx = jax.random.choice(k_draw, cap, (q.replay_batch,), p=probs)
        weight = (size * probs[idx]) ** (-q.importance_exponent)
        drawn = jax.tree.map(lambda x: x[idx][None], data._replace(priority=None))
        drawn = drawn._replace(weight=(weight / jnp.max(weight))[None])
        online, target = split(flat)
        y = targets(target, drawn)
        loss, g = jax.value_and_grad(td_loss)(online, y, drawn)
        priority = data.priority.at[idx].set(jnp.abs(td_errors(online, y, drawn))[0])
        direction = jnp.concatenate([g, jnp.zeros_like(target)])
        return (direction, Losses(policy_loss=jnp.mean(y), value_loss=loss),
                CentralReplay(data._replace(priority=priority), size, (state.cursor + rows) % cap, key))

    def act(flat: Array, obs: Array) -> Array:
        return jnp.asarray(grid_np, dtype)[greedy(split(flat)[0], obs)]

    return Learner(
        env=env,
        env_params=env_params,
        config=config,
        num_policy=num_online,
        num_value=layout.num_value,
        init=init,
        unravel=layout.unravel,
        act=act,
        value=lambda flat, obs: jnp.min(qvalues(split(flat)[0], obs), axis=-1),
        returns=lambda flat, batch: targets(split(flat)[1], batch),
        losses=losses,
        direction=direction,
        direction_jvp=direction_jvp,
        linearize=linearize,
        sampler_init=sampler_init,
        sample=sample,
        server_transform=target_refresh(num_online, q.target_period),
        server_init=server_init if q.replay == "central" else None,
        server_direction=server_direction if q.replay == "central" else None,
    )
