"""A classifier parametrised by the mass point, for a heavy-resonance search over a grid (``hepfm xyh``).

One network covers the whole (m_X, m_Y) grid: the two masses are inputs next to the event's
features (Baldi et al. 2016). Signal events carry their own mass point; background events get a
mass point drawn at random from the signal grid (each epoch anew), so that the network cannot
tell signal from background by the masses alone and learns, for every point, what signal of that
point looks like. At evaluation every event is scored at the point under test, which may lie
between the trained points (interpolation).

Metrics per point: the ROC AUC of that point's signal against all background, and the binned
significance: the Asimov significance ``sqrt(2 sum((s+b) ln(1+s/b) - s))`` of the score histogram
with signal and background normalised to given expected yields. The grid is shown as a heat map
and summarised by its median.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ._bumpfit import asimov_z
from ._errors import HepfmError, describe_validation_error
from ._files import write_json
from ._progress import progress
from ._yaml import read_yaml

__all__ = [
    "XYH_FEATURES",
    "binned_significance",
    "GridResult",
    "ParametrisedClassifier",
    "XYHConfig",
    "evaluate_grid",
    "load_xyh_config",
    "plot_grid",
    "search_stores",
    "xyh_features",
]

#: Event features computed by ``xyh_features`` from the four leading jets.
XYH_FEATURES = ("m_4j", "m_h_cand", "m_y_cand", "dr_h", "dr_y", "ht", "n_jet", "n_bjet", "pt_j4")


class XYHConfig(BaseModel):
    """Data, training and metric settings of ``hepfm xyh``."""

    model_config = ConfigDict(extra="forbid")
    name: str = "xyh"
    stores: list[str] = Field(default_factory=list)
    signal_prefix: str = Field("xyh_mx", description="signal processes are named {prefix}{m_X}_my{m_Y}")
    hidden: int = Field(64, ge=4)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=8)
    lr: float = Field(2e-3, gt=0)
    test_fraction: float = Field(0.5, gt=0, lt=1)
    bins: int = Field(20, ge=2, description="score bins of the binned significance")
    signal_yield: float = Field(50.0, gt=0, description="expected signal events per point after selection")
    background_yield: float = Field(5000.0, gt=0, description="expected background events after selection")
    seed: int = 0


def load_xyh_config(path: str | os.PathLike, overrides: list[str] | None = None) -> XYHConfig:
    """Read and validate a ``hepfm xyh`` YAML (one error line naming the file and the key when bad)."""
    from .tasks import apply_overrides

    data, _ = read_yaml(path, "xyh config")
    if not isinstance(data, dict):
        raise HepfmError(f"{path}: an xyh config must be a mapping")
    try:
        return XYHConfig.model_validate(apply_overrides(data, overrides or []))
    except ValidationError as exc:
        raise HepfmError(f"{path}: {describe_validation_error(exc)}") from None


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def xyh_features(schema, objects: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``XYH_FEATURES`` [n, 9] from the four leading jets (zeros where fewer than four).

    The four jets are paired in the way (of three) that puts one pair's mass closest to 125 GeV:
    that pair is the H candidate, the other the Y candidate.
    """
    from .physics import four_vectors, mass

    names = schema.object_names
    lep = objects[..., names.index("is_lepton")] > 0.5
    jet = mask & ~lep
    pt = np.where(jet, objects[..., names.index("pt")], -1.0)
    order = np.argsort(-pt, axis=1)[:, :4]
    r = np.arange(len(objects))[:, None]
    p4 = four_vectors(schema, objects)[r, order]  # [n, 4, 4]
    has4 = jet.sum(1) >= 4
    pairings = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
    m_pairs = np.stack([np.stack([mass(p4[:, a] + p4[:, b]) for a, b in pr], 1) for pr in pairings], 1)  # [n,3,2]
    dist = np.abs(m_pairs - 125.0)  # [n, 3, 2]
    flat = dist.reshape(len(objects), -1).argmin(1)
    k, side = flat // 2, flat % 2
    idx = np.arange(len(objects))
    m_h, m_y = m_pairs[idx, k, side], m_pairs[idx, k, 1 - side]
    eta, phi = objects[..., names.index("eta")][r, order], objects[..., names.index("phi")][r, order]

    def dr(pair_k: np.ndarray, which: np.ndarray) -> np.ndarray:
        out = np.zeros(len(objects))
        for kk, pr in enumerate(pairings):
            for s in (0, 1):
                sel = (pair_k == kk) & (which == s)
                a, b = pr[s]
                dphi = np.remainder(phi[sel, a] - phi[sel, b] + np.pi, 2 * np.pi) - np.pi
                out[sel] = np.hypot(eta[sel, a] - eta[sel, b], dphi)
        return out

    btag = jet & (objects[..., names.index("btag")] > schema.btag_threshold)
    feats = np.stack(
        [
            mass(p4.sum(1)),
            m_h,
            m_y,
            dr(k, side),
            dr(k, 1 - side),
            np.where(jet, objects[..., names.index("pt")], 0.0).sum(1),
            jet.sum(1),
            btag.sum(1),
            np.where(jet.sum(1) >= 4, np.sort(np.where(jet, pt, 0.0), 1)[:, -4], 0.0),
        ],
        1,
    )
    return np.where(has4[:, None], feats, 0.0)


