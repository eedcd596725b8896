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
from ._model_config import ModelConfig
from ._outputs import as_os_error
from .schema import EventSchema

__all__ = [
    "FORMAT",
    "WEIGHTS",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "checkpoint_weights",
    "build_model",
    "check_config",
    "check_finite",
    "check_weights",
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
    config: dict[str, Any] | ModelConfig,
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
    if isinstance(config, ModelConfig):
        config = config.to_dict()
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
        os.chmod(tmp, 0o644)  # readable by the group, like any other file of the run
        os.replace(tmp, path)
    except SafetensorError as exc:  # a full or read-only disk: the OSError the CLI reports in one line
        os_error = as_os_error(exc, path)
        if os_error is None:
            raise
        raise os_error from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint: {"config", "model_config", "model", "ema", "optimizer", "trainer", "tensors"} (no pickle).

    ``config`` is the JSON config as stored, ``model_config`` it parsed (a ``ModelConfig``).
    """
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
    config = _meta_json(path, meta, "config", required=True)
    model_config = ModelConfig.parse(config, str(path))  # checked and validated once
    out: dict[str, Any] = {"config": config, "model_config": model_config, "tensors": tensors}
    for prefix in ("model", "ema"):
        out[prefix] = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
    if not out["model"]:
        raise HepfmError(f"{path}: holds no model tensors (no 'model/...' entries)")
    optimizer = _meta_json(path, meta, "optimizer")
    try:
        out["optimizer"] = _unflatten_optimizer(tensors, optimizer) if optimizer is not None else None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise HepfmError(f"{path}: metadata 'optimizer' does not match its tensors ({type(exc).__name__})") from None
    out["trainer"] = _meta_json(path, meta, "trainer")
    return out


def _meta_json(path: Path, meta: dict[str, str], key: str, required: bool = False) -> dict[str, Any] | None:
    """A JSON mapping stored in the safetensors metadata under ``key`` (``None`` if absent and optional)."""
    if key not in meta:
        if required:
            raise HepfmError(f"{path}: metadata '{key}' missing (not a hepfm training checkpoint?)")
        return None
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise HepfmError(f"{path}: metadata '{key}' is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise HepfmError(f"{path}: metadata '{key}' is a JSON {type(value).__name__}, expected a mapping")
    return value


def check_config(config: dict[str, Any], where: str = "checkpoint") -> None:
    """Refuse a checkpoint config that cannot rebuild a model, in one line naming the key.

    Checks the schema, statistics (present, finite, every feature), backbone sizes (within
    ``hepfm._limits``), and every head (a mapping with a registered name and valid params); see
    ``hepfm._model_config.ModelConfig.parse``.
    """
    ModelConfig.parse(config, where)


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


def build_model(config: dict[str, Any] | ModelConfig, where: str = "checkpoint", device: str = "cpu"):
    """An ``EventModel`` from a checkpoint config (schema, stats, backbone sizes, heads) or a ``ModelConfig``.

    ``device="meta"`` builds it without allocating memory (to compare sizes before loading).
    """
    return ModelConfig.parse(config, where).build(where, device)


def check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights that do not fit ``model`` (names, shapes) or hold NaN or inf, naming the tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise HepfmError(
            f"{where}: weights do not fit the model of its own config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise HepfmError(
                f"{where}: tensor '{key}' has shape {tuple(value.shape)}, its config builds {tuple(own[key].shape)} "
                "(config and tensors disagree)"
            )
    check_finite(state, where)


def check_finite(state: dict[str, torch.Tensor], where: str, prefix: str = "") -> None:
    """Refuse a state dict with NaN or inf in a floating-point tensor, naming the first one."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise HepfmError(f"{where}: tensor '{prefix}{key}' holds NaN or inf (a diverged or damaged checkpoint)")


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
    """Rebuild a trained model from a run folder or checkpoint file, in eval mode (``hepfm.Run.load_model``).

    Args:
        run: Run folder or checkpoint file.
        which: ``best`` or ``last`` checkpoint of a run folder.
        weights: ``ema`` or ``raw``; default: the weights the run selected its best checkpoint on.
        schema: Refuse a checkpoint of another event schema.

    The model's ``checkpoint_config`` is the config it was rebuilt from and ``weights`` says which
    weights it carries.
    """
    from .run import Run

    return Run(run).load_model(which, weights, schema)
