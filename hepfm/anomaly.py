"""Weakly supervised resonant anomaly detection, CATHODE-style (``hepfm anomaly``).

1. Split events by the resonance mass ``m`` into a signal region (SR) and sidebands (SB).
2. A conditional diffusion model (v-prediction, cosine schedule, DDIM sampler: the machinery of
   hepfm's generative heads, ``hepfm.model.diffusion``) learns p(features | m) of the sideband
   events, which are background, and samples it at the masses of the signal-region events. Its
   denoiser is an MLP of the features (``generative.model: mlp``) or hepfm's transformer backbone,
   pretrained or not, generating the muon pair (``backbone``: ``hepfm._anomaly_backbone``, which
   also holds ``compare_anomaly``, pretrained vs scratch).
3. A classifier (gradient-boosted trees, k-fold so that every event is scored by a model that
   never saw it) separates signal-region data from these samples: where the data hold a signal
   the classifier finds it, where they do not it learns nothing.
4. Events above a score threshold (the quantile ``1 - cut_efficiency`` of the samples' scores, so
   a fraction ``cut_efficiency`` of the background passes) are kept over the whole spectrum, and a
   bump fit (smooth background + Gaussian, ``hepfm._bumpfit``) gives the local significance before
   and after the cut.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ._anomaly_backbone import BackboneBackground, compare_anomaly
from ._bumpfit import bump_fit
from ._errors import HepfmError, describe_validation_error
from ._files import write_json
from ._progress import progress
from ._yaml import read_yaml
from .model.diffusion import alpha_sigma, ddim_sample, noise, time_embedding

__all__ = [
    "fit_denoiser",
    "AnomalyConfig",
    "AnomalyResult",
    "BackboneBackground",
    "BackgroundModel",
    "DIMUON_FEATURES",
    "PAIR_FEATURES",
    "compare_anomaly",
    "dimuon_events",
    "dimuon_features",
    "load_anomaly_config",
    "pair_features",
    "read_stores",
    "run_anomaly",
    "search_events",
    "search_stores",
    "toy_events",
]

#: High-level features of a dimuon event computed by ``dimuon_features`` (besides the mass).
DIMUON_FEATURES = ("pt_mumu", "abs_y_mumu", "delta_eta_mumu", "pt_balance", "n_jet", "lead_jet_pt", "met")
#: The features of the muon pair alone (what ``generative.model: backbone`` generates them from).
PAIR_FEATURES = DIMUON_FEATURES[:4]


class GenerativeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Literal["mlp", "backbone"] = Field(
        "mlp",
        description="mlp: an MLP denoiser of the features; backbone: hepfm's transformer backbone denoises the "
        "muon pair (hepfm._anomaly_backbone)",
    )
    init: str | None = Field(
        None, description="backbone: pretrained run folder, checkpoint or model folder; None: random weights"
    )
    from_scratch: bool = Field(
        False, description="backbone with init: the init's architecture and normaliser, random weights"
    )
    preset: Literal["tiny", "small", "lite", "standard"] = Field(
        "tiny", description="backbone sizes without init (normalised with the store's statistics)"
    )
    hidden: int = Field(128, ge=8, description="width of the denoiser MLP")
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(256, ge=8)
    lr: float = Field(2e-3, gt=0)
    steps: int = Field(30, ge=1, description="DDIM sampling steps")
    oversample: int = Field(4, ge=1, description="samples per signal-region event")


class ClassifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folds: int = Field(5, ge=2)
    max_iter: int = Field(200, ge=1, description="boosting rounds (early stopping on 10% of each fold)")
    learning_rate: float = Field(0.05, gt=0)
    max_leaf_nodes: int = Field(15, ge=2)


class AnomalyConfig(BaseModel):
    """Regions, features and model settings of an anomaly search (the YAML file of ``hepfm anomaly``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "anomaly"
    description: str = ""
    stores: list[str] = Field(default_factory=list, description="event stores (dimuon events)")
    signal_processes: list[str] = Field(
        default_factory=list, description="processes counted as signal, only to report truth efficiencies"
    )
    features: list[str] = Field(default_factory=lambda: list(DIMUON_FEATURES))
    fit_range: tuple[float, float] = Field(..., description="mass range of sidebands + signal region, GeV")
    signal_region: tuple[float, float]
    width_bounds: tuple[float, float] = Field((0.05, 0.5), description="Gaussian width bounds of the bump fit, GeV")
    signal_mean: float | None = Field(
        None, description="fix the bump fit's Gaussian mean (one hypothesis); None: it floats over the signal region"
    )
    bins: int = Field(60, ge=10)
    cut_efficiency: float = Field(0.1, gt=0, le=1, description="background fraction kept by the score cut")
    seed: int = 0
    generative: GenerativeConfig = GenerativeConfig()
    classifier: ClassifierConfig = ClassifierConfig()

    def model_post_init(self, _: Any) -> None:
        (lo, hi), (a, b) = self.fit_range, self.signal_region
        if not lo < a < b < hi:
            raise ValueError(
                f"need fit_range[0] < signal_region[0] < signal_region[1] < fit_range[1], got {lo, a, b, hi}"
            )
        unknown = [f for f in self.features if f not in DIMUON_FEATURES]
        if self.stores and unknown:
            raise ValueError(f"features {unknown} unknown; dimuon features: {', '.join(DIMUON_FEATURES)}")
        other = [f for f in self.features if f not in PAIR_FEATURES]
        if self.generative.model == "backbone" and other:
            raise ValueError(
                f"generative.model backbone generates the muon pair: features {other} are not among its "
                f"features {', '.join(PAIR_FEATURES)}"
            )


def load_anomaly_config(
    path: str | os.PathLike, overrides: list[str] | None = None, pretrained: str | os.PathLike | None = None
) -> AnomalyConfig:
    """Read and validate an anomaly YAML, with ``key.path=value`` overrides (one error line when bad).

    ``pretrained`` (a run folder, checkpoint or model folder) sets ``generative.model: backbone``
    and ``generative.init``.
    """
    from ._anomaly_backbone import check_pretrained
    from .tasks import apply_overrides

    check_pretrained(pretrained)
    data, _ = read_yaml(path, "anomaly config")
    if not isinstance(data, dict):
        raise HepfmError(f"{path}: an anomaly config must be a mapping")
    data = apply_overrides(data, overrides or [])
    if pretrained is not None:
        gen = data.get("generative") if isinstance(data.get("generative"), dict) else {}
        data["generative"] = {**gen, "model": "backbone", "init": str(pretrained)}
    try:
        return AnomalyConfig.model_validate(data)
    except ValidationError as exc:
        raise HepfmError(f"{path}: {describe_validation_error(exc)}") from None
    except ValueError as exc:
        raise HepfmError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# features of dimuon events
# --------------------------------------------------------------------------------------------
def pair_features(schema, plus: np.ndarray, minus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m(mu mu) [n] and the ``PAIR_FEATURES`` [n, 4] of two objects' rows [n, F] (raw, in ``schema``)."""
    from .physics import four_vectors, mass

    pair = four_vectors(schema, plus) + four_vectors(schema, minus)  # [n, 4] (px, py, pz, E)
    pt = np.hypot(pair[:, 0], pair[:, 1])
    y = 0.5 * np.log((pair[:, 3] + pair[:, 2]) / np.maximum(pair[:, 3] - pair[:, 2], 1e-9))
    eta, pts = schema.index("eta"), schema.index("pt")
    pt_p, pt_m = plus[:, pts], minus[:, pts]
    feats = [pt, np.abs(y), np.abs(plus[:, eta] - minus[:, eta]), np.abs(pt_p - pt_m) / (pt_p + pt_m)]
    return mass(pair), np.stack(feats, 1)


def dimuon_events(stores: list[str | os.PathLike]) -> dict[str, Any]:
    """Events with an OS lepton pair: ``dimuon_features``' arrays, the pair's rows, schema and stats.

    Keys: ``mass`` [n], ``features`` [n, 7], ``process`` [n], ``pairs`` [n, 2, F] (raw rows of mu+
    and mu-), and the first store's ``schema`` and normalisation ``stats``. The pair is the
    leading positive and the leading negative lepton (the dimuon trigger of the ``pythia``
    processes guarantees one of each).
    """
    from .physics import jet_multiplicity, leading_leptons
    from .store import EventStore

    masses, feats, labels, pairs = [], [], [], []
    schema = stats = None
    for path in stores:
        store = EventStore.open(path)
        s = store.schema
        if schema is None:
            schema, stats = s, store.stats
        elif s.differences(schema):
            raise HepfmError(f"{path}: schema differs from {stores[0]}'s: {'; '.join(s.differences(schema))}")
        has_process = "process" in store.targets
        names = ["objects", "mask", "globals"] + (["targets/process"] if has_process else [])
        for chunk in store.iter_chunks(names):
            obj, mask = chunk["objects"], chunk["mask"]
            ip, im = leading_leptons(s, obj, mask)
            ok = (ip >= 0) & (im >= 0)
            r = np.arange(len(obj))[ok]
            plus, minus = obj[r, ip[ok]], obj[r, im[ok]]
            m, pair = pair_features(s, plus, minus)
            f = s.object_names
            pts = obj[..., f.index("pt")]
            jets = mask & ~(obj[..., f.index("is_lepton")] > 0.5)
            lead_jet = np.where(jets, pts, 0.0).max(1)
            g = s.global_names
            met = chunk["globals"][:, g.index("met")] if "met" in g else np.zeros(len(obj))
            feats.append(np.column_stack([pair, jet_multiplicity(s, obj, mask)[ok], lead_jet[ok], met[ok]]))
            masses.append(m)
            pairs.append(np.stack([plus, minus], 1))
            if has_process:
                names_of = np.array(store.processes, dtype=object)
                labels.append(names_of[chunk["targets/process"][ok].astype(np.int64)])
            else:
                labels.append(np.full(int(ok.sum()), "", dtype=object))
    return {
        "mass": np.concatenate(masses),
        "features": np.concatenate(feats).astype(np.float64),
        "process": np.concatenate(labels),
        "pairs": np.concatenate(pairs).astype(np.float32),
        "schema": schema,
        "stats": stats,
    }


def dimuon_features(stores: list[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """m(mu mu) [n], the ``DIMUON_FEATURES`` [n, 7] and the process label [n] of events with an OS pair.

    The pair is the leading positive and the leading negative lepton (the dimuon trigger of the
    ``pythia`` processes guarantees one of each).
    """
    events = dimuon_events(stores)
    return events["mass"], events["features"], events["process"]


# --------------------------------------------------------------------------------------------
# the background model: p(features | m) by conditional diffusion
# --------------------------------------------------------------------------------------------
class _Denoiser(nn.Module):
    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.time_dim = 16
        self.net = nn.Sequential(
            nn.Linear(n_features + 1 + self.time_dim + 2, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, n_features),
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a, s = alpha_sigma(t)
        h = torch.cat([x_t, cond[:, None], time_embedding(t, self.time_dim), a[:, None], s[:, None]], -1)
        return self.net(h)


def fit_denoiser(velocity, params, x: torch.Tensor, config: GenerativeConfig, seed: int, title: str) -> None:
    """Train a v-prediction denoiser on x [n, ...]: ``velocity(x_t, t, idx)`` predicts v for rows ``idx``.

    AdamW with a one-cycle schedule over ``config.epochs`` passes of ``config.batch_size``, all
    randomness from one generator seeded with ``seed``; a progress bar per epoch.
    """
    opt = torch.optim.AdamW(params, lr=config.lr)
    per_epoch = max(1, len(x) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    with progress(title, config.epochs, "epochs") as advance:
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=gen)
            for k in range(per_epoch):
                idx = order[k * config.batch_size : (k + 1) * config.batch_size]
                t = torch.rand(len(idx), generator=gen)
                x_t, v = noise(x[idx], t, torch.randn(len(idx), *x.shape[1:], generator=gen))
                loss = ((velocity(x_t, t, idx) - v) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            advance(1)


class BackgroundModel:
    """Conditional diffusion model of p(features | mass), trained on sideband events."""

    def __init__(self, config: GenerativeConfig, seed: int = 0) -> None:
        self.config, self.seed = config, seed
        self.net: _Denoiser | None = None

    def fit(self, features: np.ndarray, mass: np.ndarray) -> BackgroundModel:
        """Train on events [n, F] at masses [n] (standardised internally; mass conditioning as log m)."""
        c = self.config
        torch.manual_seed(self.seed)
        # integer features (multiplicities) are dequantised with uniform noise, non-negative ones
        # (momenta) enter as log(1 + x): smooth densities a diffusion model can learn
        self.integer = np.all(features == np.round(features), axis=0)
        self.positive = features.min(0) >= 0
        features = self._forward(features, np.random.default_rng(self.seed))
        self.mu, self.sd = features.mean(0), features.std(0) + 1e-9
        lm = np.log(mass)
        self.m_mu, self.m_sd = lm.mean(), lm.std() + 1e-9
        x = torch.tensor((features - self.mu) / self.sd, dtype=torch.float32)
        m = torch.tensor((lm - self.m_mu) / self.m_sd, dtype=torch.float32)
        self.net = _Denoiser(x.shape[1], c.hidden)
        fit_denoiser(
            lambda x_t, t, idx: self.net(x_t, t, m[idx]),
            self.net.parameters(),
            x,
            c,
            self.seed,
            "background model (sidebands)",
        )
        self.net.eval()
        return self

    @torch.no_grad()
    def sample(self, mass: np.ndarray, seed: int = 1) -> np.ndarray:
        """Features [n, F] sampled at the masses [n]."""
        if self.net is None:
            raise HepfmError("BackgroundModel.sample: fit the model first")
        m = torch.tensor((np.log(mass) - self.m_mu) / self.m_sd, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        x = ddim_sample(lambda x_t, t: self.net(x_t, t, m), (len(m), len(self.mu)), self.config.steps, gen)
        return self._inverse(x.numpy().astype(np.float64) * self.sd + self.mu)

    def _forward(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.where(self.integer, x + rng.random(x.shape), x)
        return np.where(self.positive, np.log1p(np.maximum(x, 0.0)), x)

    def _inverse(self, y: np.ndarray) -> np.ndarray:
        x = np.where(self.positive, np.expm1(np.clip(y, None, 50.0)), y)
        x = np.where(self.integer, np.floor(x), x)
        return np.where(self.positive, np.maximum(x, 0.0), x)


# --------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------
@dataclass
class AnomalyResult:
    """Significances and counts of one anomaly search (``metrics.json`` of ``hepfm anomaly``)."""

    z_before: float  # bump fit of the full spectrum, no cut (a plain sideband-fit bump hunt)
    z_after: float  # after the score cut
    yield_before: float
    yield_after: float
    mean_after: float
    width_after: float
    n_events: int
    n_signal_region: int
    n_sideband: int
    n_selected: int
    threshold: float
    classifier_auc_sr: float  # data vs samples in the signal region, out of fold (0.5: nothing found)
    pass_fraction_sr: float  # fraction of signal-region data above the threshold
    pass_fraction_sb: float  # ... of sideband data: about cut_efficiency when the background model is good
    truth_signal_efficiency: float | None = None  # where process labels are known
    truth_background_efficiency: float | None = None


def _classifier_scores(
    data: np.ndarray, samples: np.ndarray, others: np.ndarray, cfg: ClassifierConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold scores of SR data and samples; the other (sideband) events each scored by one fold's model."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.concatenate([data, samples])
    y = np.concatenate([np.ones(len(data)), np.zeros(len(samples))])
    w = np.where(y == 1, len(x) / (2 * len(data)), len(x) / (2 * len(samples)))
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, cfg.folds, len(x))
    scores = np.zeros(len(x))
    other = np.zeros(len(others))
    other_fold = rng.integers(0, cfg.folds, len(others))
    with progress("classifier folds (data vs samples)", cfg.folds, "folds") as advance:
        for k in range(cfg.folds):
            train = fold != k
            clf = HistGradientBoostingClassifier(
                max_iter=cfg.max_iter,
                learning_rate=cfg.learning_rate,
                max_leaf_nodes=cfg.max_leaf_nodes,
                early_stopping=True,
                validation_fraction=0.1,
                n_iter_no_change=10,
                random_state=seed + k,
            )
            clf.fit(x[train], y[train], sample_weight=w[train])
            scores[~train] = clf.predict_proba(x[~train])[:, 1]
            mine = other_fold == k  # one model per event, like the out-of-fold scores (an average
            if mine.any():  # of models would have a narrower score distribution and sculpt the spectrum)
                other[mine] = clf.predict_proba(others[mine])[:, 1]
            advance(1)
    return scores[: len(data)], scores[len(data) :], other


def run_anomaly(
    mass: np.ndarray,
    features: np.ndarray,
    config: AnomalyConfig,
    out: str | os.PathLike | None = None,
    is_signal: np.ndarray | None = None,
    background_model: BackgroundModel | BackboneBackground | None = None,
) -> tuple[AnomalyResult, BackgroundModel | BackboneBackground]:
    """Run the search on events (masses [n], features [n, F]); write metrics and plots under ``out``.

    Args:
        mass: The resonance mass of each event.
        features: The other features (the background model learns them given the mass).
        config: Regions and model settings.
        out: Folder for ``metrics.json`` and the plots (nothing written when None).
        is_signal: Truth labels, only to report efficiencies (never used by the search).
        background_model: A model already trained on these sidebands (skips training): a
            ``BackgroundModel`` or anything with its ``sample(mass, seed)``.
    """
    lo, hi = config.fit_range
    a, b = config.signal_region
    inside = (mass > lo) & (mass < hi)
    mass, features = mass[inside], features[inside]
    truth = is_signal[inside] if is_signal is not None else None
    sr = (mass > a) & (mass < b)
    sb = ~sr
    if sr.sum() < 20 or sb.sum() < 20:
        raise HepfmError(
            f"anomaly '{config.name}': {int(sr.sum())} signal-region and {int(sb.sum())} sideband events; "
            "need >= 20 each"
        )
    model = background_model or BackgroundModel(config.generative, config.seed).fit(features[sb], mass[sb])
    rng = np.random.default_rng(config.seed)
    sample_mass = rng.choice(mass[sr], size=int(sr.sum()) * config.generative.oversample, replace=True)
    samples = model.sample(sample_mass, seed=config.seed + 1)
    s_data, s_samples, s_sb = _classifier_scores(features[sr], samples, features[sb], config.classifier, config.seed)
    threshold = float(np.quantile(s_samples, 1.0 - config.cut_efficiency))
    score = np.zeros(len(mass))
    score[sr], score[sb] = s_data, s_sb
    selected = score > threshold
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(np.r_[np.ones(len(s_data)), np.zeros(len(s_samples))], np.r_[s_data, s_samples]))
    fit = (config.fit_range, config.signal_region, config.width_bounds, config.bins, config.signal_mean)
    before = bump_fit(mass, *fit)
    after = bump_fit(mass[selected], *fit)
    eff_s = eff_b = None
    if truth is not None and truth.any():
        eff_s = float(selected[sr & truth].mean())
    if truth is not None:
        eff_b = float(selected[sr & ~truth].mean())
    result = AnomalyResult(
        z_before=before.z,
        z_after=after.z,
        yield_before=before.signal_yield,
        yield_after=after.signal_yield,
        mean_after=after.mean,
        width_after=after.width,
        n_events=len(mass),
        n_signal_region=int(sr.sum()),
        n_sideband=int(sb.sum()),
        n_selected=int(selected.sum()),
        threshold=threshold,
        classifier_auc_sr=auc,
        pass_fraction_sr=float(selected[sr].mean()),
        pass_fraction_sb=float(selected[sb].mean()),
        truth_signal_efficiency=eff_s,
        truth_background_efficiency=eff_b,
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", {"config": json.loads(config.model_dump_json()), "result": asdict(result)})
        from ._anomaly_plots import plot_search

        plot_search(out, config, before, after, mass, selected)
    return result, model


def search_stores(
    config: AnomalyConfig, out: str | os.PathLike | None = None, stores: list[str] | None = None
) -> AnomalyResult:
    """The search on dimuon event stores (``config.stores`` unless ``stores`` is given): ``hepfm anomaly``."""
    return search_events(read_stores(config, stores), config, out)


def read_stores(config: AnomalyConfig, stores: list[str] | None = None) -> dict[str, Any]:
    """``dimuon_events`` of ``stores`` (default: the config's), refused in one line when there are none."""
    paths = stores or config.stores
    if not paths:
        raise HepfmError(f"anomaly '{config.name}': no event stores (key 'stores' or --store)")
    return dimuon_events(paths)


def search_events(events: dict[str, Any], config: AnomalyConfig, out: str | os.PathLike | None = None) -> AnomalyResult:
    """The search on ``dimuon_events``' arrays, with the background model ``config.generative`` names."""
    cols = [DIMUON_FEATURES.index(f) for f in config.features]
    process, mass = events["process"], events["mass"]
    truth = np.isin(process, config.signal_processes) if config.signal_processes else None
    model = None
    if config.generative.model == "backbone":
        lo, hi = config.fit_range
        a, b = config.signal_region
        sb = (mass > lo) & (mass < hi) & ~((mass > a) & (mass < b))  # as run_anomaly splits them
        model = BackboneBackground(config.generative, events["schema"], events["stats"], config.features, config.seed)
        model.fit(events["pairs"][sb], mass[sb])
    result, _ = run_anomaly(mass, events["features"][:, cols], config, out, is_signal=truth, background_model=model)
    return result


# --------------------------------------------------------------------------------------------
# a toy with known densities (tests and docs)
# --------------------------------------------------------------------------------------------
TOY_SIGNAL = {"mass": 10.0, "width": 0.15, "mean": (1.8, 1.8), "sd": 0.5}


def toy_background_features(mass: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background features [n, 2]: Gaussians whose mean and width drift with the mass."""
    x1 = rng.normal(0.25 * (mass - 10.0), 1.0)
    x2 = rng.normal(0.0, 1.0 + 0.05 * (mass - 10.0))
    return np.stack([x1, x2], 1)


def toy_events(
    n_background: int, n_signal: int, fit_range: tuple[float, float] = (6.0, 14.0), slope: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masses, features [n, 2] and truth of a constructed toy: exponential background, Gaussian bump.

    Background: m ~ exp(-slope m) in ``fit_range``, features from ``toy_background_features``;
    signal: m ~ N(10, 0.15), features ~ N((1.8, 1.8), 0.5).
    """
    rng = np.random.default_rng(seed)
    lo, hi = fit_range
    u = rng.random(n_background)
    mb = lo - np.log(1 - u * (1 - np.exp(-slope * (hi - lo)))) / slope
    ms = rng.normal(TOY_SIGNAL["mass"], TOY_SIGNAL["width"], n_signal)
    xb = toy_background_features(mb, rng)
    xs = rng.normal(TOY_SIGNAL["mean"], TOY_SIGNAL["sd"], (n_signal, 2))
    order = rng.permutation(n_background + n_signal)
    truth = np.r_[np.zeros(n_background, bool), np.ones(n_signal, bool)]
    return np.r_[mb, ms][order], np.concatenate([xb, xs])[order], truth[order]
