"""Delay models for simulated workers: how long each job takes.

A job's duration is ``base * cost * speed_i * jitter * straggle`` where
``base`` is the simulated time of one direction evaluation, ``cost`` the
scheme's relative compute cost, ``speed_i`` a fixed per-worker slowness
(heterogeneous model), ``jitter ~ LogNormal(0, sigma)`` and ``straggle`` a
heavy-tailed multiplier that hits a job with some probability (stragglers
model). Randomness comes from a seeded ``numpy`` generator, so a simulation is
reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asynccorr.config import DELAY_KINDS


@dataclass(frozen=True)
class DelayModel:
    kind: str = "homogeneous"
    jitter: float = 0.1  # lognormal sigma of every job's duration
    speed_spread: float = 4.0  # heterogeneous: slowest worker is this many times slower than the fastest
    straggler_prob: float = 0.05  # stragglers: probability that a job straggles
    straggler_tail: float = 1.5  # stragglers: Pareto shape of the extra slowdown (smaller = heavier)

    def __post_init__(self) -> None:
        assert self.kind in DELAY_KINDS, self.kind

    def worker_speeds(self, count: int) -> np.ndarray:
        """Fixed slowness factor per worker (1 = fastest); geometric spread when heterogeneous."""
        if self.kind != "heterogeneous" or count == 1:
            return np.ones(count)
        return np.geomspace(1.0, self.speed_spread, count)

    def duration(self, rng: np.random.Generator, base: float, speed: float) -> float:
        """Sample one job's duration (always > 0)."""
        d = base * speed
        if self.jitter > 0:
            d *= float(rng.lognormal(0.0, self.jitter))
        if self.kind == "stragglers" and float(rng.random()) < self.straggler_prob:
            d *= 1.0 + float(rng.pareto(self.straggler_tail)) * 10.0
        return d
