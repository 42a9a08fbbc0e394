"""Compiled programs kept on disk (asynccorr.compile.programs): what is kept, under which key, and that a run
that loads them is the run that compiled them, bit for bit."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asynccorr.backends.sequential import init_state, initial_state
from asynccorr.backends.update import init_server, initial_server
from asynccorr.compile import programs
from asynccorr.config import ExperimentConfig, with_overrides
from asynccorr.learners.build import build, run_keys
from asynccorr.schemes.registry import SCHEMES, correction_for


def small_config(**sections) -> ExperimentConfig:
    base = with_overrides(
        ExperimentConfig(), name="programs",
        learner={"policy_hidden": (8,), "value_hidden": (8,), "rollout_states": 8, "reset_states": 8, "horizon": 5},
        train={"iterations": 6, "eval_every": 3}, workers={"count": 2})
    return with_overrides(base, **sections)


@pytest.fixture
def kept(tmp_path):
    """Programs kept in a fresh folder for the test; none kept before or after it."""
    programs.forget()
    programs.enable(tmp_path / "programs")
    yield tmp_path / "programs"
    programs.enable(None)
    programs.forget()


def counting_program(offset: float, name: str = "affine", static_argnums=()):
    """A fresh function object that counts its traces, computing ``x * n + offset``. Each test uses its own
    offset: a computation compiled twice in one process may not serialise (the second compile can reuse
    kernels of the first), which the read-back check keeps off the disk and a new process would not see."""
    traces = []

    def affine(x, n=2):
        traces.append(1)
        return x * n + offset

    return programs.jit(affine, name, static_argnums), traces


def files(folder):
    return sorted(p.name for p in folder.glob("*.bin")) if folder.exists() else []


def test_outside_a_scope_a_program_is_plain_jit_and_keeps_nothing(kept):
    program, traces = counting_program(0.0)
    np.testing.assert_array_equal(program(jnp.arange(3.0)), [0.0, 2.0, 4.0])
    assert traces == [1] and files(kept) == []


def test_inside_a_scope_the_executable_is_kept_and_a_later_process_loads_it_without_tracing(kept):
    x = jnp.linspace(0.0, 1.0, 5)
    with programs.scope(small_config(), "async"):
        first, traces = counting_program(1.0)
        y = first(x)
        assert traces == [1] and len(files(kept)) == 1
        programs.forget()
        again, traces_again = counting_program(1.0)  # a new function object, as in a new process
        z = again(x)
    assert traces_again == []  # loaded, not traced
    assert np.asarray(z).tobytes() == np.asarray(y).tobytes()


def test_the_key_holds_the_scope_the_shapes_and_the_static_arguments(kept):
    config = small_config()
    with programs.scope(config, "async"):
        program, _ = counting_program(2.0, static_argnums=(1,))
        program(jnp.ones(3), 2)
        program(jnp.ones(3), 2)  # the same signature: nothing new
        program(jnp.ones(4), 2)
        program(jnp.ones(3), 3)
        program(jnp.ones(3, jnp.int32), 2)
    assert len(files(kept)) == 4
    # in one process a function object's executables serve every scope; a new process keys them by scope
    for scoped in ((config, "modify"), (with_overrides(config, learner={"horizon": 6}), "async")):
        programs.forget()
        with programs.scope(*scoped):
            program(jnp.ones(3), 2)
    assert len(files(kept)) == 6


def test_the_seed_and_the_length_of_a_run_are_not_part_of_its_scope():
    config = small_config()
    assert programs.scope_key(config, "async") == programs.scope_key(
        with_overrides(config, train={"seed": 7, "iterations": 60}), "async")
    assert programs.scope_key(config, "async") != programs.scope_key(
        with_overrides(config, train={"eval_every": 2}), "async")


def test_a_kept_file_that_cannot_be_read_back_is_compiled_again_and_replaced(kept):
    """(The replacement computes something else under the same key, as edited code in a new process would:
    the same computation compiled twice in one process may not serialise.)"""
    x = jnp.arange(4.0)
    with programs.scope(small_config(), "async"):
        program, _ = counting_program(3.0)
        program(x)
        [path] = kept.glob("*.bin")
        path.write_bytes(b"not a program")
        programs.forget()
        again, traces = counting_program(4.0)
        np.testing.assert_array_equal(again(x), 2 * x + 4.0)
        assert traces == [1] and path.stat().st_size > 100
        programs.forget()
        third, traces_third = counting_program(4.0)
        np.testing.assert_array_equal(third(x), 2 * x + 4.0)
        assert traces_third == []


def same_bits(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# one scheme per correction family (the protocols share their family's correction)
FAMILIES = tuple(dict.fromkeys(name.split("@")[0] for name in SCHEMES))


@pytest.mark.parametrize("kind", ["gpi", "a3c"])
def test_the_jitted_server_start_is_the_op_by_op_one_bit_for_bit_for_every_correction(kind):
    """The committed results were made with the server initialised op by op: one program gives the same
    parameters (either learner) and optimizer and correction states (every correction family)."""
    config = small_config(learner={"kind": kind})
    learner, optimizer = build(config)
    k_params, _ = run_keys(3)  # op by op, as the committed results were made
    params = learner.init(k_params)
    for family in FAMILIES if kind == "gpi" else ("async",):
        name = next(n for n in SCHEMES if n.split("@")[0] == family)
        correction = correction_for(name, config)
        jitted = initial_server(learner, optimizer, correction)(np.int32(3))
        assert same_bits(init_server(params, optimizer, correction), jitted), name


def test_the_jitted_sequential_start_has_the_op_by_op_parameters_and_keys():
    """The sequential trainer starts from one program: the same parameters and key streams as op by op;
    its sampler's states agree to float32 rounding (fused arithmetic may round differently)."""
    config = small_config()
    learner, optimizer = build(config)
    eager = init_state(learner, optimizer, 5)
    jitted = initial_state(learner, optimizer)(np.int32(5))
    for field in ("params", "key", "iteration"):
        assert np.asarray(getattr(eager, field)).tobytes() == np.asarray(getattr(jitted, field)).tobytes()
    for a, b in zip(jax.tree.leaves(eager.sampler), jax.tree.leaves(jitted.sampler), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_the_folder_is_kept_under_its_size_limit_least_recently_used_first(tmp_path, monkeypatch):
    import os

    for i, name in enumerate(("old", "middle", "new")):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(b"x" * 1000)
        os.utime(path, ns=(i * 10**9, i * 10**9))
    removed = programs.evict(tmp_path, 2500)
    assert [p.name for p in removed] == ["old.bin"]
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == ["middle.bin", "new.bin"]
    assert programs.evict(tmp_path, 2500) == []
    monkeypatch.setenv("ASYNCCORR_PROGRAMS_MAX_MB", "0.5")
    assert programs.limit_bytes() == 2**19


def test_loading_a_kept_program_marks_it_used(kept):
    import os

    with programs.scope(small_config(), "async"):
        program, _ = counting_program(5.0)
        program(jnp.ones(2))
        [path] = kept.glob("*.bin")
        os.utime(path, ns=(0, 0))
        programs.forget()
        again, _ = counting_program(5.0)
        again(jnp.ones(2))
    assert path.stat().st_mtime_ns > 0


def test_a_program_two_runs_of_one_process_share_is_kept_under_both_scopes_without_compiling_twice(kept):
    """``compare`` runs every scheme in one process: a function they share is compiled once and kept for
    each, so a later ``train`` of any of them loads it."""
    x = jnp.ones(5)
    program, traces = counting_program(6.0)
    for scheme in ("async", "modify"):
        with programs.scope(small_config(), scheme):
            program(x)
    assert traces == [1] and len(files(kept)) == 2
    programs.forget()
    again, traces_again = counting_program(6.0)
    with programs.scope(small_config(), "modify"):
        np.testing.assert_array_equal(again(x), 2 * x + 6.0)
    assert traces_again == []


@pytest.mark.parametrize("setting", [None, "off"])
def test_the_cli_process_keeps_programs_and_reads_no_compilation_cache_unless_programs_are_off(
        tmp_path, monkeypatch, setting):
    from asynccorr.compile.cache import compilation_cache

    saved = {name: getattr(jax.config, name) for name in ("jax_enable_compilation_cache", "jax_compilation_cache_dir")}
    monkeypatch.setenv("ASYNCCORR_JAX_CACHE", str(tmp_path))
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):  # restored after
        monkeypatch.setenv(name, os.environ.get(name, "0"))
    monkeypatch.delenv("ASYNCCORR_PROGRAMS", raising=False)
    if setting is not None:
        monkeypatch.setenv("ASYNCCORR_PROGRAMS", setting)
    try:
        assert compilation_cache() == tmp_path
        kept = programs.folder()
        assert (kept == tmp_path / "programs") == (setting is None)
        assert kept is None or setting is None
        assert jax.config.jax_enable_compilation_cache == (setting == "off")
    finally:
        programs.enable(None)
        for name, value in saved.items():
            jax.config.update(name, value)


