"""Shared fixtures: small configs that keep the suite fast."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

# One persistent JAX compilation cache for the whole session, set before JAX is imported: the
# in-process tests, the CLI they call and every worker or subprocess they start (through the
# environment) compile a program once per session instead of once per test. It is fresh per
# session, so a clean clone's run pays every first compile, and removed at the end. A cached
# executable is the one the compiler produced: results do not depend on it.
if not (os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("ASYNCCORR_JAX_CACHE")):
    _SESSION_CACHE = tempfile.mkdtemp(prefix="asynccorr-test-jax-cache-")
    atexit.register(shutil.rmtree, _SESSION_CACHE, True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite compiles with XLA's backend optimisation off (LLVM's passes over the CPU kernels; the
# HLO and its optimisations are the same): most of the suite's time is compiling the programs of
# many small configs once each, and this cuts that by about a third. Every process the suite starts
# inherits it, so runs compared with each other compile alike; the benchmarks, the committed results
# and users' runs use XLA's default. ASYNCCORR_TEST_XLA_OPT=default keeps the default here too.
if os.environ.get("ASYNCCORR_TEST_XLA_OPT") != "default" and "xla_backend_optimization_level" not in \
        os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
# The CLI calls of the suite are mostly runs of configs and schemes no earlier call ran: they keep no
# programs (asynccorr.compile.programs) and read the session's compilation cache instead, which makes them
# cheaper (a process that keeps programs reads no compilation cache). The tests of the programs
# themselves turn this back on (tests/test_cli.py, tests/compile/test_programs.py).
os.environ.setdefault("ASYNCCORR_PROGRAMS", "off")

import jax
import pytest

from asynccorr.config import LearnerConfig
from asynccorr.envs import make
from asynccorr.learners.gpi import make_learner

# A shell that starts the suite in the background leaves SIGINT ignored, and an ignored signal
# stays ignored across exec: the Ctrl-C tests' child processes would never see their Ctrl-C.
# A handler (not SIG_IGN) here is reset to the default in every child, which Python then catches.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The modules whose tests start real worker processes, Ray or a two-node cluster, or time a kill or
# a Ctrl-C: under pytest-xdist (``make test``) they form one group, run in order by one worker.
REAL_MODULES = {"test_mp.py", "test_ray.py", "test_cluster.py", "test_hardening.py", "test_locks.py",
                "test_compare_jobs.py", "test_replay.py"}  # file names


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in REAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("real"))


@pytest.fixture(scope="session")
def kinematic():
    return make("kinematic")


def small_learner(env_name: str = "kinematic", dtype=None, **overrides):
    """A learner with a small batch and short horizon (optionally tiny nets)."""
    env, params = make(env_name)
    cfg = LearnerConfig(**{"rollout_states": 8, "reset_states": 8, "horizon": 8, **overrides})
    return make_learner(env, params, cfg) if dtype is None else make_learner(env, params, cfg, dtype=dtype)


def sample_batch(learner, seed: int = 0):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    params = jax.jit(learner.init)(k1)
    batch, _ = jax.jit(learner.sample)(k3, jax.jit(learner.sampler_init)(k2), params)
    return params, batch
