"""Diffusion machinery shared by the generative heads: cosine schedule, v-prediction, DDIM sampling.

alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2); x_t = alpha_t x0 + sigma_t eps;
v = alpha_t eps - sigma_t x0 (Salimans and Ho 2022). The network predicts v; from it
x0 = alpha_t x_t - sigma_t v and eps = sigma_t x_t + alpha_t v. The deterministic DDIM step
t -> s is x_s = alpha_s x0 + sigma_s eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["alpha_sigma", "noise", "v_target", "predict_x0_eps", "ddim_sample", "time_embedding"]


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine schedule coefficients for t in [0, 1]."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def _expand(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.reshape(c.shape + (1,) * (like.dim() - c.dim()))


def noise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and the v target for clean x0 [B, ...] at times t [B]."""
    eps = torch.randn_like(x0) if eps is None else eps
    a, s = (_expand(c, x0) for c in alpha_sigma(t))
    return a * x0 + s * eps, a * eps - s * x0


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The v-prediction target."""
    a, s = (_expand(c, x0) for c in alpha_sigma(t))
    return a * eps - s * x0


def predict_x0_eps(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean sample and noise implied by a v prediction."""
    a, s = (_expand(c, x_t) for c in alpha_sigma(t))
    return a * x_t - s * v, s * x_t + a * v


@torch.no_grad()
def ddim_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    steps: int = 20,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM sampling from t=1 to t=0.

    Args:
        model: ``model(x_t, t) -> v`` with t of shape [B].
        shape: Sample shape [B, ...].
        steps: Number of sampler steps.
        generator: Seeds the initial noise.
        device: Where to sample.
        x_init: Initial noise (overrides ``generator``).
    """
    x = torch.randn(shape, generator=generator, device=device) if x_init is None else x_init
    times = torch.linspace(1.0, 0.0, steps + 1, device=device)
    for i in range(steps):
        t = times[i].expand(shape[0])
        s = times[i + 1].expand(shape[0])
        x0, eps = predict_x0_eps(x, model(x, t), t)
        a_s, s_s = (_expand(c, x) for c in alpha_sigma(s))
        x = a_s * x0 + s_s * eps
    return x


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1]: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device))
    angles = t[:, None] * freqs[None, :] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