def manifests(folder):
    return sorted(folder.glob("*.scope")) if folder.exists() else []


def test_the_next_scope_with_a_key_loads_the_files_its_last_run_called_ahead_in_that_order(kept):
    """A scope records which kept files its run called first, in order; the next scope with the same key
    starts loading them on background threads as it is entered, and each call takes its executable from
    there: no trace, the same bits."""
    x = jnp.linspace(-1.0, 1.0, 7)
    with programs.scope(small_config(), "async"):
        second, _ = counting_program(7.0, name="second")
        first, _ = counting_program(8.0, name="first")
        y = (second(x), first(x))
    [manifest] = manifests(kept)
    assert [name.split("-")[0] for name in json.loads(manifest.read_text())] == ["second", "first"]
    programs.forget()
    with programs.scope(small_config(), "async"):
        prefetch = programs._PREFETCH.get()
        assert [n.split("-")[0] for n in prefetch.expected] == ["second", "first"]
        assert set(prefetch.futures) == set(prefetch.expected)
        second, traces_second = counting_program(7.0, name="second")
        first, traces_first = counting_program(8.0, name="first")
        z = (second(x), first(x))
        assert prefetch.futures == {}  # both taken
    assert traces_second == traces_first == []
    assert same_bits(y, z)
    assert manifests(kept) == [manifest]


