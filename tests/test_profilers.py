"""Specification of the suite's profilers: compiles (``pytest -p compileprof``, tests/compileprof.py) and CPU
(``pytest -p cpuprof``, tests/cpuprof.py)."""

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


def test_the_cpu_profiler_charges_own_cpu_and_reaped_childrens_cpu_to_the_test_that_used_it(tmp_path):
    spin = "sum(i * i for i in range(10_000_000))"
    (tmp_path / "test_cpu.py").write_text(
        "import subprocess, sys\n"
        f"def test_spins_here():\n    {spin}\n"
        f"def test_spins_in_a_child():\n    subprocess.run([sys.executable, '-c', {spin!r}], check=True)\n"
        "def test_sleeps():\n    import time; time.sleep(0.3)\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ASYNCCORR_CPU_PROFILE": str(tmp_path / "profile")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "cpuprof", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_cpu.py")],
                          capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[-1].split("::")[-1]: [float(x) for x in line.split()[:6:2]]
            for line in proc.stdout.splitlines() if "test_cpu.py::" in line}
    here, child, sleeps = rows["test_spins_here"], rows["test_spins_in_a_child"], rows["test_sleeps"]
    assert here[0] > 0.2 and here[1] < 0.05  # own CPU, no child
    assert child[1] > 0.2 and child[1] > child[0]  # the child's CPU, charged as such
    assert sleeps[0] < 0.1 and sleeps[1] == 0 and sleeps[2] >= 0.3  # wall without CPU
    assert "cpu profile:" in proc.stdout
