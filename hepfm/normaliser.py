"""Per-feature normalisation of raw object features and globals, from a store's statistics."""

from __future__ import annotations

import torch

from .schema import EventSchema, Feature, FeatureStats

__all__ = ["Normaliser"]


def _stat_vectors(stats: dict[str, FeatureStats], features: tuple[Feature, ...]) -> dict[str, torch.Tensor]:
    shift, scale, kinds = [], [], []
    for f in features:
        s = stats[f.name]
        if f.norm == "log_standardise":
            shift.append(s.log_mean)
            scale.append(s.log_std if s.log_std > 0 else 1.0)
        elif f.norm == "standardise":
            shift.append(s.mean)
            scale.append(s.std if s.std > 0 else 1.0)
        elif f.norm == "uniform":
            shift.append(0.5 * (s.max + s.min))
            half = 0.5 * (s.max - s.min)
            scale.append(half if half > 0 else 1.0)
        else:
            shift.append(0.0)
            scale.append(1.0)
        kinds.append(f.norm == "log_standardise")
    return {
        "shift": torch.tensor(shift, dtype=torch.float32),
        "scale": torch.tensor(scale, dtype=torch.float32),
        "log": torch.tensor(kinds, dtype=torch.bool),
    }


class Normaliser(torch.nn.Module):
    """Per-feature normalisation as buffers, so a checkpoint carries the statistics it was trained with.

    ``log_standardise``: (log1p(x) - mu) / sigma; ``standardise``: (x - mu) / sigma;
    ``uniform``: mapped from [min, max] onto [-1, 1]; ``none``: unchanged. Masked objects become 0.
    """

    def __init__(self, schema: EventSchema, stats: dict[str, dict[str, FeatureStats]]) -> None:
        super().__init__()
        for part, features in (("objects", schema.object_features), ("globals", schema.global_features)):
            missing = [f.name for f in features if f.name not in stats.get(part, {})]
            if missing:
                raise ValueError(f"normalisation statistics lack {part} features {missing}")
            for key, value in _stat_vectors(stats[part], features).items():
                self.register_buffer(f"{part}_{key}", value)

    @staticmethod
    def _normalise(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, log: torch.Tensor) -> torch.Tensor:
        x = torch.where(log, torch.log1p(x.clamp_min(0)), x)
        return (x - shift) / scale

    @staticmethod
    def _invert(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, log: torch.Tensor) -> torch.Tensor:
        x = x * scale + shift
        return torch.where(log, torch.expm1(x.clamp(max=30.0)), x)

    def objects(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalise [B, N, F] object features; masked rows are zeroed."""
        y = self._normalise(x, self.objects_shift, self.objects_scale, self.objects_log)
        return y * mask.unsqueeze(-1).to(y.dtype)

    def globals(self, g: torch.Tensor) -> torch.Tensor:
        """Normalise [B, G] globals."""
        return self._normalise(g, self.globals_shift, self.globals_scale, self.globals_log)

    def objects_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Physical object features from normalised ones (for generative heads)."""
        return self._invert(y, self.objects_shift, self.objects_scale, self.objects_log)
