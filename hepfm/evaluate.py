"""Physics evaluation of a trained run (``hepfm evaluate``).

The run's weights (by default those its best checkpoint was selected on, normally the EMA; ``--weights
ema|raw`` chooses) score one split of an event store (the test split of the run's own split by
default): every head's physics outputs are collected (``Head.infer`` where a head has it, e.g. the
full diffusion sampling chain; ``predict(forward(...))`` otherwise), then each metric the run's task
names computes its figures and draws its plots::

    OUT/summary.md            the headline: model, baseline, difference, each with uncertainty and unit
    OUT/metrics.json          {"hepfm_version", "run", "checkpoint", "checkpoint_sha256", "weights", "data",
                               "split", "selection", "selected_fraction", "n_events", "max_events", "seed",
                               "bootstrap", "metrics": {metric: {name: value}},
                               "errors": {metric: {name: bootstrap std}}, "headline": [rows]}
    OUT/plots/METRIC/*.png    ROC curves, pairing efficiency vs jet multiplicity, residuals, ...

Uncertainties are bootstrap standard deviations over resamples of the scored events (``bootstrap``
resamples; 0 turns them off); see ``hepfm._headline``.

Non-finite values are written as JSON null (nan) or the strings "inf" / "-inf".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, plugins
from ._errors import HepfmError
from ._files import write_atomic, write_json
from ._headline import HeadlineRow, bootstrap, headline_rows, markdown_summary
from ._infer import head_outputs, infer, model_device, resolve_device, sampling_generator, to_numpy
from ._limits import MAX_BATCH, MAX_EVENTS, MAX_SEED, in_range
from ._outputs import output_lock, prepare_output
from ._plots import save_figure
from ._progress import progress
from ._selection import Selection
from ._task_rules import metric_keys
from .components import Evaluation
from .run import Run
from .store import EventLoader, EventStore, SplitSpec, open_data
from .tasks import Component, task_selection

__all__ = [
    "EvalResult",
    "HeadlineRow",
    "build_metrics",
    "collect",
    "evaluate",
    "headline_rows",
    "log_to_wandb",
    "score",
    "read_metrics",
]


@dataclass
class EvalResult:
    """Where the evaluation went, what it measured and the plots it drew."""

    path: Path
    n_events: int
    metrics: dict[str, dict[str, float]]
    plots: list[Path]
    weights: str = "ema"
    selected_fraction: float = 1.0
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    headline: list[HeadlineRow] = field(default_factory=list)
    summary: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    specs: list[Component] = field(default_factory=list)


def collect(
    model: torch.nn.Module,
    store: EventStore,
    split: str = "test",
    split_spec: SplitSpec | None = None,
    batch_size: int = 512,
    max_events: int | None = None,
    seed: int = 0,
    selection: Selection | None = None,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Run every head of ``model`` over one split of ``store`` (events passing ``selection``) into an ``Evaluation``.

    ``device``: where the model runs (moved there; default: where it is).
    """
    loader = EventLoader(
        store, split, batch_size, shuffle=False, split_spec=split_spec or SplitSpec(), selection=selection
    )
    total = loader.n_events if max_events is None else min(loader.n_events, max_events)
    if total == 0:
        raise HepfmError(f"{store.path}: the '{split}' split has no events")
    if device is not None:
        model.to(resolve_device(device))
    gen = sampling_generator(seed, model_device(model))  # the same samples for the same run, data and seed
    parts: dict[str, list[np.ndarray]] = {}

    def keep(name: str, value: torch.Tensor | np.ndarray) -> None:
        parts.setdefault(name, []).append(to_numpy(value))

    with progress("evaluate", total) as advance:
        for batch, outputs in infer(model, loader, lambda b: head_outputs(model, b, gen), max_events=total):
            for key, named in outputs.items():
                for name, value in named.items():
                    keep(f"outputs/{key}/{name}", value)
            for name in ("objects", "mask", "globals", "weights"):
                keep(name, getattr(batch, name))
            for name, value in batch.targets.items():
                keep(f"targets/{name}", value)
            advance(len(batch))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    config = getattr(model, "checkpoint_config", {}) or {}
    heads = {key: {"name": h["name"], "params": h["params"]} for key, h in config.get("heads", {}).items()}
    return Evaluation(
        schema=model.schema,
        objects=arrays["objects"],
        mask=arrays["mask"],
        globals=arrays["globals"],
        weights=arrays["weights"].astype(np.float64),
        targets={k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("targets/")},
        outputs={
            key: {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(f"outputs/{key}/")}
            for key in model.heads
        },
        heads=heads,
        processes=list(store.processes),
        selected_fraction=loader.selected_fraction,
    )


