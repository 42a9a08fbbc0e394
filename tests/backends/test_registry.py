"""The backend registry: one entry per backend (the sequential reference among them), read by runs and
the CLI; the worker backends' names are the config's ``WORKER_BACKENDS``."""

from __future__ import annotations

import inspect

import pytest

from asynccorr.backends.registry import (
    BACKENDS,
    Backend,
    backend_for,
    backend_help,
    check_backend_runs,
    run,
    run_workers,
)
from asynccorr.config import WORKER_BACKENDS, ConfigError, ExperimentConfig, with_overrides
from asynccorr.runs.run import ResumeError, train_run
from asynccorr.schemes.registry import SCHEMES, SEQUENTIAL


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_registered_backend_names_a_run_function_taking_config_scheme_and_hooks(name):
    run = BACKENDS[name].run_function()
    params = inspect.signature(run).parameters
    assert list(params)[:2] == ["config", "scheme_name"] and "hooks" in params


def test_config_validation_accepts_exactly_the_registered_worker_backends():
    assert WORKER_BACKENDS == tuple(name for name, b in BACKENDS.items() if b.workers)
    for name in WORKER_BACKENDS:
        assert with_overrides(ExperimentConfig(), workers={"backend": name}).workers.backend == name
    with pytest.raises(ConfigError, match="workers.backend must be one of") as err:
        with_overrides(ExperimentConfig(), workers={"backend": "slurm"})
    assert all(repr(name) in str(err.value) for name in WORKER_BACKENDS)
    with pytest.raises(ConfigError, match="workers.backend must be one of"):  # chosen by the scheme name only
        with_overrides(ExperimentConfig(), workers={"backend": "sequential"})


def test_the_sequential_reference_is_the_backend_of_the_scheme_sequential_with_one_worker():
    config = with_overrides(ExperimentConfig(), workers={"count": 4})
    assert backend_for(config, SEQUENTIAL) is BACKENDS["sequential"] and run_workers(config, SEQUENTIAL) == 1
    assert backend_for(config, "async") is BACKENDS["sim"] and run_workers(config, "async") == 4
    assert BACKENDS["sequential"].resumable and BACKENDS["sequential"].in_process


def test_the_cli_help_lists_every_backend_with_its_summary():
    text = backend_help()
    assert all(f"{b.name} ({b.summary})" in text for b in BACKENDS.values() if b.workers)


def test_a_backend_that_refuses_a_compute_kind_is_told_apart_and_names_the_backends_that_can():
    dense = [name for name, s in SCHEMES.items() if s.compute == "dense"]
    assert dense
    for backend in (b for b in BACKENDS.values() if b.workers):
        for scheme in dense:
            if backend.supports(scheme):
                check_backend_runs(backend.name, scheme)
            else:
                with pytest.raises(ConfigError, match=rf"{scheme} .*runs on workers.backend = 'sim'"):
                    check_backend_runs(backend.name, scheme)


def test_a_new_backend_entry_and_its_name_are_all_it_takes_to_train_on_it(monkeypatch):
    """Register a backend (and name it in the config's choices): ``run`` dispatches to it."""
    calls = []

    def run_probe(config, scheme_name, hooks=None):
        calls.append((config.workers.backend, scheme_name))
        return "result"

    from asynccorr import config as config_module
    from asynccorr.backends import registry

    monkeypatch.setattr(config_module, "WORKER_BACKENDS", (*WORKER_BACKENDS, "probe"))
    monkeypatch.setitem(registry.BACKENDS, "probe",
                        Backend("probe", "a test backend", f"{__name__}:_probe_run", resumable=False))
    monkeypatch.setattr(f"{__name__}._probe_run", run_probe, raising=False)
    config = with_overrides(ExperimentConfig(), workers={"backend": "probe"})
    assert run(config, "async") == "result" and calls == [("probe", "async")]
    assert not backend_for(config, "async").resumable and backend_for(config, SEQUENTIAL).resumable


def test_resume_is_refused_on_a_backend_that_cannot_continue_from_a_checkpoint(tmp_path, monkeypatch):
    """Every backend here continues from a checkpoint (sim and sequential bit for bit; mp and ray with
    new worker incarnations); one that could not is refused, naming those that can."""
    from asynccorr import config as config_module
    from asynccorr.backends import registry

    assert all(b.resumable for b in BACKENDS.values())
    assert [b.name for b in BACKENDS.values() if not b.exact_resume] == ["mp", "ray"]
    monkeypatch.setattr(config_module, "WORKER_BACKENDS", (*WORKER_BACKENDS, "probe"))
    monkeypatch.setitem(registry.BACKENDS, "probe",
                        Backend("probe", "a test backend", f"{__name__}:_probe_run", resumable=False))
    config = with_overrides(ExperimentConfig(), workers={"backend": "probe"})
    with pytest.raises(ResumeError, match="resume needs workers.backend = 'sim' or 'mp' or 'ray'"):
        train_run(config, "async", tmp_path, resume=True)


def _probe_run(*args, **kwargs):  # replaced by the test that registers the probe backend
    raise AssertionError("not patched")
