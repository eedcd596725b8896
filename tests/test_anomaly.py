"""The CATHODE-style anomaly search on a toy with known densities, and the ``hepfm anomaly`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from hepfm._bumpfit import asimov_z
from hepfm.anomaly import TOY_SIGNAL, AnomalyConfig, run_anomaly, toy_background_features, toy_events

FIT, SR, BINS, SLOPE, N_B = (6.0, 14.0), (9.2, 10.8), 40, 0.35, 20000
CUT = 0.05


def _config(**kw) -> AnomalyConfig:
    base = dict(
        name="toy",
        fit_range=FIT,
        signal_region=SR,
        width_bounds=(0.15, 0.15),  # the known signal shape: one hypothesis, as the analytic expectation
        signal_mean=10.0,
        bins=BINS,
        cut_efficiency=CUT,
        features=["x1", "x2"],
        generative={"epochs": 15, "hidden": 64, "steps": 25, "oversample": 4},
        classifier={"folds": 3},
    )
    base.update(kw)
    return AnomalyConfig(**base)


def _log_lr(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The ideal classifier: log p_signal(x) / p_background(x | m) of the toy's known densities."""
    mu, sd = TOY_SIGNAL["mean"], TOY_SIGNAL["sd"]
    ls = stats.norm.logpdf(x[:, 0], mu[0], sd) + stats.norm.logpdf(x[:, 1], mu[1], sd)
    lb = stats.norm.logpdf(x[:, 0], 0.25 * (m - 10.0), 1.0) + stats.norm.logpdf(x[:, 1], 0.0, 1.0 + 0.05 * (m - 10.0))
    return ls - lb


def _expected_counts(n_signal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected background per fit bin, and a large background and signal sample of the toy."""
    m, _, _ = toy_events(400_000, 0, FIT, SLOPE, seed=98)
    edges = np.linspace(*FIT, BINS + 1)
    b = np.histogram(m, edges)[0] * (N_B / len(m))
    s = np.diff(stats.norm.cdf(edges, TOY_SIGNAL["mass"], TOY_SIGNAL["width"])) * n_signal
    return b, s, m


def expected_z(n_signal: int, eps_s: float, eps_b: float) -> float:
    """Asimov significance of the fit bins for a cut with these signal and background efficiencies."""
    b, s, _ = _expected_counts(n_signal)
    return asimov_z(s * eps_s, b * eps_b)


def ideal_z(n_signal: int) -> float:
    """Asimov significance after the ideal likelihood-ratio cut that keeps CUT of the SR background."""
    rng = np.random.default_rng(99)
    _, s, m = _expected_counts(n_signal)
    edges = np.linspace(*FIT, BINS + 1)
    lr_b = _log_lr(m, toy_background_features(m, rng))
    sr = (m > SR[0]) & (m < SR[1])
    thr = np.quantile(lr_b[sr], 1 - CUT)
    b = np.histogram(m[lr_b > thr], edges)[0] * (N_B / len(m))
    xs = rng.normal(TOY_SIGNAL["mean"], TOY_SIGNAL["sd"], (100_000, 2))
    ms = rng.normal(TOY_SIGNAL["mass"], TOY_SIGNAL["width"], 100_000)
    return asimov_z(s * float(np.mean(_log_lr(ms, xs) > thr)), b)


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    out = tmp_path_factory.mktemp("anomaly")
    m0, x0, t0 = toy_events(N_B, 0, FIT, SLOPE, seed=7)
    none, model = run_anomaly(m0, x0, _config(), out / "none", is_signal=t0)
    # the same background plus a signal (all inside the signal region, so the sidebands and the
    # background model trained on them are the same)
    rng = np.random.default_rng(6)
    n_s = 80
    ms = rng.normal(TOY_SIGNAL["mass"], TOY_SIGNAL["width"], n_s)
    xs = rng.normal(TOY_SIGNAL["mean"], TOY_SIGNAL["sd"], (n_s, 2))
    m1, x1, t1 = np.r_[m0, ms], np.concatenate([x0, xs]), np.r_[t0, np.ones(n_s, bool)]
    injected, _ = run_anomaly(m1, x1, _config(), out / "injected", is_signal=t1, background_model=model)
    return none, injected, n_s, out


def test_injected_signal_is_recovered_near_the_analytic_expectation(searches):
    _, r, n_s, out = searches
    # the expectation for the cut the search found (its true efficiencies), and for the ideal cut
    z_exp = expected_z(n_s, r.truth_signal_efficiency, r.truth_background_efficiency)
    z_ideal = ideal_z(n_s)
    assert 4.0 < z_ideal < 12.0  # the toy is built so that the cut matters
    assert r.z_after > r.z_before + 1.0  # the learned cut raises the significance
    assert abs(r.z_after - z_exp) < 2.0, (r.z_after, z_exp)  # within two standard deviations
    assert 0.5 * z_ideal < r.z_after < z_ideal + 2.0, (r.z_after, z_ideal)
    assert r.truth_signal_efficiency > 0.5 and r.truth_background_efficiency < 0.1
    assert abs(r.mean_after - TOY_SIGNAL["mass"]) < 0.1
    assert r.classifier_auc_sr > 0.5
    saved = json.loads((out / "injected" / "metrics.json").read_text())
    assert saved["result"]["z_after"] == pytest.approx(r.z_after)
    assert (out / "injected" / "spectrum_fit.png").stat().st_size > 10_000


def test_no_signal_gives_no_significance(searches):
    r = searches[0]
    assert abs(r.z_after) < 2.0, (r.z_before, r.z_after)
    assert r.truth_background_efficiency == pytest.approx(CUT, abs=0.03)
