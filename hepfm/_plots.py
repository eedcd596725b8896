"""Plot helpers: ``matplotlib.figure.Figure`` objects (no pyplot state, no backend switch), hist + mplhep.

Every plot function in hepfm builds its own ``Figure`` inside ``styled()`` (the mplhep style as a
temporary rc context), returns it, and writes a PNG only through ``save_figure`` when given a path;
the user's matplotlib backend and global rcParams are never touched, so figures show inline in
Jupyter. Histograms are ``hist.Hist`` objects with their variances (weighted storage), drawn with
error bars by ``mplhep.histplot``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DPI",
    "styled",
    "style_context",
    "flow_note",
    "new_figure",
    "hep_label",
    "save_figure",
    "feature_label",
    "make_axis",
    "fill",
    "draw_hist",
    "binomial_band",
]

#: Resolution of the PNGs hepfm writes.
DPI = 160

#: LaTeX names of the usual features (the unit is added from the schema).
LATEX = {
    "E": "$E$",
    "pt": "$p_{\\mathrm{T}}$",
    "eta": "$\\eta$",
    "phi": "$\\phi$",
    "btag": "b-tag",
    "is_lepton": "is lepton",
    "charge": "charge",
    "met": "$E_{\\mathrm{T}}^{\\mathrm{miss}}$",
    "met_phi": "$\\phi(E_{\\mathrm{T}}^{\\mathrm{miss}})$",
    "n_lepton": "$N_{\\ell}$",
    "n_bjet": "$N_{b\\mathrm{-jet}}$",
    "n_jet": "$N_{\\mathrm{jet}}$",
    "ht": "$H_{\\mathrm{T}}$",
    "ht_lep": "$H_{\\mathrm{T}}^{\\ell}$",
    "m_all": "$m_{\\mathrm{all}}$",
    "m_leps": "$m_{\\ell\\ell\\ldots}$",
    "m_bjets": "$m_{bb\\ldots}$",
}


def _style() -> dict[str, Any]:
    import mplhep

    style = dict(mplhep.style.ATLAS)
    style.update({"figure.dpi": 100, "savefig.dpi": DPI, "legend.fontsize": "small", "axes.formatter.limits": [-4, 6]})
    return style


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    """The mplhep (ATLAS-like) style as a temporary ``rc_context``: nothing global changes."""
    import matplotlib

    with matplotlib.rc_context(_style()):
        yield


def styled(fn):
    """Decorator: draw inside ``style_context()``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style_context():
            return fn(*args, **kwargs)

    return wrapper


def pyplot():
    """``matplotlib.pyplot`` as it is (kept for plugins written against older hepfm; no backend switch).

    New code builds Figures with ``new_figure`` instead: they need no pyplot state and no closing.
    """
    import matplotlib.pyplot as plt

    return plt


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.8), **kwargs):
    """A ``Figure`` (not registered with pyplot) and its axes; ``size`` is per panel."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes if (nrows, ncols) != (1, 1) else axes[0, 0]


def hep_label(ax, text: str = "", ecm_tev: float | None = 13.0, data: bool = False) -> None:
    """The "hepfm Simulation" label (above the frame, left) and sqrt(s) (right), as mplhep's experiment labels.

    Drawn with ``ax.text`` (mplhep's own label function reaches for pyplot's current axes).
    """
    kind = "Data" if data else "Simulation"
    ax.text(0, 1.01, f"$\\mathbf{{hepfm}}$ $\\mathit{{{kind}}}$", transform=ax.transAxes, fontsize=12, va="bottom")
    if ecm_tev:
        ax.text(1, 1.01, f"\u221as = {ecm_tev:g} TeV", transform=ax.transAxes, fontsize=11, va="bottom", ha="right")
    if text:
        ax.text(0.04, 0.93, text, transform=ax.transAxes, fontsize=10, va="top")


def save_figure(fig, file: str | os.PathLike, title: str | None = None, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``file`` (PNG) atomically (temp file + rename); returns the path."""
    file = Path(file)
    if title:
        fig.suptitle(title, fontsize=10)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    with style_context():
        fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, file)
    return file


def feature_label(name: str, unit: str = "", prefix: str = "") -> str:
    """An axis label: LaTeX name, then the unit in brackets (``$p_T$ [GeV]``)."""
    text = LATEX.get(name, name.replace("_", " "))
    text = f"{prefix} {text}".strip()
    return f"{text} [{unit}]" if unit and unit not in ("e",) else text