def test_a_prefetched_file_of_another_key_is_not_used_and_the_call_compiles_and_keeps_its_own(kept):
    """The manifest only says what to load ahead: a call uses a loaded file only under its own key."""
    x = jnp.arange(3.0)
    with programs.scope(small_config(), "async"):
        counting_program(9.0)[0](x)
    [manifest] = manifests(kept)
    other = with_overrides(small_config(), learner={"horizon": 6})
    # the other scope's manifest names the first scope's file (as a stale or copied one would)
    programs.manifest_path(kept, programs.scope_key(other, "async")).write_text(manifest.read_text())
    programs.forget()
    with programs.scope(other, "async"):
        assert programs._PREFETCH.get().expected == json.loads(manifest.read_text())
        program, traces = counting_program(10.0)
        np.testing.assert_array_equal(program(x), 2 * x + 10.0)
    assert traces == [1] and len(files(kept)) == 2


@pytest.mark.parametrize("text", ["not json", '{"a": 1}', '["../outside.bin", "x.txt", 3]'])
def test_an_unreadable_or_foreign_manifest_loads_nothing_ahead(kept, text):
    kept.mkdir(parents=True)
    programs.manifest_path(kept, programs.scope_key(small_config(), "async")).write_text(text)
    assert programs.Prefetch(kept, programs.scope_key(small_config(), "async")).futures == {}
    with programs.scope(small_config(), "async"):
        np.testing.assert_array_equal(counting_program(11.0)[0](jnp.ones(2)), [13.0, 13.0])


def test_a_run_that_calls_fewer_programs_leaves_the_manifest_and_drops_what_it_did_not_take(kept):
    x = jnp.ones(3)
    with programs.scope(small_config(), "async"):
        counting_program(12.0, name="kept")[0](x)
        counting_program(13.0, name="unused")[0](x)
    [manifest] = manifests(kept)
    listed = manifest.read_text()
    programs.forget()
    with programs.scope(small_config(), "async"):
        prefetch = programs._PREFETCH.get()
        counting_program(12.0, name="kept")[0](x)  # a run that stops before its second program
    assert prefetch.futures == {}  # the one not taken was dropped at the end of the scope
    assert manifest.read_text() == listed
