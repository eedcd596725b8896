"""Streaming normalisation statistics of a store (Chan et al. parallel moments, float64).

The writer merges every chunk into ``Moments`` as it is written and records their state
(``accumulators``), so a multi-store dataset merges its stores' moments exactly; at ``close`` they
become the ``stats`` attribute (``FeatureStats`` per feature).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..normaliser import Normaliser
from ..schema import EventSchema, FeatureStats

__all__ = ["Moments", "typed_stats", "WithStats"]


class Moments:
    """Count, mean, M2, min, max per feature, of x and of log1p(max(x, 0)), merged block by block."""

    KEYS = ("n", "mean", "m2", "min", "max", "lmean", "lm2")

    def __init__(self, n_features: int, state: dict[str, list[float]] | None = None) -> None:
        if state is not None:
            for k in self.KEYS:
                setattr(self, k, np.asarray(state[k], dtype=np.float64))
            return
        self.n = np.zeros(n_features)
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.min = np.full(n_features, np.inf)
        self.max = np.full(n_features, -np.inf)
        self.lmean = np.zeros(n_features)
        self.lm2 = np.zeros(n_features)

    def update(self, x: np.ndarray) -> None:
        """Merge rows x [k, F] (already restricted to real entries)."""
        if x.shape[0] == 0:
            return
        x = x.astype(np.float64)
        lx = np.log1p(np.clip(x, 0.0, None))
        nb = float(x.shape[0])
        n = self.n + nb
        for attr_mean, attr_m2, values in (("mean", "m2", x), ("lmean", "lm2", lx)):
            mb = values.mean(0)
            m2b = ((values - mb) ** 2).sum(0)
            ma = getattr(self, attr_mean)
            delta = mb - ma
            setattr(self, attr_mean, ma + delta * nb / n)
            setattr(self, attr_m2, getattr(self, attr_m2) + m2b + delta**2 * self.n * nb / n)
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))
        self.n = n

    @classmethod
    def merge(cls, parts: list[Moments]) -> Moments:
        """The moments of the union of the parts' rows (exact up to rounding, order-independent in value)."""
        out = cls(len(parts[0].n))
        for p in parts:
            n = out.n + p.n
            safe = np.where(n > 0, n, 1.0)
            for attr_mean, attr_m2 in (("mean", "m2"), ("lmean", "lm2")):
                ma, mb = getattr(out, attr_mean), getattr(p, attr_mean)
                delta = mb - ma
                setattr(out, attr_mean, ma + delta * p.n / safe)
                setattr(out, attr_m2, getattr(out, attr_m2) + getattr(p, attr_m2) + delta**2 * out.n * p.n / safe)
            out.min = np.where(p.n > 0, np.minimum(out.min, p.min), out.min)
            out.max = np.where(p.n > 0, np.maximum(out.max, p.max), out.max)
            out.n = n
        return out

    def state(self) -> dict[str, list[float]]:
        return {k: [float(v) if np.isfinite(v) else 0.0 for v in getattr(self, k)] for k in self.KEYS}

    def stats(self, names: list[str]) -> dict[str, dict[str, float]]:
        out = {}
        for i, name in enumerate(names):
            n = max(self.n[i], 1.0)
            out[name] = FeatureStats(
                count=int(self.n[i]),
                mean=float(self.mean[i]),
                std=float(math.sqrt(max(self.m2[i] / n, 0.0))),
                min=float(self.min[i]) if self.n[i] else 0.0,
                max=float(self.max[i]) if self.n[i] else 0.0,
                log_mean=float(self.lmean[i]),
                log_std=float(math.sqrt(max(self.lm2[i] / n, 0.0))),
            ).model_dump()
        return out


def typed_stats(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, FeatureStats]]:
    """The ``stats`` attribute as ``FeatureStats``: {"objects"|"globals": {feature: FeatureStats}}."""
    return {part: {k: FeatureStats.model_validate(v) for k, v in raw[part].items()} for part in ("objects", "globals")}


class WithStats:
    """The normalisation statistics of what has a ``schema`` and an ``attrs["stats"]`` (a store, a dataset)."""

    schema: EventSchema
    attrs: dict[str, Any]

    @property
    def stats(self) -> dict[str, dict[str, FeatureStats]]:
        """Normalisation statistics: {"objects"|"globals": {feature: FeatureStats}}."""
        return typed_stats(self.attrs["stats"])

    def normaliser(self) -> Normaliser:
        """A ``Normaliser`` module with these statistics."""
        return Normaliser(self.schema, self.stats)
