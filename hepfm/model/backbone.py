"""The backbone: global embedding -> point-edge transformer body -> object encoder.

Reads top to bottom: pair features, the small modules, the blocks, then ``Backbone``.
Shapes: B events, N objects (padded, ``mask`` marks real ones), F object features, G globals,
D model width, H attention heads, K nearest neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .diffusion import time_embedding

__all__ = ["BackboneConfig", "PRESETS", "Backbone", "pair_features", "config_from_spec"]


@dataclass(frozen=True)
class BackboneConfig:
    """Sizes of the backbone."""

    dim: int = 128  # D
    depth: int = 6  # PET blocks
    num_heads: int = 8  # H
    k_neighbours: int = 8  # K, in (eta, phi)
    mlp_ratio: int = 2
    pair_dim: int = 16  # width of the embedded pair features
    encoder_depth: int = 2  # object-encoder layers (global token + objects)
    feature_dropout: float = 0.1  # per (event, object feature) during training
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, BackboneConfig] = {
    "tiny": BackboneConfig(dim=64, depth=3, num_heads=4, k_neighbours=4, encoder_depth=1),  # ~0.2M
    "small": BackboneConfig(dim=128, depth=10, num_heads=8, encoder_depth=2, mlp_ratio=4),  # ~3M (PET2-small)
    "lite": BackboneConfig(dim=256, depth=16, num_heads=8, encoder_depth=4, mlp_ratio=4),  # ~20M (EveNet-Lite)
    "standard": BackboneConfig(dim=512, depth=16, num_heads=16, encoder_depth=4, mlp_ratio=4),  # ~80M
}


def config_from_spec(preset: str, **overrides) -> BackboneConfig:
    """A preset with explicit sizes (None means keep the preset's) replaced."""
    base = PRESETS[preset]
    names = {
        "dim": "dim",
        "depth": "depth",
        "num_heads": "num_heads",
        "k_neighbours": "k_neighbours",
        "feature_dropout": "feature_dropout",
        "dropout": "dropout",
    }
    return replace(base, **{names[k]: v for k, v in overrides.items() if v is not None and k in names})


# --------------------------------------------------------------------------------------------
# pair features (Particle Transformer): ln dR, ln kT, ln z, ln m^2
# --------------------------------------------------------------------------------------------
def _pairwise_deta_dphi(eta: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, N] eta_i - eta_j and phi_i - phi_j wrapped into [-pi, pi)."""
    deta = eta[:, :, None] - eta[:, None, :]
    dphi = torch.remainder(phi[:, :, None] - phi[:, None, :] + torch.pi, 2 * torch.pi) - torch.pi
    return deta, dphi


def pair_features(kin: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Pairwise features of objects.

    Args:
        kin: [B, N, 4] raw (E, pT, eta, phi).
        eps: Keeps the logarithms finite.

    Returns:
        [B, N, N, 4]: ln dR, ln kT, ln z, ln m^2 (each with a small epsilon).
    """
    e, pt, eta, phi = kin.float().unbind(-1)
    pt = pt.clamp_min(0)
    deta, dphi = _pairwise_deta_dphi(eta, phi)
    dr = torch.sqrt(deta**2 + dphi**2 + eps**2)
    ptmin = torch.minimum(pt[:, :, None], pt[:, None, :])
    kt = ptmin * dr
    z = ptmin / (pt[:, :, None] + pt[:, None, :] + eps)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta.clamp(-10, 10))
    m2 = (e[:, :, None] + e[:, None, :]) ** 2 - (
        (px[:, :, None] + px[:, None, :]) ** 2
        + (py[:, :, None] + py[:, None, :]) ** 2
        + (pz[:, :, None] + pz[:, None, :]) ** 2
    )
    return torch.stack([dr.log(), (kt + eps).log(), (z + eps).log(), (m2.clamp_min(0) + eps).log()], dim=-1)


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
class _ShortSoftmax(torch.autograd.Function):
    """Softmax over the last dimension, written out: the same function as ``Tensor.softmax``.

    Torch's CPU softmax kernel is slow on short rows (ours have M + 1 <= ~20 entries): forward and
    backward take ~4 ms on a [256, 8, 12, 12] batch of scores, against ~1 ms for these few
    whole-tensor operations.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return y * (g - (g * y).sum(-1, keepdim=True))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension (torch's own on GPUs, where its kernel is fast)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.onnx.is_in_onnx_export():
        return _ShortSoftmax.apply(x)
    return x.softmax(-1)


class MLP(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class Edges(NamedTuple):
    """The local module's edges: each real object to each of its K nearest real objects.

    Only real edges are listed (padding has none, and an object of an event with K or fewer
    other real objects has one edge to each of them), so the per-edge work scales with the real
    objects, not with the padded N.
    """

    src: torch.Tensor  # [E] row (in the packed [R] real objects) of the neighbour j
    dst: torch.Tensor  # [E] row of the object i it informs (ascending)
    scale: torch.Tensor  # [R, 1] 1 / (number of neighbours), 1 where there are none
    has: torch.Tensor  # [R, 1] 1.0 where the object has a neighbour, else 0.0


class Packing(NamedTuple):
    """Where the real objects of a padded [B, N] batch are, in two layouts.

    The body works on the real objects alone, as rows [R, ...], so per-object layers never
    compute on padding (most of a padded batch of collider events). Attention and pair features
    need a [B, M] layout: there each event's real objects come first, and M is the largest
    multiplicity in the batch, not the padded N.
    """

    rows: torch.Tensor  # [R] flat rows (in [B*N]) of the real objects
    event: torch.Tensor  # [R] the event of each
    slots: torch.Tensor  # [R] flat rows (in [B*M]) of the same objects in the [B, M] layout
    mask: torch.Tensor  # [B, M] real objects in the [B, M] layout
    shape: tuple[int, int]  # (B, N)

    @classmethod
    def of(cls, mask: torch.Tensor) -> Packing:
        b, n = mask.shape
        rows = mask.flatten().nonzero().squeeze(1)
        event = rows.div(n, rounding_mode="floor")
        count = mask.sum(1)
        # an ONNX graph keeps the padded N: a traced M would be one batch's constant
        m = n if torch.onnx.is_in_onnx_export() else (max(int(count.max()), 1) if b else 1)
        rank = mask.long().cumsum(1).flatten().index_select(0, rows) - 1  # place among its event's real objects
        cropped = torch.arange(m, device=mask.device)[None] < count[:, None]
        return cls(rows, event, event * m + rank, cropped, (b, n))

    def with_global_token(self) -> Packing:
        """The same objects behind one leading token per event (the object encoder's tokens).

        Its rows [B + R] are the B global tokens, then this packing's R objects in its order, and
        its [B, 1 + M] layout is also its input layout. Derived here, without another host sync.
        """
        b, m = self.mask.shape
        events = torch.arange(b, device=self.mask.device)
        place = self.slots - self.event * m  # place of each object among its event's real ones
        slots = torch.cat([events * (m + 1), self.event * (m + 1) + 1 + place])
        mask = torch.cat([self.mask.new_ones(b, 1), self.mask], dim=1)
        return Packing(slots, torch.cat([events, self.event]), slots, mask, (b, m + 1))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """[B, N, C] (the input layout) -> [R, C]."""
        return t.flatten(0, 1).index_select(0, self.rows)

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """[R, C] -> [B, M, C], zero on padding."""
        b, m = self.mask.shape
        return t.new_zeros(b * m, t.shape[-1]).index_copy_(0, self.slots, t).view(b, m, -1)

    def repack(self, t: torch.Tensor) -> torch.Tensor:
        """[B, M, C] -> [R, C]."""
        return t.flatten(0, 1).index_select(0, self.slots)

    def restore(self, t: torch.Tensor) -> torch.Tensor:
        """[R, C] -> [B, N, C] (the input layout), zero on padding."""
        b, n = self.shape
        return t.new_zeros(b * n, t.shape[-1]).index_copy_(0, self.rows, t).view(b, n, -1)


class LocalEdge(nn.Module):
    """EdgeConv over the K nearest real neighbours in (eta, phi): mean of MLP([h_j - h_i, h_i])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.edge = MLP(2 * dim, dim, dim)

    def forward(self, h: torch.Tensor, edges: Edges) -> torch.Tensor:
        # h [R, D], the real objects (Packing)
        x = self.norm(h)
        d = x.shape[1]
        first, act, drop, last = self.edge
        # Only the activation is per edge; both linear layers run per object, with the same
        # function and parameters as MLP([h_j - h_i, h_i]) averaged over the neighbours:
        # - first: W [h_j - h_i, h_i] + c = W1 h_j + ((W2 - W1) h_i + c), so it runs once per
        #   object and only its outputs are gathered;
        # - last: the mean of (V a_k + e) over the neighbours is V mean(a_k) + e (e only where
        #   there is a neighbour, as the mean of nothing is 0).
        w1, w2 = first.weight.split(d, dim=1)  # [D', D] each
        from_neigh = x @ w1.T  # [R, D']
        from_centre = torch.addmm(first.bias, x, (w2 - w1).T)  # [R, D']
        # index_select, not advanced indexing: its backward is an index_add (advanced indexing's,
        # an accumulating index_put, is ~15x slower on CPU)
        a = drop(act(from_neigh.index_select(0, edges.src) + from_centre.index_select(0, edges.dst)))  # [E, D']
        total = a.new_zeros(x.shape[0], a.shape[1])
        if torch.onnx.is_in_onnx_export():  # the exporter's index_add drops repeated indices; scatter_add adds them
            total = total.scatter_add(0, edges.dst[:, None].expand_as(a), a)
        else:
            total = total.index_add_(0, edges.dst, a)
        mean = total * edges.scale.to(a.dtype)  # [R, D']
        return torch.addmm(edges.has * last.bias, mean, last.weight.T)  # [R, D]


class Attention(nn.Module):
    """Multi-head self-attention of packed tokens with an additive bias (pair features and masking)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor, packing: Packing) -> torch.Tensor:
        # x [R, D] packed tokens; bias [B, 1 or H, M, M] in the packing's [B, M] layout, every row
        # with a finite entry (see _mask_bias)
        qkv = packing.unpack(self.qkv(x))  # [B, M, 3D], zero on padding: padded keys are masked by the bias
        b, n, d = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # written out, not F.scaled_dot_product_attention: torch's fused CPU kernels do not give a
        # learned bias its gradient, and for a handful of keys they are slower than these
        att = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias  # [B, H, M, M]
        att = F.dropout(_softmax(att), self.dropout, self.training)
        out = (att @ v).transpose(1, 2).reshape(b, n, d)  # [B, M, D]
        return self.proj(packing.repack(out))  # [R, D]


class Block(nn.Module):
    """One PET block: conditioning shift, local edge module, biased self-attention, MLP (pre-norm residuals)."""

    def __init__(self, cfg: BackboneConfig, local: bool = True) -> None:
        super().__init__()
        d = cfg.dim
        self.cond = nn.Linear(d, d)
        self.local = LocalEdge(d) if local else None
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.pair_bias = nn.Linear(cfg.pair_dim, cfg.num_heads) if local else None
        self.norm2 = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio * d, d, cfg.dropout)

    def forward(self, h, cond, mask_bias, packing, pair=None, edges=None):
        # h [R, D] packed tokens (Packing); cond [B, D]; mask_bias [B, 1, M, M];
        # pair [B, M, M, P] and edges (_edges): body blocks
        h = h + self.cond(cond).index_select(0, packing.event)  # [R, D]
        if self.local is not None:
            h = h + self.local(h, edges)
        bias = mask_bias
        if self.pair_bias is not None:
            bias = bias + self.pair_bias(pair).permute(0, 3, 1, 2)  # [B, H, M, M]
        h = h + self.attn(self.norm1(h), bias, packing)
        return h + self.mlp(self.norm2(h))


def _mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """Additive attention mask: real keys 0, padded keys -inf, but every query may see itself."""
    n = mask.shape[1]
    allowed = mask[:, None, :] | torch.eye(n, device=mask.device).bool()[None]
    return torch.zeros(allowed.shape, device=mask.device).masked_fill(~allowed, float("-inf")).unsqueeze(1)


def _edges(eta: torch.Tensor, phi: torch.Tensor, mask: torch.Tensor, k: int) -> Edges:
    """Each real object's K nearest real objects (not itself) in (eta, phi), as a list of edges.

    The edges join rows of the packed real objects (``Packing``).
    """
    b, n = mask.shape
    deta, dphi = _pairwise_deta_dphi(eta, phi)
    dist = deta**2 + dphi**2
    bad = ~mask[:, None, :] | torch.eye(n, device=mask.device).bool()[None]
    dist = dist.masked_fill(bad, float("inf"))
    d, idx = dist.topk(min(k, n - 1), dim=-1, largest=False)  # [B, N, K]
    valid = torch.isfinite(d) & mask[:, :, None]  # [B, N, K]
    packed = (mask.long().flatten().cumsum(0) - 1).view(b, n)  # row of each real object among the real ones
    dst = packed.unsqueeze(-1).expand_as(idx)[valid]  # [E]
    src = packed.gather(1, idx.flatten(1)).view_as(idx)[valid]  # [E]
    count = valid.sum(-1)[mask].unsqueeze(1)  # [R, 1]
    return Edges(src, dst, 1.0 / count.clamp_min(1).to(eta.dtype), (count > 0).to(eta.dtype))


# --------------------------------------------------------------------------------------------
# the backbone
# --------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Global embedding, PET body and object encoder.

    Args:
        cfg: Sizes.
        n_features: F, normalised object features per object.
        n_globals: G, normalised globals per event.
    """

    def __init__(self, cfg: BackboneConfig, n_features: int, n_globals: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.n_features = n_features
        self.object_embed = MLP(n_features + 1, d, d)  # +1: the "this object is being generated" flag
        self.global_embed = MLP(n_globals, d, d)
        self.time_embed = MLP(d, d, d)
        self.pair_embed = MLP(4, cfg.pair_dim, cfg.pair_dim)
        self.body = nn.ModuleList([Block(cfg, local=True) for _ in range(cfg.depth)])
        self.encoder = nn.ModuleList([Block(cfg, local=False) for _ in range(cfg.encoder_depth)])
        self.norm = nn.LayerNorm(d)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        g: torch.Tensor,
        kin: torch.Tensor,
        t: torch.Tensor | None = None,
        noised: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of a batch.

        Args:
            x: [B, N, F] normalised object features.
            mask: [B, N] bool, real objects.
            g: [B, G] normalised globals.
            kin: [B, N, 4] raw (E, pT, eta, phi) for pair features and neighbours.
            t: [B] diffusion time (None or 0: unperturbed input).
            noised: [B, N] bool, objects whose features are being generated.

        Returns:
            Object latents [B, N, D] (zero on padding) and the event latent [B, D].
        """
        b, n, _ = x.shape  # padded slots are never read: Packing below keeps the real objects only
        if self.training and self.cfg.feature_dropout > 0:
            keep = torch.rand(b, 1, x.shape[-1], device=x.device) >= self.cfg.feature_dropout
            x = x * keep
        flag = (
            torch.zeros(b, n, 1, device=x.device, dtype=x.dtype) if noised is None else noised.unsqueeze(-1).to(x.dtype)
        )
        t = torch.zeros(b, device=x.device) if t is None else t
        cond = self.global_embed(g) + self.time_embed(time_embedding(t, self.cfg.dim))  # [B, D]

        # the body works on the real objects alone (Packing): rows [R, ...], and [B, M, ...]
        # with M the batch's largest multiplicity where objects meet (attention, pairs)
        packing = Packing.of(mask)
        m = packing.mask  # [B, M]
        h = self.object_embed(packing.pack(torch.cat([x, flag], dim=-1)))  # [R, D]
        kin = packing.unpack(packing.pack(kin))  # [B, M, 4]
        pair = self.pair_embed(pair_features(kin)) * (m[:, :, None] & m[:, None, :]).unsqueeze(-1)  # [B, M, M, P]
        edges = _edges(kin[..., 2], kin[..., 3], m, self.cfg.k_neighbours)
        bias = _mask_bias(m)  # [B, 1, M, M]
        for block in self.body:
            h = block(h, cond, bias, packing, pair, edges)

        # object encoder: a global token (from globals and time) joins the objects, packed too
        outer = packing.with_global_token()
        tokens = torch.cat([cond, h])  # [B + R, D]: the global tokens, then the objects
        bias = _mask_bias(outer.mask)  # [B, 1, 1+M, 1+M]
        for block in self.encoder:
            tokens = block(tokens, cond, bias, outer)
        tokens = self.norm(tokens)
        return packing.restore(tokens[b:]), tokens[:b]