def make_axis(values: np.ndarray, log: bool = False, unit: str = "", bins: int = 40, name: str = "x"):
    """A hist axis that fits ``values``: integer for integer-valued data with few values, log above the minimum.

    Log axes start at the smallest value (at least 1 GeV for energies, so sub-GeV rounding noise
    of e.g. single-object masses goes to the underflow) and end at the 99.9th percentile.
    """
    import hist

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return hist.axis.Regular(1, 0, 1, name=name)
    integral = np.all(finite == np.round(finite))
    lo, hi = float(finite.min()), float(finite.max())
    if integral and hi - lo <= 40:
        return hist.axis.Integer(int(lo), int(hi) + 1, name=name, underflow=False, overflow=False)
    if log:
        positive = finite[finite > 0]
        if positive.size:
            start = float(positive.min())
            if unit == "GeV":
                start = max(start, 1.0)
            stop = float(np.percentile(positive, 99.9))
            if stop > start * 1.01:
                return hist.axis.Regular(bins, start, stop, transform=hist.axis.transform.log, name=name)
    lo_q, hi_q = np.percentile(finite, [0.1, 99.9])
    if hi_q <= lo_q:
        lo_q, hi_q = lo - 0.5, hi + 0.5
    elif hi_q - lo_q > 0.5 * (hi - lo):  # no far outliers (e.g. eta, phi): the whole range, nothing in flow
        lo_q, hi_q = lo, hi + 1e-6 * (hi - lo)
    return hist.axis.Regular(bins, float(lo_q), float(hi_q), name=name)


def fill(axis, values: np.ndarray, weights: np.ndarray | None = None):
    """A weighted ``hist.Hist`` (sum of weights and of squared weights) over one axis."""
    import hist

    h = hist.Hist(axis, storage=hist.storage.Weight())
    if isinstance(axis, hist.axis.Integer):
        values = np.rint(values).astype(np.int64)
    h.fill(values, weight=weights if weights is not None else np.ones(len(values)))
    return h


def draw_hist(ax, h, label: str | None = None, fraction: bool = False, **kwargs) -> None:
    """Draw ``h`` as a step line with error bars; ``fraction`` divides by its total (in range and flow)."""
    import mplhep

    if fraction:
        total = float(h.sum(flow=True).value)
        if total > 0:
            h = h / total
    import hist
    from matplotlib.ticker import MaxNLocator, NullFormatter

    axis = h.axes[0]
    edges = axis.edges
    if isinstance(axis, hist.axis.Integer):  # one bin per value, centred on it, integer ticks
        edges = edges - 0.5
        yerr = np.sqrt(h.variances())
        mplhep.histplot(h.values(), edges, ax=ax, yerr=yerr, histtype="step", label=label, **kwargs)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        mplhep.histplot(h, ax=ax, yerr=True, histtype="step", label=label, flow="none", **kwargs)
    if getattr(axis, "transform", None) is not None:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled decades only: no overlapping labels
    ax.set_xlim(edges[0], edges[-1])


def flow_note(h) -> str:
    """``'3.1% below, 0.1% above the range'`` for a 1D hist with flow bins (empty when none)."""
    traits = h.axes[0].traits
    values = h.values(flow=True)
    total = values.sum()
    if total <= 0 or not (traits.underflow or traits.overflow):
        return ""
    below = values[0] / total if traits.underflow else 0.0
    above = values[-1] / total if traits.overflow else 0.0
    parts = [
        f"{100 * below:.1f}% below" if below > 0.0005 else "",
        f"{100 * above:.1f}% above" if above > 0.0005 else "",
    ]
    parts = [p for p in parts if p]
    return f"{', '.join(parts)} the range" if parts else ""


def binomial_band(passed: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Efficiency and its Clopper-Pearson 68% interval as (eff, lower error, upper error) per bin.

    ``passed``/``total`` may be effective counts of weighted events; empty bins give nan.
    """
    from hist.intervals import clopper_pearson_interval

    passed, total = np.asarray(passed, float), np.asarray(total, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = np.where(total > 0, passed / np.maximum(total, 1e-300), math.nan)
    safe = np.maximum(total, 1.0)
    lo, hi = clopper_pearson_interval(np.minimum(passed, safe), safe)
    lo, hi = np.where(total > 0, lo, math.nan), np.where(total > 0, hi, math.nan)
    return eff, np.clip(eff - lo, 0, None), np.clip(hi - eff, 0, None)
