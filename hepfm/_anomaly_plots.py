"""Plots of an anomaly search: the mass spectrum before and after the score cut, each with its bump fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._bumpfit import BumpFit
from ._plots import hep_label, new_figure, save_figure, styled


def _panel(ax, fit: BumpFit, label: str, signal_region: tuple[float, float], unit: str) -> None:
    import mplhep as hep

    hep.histplot(fit.counts, fit.edges, yerr=np.sqrt(fit.counts), histtype="errorbar", ax=ax, color="k", label=label)
    centres = 0.5 * (fit.edges[1:] + fit.edges[:-1])
    ax.plot(centres, fit.background_only, "b--", label="background-only fit")
    ax.plot(centres, fit.background + fit.signal, "r-", label=f"background + Gaussian (Z = {fit.z:.1f})")
    ax.axvspan(*signal_region, color="orange", alpha=0.15, label="signal region")
    ax.set_xlabel(f"$m_{{\\mu\\mu}}$ [{unit}]")
    ax.set_ylabel(f"events / {fit.edges[1] - fit.edges[0]:.2f} {unit}")
    ax.set_yscale("log")
    ax.legend(fontsize=7)


@styled
def plot_search(
    out: Path, config, before: BumpFit, after: BumpFit, mass: np.ndarray, selected: np.ndarray, unit: str = "GeV"
) -> list[Path]:
    """``spectrum_fit.png``: the spectrum and fits before and after the cut, side by side."""
    fig, axes = new_figure(1, 2, size=(5.5, 4.2))
    axes = axes[0]
    _panel(axes[0], before, f"all events ({len(mass)})", config.signal_region, unit)
    _panel(
        axes[1],
        after,
        f"score above the samples' {1 - config.cut_efficiency:.0%} quantile ({int(selected.sum())} events)",
        config.signal_region,
        unit,
    )
    axes[0].set_title("before the cut", fontsize=9)
    axes[1].set_title("after the cut", fontsize=9)
    return [save_figure(fig, out / "spectrum_fit.png", f"{config.name}: CATHODE-style search")]


@styled
def plot_spectrum(mass: np.ndarray, file: Path, edges: np.ndarray, title: str, unit: str = "GeV", marks=()) -> Path:
    """A plain mass spectrum (``hist``) with vertical marks, e.g. the Upsilon masses."""
    import hist
    import mplhep as hep

    h = hist.Hist(hist.axis.Variable(edges, name="m", label=f"$m_{{\\mu\\mu}}$ [{unit}]"))
    h.fill(m=mass)
    fig, ax = new_figure(size=(6.5, 4.2))
    hep.histplot(h, yerr=True, histtype="errorbar", ax=ax, color="k", label=f"{len(mass)} events")
    for name, value in marks:
        ax.axvline(value, color="r", ls=":", lw=1)
        ax.text(value, ax.get_ylim()[1] * 0.9, name, rotation=90, fontsize=7, ha="right", va="top", color="r")
    ax.set_ylabel(f"events / {(edges[1] - edges[0]) * 1000:.0f} MeV")
    ax.set_ylim(bottom=0)
    hep_label(ax)
    ax.legend(fontsize=8)
    return save_figure(fig, file, title)
