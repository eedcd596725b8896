"""Built-in metrics, each with its plots.

Classification (ROC, rejection, accuracy), pairing efficiency, neutrino residuals and the ttbar
spin correlation D.

Each metric reads one ``hepfm.components.Evaluation``; the physics is in ``hepfm.physics``. The
classification metrics are here, ``pairing`` in ``_metrics_pairing``, the dilepton ttbar ones
(``neutrino_residuals``, ``spin_correlation``) in ``_metrics_ttbar`` and ``mass_grid`` in
``_parametrised``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from sklearn.metrics import roc_auc_score, roc_curve

from hepfm import hookimpl
from hepfm.components import Evaluation, Params
from hepfm.sdk import physics as ph
from hepfm.sdk import plots as hp

from ._metrics_pairing import Pairing
from ._metrics_ttbar import NeutrinoResiduals, SpinCorrelation


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------
class RocAuc:
    """Area under the ROC curve of signal class(es) against the rest, and background rejection."""

    name: ClassVar[str] = "roc_auc"
    description: ClassVar[str] = "ROC AUC and background rejection 1/eps_B at a signal efficiency"
    headline: ClassVar[tuple[str, ...]] = ("auc", "rejection")

    class Params(Params):
        head: str | None = Field(None, description="classification head key (default: the only one)")
        signal: list[int | str] = Field([1], description="signal processes, by index or name")
        background: list[int | str] | None = Field(
            None, description="background processes (default: every process that is not signal)"
        )
        target: str = "process"
        signal_efficiency: float = Field(0.25, gt=0, le=1, description="working point for the rejection")

    def __init__(self, params: Params) -> None:
        self.params = params

    def _scores(self, ev: Evaluation) -> tuple[np.ndarray, np.ndarray]:
        _, out = ev.head(self.params.head, "classification")
        signal = ev.process_indices(self.params.signal)
        truth = ev.truth(self.params.target)
        is_signal = np.isin(truth, signal)
        keep = np.ones(len(truth), bool)
        if self.params.background is not None:
            keep = is_signal | np.isin(truth, ev.process_indices(self.params.background))
        is_signal, weights = is_signal[keep], ev.weights[keep]
        if is_signal.all() or not is_signal.any():
            raise ValueError("roc_auc needs both signal and background events")
        return is_signal, out["probabilities"][keep][:, signal].sum(1), weights

    def compute(self, ev: Evaluation) -> dict[str, float]:
        is_signal, score, weights = self._scores(ev)
        auc = roc_auc_score(is_signal, score, sample_weight=weights)
        rejection = ph.rejection_at(is_signal, score, weights, self.params.signal_efficiency)
        # binomial error of eps_B on the background's effective number of events, propagated to 1/eps_B
        n_eff = ph.effective_entries(weights[~is_signal])
        eps_b = 1.0 / rejection
        error = rejection**2 * float(np.sqrt(eps_b * (1.0 - eps_b) / n_eff)) if eps_b > 0 else float("nan")
        return {"auc": float(auc), "rejection": rejection, "rejection_error": error}

    @hp.styled
    def figures(self, ev: Evaluation) -> dict:
        """``roc``: background rejection against signal efficiency, with the working point."""
        is_signal, score, weights = self._scores(ev)
        fpr, tpr, _ = roc_curve(is_signal, score, sample_weight=weights)
        keep = fpr > 0
        fig, ax = hp.new_figure()
        auc = roc_auc_score(is_signal, score, sample_weight=weights)
        ax.plot(tpr[keep], 1.0 / fpr[keep], label=f"model, AUC = {auc:.3f}")
        wp = self.params.signal_efficiency
        ax.axvline(wp, ls=":", c="grey", label=f"$\\varepsilon_S = {wp:g}$")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("signal efficiency $\\varepsilon_S$")
        ax.set_ylabel("background rejection $1/\\varepsilon_B$")
        hp.hep_label(ax, f"{int(is_signal.sum()):,} signal, {int((~is_signal).sum()):,} background events")
        ax.legend(loc="upper right")
        return {"roc": fig}


class Accuracy:
    """Weighted fraction of events whose most probable class is the true one."""

    name: ClassVar[str] = "accuracy"
    description: ClassVar[str] = "weighted classification accuracy"
    headline: ClassVar[tuple[str, ...]] = ("accuracy",)

    class Params(Params):
        head: str | None = Field(None, description="classification head key (default: the only one)")
        target: str = "process"

    def __init__(self, params: Params) -> None:
        self.params = params

    def compute(self, ev: Evaluation) -> dict[str, float]:
        _, out = ev.head(self.params.head, "classification")
        right = out["probabilities"].argmax(1) == ev.truth(self.params.target)
        return {"accuracy": ph.efficiency(right, ev.weights)}


@hookimpl
def hepfm_register_metrics() -> list[type]:
    """Built-in metrics."""
    from ._parametrised import MassGrid

    return [RocAuc, Accuracy, Pairing, NeutrinoResiduals, SpinCorrelation, MassGrid]
