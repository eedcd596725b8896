"""EventModel: normaliser + backbone + the heads a task names, with the weighted sum of their losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from .._errors import HepfmError
from ..batch import Batch
from ..components import HeadDims, Latents
from ..normaliser import Normaliser
from ..schema import EventSchema, FeatureStats
from .backbone import Backbone, BackboneConfig

__all__ = ["ModelContext", "EventModel", "KINEMATICS"]

KINEMATICS = ("E", "pt", "eta", "phi")


@dataclass
class ModelContext:
    """The normalised inputs of a batch and a way to run the backbone again on perturbed ones.

    ``encode(x, t=None, noised=None)`` re-encodes normalised object features x [B, N, F] of the
    same events (same mask and globals) at diffusion time t [B]; pair features and neighbours
    follow the perturbed kinematics.
    """

    x: torch.Tensor  # [B, N, F] normalised objects
    mask: torch.Tensor  # [B, N]
    g: torch.Tensor  # [B, G] normalised globals
    normaliser: Normaliser
    encode: Callable[..., Latents]


class EventModel(nn.Module):
    """The whole network for one task.

    Args:
        schema: Event schema (must contain E, pt, eta, phi).
        stats: Normalisation statistics (from the store), kept as buffers.
        config: Backbone sizes.
        heads: key -> (head class, validated params, loss weight).
    """

    def __init__(
        self,
        schema: EventSchema,
        stats: dict[str, dict[str, FeatureStats]],
        config: BackboneConfig,
        heads: dict[str, tuple[type, BaseModel, float]],
    ) -> None:
        super().__init__()
        missing = [k for k in KINEMATICS if k not in schema.object_names]
        if missing:
            raise HepfmError(
                f"the model needs object features {missing} for pair features; schema has {schema.object_names}"
            )
        self.schema, self.config = schema, config
        self.kin_index = [schema.index(k) for k in KINEMATICS]
        self.normaliser = Normaliser(schema, stats)
        self.backbone = Backbone(config, schema.n_object_features, schema.n_global_features)
        dims = HeadDims(latent_dim=config.dim, schema=schema)
        self.heads = nn.ModuleDict({key: cls(params, dims) for key, (cls, params, _) in heads.items()})
        self.loss_weights = {key: float(weight) for key, (_, _, weight) in heads.items()}

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, t=None, noised=None, ctx=None) -> Latents:
        kin = self.normaliser.objects_inverse(x)[..., self.kin_index]  # [B, N, 4] raw
        objects, event = self.backbone(x, mask, g, kin, t, noised)
        return Latents(objects, event, mask, ctx)

    def encode(self, batch: Batch, clean: bool = True) -> Latents:
        """Latents of unperturbed events, with a context for generative heads.

        With ``clean=False`` only the context is built (objects and event are None): heads that
        re-encode perturbed inputs themselves then cost one backbone pass, not two.
        """
        x = self.normaliser.objects(batch.objects, batch.mask)
        g = self.normaliser.globals(batch.globals)
        ctx = ModelContext(x, batch.mask, g, self.normaliser, None)
        ctx.encode = lambda xx, t=None, noised=None: self._encode(xx, batch.mask, g, t, noised, ctx)
        if not clean:
            return Latents(None, None, batch.mask, ctx)
        objects, event = self.backbone(x, batch.mask, g, batch.objects[..., self.kin_index], None, None)
        return Latents(objects, event, batch.mask, ctx)

    def predict(self, data, batch_size: int = 1024, seed: int = 0) -> dict:
        """Named per-event predictions (numpy columns) for a Batch, an awkward array or a store.

        Example:
            >>> cols = hepfm.load_model("runs/qe").predict("data/ttbar.zarr")  # doctest: +SKIP
            >>> cols["process_prob_ttbar_dilepton"][:3]  # doctest: +SKIP
        """
        from ..predict import predict_columns

        return predict_columns(self, data, batch_size, seed)

    def forward(self, batch: Batch, heads: list[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Outputs of the named heads (all by default)."""
        active = {k: self.heads[k] for k in (heads if heads is not None else self.heads)}
        clean = any(getattr(head, "uses_clean_latents", True) for head in active.values())
        latents = self.encode(batch, clean=clean)
        return {key: head(latents, batch) for key, head in active.items()}

    def loss(
        self, batch: Batch, heads: list[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        """Weighted sum of the named heads' losses, every part for logging, and the head outputs."""
        outputs = self(batch, heads)
        total = torch.zeros((), device=batch.objects.device)
        parts: dict[str, float] = {}
        for key in outputs:
            head = self.heads[key]
            loss, named = head.loss(outputs[key], batch)
            total = total + self.loss_weights[key] * loss
            parts[key] = float(loss.detach())
            parts.update({f"{key}/{k}": v for k, v in named.items()})
        parts["total"] = float(total.detach())
        return total, parts, outputs
