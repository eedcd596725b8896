"""MaskFormer-like segmentation: learned queries, each a class and a mask over the objects.

Targets are a label per object (-1: from no resonance); every distinct label in an event is one
segment, its class given by ``label_classes`` (identity by default). Queries are matched to
segments with the Hungarian algorithm on -p(class) + mask BCE + dice; matched queries learn their
segment's class and mask, unmatched ones the "no object" class.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.optimize import linear_sum_assignment
from torch import nn

from hepfm import Batch
from hepfm.components import HeadDims, Latents, Params
from hepfm.sdk import MAX_CLASSES, MAX_DEPTH


class SegmentationParams(Params):
    num_classes: int = Field(ge=1, le=MAX_CLASSES, description="segment classes (a 'no object' class is added)")
    num_queries: int = Field(4, ge=1, le=MAX_CLASSES)
    label_classes: list[int] | None = Field(None, description="class of each label value (default: label = class)")
    target: str = Field("segmentation", description="integer label per object [B, N], -1 for none")
    layers: int = Field(2, ge=1, le=MAX_DEPTH)
    num_heads: int = Field(4, ge=1, le=256)
    no_object_weight: float = Field(0.1, ge=0)


def _dice(p: torch.Tensor, m: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    # p [Q, N] probabilities, m [S, N] 0/1 -> [Q, S]
    p, m = p * real, m * real
    num = 2 * p @ m.T
    return 1 - (num + 1) / (p.sum(-1)[:, None] + m.sum(-1)[None, :] + 1)


class SegmentationHead(nn.Module):
    """Group objects into resonance candidates."""

    name: ClassVar[str] = "segmentation"
    description: ClassVar[str] = "MaskFormer-like queries -> class and object mask; Hungarian matching"
    Params: ClassVar[type] = SegmentationParams

    @classmethod
    def store_targets(cls, params: SegmentationParams) -> list[str]:
        """The store target it reads: ``target``."""
        return [params.target]

    def __init__(self, params: SegmentationParams, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        d = dims.latent_dim
        self.queries = nn.Parameter(torch.randn(params.num_queries, d) * 0.02)
        self.attn = nn.ModuleList(
            [nn.MultiheadAttention(d, params.num_heads, batch_first=True) for _ in range(params.layers)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(2 * params.layers)])
        self.mlps = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(params.layers)]
        )
        self.class_out = nn.Linear(d, params.num_classes + 1)
        self.mask_query = nn.Linear(d, d)
        self.mask_object = nn.Linear(d, d)
        self.scale = d**-0.5

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        h, mask = latents.objects, latents.mask
        b = h.shape[0]
        keys_off = ~mask
        keys_off = keys_off & mask.any(-1, keepdim=True)  # an event without objects keeps its (zero) keys
        q = self.queries.unsqueeze(0).expand(b, -1, -1) + latents.event.unsqueeze(1)  # [B, Q, D]
        for i, (attn, mlp) in enumerate(zip(self.attn, self.mlps, strict=True)):
            q = q + attn(self.norms[2 * i](q), h, h, key_padding_mask=keys_off, need_weights=False)[0]
            q = q + mlp(self.norms[2 * i + 1](q))
        masks = torch.einsum("bqd,bnd->bqn", self.mask_query(q), self.mask_object(h)) * self.scale  # [B, Q, N]
        return {"class_logits": self.class_out(q), "mask_logits": masks}

    def _segments(self, labels: np.ndarray) -> tuple[list[int], np.ndarray]:
        values = sorted(v for v in np.unique(labels) if v >= 0)
        lc = self.params.label_classes
        classes = [lc[v] if lc is not None and v < len(lc) else v for v in values]
        return classes, np.stack([labels == v for v in values]).astype(np.float32) if values else np.zeros(
            (0, len(labels)), np.float32
        )

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, masks = outputs["class_logits"], outputs["mask_logits"]
        labels = batch.targets[self.params.target].cpu().numpy()
        b, nq, c1 = logits.shape
        no_obj = c1 - 1
        class_target = torch.full((b, nq), no_obj, dtype=torch.long, device=logits.device)
        mask_losses = []
        prob = logits.softmax(-1)
        for e in range(b):
            real = batch.mask[e].float()
            classes, seg = self._segments(np.where(batch.mask[e].cpu().numpy(), labels[e], -1))
            if not classes:
                continue
            seg_t = torch.from_numpy(seg).to(masks.device)  # [S, N]
            ml = masks[e]  # [Q, N]
            with torch.no_grad():
                bce = (
                    F.binary_cross_entropy_with_logits(
                        ml[:, None, :].expand(-1, len(classes), -1), seg_t[None].expand(nq, -1, -1), reduction="none"
                    )
                    * real
                ).sum(-1) / real.sum().clamp_min(1)
                cost = -prob[e][:, classes] + bce + _dice(ml.sigmoid(), seg_t, real)
            qi, si = linear_sum_assignment(cost.cpu().numpy())
            qi_t, si_t = torch.as_tensor(qi, device=logits.device), torch.as_tensor(si, device=logits.device)
            class_target[e, qi_t] = torch.as_tensor([int(c) for c in classes], dtype=torch.long, device=logits.device)[
                si_t
            ]
            bce_m = (F.binary_cross_entropy_with_logits(ml[qi_t], seg_t[si_t], reduction="none") * real).sum(
                -1
            ) / real.sum().clamp_min(1)
            dice_m = _dice(ml[qi_t].sigmoid(), seg_t[si_t], real).diagonal()
            mask_losses.append((bce_m + dice_m).mean())
        weight = torch.ones(c1, device=logits.device)
        weight[no_obj] = self.params.no_object_weight
        ce = F.cross_entropy(logits.reshape(-1, c1), class_target.reshape(-1), weight=weight)
        mask_loss = torch.stack(mask_losses).mean() if mask_losses else torch.zeros((), device=logits.device)
        return ce + mask_loss, {"class": float(ce.detach()), "mask": float(mask_loss.detach())}

    @torch.no_grad()
    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-query class probabilities and masks; per object the class of its best query (-1: none)."""
        prob = outputs["class_logits"].softmax(-1)  # [B, Q, C+1]
        obj = outputs["mask_logits"].sigmoid()  # [B, Q, N]
        best_class = prob[..., :-1].argmax(-1)  # [B, Q]
        score = obj * (1 - prob[..., -1]).unsqueeze(-1)  # [B, Q, N]
        val, q = score.max(dim=1)  # [B, N]
        labels = torch.where(val > 0.5, best_class.gather(1, q), torch.full_like(q, -1))
        return {"class_probabilities": prob, "masks": obj, "object_class": labels}
