"""Dilepton ttbar metrics: neutrino residuals (``neutrino_residuals``) and the spin correlation D."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from hepfm.components import Evaluation, Params
from hepfm.sdk import physics as ph
from hepfm.sdk import plots as hp

__all__ = ["NeutrinoResiduals", "SpinCorrelation"]

COMPONENT_NAMES = ("px", "py", "pz", "E")


def _weighted_quantiles(x: np.ndarray, w: np.ndarray, qs: list[float]) -> np.ndarray:
    if len(x) == 0:
        return np.full(len(qs), np.nan)
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return np.interp(np.asarray(qs) * cw[-1], cw, x[order])


# --------------------------------------------------------------------------------------------
# neutrinos
# --------------------------------------------------------------------------------------------
class _DileptonTtbar:
    """Shared by the neutrino and spin metrics: leptons, neutrinos (model and analytic baseline)."""

    def _leptons(self, ev: Evaluation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Leading l+ and l- four-vectors [E, 4] and the events that have both."""
        ip, im = ph.leading_leptons(ev.schema, ev.objects, ev.mask)
        p4 = ph.four_vectors(ev.schema, ev.objects)
        rows = np.arange(len(ev))
        return p4[rows, np.maximum(ip, 0)], p4[rows, np.maximum(im, 0)], (ip >= 0) & (im >= 0)

    def _neutrinos(self, ev: Evaluation, head: str | None) -> tuple[str, np.ndarray, dict]:
        """The head key, generated momenta [E, P, 3] (px, py, pz) and the head's params."""
        key, out = ev.head(head, "invisible_diffusion")
        params = ev.heads[key]["params"]
        comps = list(params.get("components", [0, 1, 2]))
        if comps[:3] != [0, 1, 2]:
            raise ValueError(f"head '{key}' generates components {comps}; px, py, pz ([0, 1, 2]) are needed")
        return key, np.asarray(out["momenta"], np.float64)[..., :3], params

    def _baseline_neutrinos(self, ev: Evaluation) -> np.ndarray:
        lp, lm, _ = self._leptons(ev)
        return ph.w_constrained_neutrinos(lp, lm, ev.truth("met").astype(np.float64), ev.truth("met_phi"))