def _metric_keys(specs: list[Component]) -> list[str]:
    """Result keys of a task's metrics (``hepfm._task_rules.metric_keys``); a repeated key is refused."""
    keys = metric_keys((spec.name, getattr(spec, "key", None)) for spec in specs)
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise HepfmError(f"metrics: two metrics report under the key {duplicated[0]!r}; give each its own 'key'")
    return keys


def score(
    evaluation: Evaluation, specs: list[Component], plot_dir: Path | None = None, where: str = "task"
) -> tuple[dict[str, dict[str, float]], list[Path]]:
    """Compute (and, with ``plot_dir``, plot) the named metrics on an evaluation set."""
    results: dict[str, dict[str, float]] = {}
    files: list[Path] = []
    for i, (key, (spec, metric)) in enumerate(build_metrics(specs).items()):
        try:
            results[key] = {k: float(v) for k, v in metric.compute(evaluation).items()}
            if plot_dir is not None:
                files += _draw(metric, evaluation, plot_dir / key.replace("#", "_"))
        except (ValueError, KeyError) as exc:
            raise HepfmError(f"{where}: key 'metrics.{i}' ({spec.name}): {exc}") from None
    return results, files


def build_metrics(specs: list[Component]) -> dict[str, tuple[Component, Any]]:
    """Result key -> (spec, metric built from its params), in task order."""
    registry = plugins.metrics()
    built = {}
    for key, spec in zip(_metric_keys(specs), specs, strict=True):
        cls = registry.get(spec.name)
        built[key] = (spec, cls(cls.Params.model_validate(spec.params)))
    return built


