"""The data-efficiency study (``hepfm study``): pretrained vs from-scratch fine-tunes by training size.

For every training fraction and seed, the task is fine-tuned twice, once from the pretrained run's
backbone (with the task's ``backbone_lr_scale``) and once from random weights (the whole network at
the full learning rate: a random backbone has nothing to preserve), and each fine-tune is evaluated
on the same test split (``hepfm.evaluate``). Cells that finished are never rerun; an interrupted
fine-tune resumes from its last checkpoint. The study folder::

    OUT/study.json                          the study's task, pretrained run, fractions, seeds
    OUT/cells/MODE-fF-sS/run/               the fine-tune (MODE: pretrained | scratch)
    OUT/cells/MODE-fF-sS/eval/metrics.json  its evaluation (the cell is finished when this exists)
    OUT/table.json, table.csv, table.md     median, min and max over seeds of every figure
    OUT/plots/*.png                         headline figures vs training events

``train_events`` in the table is the number of training events the fraction leaves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import plugins
from ._errors import HepfmError
from ._files import write_atomic, write_json
from ._plots import pyplot, save_figure
from ._progress import err_console
from .checkpoint import find_checkpoint
from .evaluate import _json_value, evaluate, read_metrics
from .tasks import InitSpec, Task
from .train import train

__all__ = ["StudyResult", "study", "study_table", "MODES"]

MODES = ("pretrained", "scratch")
#: How cells are trained; a study folder made under another protocol is refused.
PROTOCOL = {"version": 1, "scratch_backbone_lr_scale": 1.0}


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


def _cell_task(task: Task, mode: str, seed: int, pretrained: Path) -> Task:
    data = task.model_dump(mode="json")
    data["train"]["seed"] = task.train.seed + seed
    if mode == "pretrained":
        freeze = task.init.freeze_backbone if task.init is not None else False
        data["init"] = InitSpec(checkpoint=str(pretrained), skip_mismatched=True, freeze_backbone=freeze).model_dump()
    else:  # a random backbone has nothing to preserve: it trains at the full learning rate
        data["init"] = None
        data["train"]["backbone_lr_scale"] = 1.0
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
    if "pretrained" in modes:
        find_checkpoint(pretrained)  # one clear line now rather than after the scratch cells
    spec = {"task": task.model_dump(mode="json"), "pretrained": str(pretrained), "protocol": PROTOCOL}
    spec_file = out / "study.json"
    if spec_file.is_file():
        old = json.loads(spec_file.read_text())
        if old != spec:
            raise HepfmError(
                f"{spec_file}: this folder holds a study of another task, pretrained run or protocol; "
                "choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(spec_file, spec)

    store = _store_of(task)
    n_train = {f: sum(b - a for a, b in store.segments("train", task.split, f)) for f in fractions}
    cells = [(m, f, s) for f in fractions for s in range(seeds) for m in modes]
    for i, (mode, fraction, seed) in enumerate(cells, 1):
        cell = out / "cells" / _cell_name(mode, fraction, seed)
        if (cell / "eval" / "metrics.json").is_file():
            err_console.print(f"[{i}/{len(cells)}] {cell.name}: finished, kept", highlight=False)
            continue
        err_console.print(
            f"[{i}/{len(cells)}] {cell.name}: fine-tune on {n_train[fraction]} events, then evaluate", highlight=False
        )
        run = cell / "run"
        resume = (run / "checkpoints" / "last.safetensors").is_file()
        train(_cell_task(task, mode, seed, pretrained), run, resume=resume, fraction=fraction, wandb_mode=wandb_mode)
        evaluate(run, out=cell / "eval", max_events=max_events)
    rows = study_table(out, task, fractions, seeds, modes, n_train)
    plots = _plot(out, task, rows)
    return StudyResult(out, rows, plots)


def _headline(task: Task) -> dict[str, tuple[str, ...] | None]:
    registry = plugins.metrics()
    out = {}
    for spec in task.metrics:
        out[spec.name] = getattr(registry.get(spec.name), "headline", None)
    return out


def study_table(
    out: Path,
    task: Task,
    fractions: list[float],
    seeds: int,
    modes: tuple[str, ...],
    n_train: dict[float, int],
) -> list[dict[str, Any]]:
    """Aggregate the finished cells: one row per (figure, mode, fraction) with median, min, max, n."""
    values: dict[tuple[str, str, float], list[float]] = {}
    for mode in modes:
        for fraction in fractions:
            for seed in range(seeds):
                file = out / "cells" / _cell_name(mode, fraction, seed) / "eval" / "metrics.json"
                if not file.is_file():
                    continue
                for metric, figures in read_metrics(file).items():
                    for name, v in figures.items():
                        values.setdefault((f"{metric}/{name}", mode, fraction), []).append(v)
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
    write_atomic(out / "table.md", _markdown(task, rows, fractions, modes, n_train))
    return rows


def _headline_figures(task: Task, rows: list[dict[str, Any]]) -> list[str]:
    present = {r["figure"] for r in rows}
    figures = []
    for metric, names in _headline(task).items():
        keys = names if names is not None else sorted({f.split("/", 1)[1] for f in present if f.startswith(metric)})
        figures += [f"{metric}/{k}" for k in keys if f"{metric}/{k}" in present]
    return figures


def _baseline_of(figure: str) -> str:
    """``metric/baseline_name`` for ``metric/name``: the classical method on the same events."""
    metric, name = figure.split("/", 1)
    return f"{metric}/baseline_{name}"


def _is_baseline(figure: str) -> bool:
    return figure.split("/", 1)[1].startswith("baseline_")


def _markdown(task: Task, rows, fractions, modes, n_train) -> str:
    index = {(r["figure"], r["mode"], r["fraction"]): r for r in rows}
    head = "| figure | mode | " + " | ".join(f"{f:g} ({n_train[f]} ev)" for f in fractions) + " |"
    lines = [
        f"# Data-efficiency study: {task.name}",
        "",
        "Median over seeds [min, max]; columns: fraction of the training split (training events).",
        "",
        head,
        "|" + "---|" * (len(fractions) + 2),
    ]
    for figure in _headline_figures(task, rows):
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
    plt = pyplot()
    files = []
    figures = _headline_figures(task, rows)
    for figure in [f for f in figures if not _is_baseline(f)]:
        fig, ax = plt.subplots(figsize=(5, 3.8))
        for mode in sorted({r["mode"] for r in rows}):
            sel = sorted(
                (r for r in rows if r["figure"] == figure and r["mode"] == mode), key=lambda r: r["train_events"]
            )
            if not sel:
                continue
            x = [r["train_events"] for r in sel]
            ax.plot(x, [r["median"] for r in sel], marker="o", label=mode)
            ax.fill_between(x, [r["min"] for r in sel], [r["max"] for r in sel], alpha=0.2)
        base = [r["median"] for r in rows if r["figure"] == _baseline_of(figure)]
        if base:
            ax.axhline(base[0], ls="--", c="k", label="classical baseline")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # labelled decades only: no overlapping labels
        ax.set_xlabel("training events")
        ax.set_ylabel(figure)
        ax.legend(fontsize=8)
        name = figure.replace("/", "__").replace("#", "_")
        files.append(save_figure(fig, out / "plots" / f"{name}.png", f"{task.name}: median and min-max over seeds"))
    return files
