"""Built-in metrics."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from sklearn.metrics import roc_auc_score, roc_curve

from hepfm import hookimpl
from hepfm.components import Params


class RocAuc:
    """Area under the ROC curve of signal class(es) against the rest, and background rejection."""

    name: ClassVar[str] = "roc_auc"
    description: ClassVar[str] = "ROC AUC and background rejection 1/eps_B at a signal efficiency"

    class Params(Params):
        signal: list[int] = Field([1], description="class indices counted as signal")
        target: str = "process"
        signal_efficiency: float = Field(0.25, gt=0, le=1, description="working point for the rejection")

    def __init__(self, params: Params) -> None:
        self.params = params

    def compute(
        self, predictions: dict[str, np.ndarray], targets: dict[str, np.ndarray], weights: np.ndarray
    ) -> dict[str, float]:
        probs = predictions["probabilities"]
        score = probs[:, self.params.signal].sum(1)
        is_signal = np.isin(targets[self.params.target], self.params.signal)
        if is_signal.all() or not is_signal.any():
            raise ValueError("roc_auc needs both signal and background events")
        auc = roc_auc_score(is_signal, score, sample_weight=weights)
        fpr, tpr, _ = roc_curve(is_signal, score, sample_weight=weights)
        eps_b = float(np.interp(self.params.signal_efficiency, tpr, fpr))
        return {"auc": float(auc), "rejection": 1.0 / eps_b if eps_b > 0 else float("inf")}


class Accuracy:
    """Weighted fraction of events whose most probable class is the true one."""

    name: ClassVar[str] = "accuracy"
    description: ClassVar[str] = "weighted classification accuracy"

    class Params(Params):
        target: str = "process"

    def __init__(self, params: Params) -> None:
        self.params = params

    def compute(
        self, predictions: dict[str, np.ndarray], targets: dict[str, np.ndarray], weights: np.ndarray
    ) -> dict[str, float]:
        right = predictions["probabilities"].argmax(1) == targets[self.params.target]
        return {"accuracy": float(np.sum(right * weights) / np.sum(weights))}


@hookimpl
def hepfm_register_metrics() -> list[type]:
    """Built-in metrics."""
    return [RocAuc, Accuracy]