class NeutrinoResiduals(_DileptonTtbar):
    """Generated minus true neutrino px, py, pz, against a W-mass analytic estimate.

    Reports the bias (median), the resolution (half the 16-84% width) and the Wasserstein-1
    distance between generated and true distributions; the same for the estimate (each neutrino
    half the MET, pz from m(l nu) = m_W) on the same events.
    """

    name: ClassVar[str] = "neutrino_residuals"
    description: ClassVar[str] = "neutrino px, py, pz residuals and generated-vs-true W1, vs a W-mass estimate"
    headline: ClassVar[tuple[str, ...]] = ("resolution", "baseline_resolution", "w1")
    units: ClassVar[dict[str, str]] = {"*resolution": "GeV", "*bias": "GeV", "*w1": "GeV"}

    class Params(Params):
        head: str | None = Field(None, description="invisible_diffusion head key (default: the only one)")
        names: list[str] = Field(["nu", "nubar"], description="names of the generated particles, in order")
        baseline: Literal["none", "w_mass"] = "w_mass"

    def __init__(self, params: Params) -> None:
        self.params = params

    def _data(self, ev: Evaluation):
        key, gen, params = self._neutrinos(ev, self.params.head)
        truth = np.asarray(ev.truth(params.get("target", "truth_nu")), np.float64)[..., :3]
        mask_name = params.get("mask_target")
        present = np.asarray(ev.truth(mask_name)).all(1) if mask_name else np.ones(len(ev), bool)
        sel = present
        preds = {"": gen}
        if self.params.baseline == "w_mass":
            _, _, two = self._leptons(ev)
            sel = present & two  # the same events for the model and the baseline
            preds["baseline_"] = self._baseline_neutrinos(ev)
        if not sel.any():
            raise ValueError("no event has its neutrinos (and, for the baseline, an l+ and an l-)")
        return sel, truth, preds

    def compute(self, ev: Evaluation) -> dict[str, float]:
        from scipy.stats import wasserstein_distance

        sel, truth, preds = self._data(ev)
        w = ev.weights[sel]
        out: dict[str, float] = {"events": float(sel.sum())}
        for prefix, pred in preds.items():
            widths = []
            for p, pname in enumerate(self.params.names[: truth.shape[1]]):
                for c in range(3):
                    r = pred[sel, p, c] - truth[sel, p, c]
                    q16, q50, q84 = _weighted_quantiles(r, w, [0.16, 0.5, 0.84])
                    tag = f"{prefix}{pname}_{COMPONENT_NAMES[c]}"
                    out[f"{tag}_bias"] = float(q50)
                    out[f"{tag}_resolution"] = float(0.5 * (q84 - q16))
                    out[f"{tag}_w1"] = float(wasserstein_distance(pred[sel, p, c], truth[sel, p, c], w, w))
                    widths.append(0.5 * (q84 - q16))
            out[f"{prefix}resolution"] = float(np.mean(widths))
            out[f"{prefix}w1"] = float(
                np.mean([v for k, v in out.items() if k.startswith(prefix) and k.endswith("_w1")])
            )
        return out

    @hp.styled
    def figures(self, ev: Evaluation) -> dict:
        """``neutrino_residuals`` (generated - true) and ``neutrino_generated_vs_true``, per particle and component."""
        import hist

        sel, truth, preds = self._data(ev)
        w = ev.weights[sel]
        names = self.params.names[: truth.shape[1]]
        latex = {"nu": "\\nu", "nubar": "\\bar{\\nu}"}
        figs = {}
        for stem in ("neutrino_residuals", "neutrino_generated_vs_true"):
            fig, axes = hp.new_figure(len(names), 3, size=(4.6, 3.8))
            for p, pname in enumerate(names):
                for c in range(3):
                    ax = axes[p, c]
                    t = truth[sel, p, c]
                    span = float(np.percentile(np.abs(t), 98)) or 1.0
                    sym = f"$p_{COMPONENT_NAMES[c][1]}^{{{latex.get(pname, pname)}}}$"
                    if stem == "neutrino_residuals":
                        axis = hist.axis.Regular(40, -1.5 * span, 1.5 * span)
                        for prefix, pred in preds.items():
                            r = pred[sel, p, c] - t
                            q16, q84 = _weighted_quantiles(r, w, [0.16, 0.84])
                            label = "W-mass baseline" if prefix else "model"
                            hp.draw_hist(
                                ax, hp.fill(axis, r, w), label=f"{label} ($\\sigma$ = {0.5 * (q84 - q16):.0f} GeV)"
                            )
                        ax.set_xlabel(f"{sym} generated $-$ true [GeV]")
                    else:
                        axis = hist.axis.Regular(40, -span, span)
                        hp.draw_hist(ax, hp.fill(axis, t, w), label="true", color="k")
                        for prefix, pred in preds.items():
                            hp.draw_hist(
                                ax,
                                hp.fill(axis, pred[sel, p, c], w),
                                label="W-mass baseline" if prefix else "generated",
                            )
                        ax.set_xlabel(f"{sym} [GeV]")
                    ax.set_ylabel("events / bin")
                    ax.set_ylim(0, ax.get_ylim()[1] * 1.35)
                    ax.legend(loc="upper right", fontsize="x-small")
            hp.hep_label(axes[0, 0], f"{int(sel.sum()):,} events")
            figs[stem] = fig
        return figs


