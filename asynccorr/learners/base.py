"""The learner interface: what every learner gives the schemes and backends.

A learner is a ``Learner`` of pure functions over one flat parameter vector
``params = [theta; phi]`` (policy then value): the **update-direction field**
``F(params, batch)`` (the gradient-like vector a worker sends), its Jacobian-vector
products (``jvp_forms``: the building block of every staleness correction), batch
sampling, evaluation and the per-update losses. ``learners.gpi`` (model-based
policy iteration, the default), ``learners.a3c`` (model-free advantage actor-critic)
and ``learners.q`` (value-based one-step Q, SARSA, n-step Q; its ``phi`` is the target
network) implement it; ``learners.build`` picks one from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from asynccorr.config import LearnerConfig
from asynccorr.envs import Environment

Array = jax.Array
Batch = Any  # an env-state pytree with a leading batch axis


class Losses(NamedTuple):
    policy_loss: Array  # J: mean n-step model cost-to-go under pi (what the actor minimises)
    value_loss: Array  # mean squared error of V on the n-step target


class SamplerState(NamedTuple):
    """Exploratory rollouts that supply the 'on-policy' half of each batch."""

    env_state: Any  # batched env state, leading axis = rollout_states


class EnvStep(NamedTuple):
    """One step of a model-free worker's ``envs`` environments (leading axis = envs)."""

    state: Any  # the states after the step, a fresh reset where the episode ended
    obs: Array  # the observation after the step, before any reset
    cost: Array  # l(x_t, u_t)
    terminated: Array  # left the road
    done: Array  # terminated or truncated: the next step starts a fresh episode
    terminal_value: Array  # l(x_{t+1}, 0) / (1 - gamma): leaving the road is absorbing


class BatchedEnv(NamedTuple):
    """A model-free worker's ``envs`` environments, vmapped (A3C and Q roll them the same way)."""

    observe: Callable[[Any], Array]  # states -> observations
    step: Callable[[Any, Array, Array], EnvStep]  # (states, actions, reset key) -> EnvStep
    reset: Callable[[Array, Array], Any]  # (reset key, clock key) -> states, episode clocks staggered


def batched_env(env: Environment, env_params: Any, envs: int, gamma: float) -> BatchedEnv:
    """``envs`` copies of ``env`` stepped together. Leaving the road is absorbing: its terminal value
    is the stage cost there paid for ever (``l / (1 - gamma)``; ``max_steps`` times at gamma = 1),
    since with costs that simply stopped, leaving would be the cheapest thing to do; an episode that
    ends is replaced by a fresh reset. The episode clocks of a reset start staggered over [0,
    max_steps), so the episodes do not all hit the time limit together (as the GPI sampler)."""
    absorbing = float(env_params.max_steps) if gamma == 1.0 else 1.0 / (1.0 - gamma)
    observe = jax.vmap(env.observation, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(None, 0, 0, None))
    utility = jax.vmap(env.utility, in_axes=(0, 0, None))
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))

    def step(states: Any, action: Array, k_reset: Array) -> EnvStep:
        ts = step_envs(None, states, action, env_params)
        done = jnp.logical_or(ts.terminated, ts.truncated)
        _, fresh = reset_envs(jax.random.split(k_reset, envs), env_params)
        nxt = jax.tree.map(lambda f, s: jnp.where(done.reshape((-1,) + (1,) * (s.ndim - 1)), f, s),
                           fresh, ts.state)
        stuck = absorbing * utility(ts.state, jnp.zeros_like(action), env_params)
        return EnvStep(nxt, ts.obs, -ts.reward, ts.terminated, done, stuck)

    def reset(k_reset: Array, k_clock: Array) -> Any:
        _, states = reset_envs(jax.random.split(k_reset, envs), env_params)
        clock = jax.random.randint(k_clock, (envs,), 0, env_params.max_steps)
        return states.replace(step=clock.astype(states.step.dtype))

    return BatchedEnv(lambda states: observe(states, env_params), step, reset)


def no_likelihood(flat: Array, batch: Batch) -> tuple[Array, Array]:
    """``off_policy`` of a learner whose policy has no likelihood (GPI's deterministic one): nan, nan."""
    return (jnp.full((), jnp.nan, jnp.float32),) * 2


