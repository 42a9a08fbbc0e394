"""Policy and value networks (flax linen MLPs) and their feature-major apply.

The flax modules define the parameters (names, shapes, initialisation). Inside
the model rollout the learner applies the same parameters to a whole batch held
**feature-major**, ``x`` of shape ``(features, batch)``, through
:func:`mlp_apply_feature_major`: the weight gradient ``dW = x g^T`` then
contracts over the batch as the *minor* dimension of both operands. With the
usual batch-major layout that contraction runs over the leading dimension,
which XLA:CPU hands to a generic GEMM path 2x (64x64) to 60x (64x2) slower than
the other products of a layer, and forward-over-reverse (the direction's JVP)
runs three such products per layer per rollout step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asynccorr import config

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "swish": nn.swish}
assert tuple(ACTIVATIONS) == config.ACTIVATIONS, "config.ACTIVATIONS"


class MLP(nn.Module):
    """Fully connected trunk: ``hidden`` layers with ``activation``, then a linear head."""

    hidden: tuple[int, ...]
    out_dim: int
    activation: str = "tanh"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, dtype=self.dtype, param_dtype=self.dtype)(x))
        # small final layer: initial policy near zero action, initial value near zero
        head_init = nn.initializers.variance_scaling(0.01, "fan_in", "uniform")
        return nn.Dense(self.out_dim, kernel_init=head_init, dtype=self.dtype, param_dtype=self.dtype)(x)


class Policy(nn.Module):
    """Deterministic policy: observation -> action in (-1, 1)^d (tanh-squashed)."""

    hidden: tuple[int, ...]
    action_dim: int
    activation: str = "tanh"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return jnp.tanh(MLP(self.hidden, self.action_dim, self.activation, self.dtype)(obs))


class GaussianPolicy(nn.Module):
    """Stochastic policy: observation -> (mean in (-1, 1)^d, log-std in (lo, hi)^d).

    The mean is tanh-squashed, so the deterministic policy (the mean) has the same form as
    ``Policy``; an action is ``mean + std * noise``, clipped to the bounds by the env. The
    log-std is one learned vector, or a second head of the network with
    ``state_dependent_std``; either way a sigmoid keeps it inside ``(lo, hi)`` with a
    gradient everywhere (a clip would cut it at the bounds)."""

    hidden: tuple[int, ...]
    action_dim: int
    activation: str = "tanh"
    log_std_init: float = -0.5
    log_std_bounds: tuple[float, float] = (-4.0, 0.5)
    state_dependent_std: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        lo, hi = self.log_std_bounds
        raw0 = float(np.log((self.log_std_init - lo) / (hi - self.log_std_init)))  # sigmoid(raw0) = init
        if self.state_dependent_std:
            out = MLP(self.hidden, 2 * self.action_dim, self.activation, self.dtype)(obs)
            mean, raw = out[..., :self.action_dim], out[..., self.action_dim:] + raw0
        else:
            mean = MLP(self.hidden, self.action_dim, self.activation, self.dtype)(obs)
            raw = jnp.broadcast_to(
                self.param("log_std", nn.initializers.constant(raw0, self.dtype), (self.action_dim,), self.dtype),
                mean.shape)
        return jnp.tanh(mean), lo + (hi - lo) * jax.nn.sigmoid(raw)


class Value(nn.Module):
    """State value (expected discounted cost-to-go): observation -> scalar."""

    hidden: tuple[int, ...]
    activation: str = "tanh"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.hidden, 1, self.activation, self.dtype)(obs)[..., 0]


def _dense_layers(tree: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``Dense_i`` parameter dicts of an ``MLP`` tree, in layer order."""
    mlp = tree["params"]["MLP_0"]
    names = sorted(mlp, key=lambda name: int(name.rsplit("_", 1)[1]))
    return [mlp[name] for name in names]


def mlp_apply_feature_major(tree: Mapping[str, Any], x: jax.Array, activation: str) -> jax.Array:
    """``MLP`` (as wrapped by ``Policy``/``Value``) on ``x`` of shape ``(in, batch)``.

    Returns the head's output ``(out, batch)``: the same function as
    ``MLP.apply(tree, x.T).T`` with every product laid out so that the batch is
    the minor (contiguous) dimension of each operand (see the module docstring).
    """
    act = ACTIVATIONS[activation]
    layers = _dense_layers(tree)
    for i, layer in enumerate(layers):
        # kernel (in, out) contracted with x (in, batch) over `in` -> (out, batch)
        x = jax.lax.dot_general(layer["kernel"], x, (((0,), (0,)), ((), ()))) + layer["bias"][:, None]
        if i < len(layers) - 1:
            x = act(x)
    return x
