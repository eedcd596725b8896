"""SPANet-like assignment of objects to resonance daughters, with declared symmetries.

For a resonance with k daughters every k-tuple of distinct real objects gets a score (unary terms
plus pairwise bilinear terms); daughters declared symmetric share their projections and only the
canonical (ascending) order of their indices is a valid tuple, so the score is symmetric by
construction. Scores are normalised with a softmax over all valid tuples. Interchangeable
resonances (t <-> tbar in all-hadronic ttbar, a1 <-> a2 in H -> aa) take the minimum loss over
their permutations. Decoding is conflict-free (``_assignment_decode``): exact for one or two
resonances, a search over the top tuples for more, greedy for events that cannot be fully assigned.

Tuples are scored over the batch's real multiplicity M (candidate objects moved to the front, the
padded N never enters): memory O(B M**k) per resonance.

Targets by name: with no ``columns`` given, ``bind`` finds each resonance's daughters in the
store's topology, as slots ``<resonance>_<daughter>`` of the generator's ``assignment`` target or
as the per-resonance target ``assignment/<resonance>`` of a converted store (SPANet, Parquet),
trying the resonance's own name, then its ``aliases``. One task file thus trains on both.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from hepfm import Batch, HepfmError
from hepfm.components import HeadDims, Latents, Params
from hepfm.sdk import MAX_WIDTH

from ._assignment_decode import decode

MAX_DAUGHTERS = 3


class AssignmentParams(Params):
    resonances: dict[str, list[str]] = Field(description="resonance -> its daughters, e.g. {t: [b, q1, q2]}")
    symmetric_daughters: dict[str, list[list[str]]] = Field(
        default_factory=dict, description="per resonance, groups of interchangeable daughters, e.g. {W: [[q1, q2]]}"
    )
    symmetric_resonances: list[list[str]] = Field(
        default_factory=list, description="groups of interchangeable resonances, e.g. [[a1, a2]]"
    )
    aliases: dict[str, list[str]] = Field(
        default_factory=dict, description="other names of a resonance in stores' topologies, e.g. {t: [t1]}"
    )
    target: str = Field("assignment", description="integer target [B, daughters], object index or -1")
    targets: dict[str, str] | None = Field(
        None, description="per resonance, the target holding its daughters (default: target; set by bind)"
    )
    columns: dict[str, list[int]] | None = Field(
        None,
        description="target column of each daughter, per resonance (default: from the store's topology, "
        "else consecutive in declaration order)",
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
        if self.columns is not None:
            if set(self.columns) != set(self.resonances):
                raise ValueError("columns must give the target columns of every resonance")
            for res, cols in self.columns.items():
                if len(cols) != len(self.resonances[res]):
                    raise ValueError(f"columns.{res}: {len(cols)} columns for {len(self.resonances[res])} daughters")
        if self.targets is not None and set(self.targets) != set(self.resonances):
            raise ValueError("targets must name the target of every resonance")
        if self.targets is not None and self.columns is None:
            raise ValueError("targets needs columns: the daughters' columns in each resonance's target")
        unknown = set(self.aliases) - set(self.resonances)
        if unknown:
            raise ValueError(f"aliases: unknown resonances {sorted(unknown)}")
        return self


def resolve_targets(params: dict[str, Any], store: Any) -> dict[str, Any]:
    """``params`` with ``targets`` and ``columns`` found by name in ``store`` 's topology (see module doc).

    Unchanged when ``columns`` is given or the store has no topology. Raises ValueError naming the
    store and what it offers when a daughter cannot be found.
    """
    if params.get("columns") is not None:
        return params
    p = AssignmentParams.model_validate(params)
    topo = store.topology or {}
    if not topo:
        from hepfm.sdk import store_topology  # stores written without one: their generator's

        topo = store_topology(store)
    generated = topo.get("assignment") if isinstance(topo.get("assignment"), dict) else {}
    slots = list(generated.get("slots", []))
    slot_target = generated.get("target", "assignment")
    per_resonance = topo.get("resonances") if isinstance(topo.get("resonances"), dict) else {}
    if not slots and not per_resonance:
        return params
    targets, columns = {}, {}
    for res, daughters in p.resonances.items():
        for name in [res, *p.aliases.get(res, [])]:
            own = per_resonance.get(name)
            if isinstance(own, list) and f"assignment/{name}" in store.targets and set(daughters) <= set(own):
                targets[res], columns[res] = f"assignment/{name}", [own.index(d) for d in daughters]
                break
            if slots and all(f"{name}_{d}" in slots for d in daughters) and slot_target in store.targets:
                targets[res], columns[res] = slot_target, [slots.index(f"{name}_{d}") for d in daughters]
                break
        else:
            offered = f"resonances {per_resonance}" if per_resonance else f"slots {slots} of target '{slot_target}'"
            names = [res, *p.aliases.get(res, [])]
            raise ValueError(
                f"{store.path}: resonance '{res}' ({', '.join(names)}) with daughters {daughters} is not in the "
                f"store's topology, which has {offered}; add an alias or give columns"
            )
    return {**params, "targets": targets, "columns": columns}


class _ResonanceScorer(nn.Module):
    """Scores of all k-tuples for one resonance: [B, M, ..., M] (k index dimensions)."""

    def __init__(self, dim: int, hidden: int, groups: list[int]) -> None:
        super().__init__()
        self.groups = groups  # daughter -> group id; symmetric daughters share a group
        n_groups = max(groups) + 1
        self.norm = nn.LayerNorm(dim)
        self.unary = nn.ModuleList([nn.Linear(dim, 1) for _ in range(n_groups)])
        self.proj = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(n_groups)]) if len(groups) > 1 else None
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)  # [B, M, D]
        k = len(self.groups)
        unary = [self.unary[g](h).squeeze(-1) for g in self.groups]  # k x [B, M]
        b, n = unary[0].shape
        score = torch.zeros((b,) + (n,) * k, device=h.device, dtype=h.dtype)
        for a in range(k):
            shape = [b] + [1] * k
            shape[a + 1] = n
            score = score + unary[a].reshape(shape)
        if self.proj is not None:
            p = [self.proj[g](h) for g in self.groups]  # k x [B, M, hidden]
            for a, c in itertools.combinations(range(k), 2):
                pair = torch.einsum("bid,bjd->bij", p[a], p[c]) * self.scale
                if self.groups[a] == self.groups[c]:
                    pair = 0.5 * (pair + pair.transpose(1, 2))  # symmetric daughters: symmetric score
                shape = [b] + [1] * k
                shape[a + 1], shape[c + 1] = n, n
                score = score + pair.reshape(shape)
        return score


def _valid_tuples(mask: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """[B, M^k] bool: distinct candidate objects, symmetric daughters in ascending order."""
    b, n = mask.shape
    k = len(groups)
    grids = torch.meshgrid(*[torch.arange(n, device=mask.device)] * k, indexing="ij")
    valid = torch.ones((1,) + (n,) * k, dtype=torch.bool, device=mask.device)
    for a, c in itertools.combinations(range(k), 2):
        valid = valid & (grids[a] != grids[c] if groups[a] != groups[c] else grids[a] < grids[c])
    for a in range(k):
        shape = [b] + [1] * k
        shape[a + 1] = n
        valid = valid & mask.reshape(shape)
    return valid.reshape(b, -1)


def compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate objects moved to the front: ``index`` [B, M] (input position, -1 padding) and its mask.

    M is the largest number of candidates in the batch (at least 1; the padded N in an ONNX export).
    """
    if torch.onnx.is_in_onnx_export():  # a traced M would be one batch's constant: keep the padded N in place
        place = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        return torch.where(mask, place, torch.full_like(place, -1)), mask
    m = max(int(mask.sum(1).max()), 1) if mask.shape[0] else 1
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :m]
    cmask = mask.gather(1, order)
    return torch.where(cmask, order, torch.full_like(order, -1)), cmask


