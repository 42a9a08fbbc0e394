"""Model-free advantage actor-critic (A3C, Mnih et al. 2016) on the same vehicles.

The second learner family (``learner.kind = "a3c"``): nothing is differentiated through
the vehicle model. A worker rolls its own ``envs`` environments forward ``n_steps`` with
the stochastic Gaussian policy at ``theta_i`` (``sample``), and the batch carries what
that rollout fixed: observations, the sampled actions and their behaviour log-probs, the
GAE(lambda) advantages and lambda-returns computed with the worker's critic ``phi_i``.
The direction field on that batch is the A3C loss gradient::

    F(params, batch) = [ d/dtheta ( mean(log pi_theta(a|s) A) - c_H mean H(pi_theta(.|s)) );
                         d/dphi   mean((V_phi(s) - R)^2) ]

in cost units (the envs' stage cost ``l >= 0``; the policy minimises cost-to-go, so
descending the surrogate makes high-advantage, i.e. costly, actions less likely). The
rollout, actions, advantages and returns are data, so ``jax.jvp`` of ``F`` is the Hessian
of this surrogate on the batch: every scheme and correction of the GPI learner works
unchanged, and the gradient error means the same thing (the applied direction against
``F(theta_k, batch)`` on the same batch).

Leaving the road terminates an episode; with costs that end there, leaving would be the
cheapest thing to do, so it is absorbing instead: the terminal value is the stage cost of
the state where the vehicle left the road, paid for ever (``l / (1 - gamma)``). The time
limit truncates: the return bootstraps from ``V`` of the last state.

``Losses.policy_loss`` is the batch's mean lambda-return (the behaviour policy's
estimated discounted cost-to-go from the batch's states: the sampled counterpart of GPI's
``J``, a learning curve); ``value_loss`` is the critic's squared error at the given
parameters. ``off_policy`` measures how off-policy a batch sampled at ``theta_i`` is at the
server's ``theta_k``: the mean importance ratio ``pi_k(a|s) / pi_i(a|s)`` of its actions (1 in
expectation whatever the staleness, so its spread is what moves) and the exact mean
``KL(pi_i(.|s) || pi_k(.|s))`` over its states (0 for a fresh batch, growing with staleness).

With ``[learner.a3c] off_policy = "vtrace"`` the batch also carries its trajectory (costs, next
observations, episode ends), and the direction at ``theta`` recomputes the advantages and the
critic's targets with V-trace (Espeholt et al. 2018, ``vtrace``): importance ratios
``pi_theta(a|s) / pi_i(a|s)`` truncated at ``rho_bar`` and ``c_bar``, values from ``theta``'s
critic (or, with ``vtrace_critic = "actor"``, the worker's values as sampled), all held fixed for
the gradient. On a fresh batch (ratios 1) that is the A3C direction;
on the ``learner`` scheme's server (a batch sampled at ``theta_i``, the direction at ``theta_k``)
it is IMPALA's off-policy-corrected learner.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asynccorr.config import LearnerConfig
from asynccorr.envs import Environment
from asynccorr.learners.base import Learner, Losses, SamplerState, batched_env, flat_params, jvp_forms
from asynccorr.learners.networks import GaussianPolicy, Value

Array = jax.Array
LOG_2PI = math.log(2.0 * math.pi)


class A3CBatch(NamedTuple):
    """One worker's rollout, flattened over (step, env); everything here is held fixed."""

    obs: Array  # (B, obs_dim) observation before each action
    actions: Array  # (B, action_dim) the sampled actions, before the env clips them
    behaviour_logp: Array  # (B,) log pi_i(a|s) at the worker's theta_i
    behaviour_mean: Array  # (B, action_dim) pi_i's mean and log-std at s: the exact KL to pi_k
    behaviour_log_std: Array
    advantages: Array  # (B,) GAE(lambda) in cost units (standardised per batch if configured)
    returns: Array  # (B,) lambda-returns: the critic's regression targets
    # what V-trace needs to recompute advantages and returns at another theta (``off_policy =
    # "vtrace"``; None otherwise, so the batch and its messages are what they were without it)
    trajectory: Trajectory | None = None


