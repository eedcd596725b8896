"""Conflict-free decoding of assignment log-probabilities, vectorised over the batch.

Each resonance r with k_r daughters has log-probabilities over flat tuples of M objects (flat
index ``sum_a i_a * M**(k-1-a)``; -inf for invalid tuples). Decoding picks one tuple per
resonance, no object used twice, maximising the summed log-probability:

* one resonance: the argmax;
* two resonances (t and tbar in all-hadronic ttbar, a1 and a2 in H -> aa): exact. The first
  resonance's tuples are visited best first, a few at a time for all unfinished events at once;
  for each the best second tuple that shares no object is one masked max over the M**k scores
  (memory O(B K M**k) per step). An event is finished when its next candidate plus the second
  resonance's unconstrained best cannot beat the best pair found, which is usually after the
  first step;
* more resonances: an exact search over the joint choice of each resonance's top tuples
  (``budget`` combinations), as before.

Events where no conflict-free full assignment exists (too few objects) are decoded greedily: the
most confident resonance first, the next ones on the remaining objects, -1 where none fits.

``decode`` is also the companion of the ONNX export (``hepfm._onnx_export``): the graph gives the
log-probabilities, this gives the final object indices.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["decode", "tuple_objects"]

NEG_INF = float("-inf")


def tuple_objects(m: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[M**k, k] the object of each daughter in every flat tuple index."""
    flat = torch.arange(m**k, device=device)
    digits = []
    for _ in range(k):
        digits.append(flat % m)
        flat = flat // m
    return torch.stack(digits[::-1], dim=-1)


def _counts(objs: torch.Tensor, m: int) -> torch.Tensor:
    """[T, M] float: how often each object occurs in each tuple."""
    return torch.nn.functional.one_hot(objs, m).sum(1).float()


def _disjoint_best(lp: torch.Tensor, used: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best tuple of ``lp`` [..., T] sharing no object with ``used`` [..., M] (float 0/1): values and indices."""
    clash = (used @ counts.T) > 0  # [..., T]
    return lp.masked_fill(clash, NEG_INF).max(-1)


def _decode_pair(lps: list[torch.Tensor], objs: list[torch.Tensor], m: int, chunk: int = 4):
    lp_a, lp_b = lps
    b, t_a = lp_a.shape
    device = lp_a.device
    counts_b = _counts(objs[1], m)
    va_sorted, ia_sorted = lp_a.sort(dim=-1, descending=True)
    vb_top = lp_b.max(-1).values
    best = torch.full((b,), NEG_INF, device=device)
    best_a = torch.zeros(b, dtype=torch.long, device=device)
    best_b = torch.zeros(b, dtype=torch.long, device=device)
    active = torch.arange(b, device=device)
    start = 0
    while active.numel() and start < t_a:
        stop = min(start + chunk, t_a)
        va, ia = va_sorted[active, start:stop], ia_sorted[active, start:stop]  # [A, K]
        used = torch.zeros(*ia.shape, m, device=device).scatter_(-1, objs[0][ia], 1.0)  # [A, K, M]
        vb, ib = _disjoint_best(lp_b[active].unsqueeze(1), used, counts_b)  # [A, K]
        total = va + vb
        top, k = total.max(-1)
        better = top > best[active]
        rows = active[better]
        best[rows] = top[better]
        best_a[rows] = ia[better, k[better]]
        best_b[rows] = ib[better, k[better]]
        if stop < t_a:
            bound = va_sorted[active, stop] + vb_top[active]
            active = active[bound > best[active]]
        start, chunk = stop, min(2 * chunk, 64)
    feasible = torch.isfinite(best)
    return [best_a, best_b], feasible


def _decode_joint(lps: list[torch.Tensor], objs: list[torch.Tensor], budget: int):
    b, device = lps[0].shape[0], lps[0].device
    per = max(1, int(budget ** (1 / len(lps))))
    tops = [lp.topk(min(per, lp.shape[1]), dim=-1) for lp in lps]
    combos = torch.tensor(list(itertools.product(*[range(t.values.shape[1]) for t in tops])), device=device)
    score = torch.zeros(b, combos.shape[0], device=device)
    chosen = []
    for i, t in enumerate(tops):
        score = score + t.values[:, combos[:, i]]
        chosen.append(objs[i][t.indices[:, combos[:, i]]])  # [B, C, k]
    every = torch.cat(chosen, dim=-1)
    clash = torch.zeros_like(score, dtype=torch.bool)
    for a, c in itertools.combinations(range(every.shape[-1]), 2):
        clash |= every[..., a] == every[..., c]
    score = score.masked_fill(clash, NEG_INF)
    best = score.argmax(dim=-1)
    feasible = torch.isfinite(score.gather(1, best[:, None]).squeeze(1))
    return [t.indices.gather(1, combos[best, i][:, None]).squeeze(1) for i, t in enumerate(tops)], feasible


def _greedy(lps: list[torch.Tensor], objs: list[torch.Tensor], m: int) -> list[torch.Tensor]:
    """Most confident resonance first, each next one on the objects left (flat index, -1: none)."""
    b, device = lps[0].shape[0], lps[0].device
    order = torch.stack([lp.max(-1).values for lp in lps], 1).argsort(dim=1, descending=True)  # [B, R]
    used = torch.zeros(b, m, device=device)
    picks = [torch.full((b,), -1, dtype=torch.long, device=device) for _ in lps]
    rows = torch.arange(b, device=device)
    for step in range(len(lps)):
        for r, lp in enumerate(lps):
            mine = order[:, step] == r
            if not mine.any():
                continue
            value, index = _disjoint_best(lp[mine], used[mine], _counts(objs[r], m))
            ok = torch.isfinite(value)
            picks[r][rows[mine][ok]] = index[ok]
            chosen = objs[r][index[ok]]  # [n, k]
            used[rows[mine][ok]] = used[rows[mine][ok]].scatter(-1, chosen, 1.0)
    return picks


@torch.no_grad()
def decode(
    logps: list[torch.Tensor], ks: list[int], m: int, budget: int = 4096
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Conflict-free tuples of every resonance.

    Args:
        logps: Per resonance, [B, M**k] log-probabilities over flat tuples (-inf: invalid).
        ks: Daughters of each resonance.
        m: Objects per event in the tuple space.
        budget: Joint combinations examined per event with three or more resonances.

    Returns:
        Per resonance the chosen objects [B, k] (-1: unassigned), and the log-probability of each
        choice [B, R] (-inf where unassigned).
    """
    device = logps[0].device
    logps = [lp.float() for lp in logps]
    objs = [tuple_objects(m, k, device) for k in ks]
    if len(logps) == 1:
        picks, feasible = [logps[0].argmax(-1)], torch.isfinite(logps[0].max(-1).values)
    elif len(logps) == 2:
        picks, feasible = _decode_pair(logps, objs, m)
    else:
        picks, feasible = _decode_joint(logps, objs, budget)
    if not feasible.all():
        bad = ~feasible
        for r, p in enumerate(_greedy([lp[bad] for lp in logps], objs, m)):
            picks[r] = picks[r].clone()
            picks[r][bad] = p
    tuples, values = [], []
    for r, p in enumerate(picks):
        ok = p >= 0
        tuples.append(torch.where(ok[:, None], objs[r][p.clamp_min(0)], torch.full_like(objs[r][:1], -1)))
        values.append(torch.where(ok, logps[r].gather(1, p.clamp_min(0)[:, None]).squeeze(1), NEG_INF))
    return tuples, torch.stack(values, 1)
