"""The data-efficiency study (``hepfm study``): pretrained vs from-scratch fine-tunes by training size.

For every training fraction and seed, the task is fine-tuned twice, once from the pretrained run's
backbone (with the task's ``backbone_lr_scale``) and once from random weights (the whole network at
the full learning rate: a random backbone has nothing to preserve), and each fine-tune is evaluated
on the same test split (``hepfm.evaluate``). Cells that finished are never rerun; an interrupted
fine-tune resumes from its last checkpoint.

Two protocols. ``converged`` (the default): every cell trains until its validation loss stops
improving (``train.early_stopping`` of the task, else a patience of 5 validation rounds) or its
step budget ends; the best checkpoint (selected on validation) is evaluated. ``equal-steps``: every
cell trains exactly the budget, no early stopping. The budget is ``--max-steps``, else the task's
``train.max_steps``, else ``train.epochs`` over the largest fraction's training events; it is the
same for every cell, so small fractions are not cut short by an epoch count. The study folder::

    OUT/study.json                          the study's task, pretrained run, protocol; per cell the
                                            steps taken, best step, events seen, fine-tune FLOPs
    OUT/cells/MODE-fF-sS/run/               the fine-tune (MODE: pretrained | scratch)
    OUT/cells/MODE-fF-sS/eval/metrics.json  its evaluation (the cell is finished when this exists)
    OUT/table.json, table.csv, table.md     median, min and max over seeds of every figure
    OUT/plots/*.png                         headline figures vs training events

``train_events`` in the table is the number of training events the fraction leaves (after the
task's event selection). Compute rows (``compute/steps``, ``compute/best_step``,
``compute/events_seen``, ``compute/flops``) sit beside the physics figures, and the table's
header gives the pretraining run's FLOPs, events and wall time, for equal-compute comparisons.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from . import _plots as hp
from . import plugins
from ._errors import HepfmError
from ._files import write_atomic, write_json
from ._progress import err_console
from .evaluate import _json_value, _metric_keys, evaluate, read_metrics
from .run import Run
from .store import EventLoader
from .tasks import EarlyStoppingSpec, InitSpec, Task, task_selection
from .train import init_architecture, train

__all__ = ["StudyResult", "study", "study_table", "MODES", "PROTOCOLS", "pretraining_compute"]

MODES = ("pretrained", "scratch")
PROTOCOLS = ("converged", "equal-steps")
#: Version of the way cells are trained; a study folder made under another protocol is refused.
PROTOCOL_VERSION = 3
#: Fewest steps between validations of a cell (see ``_cell_val_every``).
MIN_VAL_EVERY = 25
COMPUTE = ("steps", "best_step", "events_seen", "flops")


@dataclass
class StudyResult:
    """The study folder, its table rows and the plots drawn."""

    path: Path
    rows: list[dict[str, Any]]
    plots: list[Path]


def _cell_name(mode: str, fraction: float, seed: int) -> str:
    return f"{mode}-f{fraction:g}-s{seed}"


def _store_of(task: Task):
    cls = plugins.datasets().get(task.dataset.name)
    return cls(cls.Params.model_validate(task.dataset.params)).open()


def _cell_task(task: Task, mode: str, seed: int, pretrained: Path, protocol: dict[str, Any], n_train: int) -> Task:
    data = task.model_dump(mode="json")
    data["train"]["seed"] = task.train.seed + seed
    # a fraction smaller than one batch trains on all its events in every step
    data["train"]["batch_size"] = max(1, min(task.train.batch_size, n_train))
    data["train"]["max_steps"] = protocol["max_steps"]
    data["train"]["val_every"] = _cell_val_every(task, n_train)
    data["train"]["early_stopping"] = protocol["early_stopping"]
    if mode == "pretrained":
        init = task.init
        data["init"] = InitSpec(
            checkpoint=str(pretrained),
            skip_mismatched=True,
            freeze_backbone=init.freeze_backbone if init is not None else False,
            weights=init.weights if init is not None else None,
        ).model_dump()
    else:  # a random backbone has nothing to preserve: it trains at the full learning rate
        data["init"] = None
        data["train"]["backbone_lr_scale"] = 1.0
        data["train"]["backbone_frozen_steps"] = 0
    return Task.model_validate(data)


def study(
    task: Task,
    pretrained: str | os.PathLike,
    out: str | os.PathLike,
    fractions: list[float] = (1.0, 0.3, 0.1, 0.03),
    seeds: int = 3,
    modes: tuple[str, ...] = MODES,
    max_events: int | None = None,
    wandb_mode: str = "disabled",
    protocol: str = "converged",
    max_steps: int | None = None,
) -> StudyResult:
    """Run (or finish) a study into ``out`` and write its table and plots (see module docstring).

    Args:
        task: The fine-tuning task (its ``metrics`` are what the study reports).
        pretrained: Pretrained run folder or checkpoint file.
        out: Study folder; an existing one is continued if it is a study of the same task.
        fractions: Fractions of the task's training split, each in (0, 1].
        seeds: Seeds per fraction and mode (0 .. seeds-1, added to ``train.seed``).
        modes: Which of ``pretrained`` and ``scratch`` to run.
        max_events: Evaluate at most this many test events per cell.
        wandb_mode: Weights & Biases mode of every fine-tune (``disabled`` by default).
        protocol: ``converged`` (early stopping within the budget) or ``equal-steps``.
        max_steps: Step budget of every cell (default: see the module docstring).
    """
    out = Path(out)
    pretrained = Path(pretrained)
    if not task.metrics:
        raise HepfmError(f"task '{task.name}': names no metrics, so a study has nothing to compare")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise HepfmError(f"--fractions: each must be in (0, 1], got {list(fractions)}")
    if seeds < 1:
        raise HepfmError(f"--seeds {seeds}: must be at least 1")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise HepfmError(f"modes {unknown}: expected {list(MODES)}")
    if protocol not in PROTOCOLS:
        raise HepfmError(f"--protocol '{protocol}': expected one of {', '.join(PROTOCOLS)}")
    if max_steps is not None and max_steps < 1:
        raise HepfmError(f"--max-steps {max_steps}: must be at least 1")
    if "pretrained" in modes:
        Run(pretrained).checkpoint()  # one clear line now rather than after the scratch cells

    store = _store_of(task)
    selection = task_selection(task, store.schema)
    n_train = {}
    for f in fractions:
        loader = EventLoader(
            store, "train", task.train.batch_size, split_spec=task.split, fraction=f, selection=selection
        )
        n_train[f] = loader.n_events
    passing = loader.selected_fraction  # of the last fraction's training events: what the selection keeps
    budget = (
        max_steps or task.train.max_steps or task.train.epochs * max(1, max(n_train.values()) // task.train.batch_size)
    )
    stopping = None
    if protocol == "converged":
        stopping = (task.train.early_stopping or EarlyStoppingSpec()).model_dump()
    spec_protocol = {
        "name": protocol,
        "version": PROTOCOL_VERSION,
        "max_steps": budget,
        "val_every": f"min(train.val_every, max({MIN_VAL_EVERY}, 5 x steps per epoch))",
        "early_stopping": stopping,
        "scratch_backbone_lr_scale": 1.0,
        "scratch_backbone_frozen_steps": 0,
    }
    spec = {"task": task.model_dump(mode="json"), "pretrained": str(pretrained), "protocol": spec_protocol}
    spec_file = out / "study.json"
    cells_record: dict[str, Any] = {}
    if spec_file.is_file():
        old = json.loads(spec_file.read_text())
        cells_record = old.pop("cells", {})
        if _as_read_now(old) != spec:
            raise HepfmError(
                f"{spec_file}: this folder holds a study of another task, pretrained run or protocol; "
                "choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(spec_file, {**spec, "cells": cells_record})

    # both modes train the pretrained run's architecture (a fine-tune takes its checkpoint's)
    arch = init_architecture(task.model_copy(update={"init": InitSpec(checkpoint=str(pretrained))})).model
    task = task.model_copy(update={"model": arch})
    cells = [(m, f, s) for f in fractions for s in range(seeds) for m in modes]
    for i, (mode, fraction, seed) in enumerate(cells, 1):
        cell = out / "cells" / _cell_name(mode, fraction, seed)
        if (cell / "eval" / "metrics.json").is_file():
            err_console.print(f"[{i}/{len(cells)}] {cell.name}: finished, kept", highlight=False)
            if _finished(cell / "run") and cell.name not in cells_record:
                cells_record[cell.name] = _cell_compute(cell / "run")
                write_json(spec_file, {**spec, "cells": cells_record})
            continue
        err_console.print(
            f"[{i}/{len(cells)}] {cell.name}: fine-tune on {n_train[fraction]} events "
            f"({protocol}, budget {budget} steps), then evaluate",
            highlight=False,
        )
        run = cell / "run"
        resume = (run / "checkpoints" / "last.safetensors").is_file()
        cell_task = _cell_task(task, mode, seed, pretrained, spec_protocol, n_train[fraction])
        if not (resume and _finished(run)):
            train(cell_task, run, resume=resume, fraction=fraction, wandb_mode=wandb_mode)
        evaluate(run, out=cell / "eval", max_events=max_events, bootstrap_resamples=0)
        cells_record[cell.name] = _cell_compute(run)
        write_json(spec_file, {**spec, "cells": cells_record})
    rows = study_table(out, task, fractions, seeds, modes, n_train, pretraining_compute(pretrained), passing)
    plots = _plot(out, task, rows)
    return StudyResult(out, rows, plots)


#: Protocol keys added after PROTOCOL_VERSION 3 was written, with the value older studies had.
_PROTOCOL_KEYS_ADDED = {"scratch_backbone_frozen_steps": 0}


def _as_read_now(spec: dict[str, Any]) -> dict[str, Any]:
    """A study.json spec (without cells) as this version writes it, so an older study continues.

    Task fields added since the study was written take their defaults, which reproduce what the
    older code did (e.g. ``model.dropout``, ``train.backbone_frozen_steps``); so do protocol keys
    added under the same protocol version. A task that no longer validates is returned as it was,
    and so compares as another task.
    """
    spec = dict(spec)
    try:
        spec["task"] = Task.model_validate(spec.get("task")).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError: a field that no longer exists
        return spec
    protocol = spec.get("protocol")
    if isinstance(protocol, dict) and protocol.get("version") == PROTOCOL_VERSION:
        spec["protocol"] = {**_PROTOCOL_KEYS_ADDED, **protocol}
    return spec


def _cell_val_every(task: Task, n_train: int) -> int:
    """Validation cadence of a cell: the task's, but at least every 5 epochs of a small fraction.

    A 3% cell of a few hundred events overfits within tens of steps; validating only every
    ``train.val_every`` steps (200) would find its best at the first validation and say nothing
    about where it converged. Cells of large fractions keep the task's cadence.
    """
    per_epoch = max(1, n_train // max(1, min(task.train.batch_size, n_train)))
    return max(1, min(task.train.val_every, max(MIN_VAL_EVERY, 5 * per_epoch)))


def _finished(run: Path) -> bool:
    """A cell's fine-tune ended (budget or early stopping) and wrote its summary."""
    return Run(run).finished


