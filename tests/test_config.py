"""Specification of configuration loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynccorr.config import ConfigError, ExperimentConfig, from_dict, load_config, to_dict, with_overrides

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
