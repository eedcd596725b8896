"""A classification head parametrised by a mass point, and the metric over the grid of points.

The head (``parametrised_classification``) scores signal against background *at a mass point*:
the event latent and the point's masses (e.g. m_X, m_Y) go into one MLP. Signal classes are the
first K processes of the store, each with its mass point (``points``); background events get a
point drawn at random from the K (anew in every training step; at evaluation from the seeded
generator), so the masses alone never tell signal from background (Baldi et al., "Parameterized
neural networks for high-energy physics", 2016).

The metric (``mass_grid``) takes, for each point, the signal of that point and the background
events evaluated at that point: ROC AUC and binned significance (Asimov, score histogram with
signal and background normalised to expected yields), a heat map of the grid and the medians.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from hepfm import Batch
from hepfm.components import Evaluation, HeadDims, Latents, Params
from hepfm.sdk import GridResult, binned_significance, plot_grid


class ParametrisedClassificationHead(torch.nn.Module):
    """Event latent + mass point -> signal logit; background gets random points of the grid."""

    name: ClassVar[str] = "parametrised_classification"
    description: ClassVar[str] = "signal vs background at a mass point (masses as inputs); one model for a grid"

    class Params(Params):
        points: list[list[float]] = Field(
            ..., min_length=1, description="mass point of each signal class 0..K-1 (the store's first K processes)"
        )
        scale: float = Field(1000.0, gt=0, description="masses are divided by this before entering the MLP")
        hidden: int = Field(128, ge=1)
        dropout: float = Field(0.0, ge=0, lt=1)
        target: str = Field("process", description="integer target: < K signal class, >= K background")

    @classmethod
    def store_targets(cls, params) -> list[str]:
        """The store target it reads: ``target``."""
        return [params.target]

    def __init__(self, params: Params, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        if len({len(p) for p in params.points}) != 1:
            raise ValueError("parametrised_classification: every point needs the same number of masses")
        self.register_buffer("points", torch.tensor(params.points, dtype=torch.float32) / params.scale)
        self.norm = torch.nn.LayerNorm(dims.latent_dim)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dims.latent_dim + self.points.shape[1], params.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(params.dropout),
            torch.nn.Linear(params.hidden, params.hidden),
            torch.nn.GELU(),
            torch.nn.Linear(params.hidden, 1),
        )

    def _run(self, latents: Latents, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        label = batch.targets[self.params.target].long()
        k = self.points.shape[0]
        is_signal = label < k
        draw = torch.randint(0, k, label.shape, generator=generator).to(label.device)
        index = torch.where(is_signal, label.clamp(max=k - 1), draw)
        h = torch.cat([self.norm(latents.event), self.points[index]], -1)
        return {"logit": self.net(h).squeeze(-1), "point_index": index, "is_signal": is_signal}

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        return self._run(latents, batch, None)

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        y = outputs["is_signal"].float()
        w = batch.weights
        # signal and background carry equal total weight in every batch
        ws, wb = (w * y).sum().clamp_min(1e-12), (w * (1 - y)).sum().clamp_min(1e-12)
        per_event = F.binary_cross_entropy_with_logits(outputs["logit"], y, reduction="none")
        loss = 0.5 * (per_event * w * y).sum() / ws + 0.5 * (per_event * w * (1 - y)).sum() / wb
        return loss, {"bce": float(loss.detach())}

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"probability": torch.sigmoid(outputs["logit"]), "point_index": outputs["point_index"]}

    @torch.no_grad()
    def infer(
        self, latents: Latents, batch: Batch, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """For evaluation: the background's points come from the (seeded) generator, so they repeat."""
        return self.predict(self._run(latents, batch, generator))


class MassGrid:
    """Per mass point AUC and binned significance of a ``parametrised_classification`` head; medians."""

    name: ClassVar[str] = "mass_grid"
    description: ClassVar[str] = "AUC and binned significance per mass point, heat map, medians over the grid"
    headline: ClassVar[tuple[str, ...]] = ("median_z", "median_auc")

    class Params(Params):
        head: str | None = Field(None, description="parametrised_classification head key (default: the only one)")
        bins: int = Field(20, ge=2, description="score bins of the binned significance")
        signal_yield: float = Field(50.0, gt=0, description="expected signal events per point")
        background_yield: float = Field(5000.0, gt=0, description="expected background events")
        target: str = "process"

    def __init__(self, params: Params) -> None:
        self.params = params

    def _per_point(self, ev: Evaluation) -> list[tuple[list[float], float, float, int, int]]:
        from sklearn.metrics import roc_auc_score  # here, not at import: plugins load on every CLI start

        key, out = ev.head(self.params.head, "parametrised_classification")
        points = ev.heads[key]["params"]["points"]
        truth = ev.truth(self.params.target)
        prob, index = out["probability"], out["point_index"]
        rows = []
        for k, point in enumerate(points):
            sig = truth == k
            bkg = (truth >= len(points)) & (index == k)
            if not sig.any() or not bkg.any():
                continue
            s, b = prob[sig], prob[bkg]
            auc = roc_auc_score(np.r_[np.ones(len(s)), np.zeros(len(b))], np.r_[s, b])
            p = self.params
            z = binned_significance(s, b, p.bins, p.signal_yield, p.background_yield)
            rows.append((point, float(auc), z, int(sig.sum()), int(bkg.sum())))
        if not rows:
            raise ValueError("mass_grid: no mass point has both signal and background events")
        return rows

    def compute(self, ev: Evaluation) -> dict[str, float]:
        rows = self._per_point(ev)
        out = {
            "median_z": float(np.median([r[2] for r in rows])),
            "median_auc": float(np.median([r[1] for r in rows])),
        }
        for point, auc, z, _, _ in rows:
            tag = "_".join(f"{m:g}" for m in point)
            out[f"auc_{tag}"], out[f"z_{tag}"] = auc, z
        return out

    def plot(self, ev: Evaluation, out: Path) -> list[Path]:
        rows = self._per_point(ev)
        if len(rows[0][0]) != 2:
            return []  # the heat map needs two masses
        res = GridResult(
            [tuple(r[0]) for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            float(np.median([r[1] for r in rows])),
            float(np.median([r[2] for r in rows])),
        )
        return [plot_grid(res, out / "mass_grid.png", "parametrised classifier over the mass grid")]
