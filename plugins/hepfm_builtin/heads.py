"""Built-in heads: classification, regression, assignment, segmentation and the two diffusion heads."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from hepfm import Batch, hookimpl
from hepfm.components import HeadDims, Latents, Params
from hepfm.sdk import MAX_CLASSES, MAX_WIDTH

from ._assignment import AssignmentHead
from ._generative import InvisibleDiffusionHead, VisibleDiffusionHead
from ._parametrised import ParametrisedClassificationHead
from ._segmentation import SegmentationHead


class ClassificationHead(torch.nn.Module):
    """Process classification from the event latent; cross-entropy weighted per event."""

    name: ClassVar[str] = "classification"
    description: ClassVar[str] = "event latent -> process logits; weighted cross-entropy"

    class Params(Params):
        num_classes: int | None = Field(
            None, ge=2, le=MAX_CLASSES, description="number of classes (default: the store's processes)"
        )
        hidden: int = Field(128, ge=1, le=MAX_WIDTH, description="width of the hidden layer")
        dropout: float = Field(0.0, ge=0, lt=1)
        target: str = Field("process", description="name of the integer target")
        class_weights: list[float] | None = Field(None, description="optional weight per class")

    @classmethod
    def store_targets(cls, params: Params) -> list[str]:
        """The store target it reads: ``target``."""
        return [params.target]

    @classmethod
    def bind(cls, params: dict, store) -> dict:
        """Fill what the data decides: the number of classes is the store's process count."""
        if params.get("num_classes") is not None:
            return params
        if params.get("target", "process") != "process":
            raise ValueError(f"num_classes is needed for target '{params['target']}'")
        if len(store.processes) < 2:
            raise ValueError(f"{store.path} holds {len(store.processes)} process; give num_classes")
        return {**params, "num_classes": len(store.processes)}

    def __init__(self, params: Params, dims: HeadDims) -> None:
        super().__init__()
        if params.num_classes is None:
            raise ValueError("classification: num_classes is not set (bind the head to a store first)")
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


class RegressionHead(torch.nn.Module):
    """Event latent -> standardised regression targets; MSE or log-cosh.

    Targets are named targets of the batch ([B] or [B, k]) or global features; they are
    standardised with a running mean and variance accumulated during training (stored with the
    weights) unless ``mean``/``std`` are given.
    """

    name: ClassVar[str] = "regression"
    description: ClassVar[str] = "event latent -> standardised targets (targets or globals); MSE or log-cosh"

    class Params(Params):
        targets: list[str] = Field(min_length=1, description="target names, or global feature names")
        sizes: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] | None = Field(
            None, description="width of each target (default 1 each)"
        )
        loss: Literal["mse", "log_cosh"] = "mse"
        hidden: int = Field(128, ge=1, le=MAX_WIDTH)
        mean: list[float] | None = None
        std: list[float] | None = None

    def __init__(self, params: Params, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        self.globals_index = {n: i for i, n in enumerate(dims.schema.global_names)}
        sizes = params.sizes or [1] * len(params.targets)
        if len(sizes) != len(params.targets):
            raise ValueError("sizes must give one width per target")
        k = sum(sizes)
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(dims.latent_dim),
            torch.nn.Linear(dims.latent_dim, params.hidden),
            torch.nn.GELU(),
            torch.nn.Linear(params.hidden, k),
        )
        fixed = params.mean is not None and params.std is not None
        self.register_buffer("mean", torch.tensor(params.mean if fixed else [0.0] * k))
        self.register_buffer("m2", torch.tensor([s**2 for s in params.std] if fixed else [0.0] * k))
        self.register_buffer("count", torch.tensor(1.0 if fixed else 0.0))
        self.fixed = fixed

    def values(self, batch: Batch) -> torch.Tensor:
        cols = []
        for name in self.params.targets:
            if name in batch.targets:
                v = batch.targets[name].float()
            else:
                v = batch.globals[:, self.globals_index[name]]
            cols.append(v.reshape(v.shape[0], -1))
        return torch.cat(cols, dim=-1)  # [B, K]

    def _std(self) -> torch.Tensor:
        var = self.m2 if self.fixed else self.m2 / self.count.clamp_min(1)
        return var.sqrt().clamp_min(1e-6)

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        if self.training and not self.fixed:
            with torch.no_grad():  # running (Chan) merge of the batch moments
                y = self.values(batch)
                nb = torch.tensor(float(y.shape[0]), device=y.device)
                mb, m2b = y.mean(0), ((y - y.mean(0)) ** 2).sum(0)
                n = self.count + nb
                delta = mb - self.mean
                self.mean += delta * nb / n
                self.m2 += m2b + delta**2 * self.count * nb / n
                self.count.copy_(n)
        return {"standardised": self.net(latents.event)}  # [B, K]

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        z = (self.values(batch) - self.mean) / self._std()
        d = outputs["standardised"] - z
        per = (d**2 if self.params.loss == "mse" else torch.log(torch.cosh(d.clamp(-20, 20)))).mean(-1)
        w = batch.weights
        loss = (per * w).sum() / w.sum().clamp_min(1e-12)
        return loss, {self.params.loss: float(loss.detach())}

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"values": outputs["standardised"] * self._std() + self.mean}


@hookimpl
def hepfm_register_heads() -> list[type]:
    """Built-in heads."""
    return [
        ClassificationHead,
        RegressionHead,
        AssignmentHead,
        SegmentationHead,
        VisibleDiffusionHead,
        InvisibleDiffusionHead,
        ParametrisedClassificationHead,
    ]
