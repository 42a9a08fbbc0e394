"""Small configs and learners the specifications share: a short run of the default experiment on a
small network, small A3C and Q learners and configs, and a real learner whose direction field is a
quadratic's gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from asynccorr.config import A3CConfig, ExperimentConfig, LearnerConfig, QConfig, with_overrides
from asynccorr.envs import make
from asynccorr.learners.base import Learner, Losses
from asynccorr.learners.build import make_any_learner, make_optimizer
from asynccorr.schemes.registry import SCHEMES

# Every scheme one worker can run (a pipelined round needs several; of the modify-safe protocols one
# stands for the rest): with one worker each must equal the sequential learner
ONE_WORKER_SCHEMES = sorted(s for s in SCHEMES if not SCHEMES[s].pipelined
                            and not (s.startswith("modify-safe@") and s != "modify-safe@server"))


def small_config(**sections) -> ExperimentConfig:
    base = with_overrides(
        ExperimentConfig(),
        name="spec",
        learner={"policy_hidden": (8,), "value_hidden": (8,), "rollout_states": 8, "reset_states": 8, "horizon": 5},
        train={"iterations": 6, "eval_every": 3},
        workers={"count": 1},
    )
    return with_overrides(base, **sections)


def small_a3c(env_name: str = "kinematic", dtype=jnp.float32, hidden=(8,), **knobs):
    env, params = make(env_name)
    cfg = LearnerConfig(kind="a3c", policy_hidden=hidden, value_hidden=hidden,
                        a3c=A3CConfig(**{"envs": 4, "n_steps": 6, **knobs}))
    return make_any_learner(env, params, cfg, dtype)


def small_q(env_name: str = "kinematic", dtype=jnp.float32, hidden=(8,), **knobs):
    env, params = make(env_name)
    cfg = LearnerConfig(kind="q", value_hidden=hidden, q=QConfig(**{"envs": 4, "n_steps": 6, **knobs}))
    return make_any_learner(env, params, cfg, dtype)


def sample(learner, seed: int = 0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.jit(learner.init)(k1)
    batch, sampler = jax.jit(learner.sample)(k3, jax.jit(learner.sampler_init)(k2), params)
    return params, batch, sampler


def a3c_config(**sections) -> ExperimentConfig:
    """Tiny nets, 4 envs x 6 steps per batch: seconds per run."""
    base = with_overrides(ExperimentConfig(), name="a3c-spec",
                          learner={"kind": "a3c", "policy_hidden": (8,), "value_hidden": (8,),
                                   "a3c": A3CConfig(envs=4, n_steps=6)},
                          optim={"policy_lr": 1e-2, "value_lr": 1e-3},
                          train={"iterations": 6, "eval_every": 3}, workers={"count": 1})
    return with_overrides(base, **sections)


def q_config(**sections) -> ExperimentConfig:
    """The dynamic vehicle, tiny nets, 4 envs x 4 steps per batch, the target refreshed every 2 updates."""
    base = with_overrides(ExperimentConfig(), name="q-spec", env={"name": "dynamic"},
                          learner={"kind": "q", "value_hidden": (8,),
                                   "q": QConfig(envs=4, n_steps=4, target_period=2)},
                          optim={"policy_lr": 1e-2, "value_lr": 1e-2},
                          train={"iterations": 6, "eval_every": 3}, workers={"count": 1})
    return with_overrides(base, **sections)


def quadratic_learner(dim: int = 6, seed: int = 0) -> tuple[Learner, jax.Array, jax.Array]:
    """A real learner whose direction field is the gradient of a quadratic: F(p) = A p - b."""
    ka, kb = jax.random.split(jax.random.PRNGKey(seed))
    m = jax.random.normal(ka, (dim, dim))
    a = m @ m.T / dim + jnp.eye(dim)
    b = jax.random.normal(kb, (dim,))

    def direction(p, batch):
        del batch
        return a @ p - b, Losses(0.5 * p @ a @ p - b @ p, jnp.zeros(()))

    def direction_jvp(p, batch, tangent):
        (f, loss), (jf, _) = jax.jvp(lambda q: direction(q, batch), (p,), (tangent,))
        return f, jf, loss

    learner = Learner(env=None, env_params=None, config=None, num_policy=dim // 2, num_value=dim - dim // 2,
                      init=None, unravel=None, act=None, value=None, returns=None, losses=None,
                      direction=direction, direction_jvp=direction_jvp, linearize=None,
                      sampler_init=lambda key: jnp.zeros(()), sample=lambda key, sampler, p: (jnp.zeros(3), sampler))
    return learner, a, b


def sgd(learner):
    return make_optimizer(ExperimentConfig().optim.__class__(name="sgd", policy_lr=0.01, value_lr=0.01),
                          learner.num_policy, learner.num_value)
