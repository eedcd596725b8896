"""The evaluation headline: model, baseline and their difference, each with an uncertainty and a unit.

Uncertainties are the standard deviation over bootstrap resamples of the evaluated events (the
same resample for the model and its baseline, so the difference's uncertainty keeps their
correlation). A metric says which of its figures are headline ones (``headline``, patterns
allowed) and their units (``units``: pattern -> unit); ``baseline_NAME`` is the baseline of ``NAME``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np

from . import plugins
from ._progress import progress
from .components import Evaluation

__all__ = ["HeadlineRow", "bootstrap", "headline_rows", "format_value", "markdown_summary", "is_count", "unit_of"]

BASELINE = "baseline_"


@dataclass
class HeadlineRow:
    """One line of the headline: a figure of the model, of its baseline, and their difference."""

    metric: str
    figure: str
    unit: str
    count: bool
    model: float
    model_error: float
    baseline: float | None = None
    baseline_error: float = math.nan
    difference: float | None = None
    difference_error: float = math.nan

    def cells(self) -> tuple[str, str, str]:
        """The model, baseline and difference columns as text (``-`` where there is no baseline)."""
        model = format_value(self.model, self.model_error, self.count)
        if self.baseline is None:
            return model, "-", "-"
        base = format_value(self.baseline, self.baseline_error, self.count)
        return model, base, format_value(self.difference, self.difference_error, self.count, signed=True)

    def label(self) -> str:
        """The figure's name with its unit, e.g. ``top_mass_resolution [GeV]``."""
        return f"{self.figure} [{self.unit}]" if self.unit else self.figure


def is_count(name: str) -> bool:
    """Whether a figure counts events (printed as an integer)."""
    base = name.removeprefix(BASELINE)
    return base.startswith(("events", "n_")) or base.endswith("_events")


def unit_of(cls: type | None, name: str) -> str:
    """The unit of figure ``name`` from the metric class's ``units`` patterns ('' when dimensionless)."""
    base = name.removeprefix(BASELINE)
    for pattern, unit in (getattr(cls, "units", None) or {}).items():
        if fnmatch(base, pattern):
            return unit
    return ""


def _subset(ev: Evaluation, idx: np.ndarray) -> Evaluation:
    return Evaluation(
        schema=ev.schema,
        objects=ev.objects[idx],
        mask=ev.mask[idx],
        globals=ev.globals[idx],
        weights=ev.weights[idx],
        targets={k: v[idx] for k, v in ev.targets.items()},
        outputs={h: {k: v[idx] for k, v in out.items()} for h, out in ev.outputs.items()},
        heads=ev.heads,
        processes=ev.processes,
        selected_fraction=ev.selected_fraction,
    )


