"""Built-in heads."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from hepfm import Batch, hookimpl
from hepfm.components import HeadDims, Latents, Params


class ClassificationHead(torch.nn.Module):
    """Process classification from the event latent; cross-entropy weighted per event."""

    name: ClassVar[str] = "classification"
    description: ClassVar[str] = "event latent -> process logits; weighted cross-entropy"

    class Params(Params):
        num_classes: int = Field(ge=2, description="number of process classes")
        hidden: int = Field(128, ge=1, description="width of the hidden layer")
        dropout: float = Field(0.0, ge=0, lt=1)
        target: str = Field("process", description="name of the integer target")
        class_weights: list[float] | None = Field(None, description="optional weight per class")

    def __init__(self, params: Params, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(dims.latent_dim),
            torch.nn.Linear(dims.latent_dim, params.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(params.dropout),
            torch.nn.Linear(params.hidden, params.num_classes),
        )
        cw = params.class_weights
        self.register_buffer("class_weights", torch.tensor(cw, dtype=torch.float32) if cw else None)

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        return {"logits": self.net(latents.event)}  # [B, C]

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch.targets[self.params.target].long()
        per_event = F.cross_entropy(outputs["logits"], target, weight=self.class_weights, reduction="none")
        w = batch.weights
        loss = (per_event * w).sum() / w.sum().clamp_min(1e-12)
        return loss, {"ce": float(loss.detach())}

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"probabilities": outputs["logits"].softmax(-1)}


@hookimpl
def hepfm_register_heads() -> list[type]:
    """Built-in heads."""
    return [ClassificationHead]