def _cell_compute(run: Path) -> dict[str, Any]:
    """Steps taken, best step, events seen and fine-tune FLOPs of a cell's run."""
    summary = Run(run).summary
    return {k: summary.get(k) for k in (*COMPUTE, "stopped_early", "wall_s")}


def pretraining_compute(pretrained: str | os.PathLike) -> dict[str, Any] | None:
    """Steps, events seen, FLOPs and wall time of a pretraining run (``None`` where it recorded none).

    A run folder gives its whole run (``train_summary.json``); a checkpoint file (e.g. an
    intermediate ``step-N`` one, for a pretraining-length ablation) gives the compute up to it.
    """
    return Run(pretrained).compute()


def _headline(task: Task) -> dict[str, tuple[str, ...] | None]:
    registry = plugins.metrics()
    out = {}
    for key, spec in zip(_metric_keys(task.metrics), task.metrics, strict=True):
        out[key] = getattr(registry.get(spec.name), "headline", None)
    return out


def study_table(
    out: Path,
    task: Task,
    fractions: list[float],
    seeds: int,
    modes: tuple[str, ...],
    n_train: dict[float, int],
    pretraining: dict[str, Any] | None = None,
    selected_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """Aggregate the finished cells: one row per (figure, mode, fraction) with median, min, max, n.

    Besides the metrics' figures, ``compute/*`` rows give each cell's steps, best step, events seen
    and fine-tune FLOPs; ``pretraining`` (see ``pretraining_compute``) goes into the table header.
    """
    values: dict[tuple[str, str, float], list[float]] = {}
    for mode in modes:
        for fraction in fractions:
            for seed in range(seeds):
                cell = out / "cells" / _cell_name(mode, fraction, seed)
                file = cell / "eval" / "metrics.json"
                if not file.is_file():
                    continue
                for metric, figures in read_metrics(file).items():
                    for name, v in figures.items():
                        values.setdefault((f"{metric}/{name}", mode, fraction), []).append(v)
                if Run(cell / "run").finished:
                    for name, v in _cell_compute(cell / "run").items():
                        if name in COMPUTE:
                            values.setdefault((f"compute/{name}", mode, fraction), []).append(float(v or 0))
    rows = []
    for (figure, mode, fraction), vs in sorted(values.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        a = np.asarray([v for v in vs if not math.isnan(v)])
        rows.append(
            {
                "figure": figure,
                "mode": mode,
                "fraction": fraction,
                "train_events": n_train[fraction],
                "median": float(np.median(a)) if a.size else float("nan"),
                "min": float(a.min()) if a.size else float("nan"),
                "max": float(a.max()) if a.size else float("nan"),
                "seeds": len(vs),
            }
        )
    plain = [{k: _json_value(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    write_json(out / "table.json", plain)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["figure"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "table.csv", buf.getvalue())
    write_atomic(out / "table.md", _markdown(task, rows, fractions, modes, n_train, pretraining, selected_fraction))
    return rows


def _headline_figures(task: Task, rows: list[dict[str, Any]]) -> list[str]:
    present = {r["figure"] for r in rows}
    figures = []
    for metric, names in _headline(task).items():
        own = sorted(f.split("/", 1)[1] for f in present if f.startswith(f"{metric}/"))
        # a headline name may be a pattern (``event_purity_*``); errors are not headline figures
        keys = own if names is None else [k for n in names for k in own if fnmatch(k, n) and not k.endswith("_error")]
        figures += [f"{metric}/{k}" for k in dict.fromkeys(keys)]
    return figures


def _baseline_of(figure: str) -> str:
    """``metric/baseline_name`` for ``metric/name``: the classical method on the same events."""
    metric, name = figure.split("/", 1)
    return f"{metric}/baseline_{name}"


def _is_baseline(figure: str) -> bool:
    return figure.split("/", 1)[1].startswith("baseline_")


def _markdown(task: Task, rows, fractions, modes, n_train, pretraining=None, selected_fraction=None) -> str:
    index = {(r["figure"], r["mode"], r["fraction"]): r for r in rows}
    head = "| figure | mode | " + " | ".join(f"{f:g} ({n_train[f]} ev)" for f in fractions) + " |"
    if pretraining:
        compute = (
            f"Pretraining: {pretraining.get('steps')} steps, {pretraining.get('events_seen') or 0:,} events seen, "
            f"{pretraining.get('flops') or 0:.3g} FLOPs, {pretraining.get('wall_s') or 0:.0f} s wall time."
        )
    else:
        compute = "Pretraining compute: not recorded by the pretrained run."
    lines = [
        f"# Data-efficiency study: {task.name}",
        "",
        "Median over seeds [min, max]; columns: fraction of the training split (training events"
        + (f", after the selection {task.selection}" if task.selection else "")
        + (f", which keeps {100 * selected_fraction:.1f}% of them" if task.selection and selected_fraction else "")
        + ").",
        compute + " Fine-tune compute per cell: the compute/* rows (FLOPs: matmul-class, forward and backward).",
        "",
        head,
        "|" + "---|" * (len(fractions) + 2),
    ]
    compute_rows = [f"compute/{c}" for c in COMPUTE if any(r["figure"] == f"compute/{c}" for r in rows)]
    for figure in _headline_figures(task, rows) + compute_rows:
        # a baseline does not depend on the mode or the training size: one row
        for mode in modes[:1] if _is_baseline(figure) else modes:
            cells = []
            for f in fractions:
                r = index.get((figure, mode, f))
                cells.append("-" if r is None else f"{r['median']:.4g} [{r['min']:.4g}, {r['max']:.4g}] ({r['seeds']})")
            label = "baseline (same events)" if _is_baseline(figure) else mode
            lines.append(f"| {figure} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(out: Path, task: Task, rows: list[dict[str, Any]]) -> list[Path]:
    return [hp.save_figure(fig, out / "plots" / f"{name}.png") for name, fig in study_figures(task, rows).items()]


@hp.styled
def study_figures(task: Task, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One Figure per headline figure: median and min-max over seeds against training events, per mode."""
    from matplotlib.ticker import NullFormatter

    out = {}
    figures = _headline_figures(task, rows)
    for figure in [f for f in figures if not _is_baseline(f)]:
        fig, ax = hp.new_figure()
        for mode in sorted({r["mode"] for r in rows}):
            sel = sorted(
                (r for r in rows if r["figure"] == figure and r["mode"] == mode and math.isfinite(r["median"])),
                key=lambda r: r["train_events"],
            )  # an infinite rejection (no background event passes) has no place on the axis
            if not sel:
                continue
            x = [r["train_events"] for r in sel]
            ax.plot(x, [r["median"] for r in sel], marker="o", label=mode)
            lo = [r["min"] if math.isfinite(r["min"]) else r["median"] for r in sel]
            hi = [r["max"] if math.isfinite(r["max"]) else r["median"] for r in sel]
            ax.fill_between(x, lo, hi, alpha=0.2)
        if not ax.lines:
            continue
        base = [r["median"] for r in rows if r["figure"] == _baseline_of(figure) and math.isfinite(r["median"])]
        if base:
            ax.axhline(base[0], ls="--", c="k", label="classical baseline")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled decades only: no overlapping labels
        ax.set_xlabel("training events")
        ax.set_ylabel(figure.replace("_", " "))
        hp.hep_label(ax, f"{task.name}: median and min-max over seeds")
        ax.legend(loc="lower right")
        out[figure.replace("/", "__").replace("#", "_")] = fig
    return out
