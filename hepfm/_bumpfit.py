"""Bump fit of a mass spectrum: smooth falling background plus a Gaussian, likelihood-ratio significance.

The background is ``exp(p0 + p1 x + p2 x^2)`` with ``x`` the mass mapped to [-1, 1] over the fit
range; the signal a Gaussian with a yield >= 0, its mean fixed or floating inside the signal region
and its width inside given bounds. Both hypotheses are fitted to the binned spectrum with a Poisson likelihood
(``scipy.optimize.minimize``, started from a ``scipy.optimize.curve_fit`` least-squares fit of the
background). The local discovery significance is ``Z = sqrt(q0)``, ``q0 = 2 (NLL_b - NLL_s+b)``
with the yield constrained to be >= 0 (Cowan, Cranmer, Gross, Vitells 2011): a deficit gives 0.
With a floating mean it is a local significance: the mean scans the signal region, a look-elsewhere
effect of roughly (signal-region width / signal width) trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special


@dataclass
class BumpFit:
    """The result of one bump fit (counts per bin, fitted curves, significance)."""

    edges: np.ndarray
    counts: np.ndarray
    background_only: np.ndarray  # expected counts per bin, background-only fit
    background: np.ndarray  # background part of the signal + background fit
    signal: np.ndarray  # signal part of the signal + background fit
    signal_yield: float
    mean: float
    width: float
    z: float
    params: dict[str, float] = field(default_factory=dict)


def _x(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return 2.0 * (m - lo) / (hi - lo) - 1.0


def _bkg(centres: np.ndarray, p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = _x(centres, lo, hi)
    return np.exp(np.clip(p[0] + p[1] * x + p[2] * x**2, -50, 50))


def _gauss_bins(edges: np.ndarray, mean: float, width: float) -> np.ndarray:
    cdf = 0.5 * (1 + special.erf((edges - mean) / (np.sqrt(2) * width)))
    return np.diff(cdf)


def _nll(expected: np.ndarray, counts: np.ndarray) -> float:
    mu = np.maximum(expected, 1e-12)
    return float(np.sum(mu - counts * np.log(mu)))


def bump_fit(
    mass: np.ndarray,
    fit_range: tuple[float, float],
    signal_region: tuple[float, float],
    width_bounds: tuple[float, float],
    bins: int = 60,
    mean: float | None = None,
) -> BumpFit:
    """Fit background-only and background + Gaussian to the histogram of ``mass`` in ``fit_range``.

    Args:
        mass: Masses of the selected events.
        fit_range: (low, high) of the fitted spectrum.
        signal_region: The Gaussian mean is bounded to this interval.
        width_bounds: (min, max) of the Gaussian width; equal values fix it.
        bins: Equal-width bins over the fit range.
        mean: Fix the Gaussian mean here (a single hypothesis, no look-elsewhere effect);
            None lets it float over the signal region.
    """
    lo, hi = fit_range
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.histogram(mass, edges)[0].astype(np.float64)
    centres = 0.5 * (edges[1:] + edges[:-1])
    if counts.sum() < 5:
        raise ValueError(f"bump fit: only {int(counts.sum())} events in the fit range {fit_range}")
    # start: least squares on log-ish counts via curve_fit, then the Poisson likelihood
    start = np.array([np.log(max(counts.mean(), 1.0)), -1.0, 0.0])
    try:
        start, _ = optimize.curve_fit(
            lambda c, a, b, q: _bkg(c, np.array([a, b, q]), lo, hi),
            centres,
            counts,
            p0=start,
            sigma=np.sqrt(np.maximum(counts, 1.0)),
            maxfev=5000,
        )
    except RuntimeError:
        pass

    def nll_b(p: np.ndarray) -> float:
        return _nll(_bkg(centres, p, lo, hi), counts)

    fit_b = optimize.minimize(
        nll_b, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-6}
    )
    fit_b = optimize.minimize(nll_b, fit_b.x, method="Powell")  # the same refinement as the s + b fit
    best_b = fit_b.x
    sr_lo, sr_hi = signal_region
    w_lo, w_hi = width_bounds

    def unpack(q: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        m = sr_lo + (sr_hi - sr_lo) * special.expit(q[4]) if mean is None else mean
        width = w_lo + (w_hi - w_lo) * special.expit(q[5])
        return q[:3], float(q[3]), float(m), float(width)

    def expected_sb(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, s, mu, width = unpack(q)
        s = abs(s)  # the yield >= 0
        return _bkg(centres, p, lo, hi), s * _gauss_bins(edges, mu, width)

    def nll_sb(q: np.ndarray) -> float:
        b, s = expected_sb(q)
        return _nll(b + s, counts)

    best = None
    for frac in (0.1, 0.3, 0.5, 0.7, 0.9) if mean is None else (0.5,):  # starting means across the region
        q0 = np.concatenate([best_b, [0.1 * np.sqrt(counts.sum()), special.logit(frac), 0.0]])
        r = optimize.minimize(nll_sb, q0, method="Nelder-Mead", options={"maxiter": 8000, "xatol": 1e-6, "fatol": 1e-6})
        r = optimize.minimize(nll_sb, r.x, method="Powell")
        if best is None or r.fun < best.fun:
            best = r
    assert best is not None
    b_sb, s_sb = expected_sb(best.x)
    _, yield_, fitted_mean, width = unpack(best.x)
    yield_ = abs(yield_)
    z = float(np.sqrt(max(2.0 * (fit_b.fun - best.fun), 0.0)))
    return BumpFit(
        edges=edges,
        counts=counts,
        background_only=_bkg(centres, best_b, lo, hi),
        background=b_sb,
        signal=s_sb,
        signal_yield=yield_,
        mean=fitted_mean,
        width=width,
        z=z,
        params={"p0": float(best_b[0]), "p1": float(best_b[1]), "p2": float(best_b[2])},
    )


def asimov_z(signal: np.ndarray, background: np.ndarray) -> float:
    """Median discovery significance of binned expected counts: sqrt(2 sum((s+b) ln(1+s/b) - s))."""
    s, b = np.asarray(signal, np.float64), np.maximum(np.asarray(background, np.float64), 1e-12)
    return float(np.sqrt(max(2.0 * np.sum((s + b) * np.log1p(s / b) - s), 0.0)))
