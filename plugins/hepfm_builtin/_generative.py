"""Generative heads: visible-object diffusion (self-supervised) and invisible-particle diffusion.

Both use v-prediction with the cosine schedule and a deterministic DDIM sampler
(``hepfm.model.diffusion``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from hepfm import Batch
from hepfm.components import HeadDims, Latents, Params
from hepfm.sdk import (
    MAX_CLASSES,
    MAX_DEPTH,
    MAX_WIDTH,
    MLP,
    alpha_sigma,
    ddim_sample,
    noise,
    predict_x0_eps,
    time_embedding,
)


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, sel: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean squared error over selected entries [B, M] (features summed), weighted per event."""
    err = ((pred - target) ** 2).mean(-1) * sel  # [B, M]
    per_event = err.sum(-1) / sel.sum(-1).clamp_min(1)
    has = (sel.sum(-1) > 0).float() * w
    return (per_event * has).sum() / has.sum().clamp_min(1e-12)


class VisibleDiffusionParams(Params):
    mask_fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of real objects generated (the trainer may ramp it)"
    )
    hidden: int = Field(128, ge=1, le=MAX_WIDTH)
    steps: int = Field(20, ge=1, le=10_000, description="DDIM steps when generating")


class VisibleDiffusionHead(nn.Module):
    """Self-supervised: hide some objects under noise and denoise them, conditioned on the rest."""

    name: ClassVar[str] = "visible_diffusion"
    description: ClassVar[str] = "masked-object denoising (v-prediction, cosine schedule); self-supervised"
    Params: ClassVar[type] = VisibleDiffusionParams
    uses_clean_latents: ClassVar[bool] = False  # it encodes the perturbed event itself

    def __init__(self, params: VisibleDiffusionParams, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        self.mask_fraction = params.mask_fraction
        n_f = dims.schema.n_object_features
        # the noisy input and the time go straight to the output (v = (alpha x_t - x0) / sigma needs x_t exactly)
        self.out = MLP(dims.latent_dim + n_f + 2, params.hidden, n_f)

    def _v(self, latents: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = alpha_sigma(t)
        ts = torch.stack([a, s], -1).unsqueeze(1).expand(-1, x_t.shape[1], -1)
        return self.out(torch.cat([latents, x_t, ts], dim=-1))  # [B, N, F]

    def set_mask_fraction(self, fraction: float) -> None:
        """Used by the trainer to ramp the masking (EveNet: from 10% to 100%)."""
        self.mask_fraction = float(min(max(fraction, 1e-3), 1.0))

    def _choose(self, mask: torch.Tensor) -> torch.Tensor:
        u = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
        chosen = (u < self.mask_fraction) & mask
        first = u.argmin(-1, keepdim=True)  # at least one real object per event
        return chosen | (torch.zeros_like(mask).scatter(1, first, True) & mask)

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        ctx = latents.context
        x0, mask = ctx.x, ctx.mask
        noised = self._choose(mask)  # [B, N]
        t = torch.rand(x0.shape[0], device=x0.device)
        x_t, v = noise(x0, t)
        x_in = torch.where(noised.unsqueeze(-1), x_t, x0)
        lat = ctx.encode(x_in, t=t, noised=noised)
        return {"v_hat": self._v(lat.objects, x_in, t), "v": v, "noised": noised, "x_t": x_in, "t": t}

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = _masked_mse(outputs["v_hat"], outputs["v"], outputs["noised"].float(), batch.weights)
        return loss, {"v_mse": float(loss.detach())}

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, _ = predict_x0_eps(outputs["x_t"], outputs["v_hat"], outputs["t"])
        return {"x0_normalised": x0, "noised": outputs["noised"]}

    @torch.no_grad()
    def generate(
        self, latents: Latents, which: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Regenerate the features of objects ``which`` [B, N] given the others; raw features [B, N, F]."""
        ctx = latents.context
        x0 = ctx.x

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = torch.where(which.unsqueeze(-1), x_t, x0)
            return self._v(ctx.encode(x_in, t=t, noised=which).objects, x_in, t)

        x = ddim_sample(model, tuple(x0.shape), steps or self.params.steps, generator, x0.device)
        x = torch.where(which.unsqueeze(-1), x, x0)
        return ctx.normaliser.objects_inverse(x)


class InvisibleDiffusionParams(Params):
    target: str = Field("truth_nu", description="target [B, P, 4]: invisible particles' (px, py, pz, E)")
    mask_target: str | None = Field("truth_nu_mask", description="target [B, P] bool (None: all present)")
    num_particles: int = Field(2, ge=1, le=MAX_CLASSES, description="P")
    components: list[int] = Field([0, 1, 2], description="which of the target's last-axis entries to generate")
    scale: float = Field(100.0, gt=0, description="GeV per unit of the generated variables")
    layers: int = Field(2, ge=1, le=MAX_DEPTH)
    num_heads: int = Field(4, ge=1, le=256)
    steps: int = Field(20, ge=1, le=10_000, description="DDIM steps when generating")


class InvisibleDiffusionHead(nn.Module):
    """Generate neutrino momenta conditioned on the event (DDIM sampler)."""

    name: ClassVar[str] = "invisible_diffusion"
    description: ClassVar[str] = "neutrino momenta by conditional diffusion; deterministic few-step DDIM"
    Params: ClassVar[type] = InvisibleDiffusionParams

    @classmethod
    def store_targets(cls, params: InvisibleDiffusionParams) -> list[str]:
        """The store targets it reads: ``target`` and, where set, ``mask_target``."""
        return [params.target] + ([params.mask_target] if params.mask_target is not None else [])

    def __init__(self, params: InvisibleDiffusionParams, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        d, c, p = dims.latent_dim, len(params.components), params.num_particles
        self.dim = d
        self.embed = nn.Linear(c + p, d)
        self.cond = MLP(2 * d, d, d)
        self.attn = nn.ModuleList(
            [nn.MultiheadAttention(d, params.num_heads, batch_first=True) for _ in range(params.layers)]
        )
        self.self_attn = nn.ModuleList(
            [nn.MultiheadAttention(d, params.num_heads, batch_first=True) for _ in range(params.layers)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(3 * params.layers)])
        self.mlps = nn.ModuleList([MLP(d, 2 * d, d) for _ in range(params.layers)])
        self.out = MLP(d + c + 2, d, c)  # the noisy input and the time go straight to the output

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, latents: Latents) -> torch.Tensor:
        """The v prediction [B, P, C] for noisy x_t at times t, conditioned on the latents."""
        b, p, _ = x_t.shape
        ids = torch.eye(p, device=x_t.device).expand(b, p, p)
        cond = self.cond(torch.cat([latents.event, time_embedding(t, self.dim)], dim=-1))  # [B, D]
        h = self.embed(torch.cat([x_t, ids], dim=-1)) + cond.unsqueeze(1)
        keys_off = ~latents.mask & latents.mask.any(-1, keepdim=True)
        for i in range(self.params.layers):
            h = (
                h
                + self.attn[i](
                    self.norms[3 * i](h),
                    latents.objects,
                    latents.objects,
                    key_padding_mask=keys_off,
                    need_weights=False,
                )[0]
            )
            q = self.norms[3 * i + 1](h)
            h = h + self.self_attn[i](q, q, q, need_weights=False)[0]
            h = h + self.mlps[i](self.norms[3 * i + 2](h))
        a, s = alpha_sigma(t)
        ts = torch.stack([a, s], -1).unsqueeze(1).expand(-1, p, -1)
        return self.out(torch.cat([h, x_t, ts], dim=-1))

    def _x0(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch.targets[self.params.target][..., self.params.components].float() / self.params.scale
        if self.params.mask_target is None:
            present = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
        else:
            present = batch.targets[self.params.mask_target].bool()
        return torch.where(present.unsqueeze(-1), target, 0.0), present

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        x0, present = self._x0(batch)
        t = torch.rand(x0.shape[0], device=x0.device)
        x_t, v = noise(x0, t)
        return {"v_hat": self.denoise(x_t, t, latents), "v": v, "present": present, "x_t": x_t, "t": t}

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = _masked_mse(outputs["v_hat"], outputs["v"], outputs["present"].float(), batch.weights)
        return loss, {"v_mse": float(loss.detach())}

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, _ = predict_x0_eps(outputs["x_t"], outputs["v_hat"], outputs["t"])
        return {"momenta_one_step": x0 * self.params.scale}

    def infer(
        self, latents: Latents, batch: Batch, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """For evaluation: momenta [B, P, C] in GeV sampled with the full DDIM chain."""
        return {"momenta": self.generate(latents, generator=generator)}

    @torch.no_grad()
    def generate(
        self, latents: Latents, steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sampled momenta [B, P, C] in GeV (deterministic for a given generator state)."""
        b = latents.event.shape[0]
        shape = (b, self.params.num_particles, len(self.params.components))
        x = ddim_sample(
            lambda x_t, t: self.denoise(x_t, t, latents),
            shape,
            steps or self.params.steps,
            generator,
            latents.event.device,
        )
        return x * self.params.scale
