"""The ``pairing`` metric: assignment-head pairing efficiency, by jet multiplicity, and pair purity."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from hepfm.components import Evaluation, Params
from hepfm.sdk import physics as ph
from hepfm.sdk import plots as hp

__all__ = ["Pairing"]


def _process_selection(ev: Evaluation, processes: list[int | str] | None) -> np.ndarray:
    if processes is None:
        return np.ones(len(ev), bool)
    return np.isin(ev.truth("process"), ev.process_indices(processes))


# --------------------------------------------------------------------------------------------
# assignment
# --------------------------------------------------------------------------------------------
class Pairing:
    """Pairing efficiency over matchable and over all events, by jet multiplicity, and pair purity.

    An event is matchable when every daughter column of every resonance has a true object, and
    right when every resonance gets exactly its true objects (daughters compared as a set, and
    resonances as a set when ``interchangeable``). The pair purity counts resonances instead of
    events: the fraction of fully matched true resonances that the prediction reconstructs exactly,
    in every selected event (also those where only some resonances are matched).

    With ``baseline: min_mlb`` the classical dilepton ttbar pairing (two highest b-score jets,
    smallest m(l+ b) + m(l- b)) is scored on the same events.

    Without ``groups`` the resonances come from the assignment head itself, by name: its declared
    resonances, the targets and columns it was bound to (the store's topology), its symmetric
    daughters (a t -> b q q' is right when the b is the b and {q, q'} the W's pair) and its
    symmetric resonances (``interchangeable``). Then ``eff_matchable`` is SPANet's *event purity*
    (both tops right among events whose six daughters are all matched) and ``pair_purity`` its
    *top purity*, each also per jet multiplicity (``..._nj7``).

    With ``per_process``, SPANet's and EveNet's *event purity* (every resonance right, over events
    whose daughters are all matched: ``eff_matchable``) is also given for each of ``processes``
    separately (``event_purity_NAME``, its binomial error and ``n_matchable_NAME``), e.g. per
    mass point of a signal.
    """

    name: ClassVar[str] = "pairing"
    description: ClassVar[str] = "pairing efficiency (matchable / all events, by jet multiplicity), pair purity"
    headline: ClassVar[tuple[str, ...]] = (
        "eff_matchable",
        "eff_all",
        "pair_purity",
        "baseline_eff_matchable",
        "baseline_eff_all",
        "event_purity_*",
    )

    class Params(Params):
        head: str | None = Field(None, description="assignment head key (default: the only one)")
        target: str = Field("assignment", description="true object index per column, -1 unmatched")
        groups: list[list[int]] | None = Field(
            None, description="assignment columns of each resonance, e.g. [[0], [4]] (default: the head's, by name)"
        )
        interchangeable: bool | None = Field(
            None, description="resonances are indistinguishable (H -> a a); default: the head's symmetric resonances"
        )
        processes: list[int | str] | None = Field(None, description="score only these processes (default: all)")
        multiplicity: list[int] = Field(
            [2, 3, 4, 5, 6], description="jet-multiplicity bins; the first is 'at most', the last 'at least'"
        )
        baseline: Literal["none", "min_mlb"] = "none"
        per_process: bool = Field(False, description="event purity for each of `processes` separately")

        @model_validator(mode="after")
        def _check(self):
            if self.groups is not None and (not self.groups or any(not g for g in self.groups)):
                raise ValueError("groups: give the columns of at least one resonance")
            if self.multiplicity != sorted(set(self.multiplicity)):
                raise ValueError("multiplicity: bins must be increasing")
            if self.per_process and not self.processes:
                raise ValueError("per_process: name the processes to score one by one")
            if self.baseline == "min_mlb" and [len(g) for g in self.groups or [[0], [1]]] != [1, 1]:
                raise ValueError("baseline min_mlb pairs two b jets: groups must be [[b of t], [b of tbar]]")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params

    def _labels(self) -> list[str]:
        m = self.params.multiplicity
        if len(m) == 1:
            return [f"{m[0]}+"]
        return [f"<={m[0]}", *[str(x) for x in m[1:-1]], f">={m[-1]}"]

    def _bins(self, ev: Evaluation) -> np.ndarray:
        n_jet = ph.jet_multiplicity(ev.schema, ev.objects, ev.mask)
        return np.clip(np.searchsorted(self.params.multiplicity, n_jet), 0, len(self.params.multiplicity) - 1)

    def _layout(self, ev: Evaluation):
        """(truth [E, C], predictions by prefix, groups, daughter groups or None, interchangeable)."""
        key, out = ev.head(self.params.head, "assignment")
        if self.params.groups is not None:
            truth = np.asarray(ev.truth(self.params.target))
            groups, daughter_groups = self.params.groups, None
            interchangeable = bool(self.params.interchangeable)
            preds = {"": np.asarray(out["assignment"])}
        else:
            hp = ev.heads[key]["params"]
            names = list(hp["resonances"])
            k = [len(hp["resonances"][r]) for r in names]
            starts = np.cumsum([0, *k])
            consecutive = {r: list(range(starts[i], starts[i + 1])) for i, r in enumerate(names)}
            columns = hp.get("columns") or consecutive
            targets = hp.get("targets") or {r: hp.get("target", "assignment") for r in names}
            truth = np.concatenate([np.asarray(ev.truth(targets[r]))[:, columns[r]] for r in names], 1)
            groups = [consecutive[r] for r in names]
            daughter_groups = []
            for r in names:
                ids = list(range(len(hp["resonances"][r])))
                for group in (hp.get("symmetric_daughters") or {}).get(r, []):
                    for d in group:
                        ids[hp["resonances"][r].index(d)] = hp["resonances"][r].index(group[0])
                daughter_groups.append(ids)
            interchangeable = self.params.interchangeable
            if interchangeable is None:
                interchangeable = any(len(g) > 1 for g in hp.get("symmetric_resonances") or [])
            if any(f"objects/{r}" not in out for r in names):
                raise ValueError(f"head '{key}' gives no per-resonance objects; retrain with this hepfm or give groups")
            preds = {"": np.concatenate([np.asarray(out[f"objects/{r}"]) for r in names], 1)}
        if self.params.baseline == "min_mlb":
            if [len(g) for g in groups] != [1, 1]:
                raise ValueError("baseline min_mlb pairs two b jets: the head must assign one b per resonance")
            base = np.full_like(preds[""], -1)
            pair = ph.min_mlb_pairing(ev.schema, ev.objects, ev.mask)
            base[:, groups[0][0]], base[:, groups[1][0]] = pair[:, 0], pair[:, 1]
            preds["baseline_"] = base
        return truth, preds, groups, daughter_groups, interchangeable

    def _outcomes(self, ev: Evaluation):
        truth, preds, groups, daughter_groups, interchangeable = self._layout(ev)
        width = max(c for g in groups for c in g) + 1
        if truth.ndim != 2 or truth.shape[1] < width:
            raise ValueError(f"target '{self.params.target}' has shape {truth.shape[1:]}; groups need {width} columns")
        for prefix, pred in preds.items():
            if pred.shape[1] < width:
                raise ValueError(f"the assignment head predicts {pred.shape[1]} columns; groups need {width}")
            yield prefix, ph.pairing_outcome(pred, truth, groups, interchangeable, daughter_groups)

    def compute(self, ev: Evaluation) -> dict[str, float]:
        sel = _process_selection(ev, self.params.processes)
        w = ev.weights
        bins = self._bins(ev)
        out: dict[str, float] = {"matchable_fraction": ph.efficiency(self._matchable(ev), w, sel)}
        for prefix, (matchable, correct, right, complete) in self._outcomes(ev):
            out[f"{prefix}eff_matchable"] = ph.efficiency(correct, w, sel & matchable)
            out[f"{prefix}eff_all"] = ph.efficiency(correct, w, sel)
            true_pairs = float(np.sum(w[sel] * complete[sel]))  # per resonance, partially matchable events too
            found = float(np.sum(w[sel] * right[sel]))
            out[f"{prefix}pair_purity"] = found / true_pairs if true_pairs else float("nan")
            for b, label in enumerate(self._labels()):
                in_bin = sel & (bins == b)
                out[f"{prefix}eff_matchable_nj{label}"] = ph.efficiency(correct, w, in_bin & matchable)
                out[f"{prefix}eff_all_nj{label}"] = ph.efficiency(correct, w, in_bin)
                true_in_bin = float(np.sum(w[in_bin] * complete[in_bin]))
                found_in_bin = float(np.sum(w[in_bin] * right[in_bin]))
                out[f"{prefix}pair_purity_nj{label}"] = found_in_bin / true_in_bin if true_in_bin else float("nan")
            if self.params.per_process:
                truth = ev.truth("process")
                for name, index in zip(self.params.processes, ev.process_indices(self.params.processes), strict=True):
                    label = name if isinstance(name, str) else ev.processes[index]
                    of = (truth == index) & matchable
                    purity = ph.efficiency(correct, w, of)
                    n_eff = ph.effective_entries(w[of]) if of.any() else 0.0
                    out[f"{prefix}event_purity_{label}"] = purity
                    out[f"{prefix}event_purity_{label}_error"] = (
                        float(np.sqrt(purity * (1 - purity) / n_eff)) if n_eff > 0 else float("nan")
                    )
                    out[f"{prefix}n_matchable_{label}"] = float(of.sum())
        return out

    def _matchable(self, ev: Evaluation) -> np.ndarray:
        truth, _, groups, _, _ = self._layout(ev)
        return np.stack([(truth[:, g] >= 0).all(1) for g in groups], 1).all(1)

    @hp.styled
    def figures(self, ev: Evaluation) -> dict:
        """``pairing_efficiency``: efficiency by jet multiplicity with Clopper-Pearson 68% errors."""
        labels = self._labels()
        x = np.arange(len(labels))
        sel = _process_selection(ev, self.params.processes)
        bins = self._bins(ev)
        counts = np.bincount(bins[sel], minlength=len(labels))
        matchable = self._matchable(ev)
        w = ev.weights
        fig, ax = hp.new_figure()
        styles = {"": ("model", "-"), "baseline_": ("min $m_{\\ell b}$ baseline", "--")}
        offsets = {("", "matchable"): -0.12, ("", "all"): -0.04, ("baseline_", "matchable"): 0.04}
        for prefix, (_, correct, _, _) in self._outcomes(ev):
            name, ls = styles[prefix]
            for kind, marker in (("matchable", "o"), ("all", "s")):
                passed, total = np.zeros(len(labels)), np.zeros(len(labels))
                for b in range(len(labels)):
                    of = sel & (bins == b) & (matchable if kind == "matchable" else True)
                    n_eff = ph.effective_entries(w[of]) if of.any() else 0.0
                    total[b] = n_eff
                    passed[b] = ph.efficiency(correct, w, of) * n_eff if of.any() else 0.0
                eff, lo, hi = hp.binomial_band(passed, total)
                overall = ph.efficiency(correct, w, sel & matchable if kind == "matchable" else sel)
                ax.errorbar(x + offsets.get((prefix, kind), 0.12), eff, yerr=[lo, hi], ls=ls, marker=marker,
                            capsize=2, label=f"{name}, {kind} events ({overall:.3f})")  # fmt: skip
        ax.set_xticks(x, [f"{lab}\n({c:,})" for lab, c in zip(labels, counts, strict=True)])
        ax.set_xlabel("jet multiplicity (events)")
        ax.set_ylabel("pairing efficiency")
        ax.set_ylim(0, 1.3)
        hp.hep_label(ax, f"{int(sel.sum()):,} events")
        ax.legend(loc="upper right", fontsize="x-small")
        return {"pairing_efficiency": fig}
