"""Shareable model folders (``hepfm export RUN --format hf --out DIR``), in the Hugging Face layout.

A model folder holds::

    DIR/config.json          everything to rebuild the model (schema, statistics, backbone sizes, heads)
    DIR/model.safetensors    the weights only (the EMA average by default; no optimizer state)
    DIR/README.md            a model card with YAML front matter: training data, compute, evaluation headline

``hepfm.load_model(DIR)`` rebuilds the model and ``hepfm finetune TASK --init DIR`` starts from it,
exactly as from the run folder it was exported from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file

from ._errors import HepfmError
from ._outputs import acquire_lock, prepare_output, release_lock
from ._yaml import read_yaml
from .checkpoint import checkpoint_weights, find_checkpoint, load_checkpoint

__all__ = ["MODEL_FORMAT", "export_model_folder", "is_model_folder", "load_pretrained", "load_model"]

MODEL_FORMAT = "hepfm-model-1"


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an exported model folder (``config.json`` and ``model.safetensors``)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def load_pretrained(source: str | os.PathLike, which: str = "best") -> tuple[Path, dict[str, Any]]:
    """A run folder, checkpoint file or model folder as ``load_checkpoint`` returns it, and the file read.

    A model folder has only its exported weights: they serve as both ``ema`` and ``raw``
    (``hepfm.Run.load_checkpoint``).
    """
    from .run import Run

    return Run(source).load_checkpoint(which)


def load_model(run: str | os.PathLike, which: str = "best", weights: str | None = None, device: str = "cpu"):
    """Rebuild a trained model, in eval mode, from a run folder, a checkpoint file or a model folder.

    Args:
        run: Run folder, checkpoint file, or a folder written by ``hepfm export RUN --format hf``.
        which: ``best`` or ``last`` checkpoint of a run folder.
        weights: ``ema`` or ``raw`` (default: those the run selected its best checkpoint on); a model
            folder holds one set of weights and ignores this.
        device: ``cpu`` (default) or ``cuda``: where the model is put.

    Example:
        >>> model = hepfm.load_model("runs/qe_ttbar")  # doctest: +SKIP
    """
    from .run import Run

    return Run(run).load_model(which, weights, device=device)


def export_model_folder(
    run: str | os.PathLike, out: str | os.PathLike, which: str = "best", overwrite: bool = False
) -> Path:
    """Write a model folder from a run folder (see module docstring); atomic (temp folder + rename).

    Args:
        run: The trained run folder.
        out: The folder to write.
        which: ``best`` or ``last`` checkpoint.
        overwrite: Replace an existing ``out``.
    """
    run, out = Path(run), Path(out)
    prepare_output(out, "model-folder", overwrite)
    path = find_checkpoint(run, which)
    ckpt = load_checkpoint(path)
    state, chosen = checkpoint_weights(ckpt, "ema" if ckpt.get("ema") else "raw", str(path))
    from . import __version__

    config = {
        "format": MODEL_FORMAT,
        "hepfm_version": __version__,
        "weights": chosen,
        "source": {"run": str(run), "checkpoint": str(path), "step": (ckpt.get("trainer") or {}).get("step")},
        "model": ckpt["config"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out)  # one writer per output
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors", {"format": MODEL_FORMAT})
        (tmp / "README.md").write_text(model_card(run, config, sum(v.numel() for v in state.values())))
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        release_lock(lock)
    return out


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _declared_sources(run: Path) -> Any:
    """Where the run's events came from, as its dataset plugin declares (None when the task cannot say)."""
    from .run import Run, dataset_sources

    try:
        task = Run(run).task
    except (HepfmError, ValueError):
        return None
    return dataset_sources(task) if task is not None else None


def model_card(run: Path, config: dict[str, Any], n_params: int) -> str:
    """README.md of a model folder: YAML metadata, then what the model is, its data, compute and evaluation."""
    model = config["model"]
    task = {}
    if (run / "task.yaml").is_file():
        data, _ = read_yaml(run / "task.yaml", "task file")
        task = data if isinstance(data, dict) else {}
    summary = _read_json(run / "train_summary.json")
    evaluation = _read_json(run / "eval" / "metrics.json")
    data = _declared_sources(run)
    meta = {
        "library_name": "hepfm",
        "license": "apache-2.0",
        "tags": ["particle-physics", "collider", "event-level", "hepfm"],
        "hepfm": {
            "version": config["hepfm_version"],
            "task": task.get("name"),
            "heads": {k: h["name"] for k, h in model.get("heads", {}).items()},
            "backbone": model.get("backbone"),
            "parameters": n_params,
            "weights": config["weights"],
            "training_data": {"store": data, "processes": model.get("processes"), "selection": task.get("selection")},
            "compute": {k: summary.get(k) for k in ("steps", "events_seen", "flops", "wall_s") if k in summary},
        },
    }
    rows = evaluation.get("headline") or []
    if rows:
        meta["hepfm"]["evaluation"] = {
            "data": evaluation.get("data"),
            "split": evaluation.get("split"),
            "events": evaluation.get("n_events"),
            "headline": [
                {k: r.get(k) for k in ("metric", "figure", "unit", "model", "model_error", "baseline")} for r in rows
            ],
        }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {task.get('name') or run.name}",
        "",
        task.get("description") or "An hepfm event-level model.",
        "",
        "```python",
        "import hepfm",
        'model = hepfm.load_model("PATH/TO/THIS/FOLDER")',
        "```",
        "",
        "Fine-tune: `hepfm finetune TASK.yaml --init PATH/TO/THIS/FOLDER`.",
        "",
        "## Training data and compute",
        "",
        f"- store: `{data}`; processes: {', '.join(model.get('processes') or []) or '-'}",
        f"- selection: {', '.join(task.get('selection') or []) or 'none'}",
        f"- {summary.get('steps', '?')} steps, {summary.get('events_seen') or 0:,} events seen, "
        f"{summary.get('flops') or 0:.3g} FLOPs, {summary.get('wall_s') or 0:.0f} s",
        f"- {n_params:,} parameters ({config['weights']} weights)",
        "",
    ]
    if rows:
        from ._headline import HeadlineRow

        lines += [
            "## Evaluation",
            "",
            "| metric | figure | model | baseline | model - baseline |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            keep_none = ("baseline", "difference")
            row = HeadlineRow(**{k: (float("nan") if v is None and k not in keep_none else v) for k, v in r.items()})
            lines.append(f"| {row.metric} | {row.label()} | " + " | ".join(row.cells()) + " |")
        lines.append("")
    lines.append("Trained on simulation only; validate and calibrate before use on collision data.")
    return "\n".join(lines) + "\n"
