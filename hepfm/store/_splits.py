"""Train, validation and test splits of a store, as chunk-aligned event ranges."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._errors import StoreError
from ._format import Segment

__all__ = ["SplitSpec", "split_segments"]


class SplitSpec(BaseModel):
    """Fractions of a store for training, validation and test, and the seed that places them."""

    model_config = ConfigDict(extra="forbid")

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSpec:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


def split_segments(n_events: int, chunk: int, spec: SplitSpec, which: str, fraction: float = 1.0) -> list[Segment]:
    """Event ranges [start, stop) of one split, each inside one chunk.

    Chunks are laid out in an order fixed by ``spec.seed``; the train, val and test fractions take
    consecutive stretches of that order, so only the chunks on a boundary are shared between
    splits. ``fraction`` keeps the first part of the split in the same order (deterministic
    subsets for data-efficiency studies; smaller fractions are subsets of larger ones).
    """
    if which not in ("train", "val", "test"):
        raise StoreError(f"unknown split '{which}'; known: train, val, test")
    if not 0.0 < fraction <= 1.0:
        raise StoreError(f"fraction must be in (0, 1], got {fraction}")
    cuts = np.round(np.cumsum([0.0, spec.train, spec.val, spec.test]) * n_events).astype(int)
    cuts[-1] = n_events
    k = ("train", "val", "test").index(which)
    lo, hi = int(cuts[k]), int(cuts[k + 1])
    hi = lo + (max(1, round((hi - lo) * fraction)) if hi > lo else 0)
    n_chunks = math.ceil(n_events / chunk)
    order = np.random.default_rng(spec.seed).permutation(n_chunks)
    segments, pos = [], 0
    for c in order:
        start, length = int(c) * chunk, min(chunk, n_events - int(c) * chunk)
        a, b = max(lo, pos), min(hi, pos + length)
        if a < b:
            segments.append((start + a - pos, start + b - pos))
        pos += length
        if pos >= hi:
            break
    return segments