# --------------------------------------------------------------------------------------------
# the parametrised classifier
# --------------------------------------------------------------------------------------------
class ParametrisedClassifier:
    """An MLP on (standardised features, m_X / 1 TeV, m_Y / 1 TeV) -> signal logit."""

    def __init__(self, hidden: int = 64, epochs: int = 30, batch_size: int = 256, lr: float = 2e-3, seed: int = 0):
        self.hidden, self.epochs, self.batch_size, self.lr, self.seed = hidden, epochs, batch_size, lr, seed
        self.net: nn.Module | None = None

    def _inputs(self, features: np.ndarray, points: np.ndarray) -> torch.Tensor:
        x = (features - self.mu) / self.sd
        return torch.tensor(np.concatenate([x, points / 1000.0], 1), dtype=torch.float32)

    def fit(self, features: np.ndarray, points: np.ndarray, is_signal: np.ndarray) -> ParametrisedClassifier:
        """Train; ``points`` [n, 2] are the signal events' (m_X, m_Y) (ignored for background)."""
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.mu, self.sd = features.mean(0), features.std(0) + 1e-9
        sig_points = points[is_signal]
        if len(sig_points) == 0:
            raise HepfmError("parametrised classifier: no signal events to train on")
        self.net = nn.Sequential(
            nn.Linear(features.shape[1] + 2, self.hidden),
            nn.SiLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.SiLU(),
            nn.Linear(self.hidden, 1),
        )
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr)
        y = torch.tensor(is_signal, dtype=torch.float32)
        pos_weight = torch.tensor((~is_signal).sum() / max(is_signal.sum(), 1), dtype=torch.float32)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        with progress("parametrised classifier", self.epochs, "epochs") as advance:
            for _ in range(self.epochs):
                pts = points.copy()
                pts[~is_signal] = sig_points[rng.integers(0, len(sig_points), int((~is_signal).sum()))]
                x = self._inputs(features, pts)
                order = torch.randperm(len(x))
                for k in range(0, len(x), self.batch_size):
                    idx = order[k : k + self.batch_size]
                    loss = loss_fn(self.net(x[idx]).squeeze(-1), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                advance(1)
        self.net.eval()
        return self

    @torch.no_grad()
    def score(self, features: np.ndarray, point: tuple[float, float]) -> np.ndarray:
        """Signal probability of every event at the mass point (m_X, m_Y)."""
        if self.net is None:
            raise HepfmError("ParametrisedClassifier.score: fit the classifier first")
        pts = np.tile(np.asarray(point, np.float64), (len(features), 1))
        return torch.sigmoid(self.net(self._inputs(features, pts)).squeeze(-1)).numpy()


def binned_significance(
    signal_scores: np.ndarray, background_scores: np.ndarray, bins: int, signal_yield: float, background_yield: float
) -> float:
    """Asimov significance of the score histogram (scores in [0, 1]) normalised to expected yields.

    Empty background bins get one event's worth of the background sample (no infinite significance).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    b = np.histogram(background_scores, edges)[0] / len(background_scores) * background_yield
    s = np.histogram(signal_scores, edges)[0] / len(signal_scores) * signal_yield
    return asimov_z(s, np.maximum(b, background_yield / len(background_scores)))


@dataclass
class GridResult:
    """Per mass point: AUC and binned significance; and their medians over the grid."""

    points: list[tuple[float, float]]
    auc: list[float]
    z_binned: list[float]
    median_auc: float
    median_z: float


def evaluate_grid(
    clf: ParametrisedClassifier,
    features: np.ndarray,
    points: np.ndarray,
    is_signal: np.ndarray,
    grid: list[tuple[float, float]],
    bins: int = 20,
    signal_yield: float = 50.0,
    background_yield: float = 5000.0,
) -> GridResult:
    """Score all background and each point's signal at that point; AUC and binned Asimov significance."""
    from sklearn.metrics import roc_auc_score

    bkg = features[~is_signal]
    aucs, zs = [], []
    for mx, my in grid:
        sig = features[is_signal & (points[:, 0] == mx) & (points[:, 1] == my)]
        if len(sig) == 0:
            raise HepfmError(f"evaluate_grid: no signal events at the mass point ({mx:g}, {my:g})")
        sb, ss = clf.score(bkg, (mx, my)), clf.score(sig, (mx, my))
        aucs.append(float(roc_auc_score(np.r_[np.zeros(len(sb)), np.ones(len(ss))], np.r_[sb, ss])))
        zs.append(binned_significance(ss, sb, bins, signal_yield, background_yield))
    return GridResult([tuple(map(float, p)) for p in grid], aucs, zs, float(np.median(aucs)), float(np.median(zs)))


def plot_grid(result: GridResult, file: Path, title: str) -> Path:
    """Heat map of the binned significance (and AUC in each cell) over (m_X, m_Y)."""
    from ._plots import new_figure, save_figure, style_context

    mxs = sorted({p[0] for p in result.points})
    mys = sorted({p[1] for p in result.points})
    z = np.full((len(mys), len(mxs)), np.nan)
    labels = {}
    for (mx, my), zz, a in zip(result.points, result.z_binned, result.auc, strict=True):
        z[mys.index(my), mxs.index(mx)] = zz
        labels[(mxs.index(mx), mys.index(my))] = f"Z={zz:.1f}\nAUC={a:.3f}"
    with style_context():
        fig, ax = new_figure(size=(6, 4.5))
        im = ax.imshow(z, origin="lower", cmap="viridis", aspect="auto")
    for (i, j), text in labels.items():
        ax.text(i, j, text, ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(mxs)), [f"{m:g}" for m in mxs])
    ax.set_yticks(range(len(mys)), [f"{m:g}" for m in mys])
    ax.set_xlabel("$m_X$ [GeV]")
    ax.set_ylabel("$m_Y$ [GeV]")
    fig.colorbar(im, ax=ax, label="binned significance Z")
    ax.set_title(f"median Z = {result.median_z:.2f}, median AUC = {result.median_auc:.3f}", fontsize=9)
    return save_figure(fig, file, title)


