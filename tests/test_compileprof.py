"""Specification of the suite's compile profiler (``pytest -p compileprof``, tests/compileprof.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_the_compile_profiler_charges_each_compile_to_the_test_that_ran_it(tmp_path):
    (tmp_path / "test_two.py").write_text(
        "import jax, jax.numpy as jnp\n"
        "def test_compiles():\n    jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones(5)).block_until_ready()\n"
        "def test_idle():\n    assert True\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ASYNCCORR_COMPILE_PROFILE": str(tmp_path / "profile"),
           "JAX_COMPILATION_CACHE_DIR": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "compileprof", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_two.py")],
                          capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "compile profile (pytest processes only):" in out and "test_two.py::test_compiles" in out
    assert "test_two.py::test_idle" not in out  # no compile, no line
