"""Checkpoints: one safetensors file holding weights, EMA weights, optimizer state and the JSON config.

A single file is written to a temporary name and renamed into place, so a checkpoint is never
half-written. Loading never executes pickled code (safetensors only). The config inside
(schema, normalisation statistics, backbone sizes, heads) is enough to rebuild the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._errors import HepfmError
from .schema import EventSchema, FeatureStats

__all__ = [
    "FORMAT",
    "WEIGHTS",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "checkpoint_weights",
    "build_model",
    "load_model",
]

FORMAT = "hepfm-checkpoint-1"
#: The two sets of weights a checkpoint holds: the EMA average and the raw (optimised) weights.
WEIGHTS = ("ema", "raw")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
                plain["state"][str(idx)][key] = "__tensor__"
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for idx, entry in plain["state"].items():
        state[int(idx)] = {k: tensors[f"optim/{idx}/{k}"] if v == "__tensor__" else v for k, v in entry.items()}
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: dict[str, Any],
    ema: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    meta: dict[str, str] = {"format": FORMAT, "config": json.dumps(config)}
    if optimizer is not None:
        opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = json.dumps(opt_plain)
    if trainer_state is not None:
        meta["trainer"] = json.dumps(trainer_state)
    tensors.update(extra_tensors or {})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint: {"config", "model", "ema", "optimizer", "trainer", "tensors"} (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise HepfmError(f"{path}: no such checkpoint")
    try:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise HepfmError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise HepfmError(f"{path}: metadata 'format' is {meta.get('format')!r}, this hepfm reads {FORMAT!r}")
    out: dict[str, Any] = {"config": json.loads(meta["config"]), "tensors": tensors}
    for prefix in ("model", "ema"):
        out[prefix] = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
    out["optimizer"] = _unflatten_optimizer(tensors, json.loads(meta["optimizer"])) if "optimizer" in meta else None
    out["trainer"] = json.loads(meta["trainer"]) if "trainer" in meta else None
    return out


def find_checkpoint(run: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file of a run folder (``best`` falls back to ``last``), or the file itself."""
    run = Path(run)
    if which not in ("best", "last"):
        raise HepfmError(f"--which '{which}': expected best or last")
    if run.is_file():
        return run
    for name in (which, "last"):
        candidate = run / "checkpoints" / f"{name}.safetensors"
        if candidate.is_file():
            return candidate
    raise HepfmError(f"{run}: no checkpoint found (expected checkpoints/{which}.safetensors)")


def build_model(config: dict[str, Any]):
    """An ``EventModel`` from a checkpoint config (schema, stats, backbone sizes, heads)."""
    from . import plugins
    from .model import BackboneConfig, EventModel

    try:
        schema = EventSchema.model_validate(config["schema"])
        stats = {part: {k: FeatureStats.model_validate(v) for k, v in s.items()} for part, s in config["stats"].items()}
        backbone = BackboneConfig(**config["backbone"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HepfmError(f"checkpoint config is invalid or of another version ({type(exc).__name__}: {exc})") from None
    heads = {}
    for key, spec in config["heads"].items():
        cls = plugins.heads().get(spec["name"])
        heads[key] = (cls, cls.Params.model_validate(spec["params"]), spec.get("weight", 1.0))
    return EventModel(schema, stats, backbone, heads)


def checkpoint_weights(ckpt: dict[str, Any], weights: str | None = None, where: str = "checkpoint"):
    """The state dict to use from a loaded checkpoint, and which it is (``"ema"`` or ``"raw"``).

    ``weights=None`` takes the weights the run selected its best checkpoint on (recorded by the
    trainer as ``selected_on``; EMA for checkpoints that predate the record).
    """
    chosen = weights or (ckpt.get("trainer") or {}).get("selected_on", "ema")
    if chosen not in WEIGHTS:
        raise HepfmError(f"{where}: weights '{chosen}': expected one of {', '.join(WEIGHTS)}")
    if chosen == "ema" and not ckpt.get("ema"):
        if weights == "ema":
            raise HepfmError(f"{where}: holds no EMA weights; use weights 'raw'")
        chosen = "raw"
    return (ckpt["ema"] if chosen == "ema" else ckpt["model"]), chosen


def load_model(
    run: str | os.PathLike,
    which: str = "best",
    weights: str | None = None,
    schema: EventSchema | None = None,
):
    """Rebuild a trained model from a run folder or checkpoint file, in eval mode.

    Args:
        run: Run folder or checkpoint file.
        which: ``best`` or ``last`` checkpoint of a run folder.
        weights: ``ema`` or ``raw``; default: the weights the run selected its best checkpoint on.
        schema: Refuse a checkpoint of another event schema.

    The model's ``checkpoint_config`` is the config it was rebuilt from and ``weights`` says which
    weights it carries.
    """
    path = find_checkpoint(run, which)
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["config"])
    if schema is not None:
        diff = model.schema.differences(schema)
        if diff:
            raise HepfmError(f"{path}: checkpoint 'schema' does not match the data: {'; '.join(diff)}")
    state, chosen = checkpoint_weights(ckpt, weights, str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise HepfmError(
            f"{path}: weights do not fit the model in its own config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.checkpoint_config = ckpt["config"]  # what it was rebuilt from (heads, processes, topology)
    model.weights = chosen
    model.eval()
    return model