class AssignmentHead(nn.Module):
    """Assign objects to the daughters of each declared resonance."""

    name: ClassVar[str] = "assignment"
    description: ClassVar[str] = "SPANet-like symmetric tuple scores per resonance; conflict-free decoding"
    Params: ClassVar[type] = AssignmentParams

    @classmethod
    def bind(cls, params: dict, store) -> dict:
        """Find each resonance's daughters in the store's topology (``resolve_targets``)."""
        return resolve_targets(params, store)

    @classmethod
    def store_targets(cls, params: AssignmentParams) -> list[str]:
        """The store targets it reads: each resonance's (``targets``, set by ``bind``), else ``target``."""
        return list(params.targets.values()) if params.targets else [params.target]

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
        consecutive, start = {}, 0
        for res in self.names:
            consecutive[res] = list(range(start, start + len(params.resonances[res])))
            start += len(consecutive[res])
        self.targets = params.targets or {res: params.target for res in self.names}
        self.source_columns = params.columns or consecutive  # each resonance's daughters in its target
        # where they go in the ``assignment`` output: the target's columns, or declaration order for several targets
        self.columns = self.source_columns if len(set(self.targets.values())) == 1 else consecutive
        self.n_columns = max(c for cs in self.columns.values() for c in cs) + 1
        self.lepton_index = None
        if params.candidates == "jets":
            if "is_lepton" not in dims.schema.object_names:
                raise HepfmError("assignment candidates 'jets' needs an 'is_lepton' object feature in the schema")
            self.lepton_index = dims.schema.index("is_lepton")

    def truth(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each resonance's true object indices [B, k] (-1 unmatched), from its target and columns."""
        return {res: batch.targets[self.targets[res]][:, self.source_columns[res]].long() for res in self.names}

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]:
        mask = latents.mask  # [B, N] objects a daughter may be
        if self.lepton_index is not None:
            mask = mask & (batch.objects[..., self.lepton_index] < 0.5)
        index, cmask = compact(mask)  # [B, M]
        h = latents.objects.gather(1, index.clamp_min(0)[..., None].expand(-1, -1, latents.objects.shape[-1]))
        out = {"index": index}
        for res in self.names:
            score = self.scorers[res](h).reshape(h.shape[0], -1)  # [B, M^k]
            valid = _valid_tuples(cmask, self.groups[res])
            logp = torch.log_softmax(score.masked_fill(~valid, -1e9), dim=-1)  # finite: no nan in empty events
            out[f"logp/{res}"] = logp.masked_fill(~valid, float("-inf"))
        return out

    # -- loss ---------------------------------------------------------------------------------
    def _target_index(self, res_scores: str, idx: torch.Tensor, position: torch.Tensor, m: int):
        """Flat tuple index of true objects ``idx`` [B, k] in ``res_scores``'s tuple space, and completeness."""
        n = position.shape[1]
        inside = (idx >= 0) & (idx < n)
        idx = torch.where(inside, position.gather(1, idx.clamp(0, n - 1)), torch.full_like(idx, -1))
        complete = (idx >= 0).all(-1)
        idx = idx.clamp_min(0)
        groups = self.groups[res_scores]
        for g in set(groups):  # canonical order inside symmetric groups
            pos = [i for i, gg in enumerate(groups) if gg == g]
            if len(pos) > 1:
                idx[:, pos] = idx[:, pos].sort(dim=-1).values
        flat = torch.zeros_like(idx[:, 0])
        for a in range(idx.shape[1]):
            flat = flat * m + idx[:, a]
        return flat, complete

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        truth = self.truth(batch)
        index = outputs["index"]  # [B, M]
        b, m = index.shape
        n = batch.mask.shape[1]
        position = torch.full((b, n + 1), -1, dtype=torch.long, device=index.device)  # input -> compact position
        position.scatter_(1, torch.where(index >= 0, index, n), torch.arange(m, device=index.device).expand(b, m))
        position = position[:, :n]
        symmetric = [g for g in self.params.symmetric_resonances if len(g) > 1]
        grouped = {r for g in symmetric for r in g}
        units = [[r] for r in self.names if r not in grouped] + symmetric
        total = torch.zeros((), device=index.device)
        count = torch.zeros((), device=index.device)
        parts = {}
        for unit in units:
            best = None
            for perm in itertools.permutations(unit):
                nll = torch.zeros(b, device=index.device)
                n_ok = torch.zeros(b, device=index.device)
                for res_s, res_t in zip(unit, perm, strict=True):
                    flat, complete = self._target_index(res_s, truth[res_t], position, m)
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
        """Conflict-free assignment (object indices, -1 unassigned) and each resonance's probability.

        ``assignment`` [B, columns] puts the daughters at their target columns (one target) or in
        declaration order (several); ``objects/<resonance>`` [B, k] gives each resonance's own.
        """
        index = outputs["index"]
        b, m = index.shape
        ks = [len(self.groups[res]) for res in self.names]
        tuples, values = decode([outputs[f"logp/{res}"] for res in self.names], ks, m, self.params.search_budget)
        assignment = torch.full((b, self.n_columns), -1, dtype=torch.long, device=index.device)
        result: dict[str, torch.Tensor] = {}
        for res, tup in zip(self.names, tuples, strict=True):
            objects = torch.where(tup >= 0, index.gather(1, tup.clamp_min(0)), torch.full_like(tup, -1))
            assignment[:, self.columns[res]] = objects
            result[f"objects/{res}"] = objects
        return {"assignment": assignment, "probability": values.exp(), **result}