class Trajectory(NamedTuple):
    """The rollout's per-step data in its ``(n_steps, envs)`` shape (the batch's rows are its rows)."""

    cost: Array  # l(x_t, u_t)
    next_obs: Array  # (T, E, obs_dim) the state after the step, before any reset
    terminated: Array  # left the road: the next value is the absorbing ``terminal_value``
    done: Array  # terminated or truncated: the trace is cut
    terminal_value: Array
    values: Array  # V_phi_i(x_t) and V_phi_i(x_{t+1}) (the terminal value where the episode
    next_values: Array  # terminated): the actor's critic, for ``vtrace_critic = "actor"``


class Transition(NamedTuple):
    obs: Array
    action: Array
    logp: Array
    mean: Array
    log_std: Array
    cost: Array  # l(x_t, u_t)
    next_obs: Array  # observation of the state after the step, before any reset
    terminated: Array  # left the road
    done: Array  # terminated or truncated: the next transition starts a fresh episode
    terminal_value: Array  # l(x_{t+1}, 0) / (1 - gamma): the absorbing off-road cost-to-go


def gaussian_log_prob(mean: Array, log_std: Array, action: Array) -> Array:
    """log N(action; mean, exp(log_std)^2), summed over the action's dimensions."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, axis=-1)


def gaussian_kl(mean_p: Array, log_std_p: Array, mean_q: Array, log_std_q: Array) -> Array:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)), diagonal, summed over the action's dimensions.

    Written as ``z^2 / 2 + (expm1(2d) - 2d) / 2`` (``d`` the log-std difference): both terms are
    non-negative, so two nearby policies (a message one version stale) keep a positive KL in float32
    instead of cancelling ``var_ratio - 1 - 2d`` to zero or below.
    """
    d = log_std_p - log_std_q
    z = (mean_p - mean_q) * jnp.exp(-log_std_q)
    return jnp.sum(0.5 * (z * z + jnp.expm1(2.0 * d) - 2.0 * d), axis=-1)


def gaussian_entropy(log_std: Array) -> Array:
    return jnp.sum(log_std + 0.5 * (1.0 + LOG_2PI), axis=-1)


def gae(costs: Array, values: Array, next_values: Array, done: Array, gamma: float, lam: float) -> Array:
    """GAE(lambda) advantages of a ``(T, E)`` rollout in cost units; ``next_values`` already
    holds the terminal value where an episode terminated; ``done`` cuts the trace."""
    deltas = costs + gamma * next_values - values

    def back(after: Array, x: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, cut = x
        adv = delta + gamma * lam * jnp.where(cut, 0.0, after)
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(values[0]), (deltas, done), reverse=True)
    return adv


class VTrace(NamedTuple):
    targets: Array  # v_s: the critic's regression targets
    pg_advantages: Array  # rho_s (l_s + gamma q_{s+1} - V(x_s)): the policy gradient's advantages


