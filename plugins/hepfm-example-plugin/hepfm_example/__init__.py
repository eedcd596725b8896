"""Example third-party hepfm plugin: regress the event's missing transverse momentum.

``met_regression`` predicts log(1 + MET) from the event latent (MET is the first global in the
default schema); ``relative_resolution`` reports the median and interquartile range of
(predicted - true) / true.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

import hepfm


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetRegressionHead(torch.nn.Module):
    """Event latent -> log(1 + MET); mean squared error weighted per event."""

    name: ClassVar[str] = "met_regression"
    description: ClassVar[str] = "example plugin: event latent -> MET (log-space MSE)"

    class Params(_Params):
        hidden: int = Field(64, ge=1)
        global_feature: str = Field("met", description="which global is the target")

    def __init__(self, params: Params, dims) -> None:
        super().__init__()
        self.params = params
        self.index = dims.schema.global_names.index(params.global_feature)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dims.latent_dim, params.hidden), torch.nn.GELU(), torch.nn.Linear(params.hidden, 1)
        )

    def forward(self, latents, batch) -> dict[str, torch.Tensor]:
        return {"log_met": self.net(latents.event).squeeze(-1)}  # [B]

    def loss(self, outputs, batch) -> tuple[torch.Tensor, dict[str, float]]:
        truth = torch.log1p(batch.globals[:, self.index].clamp_min(0))
        w = batch.weights
        loss = (w * (outputs["log_met"] - truth) ** 2).sum() / w.sum().clamp_min(1e-12)
        return loss, {"mse": float(loss.detach())}

    def predict(self, outputs) -> dict[str, torch.Tensor]:
        return {"met": torch.expm1(outputs["log_met"])}


class RelativeResolution:
    """Median and IQR of (prediction - truth) / truth."""

    name: ClassVar[str] = "relative_resolution"
    description: ClassVar[str] = "example plugin: median and IQR of relative residuals"

    class Params(_Params):
        head: str | None = Field(None, description="met_regression head key (default: the only one)")
        prediction: str = "met"
        target: str = Field("met", description="target or global feature")

    def __init__(self, params: Params) -> None:
        self.params = params

    def compute(self, evaluation) -> dict[str, float]:
        _, outputs = evaluation.head(self.params.head, "met_regression")
        truth = np.asarray(evaluation.truth(self.params.target), dtype=np.float64)
        ok = truth > 0
        r = (np.asarray(outputs[self.params.prediction])[ok] - truth[ok]) / truth[ok]
        q25, q50, q75 = np.percentile(r, [25, 50, 75])
        return {"median": float(q50), "iqr": float(q75 - q25)}


@hepfm.hookimpl
def hepfm_register_heads() -> list[type]:
    """This package's heads."""
    return [MetRegressionHead]


@hepfm.hookimpl
def hepfm_register_metrics() -> list[type]:
    """This package's metrics."""
    return [RelativeResolution]