class Learner(NamedTuple):
    """Pure functions of a learner for one env and one config (optax-style bundle): GPI
    (``learners.gpi``), A3C (``learners.a3c``) or Q (``learners.q``). Every trainer,
    backend and scheme sees only these."""

    env: Environment
    env_params: Any
    config: LearnerConfig
    num_policy: int  # length of theta in the flat vector
    num_value: int  # length of phi
    init: Callable[[Array], Array]  # key -> flat params
    unravel: Callable[[Array], tuple[Any, Any]]  # flat -> (policy tree, value tree)
    act: Callable[[Array, Array], Array]  # (flat params, obs) -> action
    value: Callable[[Array, Array], Array]  # (flat params, obs) -> V
    returns: Callable[[Array, Batch], Array]  # per-state n-step model return R
    losses: Callable[[Array, Batch], Losses]
    direction: Callable[[Array, Batch], tuple[Array, Losses]]
    direction_jvp: Callable[[Array, Batch, Array], tuple[Array, Array, Losses]]
    linearize: Callable[[Array, Batch], tuple[Array, Callable[[Array], Array], Losses]]
    sampler_init: Callable[[Array], SamplerState]
    sample: Callable[[Array, SamplerState, Array], tuple[Batch, SamplerState]]
    # (flat params theta_k, batch) -> (mean pi_k(a|s) / pi_i(a|s) over the batch's actions, mean
    # KL(pi_i || pi_k) over its states): how off-policy a batch sampled at theta_i is at theta_k
    # (nan, nan: GPI's deterministic policy has no likelihood)
    off_policy: Callable[[Array, Batch], tuple[Array, Array]] = no_likelihood
    # what the server does to its parameters after its optimizer's step, every update (an optax
    # transformation chained after the optimizer): the Q learner's target-network refresh; None: nothing
    server_transform: Any = None
    # server-side learner state (the Q learner's central replay, Ape-X): key -> state, and the
    # ``learner`` scheme's direction at theta_k on a shipped batch through it:
    # (state, theta_k, batch) -> (direction, losses, state'); None: the plain ``direction``
    server_init: Callable[[Array], Any] | None = None
    server_direction: Callable[[Any, Array, Batch], tuple[Array, Losses, Any]] | None = None

    @property
    def num_params(self) -> int:
        return self.num_policy + self.num_value


def _ravel_shapes(net: Any, dummy: Array) -> tuple[int, Callable[[Array], Any]]:
    """The size of a net's flat parameter vector and ``ravel_pytree``'s inverse for it, from the shapes
    alone: ``jax.eval_shape`` of the initialiser and of the ravel (which keeps its inverse, a function of
    the shapes only), so that nothing is computed or compiled op by op (start-up time)."""
    shapes = jax.eval_shape(net.init, jax.ShapeDtypeStruct((2,), jnp.uint32), dummy)
    inverse: list[Callable[[Array], Any]] = []

    def ravel(tree: Any) -> Array:
        flat, unravel = ravel_pytree(tree)
        inverse.append(unravel)
        return flat

    flat = jax.eval_shape(ravel, shapes)
    return int(np.prod(flat.shape)), inverse[0]


class FlatParams(NamedTuple):
    """One flat ``[theta; phi]`` vector for a policy and a value net: layout, init and inverse."""

    num_policy: int
    num_value: int
    init: Callable[[Array], Array]  # key -> flat params (both nets' own initialisers)
    split: Callable[[Array], tuple[Array, Array]]  # flat -> (theta, phi)
    unravel_policy: Callable[[Array], Any]  # theta -> policy tree
    unravel_value: Callable[[Array], Any]  # phi -> value tree

    def unravel(self, flat: Array) -> tuple[Any, Any]:
        theta, phi = self.split(flat)
        return self.unravel_policy(theta), self.unravel_value(phi)


def flat_params(policy_net: Any, value_net: Any, dummy: Array, dtype: Any) -> FlatParams:
    """The flat layout of ``[theta; phi]`` (every learner family shares it)."""
    num_policy, unravel_policy = _ravel_shapes(policy_net, dummy)
    num_value, unravel_value = _ravel_shapes(value_net, dummy)

    def init(key: Array) -> Array:
        k_pi, k_v = jax.random.split(key)
        theta, _ = ravel_pytree(policy_net.init(k_pi, dummy))
        phi, _ = ravel_pytree(value_net.init(k_v, dummy))
        return jnp.concatenate([theta, phi]).astype(dtype)

    def split(flat: Array) -> tuple[Array, Array]:
        return flat[:num_policy], flat[num_policy:]

    return FlatParams(num_policy, num_value, init, split, unravel_policy, unravel_value)


def jvp_forms(direction: Callable[[Array, Batch], tuple[Array, Losses]]) -> tuple[Callable, Callable]:
    """``(direction_jvp, linearize)`` of a direction field: the product fused with ``F`` in one
    forward-over-reverse pass, and ``jax.linearize`` (linearise now, apply the map later)."""

    def direction_jvp(flat: Array, batch: Batch, tangent: Array) -> tuple[Array, Array, Losses]:
        """``(F(p), dF/dp . tangent, losses)`` in one forward-over-reverse pass."""
        (f, loss), (jf, _) = jax.jvp(lambda p: direction(p, batch), (flat,), (tangent,))
        return f, jf, loss

    def linearize(flat: Array, batch: Batch) -> tuple[Array, Callable[[Array], Array], Losses]:
        """``(F(p), t -> dF/dp . t, losses)``: linearise now, apply the product later."""
        (f, loss), f_jvp = jax.linearize(lambda p: direction(p, batch), flat)
        return f, (lambda t: f_jvp(t)[0]), loss

    return direction_jvp, linearize