def _draw(metric: Any, evaluation: Evaluation, out: Path) -> list[Path]:
    """Save a metric's figures (``figures(ev)`` -> {stem: Figure}) or call its older ``plot(ev, out)``."""
    if hasattr(metric, "figures"):
        return [save_figure(fig, out / f"{stem}.png") for stem, fig in metric.figures(evaluation).items()]
    if hasattr(metric, "plot"):
        return list(metric.plot(evaluation, out))
    return []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_value(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def evaluate(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    split: str = "test",
    which: str = "best",
    weights: str | None = None,
    metrics: list[Component] | None = None,
    batch_size: int = 512,
    max_events: int | None = None,
    seed: int = 0,
    plots: bool = True,
    bootstrap_resamples: int = 30,
    device: str = "cpu",
) -> EvalResult:
    """Evaluate a run folder (or checkpoint file) on a store (see module docstring).

    Args:
        run: Run folder (its ``task.yaml`` gives the metrics, the split and the default data).
        data: Event store to score (default: the run's dataset).
        out: Output folder (default: ``RUN/eval``).
        split: ``train``, ``val``, ``test`` or ``all``.
        which: ``best`` or ``last`` checkpoint.
        weights: ``ema`` or ``raw`` (default: the weights the run selected its best checkpoint on).
        metrics: Metrics to compute instead of the task's.
        batch_size: Events per inference batch.
        max_events: Score at most this many events of the split.
        seed: Seed of the generative heads' sampling.
        plots: Draw the metrics' PNG plots.
        bootstrap_resamples: Resamples of the scored events for the uncertainties (0: none).
        device: ``cpu`` or ``cuda``: where the model runs.
    """
    run = Run(run)
    if split not in ("train", "val", "test", "all"):
        raise HepfmError(f"--split '{split}': expected one of train, val, test, all")
    in_range("--batch-size", batch_size, 1, MAX_BATCH)
    in_range("--seed", seed, 0, MAX_SEED)
    if max_events is not None:
        in_range("--max-events", max_events, 1, MAX_EVENTS)
    in_range("--bootstrap", bootstrap_resamples, 0, 100_000)
    resolve_device(device)
    task = run.task
    specs = metrics if metrics is not None else (task.metrics if task is not None else [])
    if not specs:
        raise HepfmError(f"{run.path}: the run's task names no metrics; add a 'metrics' list to its task file")
    if data is None:
        data = run.sources()
        if data is None:
            raise HepfmError(f"{run.path}: no --data given and the run names no store")
    out = Path(out) if out is not None else run.folder / "eval"
    prepare_output(out, "eval", resume=True)  # a rerun replaces its metrics; a user's folder is refused
    with output_lock(out):
        return _evaluate(
            run,
            specs,
            data,
            out,
            split,
            which,
            weights,
            batch_size,
            max_events,
            seed,
            plots,
            bootstrap_resamples,
            device,
        )


def _evaluate(
    run: Run, specs, data, out, split, which, weights, batch_size, max_events, seed, plots, bootstrap_resamples, device
) -> EvalResult:
    task = run.task
    checkpoint = run.checkpoint(which)
    model = run.load_model(which, weights, device=device)
    store = open_data(data, schema=model.schema)
    selection = task_selection(task, store.schema) if task is not None else None
    ev = collect(model, store, split, task.split if task else None, batch_size, max_events, seed, selection)
    where = str(run.task_file) if task is not None else str(run.path)
    results, files = score(ev, specs, out / "plots" if plots else None, where)
    built = build_metrics(specs)
    errors = bootstrap(ev, {k: m for k, (_, m) in built.items()}, results, bootstrap_resamples, seed)
    rows = headline_rows(results, errors, {k: s.name for k, (s, _) in built.items()})
    record: dict[str, Any] = {
        "hepfm_version": __version__,
        "run": str(run.path),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": _sha256(checkpoint),
        "weights": model.weights,
        "data": str(store.path) if len(store.sources) == 1 else store.sources,
        "split": split,
        "selection": list(selection.cuts) if selection else [],
        "selected_fraction": ev.selected_fraction,
        "n_events": len(ev),
        "max_events": max_events,
        "seed": seed,
        "bootstrap": bootstrap_resamples,
        "metrics": {m: {k: _json_value(v) for k, v in r.items()} for m, r in results.items()},
        "errors": {m: {k: _json_value(v) for k, v in r.items()} for m, r in errors.items()},
        "headline": [{k: _json_value(v) if isinstance(v, float) else v for k, v in vars(r).items()} for r in rows],
    }
    write_json(out / "metrics.json", record)
    summary = write_atomic(out / "summary.md", markdown_summary(record, rows))
    return EvalResult(
        out, len(ev), results, files, model.weights, ev.selected_fraction, errors, rows, summary, record, list(specs)
    )


def log_to_wandb(result: EvalResult, mode: str = "offline", project: str | None = None) -> Path | None:
    """Log an evaluation to Weights & Biases: every figure, the headline as a table, every plot as an image.

    Args:
        result: What ``evaluate`` returned.
        mode: ``offline`` (files under ``OUT/wandb``, no network), ``online`` or ``disabled``.
        project: The W&B project (default: ``WANDB_PROJECT``, else ``hepfm``).

    Returns:
        The W&B run folder, or None when disabled.
    """
    if mode == "disabled":
        return None
    if mode not in ("offline", "online"):
        raise HepfmError(f"wandb mode '{mode}': expected offline, online or disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    record = {k: v for k, v in result.record.items() if k not in ("metrics", "errors", "headline")}
    run = wandb.init(
        project=project or os.environ.get("WANDB_PROJECT") or "hepfm",
        name=f"{Path(record.get('run', 'run')).name}-eval",
        job_type="evaluation",
        dir=str(result.path),
        mode=mode,
        config=record,
        reinit="finish_previous",
    )
    values = {f"eval/{m}/{k}": v for m, figs in result.metrics.items() for k, v in figs.items() if math.isfinite(v)}
    table = wandb.Table(columns=["metric", "figure", "model", "baseline", "difference"])
    for row in result.headline:
        table.add_data(row.metric, row.label(), *row.cells())
    images = {f"plots/{p.parent.name}/{p.stem}": wandb.Image(str(p)) for p in result.plots}
    run.log({**values, "eval/headline": table, **images})
    folder = Path(run.dir).parent
    run.finish()
    return folder


def read_metrics(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The metrics of a ``metrics.json`` as floats (null -> nan, "inf" -> inf)."""
    record = json.loads(Path(path).read_text())

    def value(v: Any) -> float:
        return float("nan") if v is None else float(v)

    return {m: {k: value(v) for k, v in r.items()} for m, r in record["metrics"].items()}
