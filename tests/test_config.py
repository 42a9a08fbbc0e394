"""Specification of configuration loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynccorr.config import ConfigError, ExperimentConfig, from_dict, load_config, to_dict, with_overrides
from asynccorr.studies.regimes import load_regimes

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_default_experiment_equals_the_embedded_defaults():
    assert load_config(REPO / "experiments" / "paper.toml") == ExperimentConfig()


def test_a_config_round_trips_through_a_plain_dict():
    cfg = with_overrides(ExperimentConfig(), learner={"policy_hidden": (8, 8)}, train={"seed": 5})
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg


def test_integers_are_accepted_where_floats_are_expected():
    cfg = from_dict(ExperimentConfig, {"optim": {"max_grad_norm": 1}})
    assert cfg.optim.max_grad_norm == 1.0 and isinstance(cfg.optim.max_grad_norm, float)


def test_booleans_are_not_accepted_as_numbers():
    with pytest.raises(ConfigError, match=r"train\.seed"):
        from_dict(ExperimentConfig, {"train": {"seed": True}})


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError, match=r"learner\.gamma"):
        with_overrides(ExperimentConfig(), learner={"gamma": 0.0})


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_experiment_file_loads_and_validates(path):
    load_config(path) if path.name != "regimes.toml" else load_regimes(path)


def test_the_vtrace_experiment_is_the_a3c_experiment_with_vtrace_and_its_measured_cost_model():
    """Only what V-trace changes: the estimator, the cost model's times (measured, scaled from
    a3c.toml's) and the schemes compared -- the comparison with a3c.toml's `learner` is like for like."""
    plain = to_dict(load_config(REPO / "experiments" / "a3c.toml"))
    vtrace = to_dict(load_config(REPO / "experiments" / "a3c-vtrace.toml"))
    assert vtrace["learner"]["a3c"].pop("off_policy") == "vtrace" and plain["learner"]["a3c"].pop("off_policy") == "none"
    cost = ("direction_time", "sample_cost_ratio", "jvp_cost_ratio", "linearise_cost_ratio", "apply_cost_ratio",
            "server_apply_cost_ratio")
    for record in (plain, vtrace):
        record.pop("name")
        record["schemes"].pop("compare")
        for key in cost:
            record["workers"].pop(key)
    assert vtrace == plain


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


COST = {f"workers.{k}" for k in ("sample_cost_ratio", "jvp_cost_ratio", "linearise_cost_ratio", "apply_cost_ratio",
                                 "server_apply_cost_ratio", "secant_pair_cost_ratio")}
Q_VARIANTS = {  # file -> the fields in which it differs from experiments/q.toml (besides its name)
    "q-small-step": {"optim.policy_lr", "optim.value_lr", "schemes.compare"},
    "q-sarsa": {"learner.q.target"},
    "q-gorila": {"learner.q.target", "learner.q.replay", "learner.q.replay_capacity", "learner.q.replay_batch"}
                | COST,
    "q-apex": {"learner.q.target", "learner.q.replay", "learner.q.replay_capacity", "learner.q.replay_batch",
               "schemes.compare"} | COST,
}


@pytest.mark.parametrize("name", sorted(Q_VARIANTS))
def test_each_q_experiment_variant_differs_from_the_q_experiment_only_where_it_says(name):
    """Their results are compared with q.toml's in docs/q.md: like for like but for what they vary."""
    base = _flat(to_dict(load_config(REPO / "experiments" / "q.toml")))
    variant = _flat(to_dict(load_config(REPO / "experiments" / f"{name}.toml")))
    differ = {k for k in base if base[k] != variant[k]} - {"name"}
    assert differ == Q_VARIANTS[name]