# --------------------------------------------------------------------------------------------
# ttbar spin correlation
# --------------------------------------------------------------------------------------------
class SpinCorrelation(_DileptonTtbar):
    """Dilepton ttbar spin correlation D = -3 <cos phi>, reconstructed against truth, and the top mass.

    cos(phi) is the angle between the leptons in their top rest frames; the reconstruction uses the
    model's pairing and generated neutrinos, and the classical m(lb) + W-mass baseline.

    Pythia's ttbar carries no spin correlation (truth D near 0), so the events are also reweighted by
    1 - D* cos(phi_truth) to inject D* = ``inject_d``: ``*_injected`` figures use those weights and
    ``d_response`` = (D_reco(injected) - D_reco) / D* says how much of an injected D survives
    reconstruction (1 for a perfect one; before unfolding).
    """

    name: ClassVar[str] = "spin_correlation"
    description: ClassVar[str] = "ttbar spin correlation D reco vs truth (with injected D), top mass, vs baseline"
    headline: ClassVar[tuple[str, ...]] = (
        "d_response",
        "baseline_d_response",
        "cos_phi_correlation",
        "baseline_cos_phi_correlation",
        "top_mass_resolution",
        "baseline_top_mass_resolution",
    )
    units: ClassVar[dict[str, str]] = {"top_mass*": "GeV"}

    class Params(Params):
        assignment_head: str | None = Field(None, description="assignment head key (default: the only one)")
        neutrino_head: str | None = Field(None, description="invisible_diffusion head key (default: the only one)")
        columns: list[int] = Field(
            [0, 4], min_length=2, max_length=2, description="assignment columns of b(t), b(tbar)"
        )
        inject_d: float = Field(-0.5, ge=-1, le=1, description="D* injected by reweighting")
        baseline: bool = True

    def __init__(self, params: Params) -> None:
        self.params = params

    def _data(self, ev: Evaluation):
        truth_ok = np.asarray(ev.truth("truth_top_mask")).all(1) & np.asarray(ev.truth("truth_lepton_mask")).all(1)
        top, lep = np.asarray(ev.truth("truth_top"), np.float64), np.asarray(ev.truth("truth_lepton"), np.float64)
        cos_truth = np.zeros(len(ev))
        if truth_ok.any():
            cos_truth[truth_ok] = ph.cos_phi_spin(
                top[truth_ok, 0], top[truth_ok, 1], lep[truth_ok, 0], lep[truth_ok, 1]
            )
        _, assign = ev.head(self.params.assignment_head, "assignment")
        b_idx = {"": np.asarray(assign["assignment"])[:, self.params.columns]}
        _, nus, _ = self._neutrinos(ev, self.params.neutrino_head)
        neutrinos = {"": nus}
        if self.params.baseline:
            b_idx["baseline_"] = ph.min_mlb_pairing(ev.schema, ev.objects, ev.mask)
            neutrinos["baseline_"] = self._baseline_neutrinos(ev)
        lp, lm, two = self._leptons(ev)
        p4 = ph.four_vectors(ev.schema, ev.objects)
        rows = np.arange(len(ev))
        reco = {}
        for prefix, b in b_idx.items():
            ok = truth_ok & two & (b >= 0).all(1)
            nu = neutrinos[prefix]
            nu4 = np.concatenate([nu, np.linalg.norm(nu, axis=-1, keepdims=True)], -1)  # massless
            t = p4[rows, np.maximum(b[:, 0], 0)] + lp + nu4[:, 0]
            tbar = p4[rows, np.maximum(b[:, 1], 0)] + lm + nu4[:, 1]
            cos = np.zeros(len(ev))
            if ok.any():
                cos[ok] = ph.cos_phi_spin(t[ok], tbar[ok], lp[ok], lm[ok])
            reco[prefix] = (ok, cos, np.concatenate([ph.mass(t), ph.mass(tbar)]), np.concatenate([ok, ok]))
        injected = np.where(truth_ok, ph.reweight_spin(ev.weights, cos_truth, self.params.inject_d), 0.0)
        return truth_ok, cos_truth, injected, reco

    def compute(self, ev: Evaluation) -> dict[str, float]:
        truth_ok, cos_truth, injected, reco = self._data(ev)
        if not truth_ok.any():
            raise ValueError("no event has a true t, tbar, l+ and l- (targets truth_top, truth_lepton)")
        w = ev.weights
        out: dict[str, float] = {"events_truth": float(truth_ok.sum()), "inject_d": self.params.inject_d}
        out["d_truth"], out["d_truth_error"] = ph.spin_correlation_d(cos_truth[truth_ok], w[truth_ok])
        out["d_truth_injected"], out["d_truth_injected_error"] = ph.spin_correlation_d(
            cos_truth[truth_ok], injected[truth_ok]
        )
        for prefix, (ok, cos, m_top, m_ok) in reco.items():
            out[f"{prefix}events_reco"] = float(ok.sum())
            d, err = ph.spin_correlation_d(cos[ok], w[ok])
            d_inj, err_inj = ph.spin_correlation_d(cos[ok], injected[ok])
            out[f"{prefix}d_reco"], out[f"{prefix}d_reco_error"] = d, err
            out[f"{prefix}d_reco_injected"], out[f"{prefix}d_reco_injected_error"] = d_inj, err_inj
            out[f"{prefix}d_response"] = (d_inj - d) / self.params.inject_d if self.params.inject_d else float("nan")
            out[f"{prefix}cos_phi_correlation"] = (
                float(np.corrcoef(cos[ok], cos_truth[ok])[0, 1]) if ok.sum() > 2 else float("nan")
            )
            ww = np.concatenate([w, w])[m_ok]
            q16, q50, q84 = _weighted_quantiles(m_top[m_ok], ww, [0.16, 0.5, 0.84])
            out[f"{prefix}top_mass_median"] = float(q50)
            out[f"{prefix}top_mass_resolution"] = float(0.5 * (q84 - q16))
        return out

    @hp.styled
    def figures(self, ev: Evaluation) -> dict:
        """``top_mass``, ``cos_phi`` (as generated and with D* injected; D with its error) and ``cos_phi_response``."""
        import hist

        truth_ok, cos_truth, injected, reco = self._data(ev)
        w = ev.weights
        names = {"": "model", "baseline_": "$m_{\\ell b}$ + W-mass baseline"}
        figs = {}
        fig, ax = hp.new_figure()
        axis = hist.axis.Regular(60, 0, 400)
        for prefix, (_, _, m_top, m_ok) in reco.items():
            hp.draw_hist(ax, hp.fill(axis, m_top[m_ok], np.concatenate([w, w])[m_ok]), label=names[prefix])
        ax.axvline(172.5, ls=":", c="grey", label="$m_t$ = 172.5 GeV")
        ax.set_xlabel("reconstructed $m(b\\ell\\nu)$ [GeV]")
        ax.set_ylabel(f"top candidates / {400 / 60:.1f} GeV")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        hp.hep_label(ax, f"{int(truth_ok.sum()):,} events")
        ax.legend(loc="upper right")
        figs["top_mass"] = fig

        d_star = self.params.inject_d
        fig, axes = hp.new_figure(1, 2)
        axis = hist.axis.Regular(10, -1, 1)
        for ax, weights, tag in (
            (axes[0, 0], w, "as generated"),
            (axes[0, 1], injected, f"reweighted to $D^*$ = {d_star:g}"),
        ):
            d_t, e_t = ph.spin_correlation_d(cos_truth[truth_ok], weights[truth_ok])
            hp.draw_hist(ax, hp.fill(axis, cos_truth[truth_ok], weights[truth_ok]), fraction=True, color="k",
                         label=f"truth, $D$ = {d_t:.3f} $\\pm$ {e_t:.3f}")  # fmt: skip
            for prefix, (ok, cos, _, _) in reco.items():
                d_r, e_r = ph.spin_correlation_d(cos[ok], weights[ok])
                hp.draw_hist(ax, hp.fill(axis, cos[ok], weights[ok]), fraction=True,
                             label=f"{names[prefix]}, $D$ = {d_r:.3f} $\\pm$ {e_r:.3f}")  # fmt: skip
            ax.set_xlabel("$\\cos\\varphi$ ($\\ell^+$ in $t$ frame, $\\ell^-$ in $\\bar{t}$ frame)")
            ax.set_ylabel("fraction of events / bin")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.6)
            hp.hep_label(ax, tag)
            ax.legend(loc="upper right", fontsize="x-small")
        figs["cos_phi"] = fig

        fig, axes = hp.new_figure(1, len(reco), size=(5.6, 4.8))
        axes = np.atleast_2d(axes)
        edges = np.linspace(-1, 1, 11)
        for ax, (prefix, (ok, cos, _, _)) in zip(axes[0], reco.items(), strict=True):
            h = hist.Hist(hist.axis.Regular(10, -1, 1), hist.axis.Regular(10, -1, 1), storage=hist.storage.Weight())
            h.fill(cos_truth[ok], cos[ok], weight=w[ok])
            counts = h.values()
            # each truth bin normalised: the probability of each reconstructed bin given the true one
            column = counts.sum(1, keepdims=True)
            prob = np.divide(counts, column, out=np.zeros_like(counts), where=column > 0)
            mesh = ax.pcolormesh(edges, edges, prob.T, cmap="Blues", vmin=0)
            fig.colorbar(mesh, ax=ax, label="P(reconstructed bin | true bin)")
            ax.plot([-1, 1], [-1, 1], ls="--", c="grey", lw=1)
            r = np.corrcoef(cos[ok], cos_truth[ok])[0, 1] if ok.sum() > 2 else float("nan")
            ax.set_xlabel("$\\cos\\varphi$, truth")
            ax.set_ylabel("$\\cos\\varphi$, reconstructed")
            ax.set_title(f"{names[prefix]} ({int(ok.sum()):,} events, $\\rho$ = {r:.2f})", fontsize="small")
        figs["cos_phi_response"] = fig
        return figs