def bootstrap(
    ev: Evaluation, metrics: dict[str, Any], results: dict[str, dict[str, float]], n: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Bootstrap standard deviations of every figure and of every ``NAME - baseline_NAME`` (key ``NAME-baseline``).

    Args:
        ev: The evaluation set.
        metrics: Result key -> built metric (its ``compute`` is called on each resample).
        results: The figures on the whole set (which figures to follow).
        n: Number of resamples (0: none, every uncertainty is nan).
        seed: Seed of the resampling.
    """
    errors: dict[str, dict[str, float]] = {k: {} for k in results}
    if n < 2 or len(ev) < 2:
        return {k: {f: math.nan for f in figs} for k, figs in results.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in results}
    with progress("bootstrap", n, unit="resamples") as advance:
        for _ in range(n):
            part = _subset(ev, rng.integers(0, len(ev), len(ev)))
            for key, metric in metrics.items():
                try:
                    figures = metric.compute(part)
                except (ValueError, KeyError, IndexError, FloatingPointError):
                    continue  # a resample the metric cannot score (e.g. no signal event) is left out
                for name, value in figures.items():
                    samples[key].setdefault(name, []).append(float(value))
                for name in figures:
                    if BASELINE + name in figures:
                        diff = float(figures[name]) - float(figures[BASELINE + name])
                        samples[key].setdefault(f"{name}-baseline", []).append(diff)
            advance(1)
    for key, figs in samples.items():
        for name, values in figs.items():
            a = np.asarray(values, float)
            a = a[np.isfinite(a)]
            errors[key][name] = float(a.std(ddof=1)) if a.size >= 2 else math.nan
    return errors


def headline_rows(
    results: dict[str, dict[str, float]],
    errors: dict[str, dict[str, float]],
    names: dict[str, str],
    everything: bool = False,
) -> list[HeadlineRow]:
    """The headline rows (or, with ``everything``, one row for every figure that is not a baseline).

    Args:
        results: Metric key -> figure -> value.
        errors: Metric key -> figure -> uncertainty (from ``bootstrap``); a metric's own
            ``NAME_error`` figure is used where the bootstrap has none.
        names: Metric key -> registered metric name (its class gives ``headline`` and ``units``).
        everything: Every figure, not only the headline ones.
    """
    registry = plugins.metrics()
    rows = []
    for key, figures in results.items():
        cls = registry.get(names[key]) if names.get(key) in registry else None
        patterns = None if everything else getattr(cls, "headline", None)
        own = [f for f in figures if not f.startswith(BASELINE) and not f.endswith("_error")]
        if patterns is not None:
            own = [f for p in patterns if not p.startswith(BASELINE) for f in own if fnmatch(f, p)]
        errs = errors.get(key, {})

        def error(name: str, errs=errs, figures=figures) -> float:
            e = errs.get(name, math.nan)
            return figures.get(f"{name}_error", math.nan) if math.isnan(e) else e

        for name in dict.fromkeys(own):
            row = HeadlineRow(key, name, unit_of(cls, name), is_count(name), figures[name], error(name))
            if BASELINE + name in figures:
                row.baseline = figures[BASELINE + name]
                row.baseline_error = error(BASELINE + name)
                row.difference = row.model - row.baseline
                row.difference_error = errs.get(f"{name}-baseline", math.nan)
            rows.append(row)
    return rows


def _digits(error: float) -> int:
    """Decimals that show an uncertainty with two significant digits."""
    if not math.isfinite(error) or error <= 0:
        return -1
    return max(0, 1 - math.floor(math.log10(error)))


def format_value(value: float | None, error: float = math.nan, count: bool = False, signed: bool = False) -> str:
    """``0.612 ± 0.013``: the value rounded to its uncertainty's two significant digits; integers for counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    sign = "+" if signed else ""
    if count:
        text = f"{value:{sign},.0f}"
        return text if not math.isfinite(error) or error == 0 else f"{text} ± {error:,.0f}"
    digits = _digits(error)
    if digits < 0:
        return f"{value:{sign}.4g}"
    return f"{value:{sign}.{digits}f} ± {error:.{digits}f}"


def markdown_summary(record: dict[str, Any], rows: list[HeadlineRow]) -> str:
    """``summary.md``: what was scored, then the headline as a Markdown table."""
    sel = ", ".join(record["selection"]) or "none"
    n_boot = record.get("bootstrap", 0)
    lines = [
        f"# Evaluation of {record['run']}",
        "",
        f"- checkpoint: `{record['checkpoint']}` ({record['weights']} weights, "
        f"sha256 {record['checkpoint_sha256'][:12]})",
        f"- data: `{record['data']}`, {record['split']} split, {record['n_events']:,} events "
        f"(selection: {sel}; {100 * record['selected_fraction']:.1f}% pass)",
        f"- hepfm {record['hepfm_version']}, sampling seed {record['seed']}",
        f"- uncertainties: standard deviation over {n_boot} bootstrap resamples of the events"
        if n_boot
        else "- uncertainties: the metrics' own where given (no bootstrap)",
        "",
        "| metric | figure | model | baseline | model - baseline |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        model, base, diff = row.cells()
        lines.append(f"| {row.metric} | {row.label()} | {model} | {base} | {diff} |")
    lines += ["", "Every figure: `metrics.json` (or `hepfm evaluate RUN --all`); plots: `plots/`."]
    return "\n".join(lines) + "\n"
