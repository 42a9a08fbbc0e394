"""Policy and value networks (flax linen MLPs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "swish": nn.swish}


def check_hidden(name: str, hidden: Sequence[int]) -> tuple[int, ...]:
    """Validate hidden-layer sizes: at least one layer, every width a positive int."""
    hidden = tuple(hidden)
    if len(hidden) == 0:
        raise ValueError(f"{name} must list at least one hidden layer width, got an empty network")
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
            raise ValueError(f"{name} widths must be positive integers, got {list(hidden)!r}")
    return hidden


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


class Value(nn.Module):
    """State value (expected discounted cost-to-go): observation -> scalar."""

    hidden: tuple[int, ...]
    activation: str = "tanh"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.hidden, 1, self.activation, self.dtype)(obs)[..., 0]
