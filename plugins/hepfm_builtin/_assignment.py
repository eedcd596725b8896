"""SPANet-like assignment of objects to resonance daughters, with declared symmetries.

For a resonance with k daughters every k-tuple of distinct real objects gets a score (unary terms
plus pairwise bilinear terms); daughters declared symmetric share their projections and only the
canonical (ascending) order of their indices is a valid tuple, so the score is symmetric by
construction. Scores are normalised with a softmax over all valid tuples. Interchangeable
resonances (t <-> tbar in all-hadronic ttbar, a1 <-> a2 in H -> aa) take the minimum loss over
their permutations. Decoding is conflict-free: an exact search over the joint choice of the top
tuples of every resonance, with a greedy fallback for events that cannot be fully assigned.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from hepfm import Batch, HepfmError
from hepfm._limits import MAX_WIDTH
from hepfm.components import HeadDims, Latents, Params

MAX_DAUGHTERS = 3


class AssignmentParams(Params):
    resonances: dict[str, list[str]] = Field(description="resonance -> its daughters, e.g. {t: [b, q1, q2]}")
    symmetric_daughters: dict[str, list[list[str]]] = Field(
        default_factory=dict, description="per resonance, groups of interchangeable daughters, e.g. {W: [[q1, q2]]}"
    )
    symmetric_resonances: list[list[str]] = Field(
        default_factory=list, description="groups of interchangeable resonances, e.g. [[a1, a2]]"
    )
    target: str = Field("assignment", description="integer target [B, daughters], object index or -1")
    columns: dict[str, list[int]] | None = Field(
        None, description="target column of each daughter, per resonance (default: consecutive in declaration order)"
    )
    candidates: Literal["all", "jets"] = Field(
        "all", description="objects a daughter may be: all, or jets only (objects whose is_lepton feature is 0)"
    )
    hidden: int = Field(64, ge=1, le=MAX_WIDTH)
    search_budget: int = Field(4096, ge=1, le=10**8, description="joint combinations examined per event when decoding")

    @model_validator(mode="after")
    def _check(self) -> AssignmentParams:
        for res, daughters in self.resonances.items():
            if not 1 <= len(daughters) <= MAX_DAUGHTERS:
                raise ValueError(f"resonance '{res}' has {len(daughters)} daughters; 1 to {MAX_DAUGHTERS} supported")
            if len(set(daughters)) != len(daughters):
                raise ValueError(f"resonance '{res}' repeats a daughter name")
        for res, groups in self.symmetric_daughters.items():
            if res not in self.resonances:
                raise ValueError(f"symmetric_daughters names unknown resonance '{res}'")
            for group in groups:
                unknown = set(group) - set(self.resonances[res])
                if unknown:
                    raise ValueError(f"symmetric_daughters.{res}: unknown daughters {sorted(unknown)}")
        for group in self.symmetric_resonances:
            unknown = set(group) - set(self.resonances)
            if unknown:
                raise ValueError(f"symmetric_resonances: unknown resonances {sorted(unknown)}")
            if len({len(self.resonances[r]) for r in group}) != 1:
                raise ValueError(f"symmetric_resonances {group} must have the same number of daughters")
        if self.columns is not None and set(self.columns) != set(self.resonances):
            raise ValueError("columns must give the target columns of every resonance")
        return self


class _ResonanceScorer(nn.Module):
    """Scores of all k-tuples for one resonance: [B, N, ..., N] (k index dimensions)."""

    def __init__(self, dim: int, hidden: int, groups: list[int]) -> None:
        super().__init__()
        self.groups = groups  # daughter -> group id; symmetric daughters share a group
        n_groups = max(groups) + 1
        self.norm = nn.LayerNorm(dim)
        self.unary = nn.ModuleList([nn.Linear(dim, 1) for _ in range(n_groups)])
        self.proj = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(n_groups)]) if len(groups) > 1 else None
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)  # [B, N, D]
        k = len(self.groups)
        unary = [self.unary[g](h).squeeze(-1) for g in self.groups]  # k x [B, N]
        b, n = unary[0].shape
        score = torch.zeros((b,) + (n,) * k, device=h.device, dtype=h.dtype)
        for a in range(k):
            shape = [b] + [1] * k
            shape[a + 1] = n
            score = score + unary[a].reshape(shape)
        if self.proj is not None:
            p = [self.proj[g](h) for g in self.groups]  # k x [B, N, hidden]
            for a, c in itertools.combinations(range(k), 2):
                pair = torch.einsum("bid,bjd->bij", p[a], p[c]) * self.scale
                if self.groups[a] == self.groups[c]:
                    pair = 0.5 * (pair + pair.transpose(1, 2))  # symmetric daughters: symmetric score
                shape = [b] + [1] * k
                shape[a + 1], shape[c + 1] = n, n
                score = score + pair.reshape(shape)
        return score


def _valid_tuples(mask: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """[B, N^k] bool: distinct real objects, symmetric daughters in ascending order."""
    b, n = mask.shape
    k = len(groups)
    grids = torch.meshgrid(*[torch.arange(n, device=mask.device)] * k, indexing="ij")
    ok = torch.ones((n,) * k, dtype=torch.bool, device=mask.device)
    for a, c in itertools.combinations(range(k), 2):
        ok &= grids[a] != grids[c]
        if groups[a] == groups[c]:
            ok &= grids[a] < grids[c]
    valid = ok.unsqueeze(0).expand((b,) + (n,) * k).clone()
    for a in range(k):
        shape = [b] + [1] * k
        shape[a + 1] = n
        valid &= mask.reshape(shape)
    return valid.reshape(b, -1)


class AssignmentHead(nn.Module):
    """Assign objects to the daughters of each declared resonance."""

    name: ClassVar[str] = "assignment"
    description: ClassVar[str] = "SPANet-like symmetric tuple scores per resonance; conflict-free decoding"
    Params: ClassVar[type] = AssignmentParams

    def __init__(self, params: AssignmentParams, dims: HeadDims) -> None:
        super().__init__()
        self.params = params
        self.names = list(params.resonances)
        self.groups: dict[str, list[int]] = {}
        for res, daughters in params.resonances.items():
            group_of = {d: i for i, d in enumerate(daughters)}
            for group in params.symmetric_daughters.get(res, []):
                for d in group:
                    group_of[d] = group_of[group[0]]
            ids = sorted(set(group_of.values()))
            self.groups[res] = [ids.index(group_of[d]) for d in daughters]
        self.scorers = nn.ModuleDict(
            {res: _ResonanceScorer(dims.latent_dim, params.hidden, self.groups[res]) for res in self.names}
        )
        cols, start = {}, 0
        for res in self.names:
            k = len(params.resonances[res])
            cols[res] = params.columns[res] if params.columns else list(range(start, start + k))
            start += k
        self.columns = cols
        self.n_columns = max(c for cs in cols.values() for c in cs) + 1
        self.lepton_index = None
        if params.candidates == "jets":
            if "is_lepton" not in dims.schema.object_names:
                raise HepfmError("assignment candidates 'jets' needs an 'is_lepton' object feature in the schema")
            self.lepton_index = dims.schema.index("is_lepton")

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        out = {}
        mask = latents.mask  # [B, N] objects a daughter may be
        if self.lepton_index is not None:
            mask = mask & (batch.objects[..., self.lepton_index] < 0.5)
        for res in self.names:
            score = self.scorers[res](latents.objects).reshape(latents.mask.shape[0], -1)  # [B, N^k]
            valid = _valid_tuples(mask, self.groups[res])
            score = score.masked_fill(~valid, float("-inf"))
            out[f"logp/{res}"] = torch.log_softmax(score, dim=-1).masked_fill(~valid, float("-inf"))
        return out

    # -- loss ---------------------------------------------------------------------------------
    def _target_index(self, res_scores: str, res_target: str, target: torch.Tensor, n: int):
        """Flat tuple index of ``res_target``'s true objects in ``res_scores``'s tuple space, and completeness."""
        idx = target[:, self.columns[res_target]].long()  # [B, k]
        complete = (idx >= 0).all(-1) & (idx < n).all(-1)
        idx = idx.clamp(0, n - 1)
        groups = self.groups[res_scores]
        for g in set(groups):  # canonical order inside symmetric groups
            pos = [i for i, gg in enumerate(groups) if gg == g]
            if len(pos) > 1:
                idx[:, pos] = idx[:, pos].sort(dim=-1).values
        flat = torch.zeros_like(idx[:, 0])
        for a in range(idx.shape[1]):
            flat = flat * n + idx[:, a]
        return flat, complete

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch.targets[self.params.target]
        n = batch.mask.shape[1]
        symmetric = [g for g in self.params.symmetric_resonances if len(g) > 1]
        grouped = {r for g in symmetric for r in g}
        units = [[r] for r in self.names if r not in grouped] + symmetric
        total = torch.zeros((), device=target.device)
        count = torch.zeros((), device=target.device)
        parts = {}
        for unit in units:
            best = None
            for perm in itertools.permutations(unit):
                nll = torch.zeros(target.shape[0], device=target.device)
                n_ok = torch.zeros(target.shape[0], device=target.device)
                for res_s, res_t in zip(unit, perm, strict=True):
                    flat, complete = self._target_index(res_s, res_t, target, n)
                    logp = outputs[f"logp/{res_s}"].gather(1, flat[:, None]).squeeze(1)
                    ok = complete & torch.isfinite(logp)
                    nll = nll + torch.where(ok, -logp, torch.zeros_like(logp))
                    n_ok = n_ok + ok.float()
                best = (nll, n_ok) if best is None else (torch.minimum(best[0], nll), best[1])
            nll, n_ok = best
            total = total + nll.sum()
            count = count + n_ok.sum()
            parts["/".join(unit)] = float(nll.sum().detach() / n_ok.sum().clamp_min(1))
        loss = total / count.clamp_min(1.0)
        return loss, parts

    # -- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Conflict-free assignment [B, columns] (object index, -1 unassigned) and each resonance's probability."""
        logps = [outputs[f"logp/{res}"] for res in self.names]
        b, device = logps[0].shape[0], logps[0].device
        n = round(logps[0].shape[1] ** (1 / len(self.groups[self.names[0]])))
        r = len(self.names)
        m = max(1, int(self.params.search_budget ** (1 / r)))
        tops = []
        for res, lp in zip(self.names, logps, strict=True):
            k = len(self.groups[res])
            val, flat = lp.topk(min(m, lp.shape[1]), dim=-1)  # [B, M]
            digits = []
            for _ in range(k):
                digits.append(flat % n)
                flat = flat // n
            tops.append((val, torch.stack(digits[::-1], dim=-1)))  # [B, M], [B, M, k]
        combos = torch.tensor(list(itertools.product(*[range(t[0].shape[1]) for t in tops])), device=device)  # [C, R]
        score = torch.zeros(b, combos.shape[0], device=device)
        objs = []
        for i, (val, tup) in enumerate(tops):
            score = score + val[:, combos[:, i]]
            objs.append(tup[:, combos[:, i]])  # [B, C, k]
        objs_all = torch.cat(objs, dim=-1)  # [B, C, sum k]
        clash = torch.zeros_like(score, dtype=torch.bool)
        for a, c in itertools.combinations(range(objs_all.shape[-1]), 2):
            clash |= objs_all[..., a] == objs_all[..., c]
        score = score.masked_fill(clash, float("-inf"))
        best = score.argmax(dim=-1)  # [B]
        feasible = torch.isfinite(score.gather(1, best[:, None]).squeeze(1))
        assignment = torch.full((b, self.n_columns), -1, dtype=torch.long, device=device)
        prob = torch.zeros(b, r, device=device)
        rows = torch.arange(b, device=device)
        for i, res in enumerate(self.names):
            choice = combos[best, i]
            tup = tops[i][1][rows, choice]  # [B, k]
            assignment[:, self.columns[res]] = torch.where(feasible[:, None], tup, torch.full_like(tup, -1))
            prob[:, i] = torch.where(feasible, tops[i][0][rows, choice].exp(), torch.zeros_like(prob[:, i]))
        for e in torch.nonzero(~feasible).flatten().tolist():  # too few objects: greedy, most confident first
            used: set[int] = set()
            order = sorted(range(r), key=lambda i: -float(tops[i][0][e, 0]))
            for i in order:
                res = self.names[i]
                for j in range(tops[i][0].shape[1]):
                    tup = tops[i][1][e, j].tolist()
                    if torch.isfinite(tops[i][0][e, j]) and not used & set(tup):
                        used |= set(tup)
                        assignment[e, self.columns[res]] = torch.tensor(tup, device=device)
                        prob[e, i] = tops[i][0][e, j].exp()
                        break
        return {"assignment": assignment, "probability": prob}