def search_stores(config: XYHConfig, out: str | os.PathLike, stores: list[str] | None = None) -> GridResult:
    """Features from the stores, a train/test split, the parametrised classifier, metrics and heat map."""
    import re

    from .store import EventStore

    paths = stores or config.stores
    if not paths:
        raise HepfmError(f"xyh '{config.name}': no event stores (key 'stores' or --store)")
    pattern = re.compile(re.escape(config.signal_prefix) + r"(\d+)_my(\d+)$")
    feats, points, signal = [], [], []
    for path in paths:
        store = EventStore.open(path)
        proc_points = [pattern.match(p) for p in store.processes]
        for chunk in store.iter_chunks(["objects", "mask", "targets/process"]):
            feats.append(xyh_features(store.schema, chunk["objects"], chunk["mask"]))
            for k in chunk["targets/process"].astype(np.int64):
                mt = proc_points[k]
                points.append((float(mt[1]), float(mt[2])) if mt else (0.0, 0.0))
                signal.append(mt is not None)
    x, pts, sig = np.concatenate(feats), np.asarray(points), np.asarray(signal)
    keep = x[:, XYH_FEATURES.index("n_jet")] >= 4
    x, pts, sig = x[keep], pts[keep], sig[keep]
    if sig.all() or not sig.any():
        raise HepfmError(f"xyh '{config.name}': need both signal ({config.signal_prefix}*) and background events")
    rng = np.random.default_rng(config.seed)
    test = rng.random(len(x)) < config.test_fraction
    clf = ParametrisedClassifier(config.hidden, config.epochs, config.batch_size, config.lr, config.seed)
    clf.fit(x[~test], pts[~test], sig[~test])
    grid = sorted({tuple(p) for p in pts[sig]})
    res = evaluate_grid(
        clf, x[test], pts[test], sig[test], grid, config.bins, config.signal_yield, config.background_yield
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "metrics.json",
        {
            "median_z_binned": res.median_z,
            "median_auc": res.median_auc,
            "points": [
                {"m_x": p[0], "m_y": p[1], "auc": a, "z_binned": z}
                for p, a, z in zip(res.points, res.auc, res.z_binned, strict=True)
            ],
            "n_train": int((~test).sum()),
            "n_test": int(test.sum()),
        },
    )
    plot_grid(res, out / "grid.png", f"{config.name}: parametrised classifier over the mass grid")
    return res
