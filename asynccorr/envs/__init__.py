"""Vehicle path-tracking environments (functional, JAX) and a registry."""

from __future__ import annotations

from typing import Any

from asynccorr.envs.base import Environment, Timestep, Tracking, wrap_angle
from asynccorr.envs.dynamic import Dynamic2DOF, DynamicParams, DynamicState
from asynccorr.envs.kinematic import KinematicBicycle, KinematicParams, KinematicState

ENVIRONMENTS: dict[str, type[Environment]] = {
    KinematicBicycle.name: KinematicBicycle,
    Dynamic2DOF.name: Dynamic2DOF,
}


def _check_number(name: str, value: Any, default: Any) -> None:
    """An override must have its parameter's type: an integer where the default is one, else a number
    (``TypeError`` naming it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(default, int) and not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")


def make(name: str, **overrides: Any) -> tuple[Environment, Any]:
    """Build ``(env, params)`` by name; ``overrides`` replace default params.

    Raises ``ValueError`` naming the bad environment or parameter (``TypeError`` for an
    override of the wrong type).
    """
    if name not in ENVIRONMENTS:
        raise ValueError(f"env must be one of {sorted(ENVIRONMENTS)}, got {name!r}")
    env = ENVIRONMENTS[name]()
    defaults = env.default_params
    unknown = sorted(set(overrides) - set(defaults.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown {name} env parameter(s): {', '.join(unknown)}")
    for field_name, value in overrides.items():
        if field_name != "preview":
            _check_number(field_name, value, getattr(defaults, field_name))
    if "preview" in overrides:
        try:
            preview = tuple(float(p) for p in overrides["preview"])
        except (TypeError, ValueError):
            raise ValueError(f"preview must be a non-empty list of numbers > 0, got {overrides['preview']!r}") from None
        overrides = {**overrides, "preview": preview}
    return env, defaults.replace(**overrides) if overrides else defaults


__all__ = [
    "ENVIRONMENTS",
    "Dynamic2DOF",
    "DynamicParams",
    "DynamicState",
    "Environment",
    "KinematicBicycle",
    "KinematicParams",
    "KinematicState",
    "Timestep",
    "Tracking",
    "make",
    "wrap_angle",
]