def vtrace(values: Array, next_values: Array, costs: Array, done: Array, ratios: Array, gamma: float,
           lam: float, rho_bar: float, c_bar: float) -> VTrace:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, eq. 1 and section 4.2)
    of a ``(T, E)`` rollout in cost units, for the policy whose ratios to the behaviour policy are
    ``ratios = pi(a|s) / mu(a|s)``; ``next_values`` holds ``V(x_{t+1})`` (the terminal value where an
    episode terminated) and ``done`` cuts the traces where an episode ended.

    ``v_s = V(x_s) + sum_t gamma^(t-s) (prod_{i<t} c_i) rho_t delta_t`` with ``delta_t = l_t + gamma
    V(x_{t+1}) - V(x_t)``, ``rho_t = min(rho_bar, ratio_t)``, ``c_i = lam min(c_bar, ratio_i)``; the
    advantage bootstraps from ``q_{s+1} = lam v_{s+1} + (1 - lam) V(x_{s+1})`` (rlax's convention),
    so with ``ratios = 1`` the targets are the lambda-returns and the advantages GAE(lambda).
    Everything is held fixed for the gradient (``stop_gradient``): the direction field's targets are
    data at the point where it is evaluated."""
    rho = jnp.minimum(rho_bar, ratios)
    c = lam * jnp.minimum(c_bar, ratios)
    deltas = rho * (costs + gamma * next_values - values)

    def back(after: Array, x: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        delta, trace, cut = x
        acc = delta + gamma * trace * jnp.where(cut, 0.0, after)
        return acc, acc

    _, acc = jax.lax.scan(back, jnp.zeros_like(values[0]), (deltas, c, done), reverse=True)
    targets = values + acc
    after = jnp.concatenate([acc[1:], jnp.zeros_like(acc[:1])])  # v_{s+1} - V(x_{s+1}); 0 after the last
    q_next = next_values + lam * jnp.where(done, 0.0, after)
    advantages = rho * (costs + gamma * q_next - values)
    return VTrace(jax.lax.stop_gradient(targets), jax.lax.stop_gradient(advantages))


def standardised(advantages: Array) -> Array:
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def networks(env: Environment, config: LearnerConfig, dtype: Any) -> tuple[GaussianPolicy, Value]:
    """The A3C learner's policy and value modules."""
    a3c = config.a3c
    return (GaussianPolicy(config.policy_hidden, env.action_dim, config.activation, a3c.log_std_init,
                           (a3c.log_std_min, a3c.log_std_max), a3c.state_dependent_std, dtype),
            Value(config.value_hidden, config.activation, dtype))


def policy_surrogate(policy_net: GaussianPolicy, policy_tree: Any, batch: A3CBatch, entropy_coef: float) -> Array:
    """``mean(log pi(a|s) A) - c_H mean H``: the actor's loss, advantages held fixed (cost units)."""
    mean, log_std = policy_net.apply(policy_tree, batch.obs)
    logp = gaussian_log_prob(mean, log_std, batch.actions)
    return jnp.mean(logp * batch.advantages) - entropy_coef * jnp.mean(gaussian_entropy(log_std))


def critic_loss(value_net: Value, value_tree: Any, batch: A3CBatch) -> Array:
    """``mean((V(s) - R)^2)``, the returns held fixed."""
    return jnp.mean((value_net.apply(value_tree, batch.obs) - batch.returns) ** 2)


def objective(learner: Learner, flat: Array, batch: A3CBatch) -> Array:
    """The scalar A3C loss whose gradient is the direction field (actor and critic nets are
    separate, so ``F = grad`` of the sum)."""
    policy_net, value_net = networks(learner.env, learner.config, flat.dtype)
    policy_tree, value_tree = learner.unravel(flat)
    return (policy_surrogate(policy_net, policy_tree, batch, learner.config.a3c.entropy_coef)
            + critic_loss(value_net, value_tree, batch))


def make_a3c_learner(env: Environment, env_params: Any, config: LearnerConfig, dtype: Any = jnp.float32) -> Learner:
    """The A3C learner's pure functions for ``env`` (float64 ``dtype`` needs ``jax.enable_x64``)."""
    a3c = config.a3c
    obs_dim = env.obs_dim(env_params)
    policy_net, value_net = networks(env, config, dtype)
    dummy = jax.device_put(np.zeros((obs_dim,), dtype))  # a transfer, not an op to compile
    layout = flat_params(policy_net, value_net, dummy, dtype)
    split, unravel_policy, unravel_value = layout.split, layout.unravel_policy, layout.unravel_value
    gamma, lam, envs, n_steps = config.gamma, a3c.gae_lambda, a3c.envs, a3c.n_steps
    vtrace_on = a3c.off_policy == "vtrace"
    worlds = batched_env(env, env_params, envs, gamma)

    def pi(theta: Array, obs: Array) -> tuple[Array, Array]:
        return policy_net.apply(unravel_policy(theta), obs)

    def v(phi: Array, obs: Array) -> Array:
        return value_net.apply(unravel_value(phi), obs)

    def surrogate(theta: Array, batch: A3CBatch) -> Array:
        return policy_surrogate(policy_net, unravel_policy(theta), batch, a3c.entropy_coef)

    def value_loss(phi: Array, batch: A3CBatch) -> Array:
        return critic_loss(value_net, unravel_value(phi), batch)

    def losses(flat: Array, batch: A3CBatch) -> Losses:
        theta, phi = split(flat)
        targets = at_theta(theta, phi, batch) if vtrace_on else batch
        return Losses(policy_loss=jnp.mean(batch.returns), value_loss=value_loss(phi, targets))

    def at_theta(theta: Array, phi: Array, batch: A3CBatch) -> A3CBatch:
        """The batch with V-trace's advantages and targets at ``(theta, phi)`` in place of the worker's."""
        tr = batch.trajectory
        shape = tr.cost.shape
        mean, log_std = pi(theta, batch.obs)
        ratios = jnp.exp(gaussian_log_prob(mean, log_std, batch.actions) - batch.behaviour_logp).reshape(shape)
        if a3c.vtrace_critic == "actor":
            values, next_values = tr.values, tr.next_values
        else:
            values = v(phi, batch.obs).reshape(shape)
            next_values = jnp.where(tr.terminated, tr.terminal_value, v(phi, tr.next_obs))
        out = vtrace(values, next_values, tr.cost, tr.done, ratios, gamma, lam, a3c.vtrace_rho_bar,
                     a3c.vtrace_c_bar)
        adv = out.pg_advantages.reshape(-1)
        return batch._replace(advantages=standardised(adv) if a3c.normalize_advantages else adv,
                              returns=out.targets.reshape(-1))

    def direction(flat: Array, batch: A3CBatch) -> tuple[Array, Losses]:
        theta, phi = split(flat)
        sampled_returns = batch.returns  # the behaviour policy's lambda-returns: the learning curve
        if vtrace_on:
            batch = at_theta(theta, phi, batch)
        g_theta = jax.grad(surrogate)(theta, batch)
        v_loss, g_phi = jax.value_and_grad(value_loss)(phi, batch)
        return jnp.concatenate([g_theta, g_phi]), Losses(policy_loss=jnp.mean(sampled_returns), value_loss=v_loss)

    direction_jvp, linearize = jvp_forms(direction)

    def sampler_init(key: Array) -> SamplerState:
        """``envs`` reset states, their episode clocks staggered."""
        return SamplerState(env_state=worlds.reset(*jax.random.split(key)))

    def sample(key: Array, sampler: SamplerState, flat: Array) -> tuple[A3CBatch, SamplerState]:
        """Roll the worker's envs ``n_steps`` with pi_theta, then fix advantages and returns with V_phi."""
        theta, phi = split(flat)

        def advance(states: Any, k: Array) -> tuple[Any, Transition]:
            k_noise, k_reset = jax.random.split(k)
            obs = worlds.observe(states)
            mean, log_std = pi(theta, obs)
            action = mean + jnp.exp(log_std) * jax.random.normal(k_noise, mean.shape, mean.dtype)
            out = worlds.step(states, action, k_reset)
            return out.state, Transition(obs, action, gaussian_log_prob(mean, log_std, action), mean, log_std,
                                         out.cost, out.obs, out.terminated, out.done, out.terminal_value)

        states, tr = jax.lax.scan(advance, sampler.env_state, jax.random.split(key, n_steps))
        values = v(phi, tr.obs)
        next_values = jnp.where(tr.terminated, tr.terminal_value, v(phi, tr.next_obs))
        adv = gae(tr.cost, values, next_values, tr.done, gamma, lam)
        returns = adv + values
        if a3c.normalize_advantages:
            adv = standardised(adv)
        trajectory = (Trajectory(tr.cost, tr.next_obs, tr.terminated, tr.done, tr.terminal_value, values,
                                 next_values) if vtrace_on else None)
        batch = A3CBatch(*(x.reshape((n_steps * envs,) + x.shape[2:])
                           for x in (tr.obs, tr.action, tr.logp, tr.mean, tr.log_std, adv, returns)),
                         trajectory=trajectory)
        return batch, SamplerState(env_state=states)

    def off_policy(flat: Array, batch: A3CBatch) -> tuple[Array, Array]:
        mean, log_std = pi(split(flat)[0], batch.obs)
        ratio = jnp.exp(gaussian_log_prob(mean, log_std, batch.actions) - batch.behaviour_logp)
        kl = gaussian_kl(batch.behaviour_mean, batch.behaviour_log_std, mean, log_std)
        return jnp.mean(ratio), jnp.mean(kl)

    return Learner(
        env=env,
        env_params=env_params,
        config=config,
        num_policy=layout.num_policy,
        num_value=layout.num_value,
        init=layout.init,
        unravel=layout.unravel,
        act=lambda flat, obs: pi(split(flat)[0], obs)[0],
        value=lambda flat, obs: v(split(flat)[1], obs),
        returns=lambda flat, batch: batch.returns,
        losses=losses,
        direction=direction,
        direction_jvp=direction_jvp,
        linearize=linearize,
        sampler_init=sampler_init,
        sample=sample,
        off_policy=off_policy,
    )
