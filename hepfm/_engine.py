"""The training engine seam: what the trainer asks of the engine that steps the model, and the optimizer.

``Engine`` is the protocol; ``LocalEngine`` (plain torch, one process) and
``hepfm._deepspeed.DeepSpeedEngine`` implement it and are built alike,
``Engine(model, optimizer, train_spec)``; ``make_engine`` picks the one ``train.engine`` names.

The optimizer is torch's AdamW over named parameter groups (``param_groups``): the heads and, at
``lr x train.backbone_lr_scale``, the backbone, each split into parameters with weight decay (weight
matrices) and without (biases, every other 1-d parameter, normalisation layers and embeddings).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, runtime_checkable

import torch

from ._errors import HepfmError
from .tasks import Task, TrainSpec

__all__ = ["Engine", "LocalEngine", "make_engine", "adamw", "param_groups", "GROUP_NAMES", "check_group_layout"]

#: The optimizer's parameter groups, in order (a group with no parameter is left out).
GROUP_NAMES = ("heads", "heads/no_decay", "backbone", "backbone/no_decay")

_NO_DECAY_MODULES = tuple(
    m
    for m in (torch.nn.LayerNorm, torch.nn.GroupNorm, getattr(torch.nn, "RMSNorm", None), torch.nn.Embedding)
    if m is not None
) + (torch.nn.modules.batchnorm._NormBase,)


@runtime_checkable
class Engine(Protocol):
    """What the training loop asks of an engine.

    Built as ``cls(model, optimizer, train_spec)``. ``step(loss)`` does backward, clipping and the
    optimizer step; ``rank``/``world_size`` shard the data; only the main process (``is_main``)
    writes logs and checkpoints; ``barrier()`` waits for every process; ``optimizer`` is the torch
    optimizer whose state is checkpointed (``None``: the engine cannot checkpoint it, and
    ``--resume`` is refused); batches go to ``device``; the forward pass runs inside
    ``autocast()``; ``mean(values)`` averages logged numbers over the processes (a collective);
    ``close()`` releases what the engine holds.
    """

    rank: int
    world_size: int
    device: torch.device
    optimizer: torch.optim.Optimizer | None

    @property
    def is_main(self) -> bool: ...

    def step(self, loss: torch.Tensor) -> None: ...

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def mean(self, values: dict[str, float]) -> dict[str, float]: ...

    def barrier(self) -> None: ...

    def close(self) -> None: ...


class LocalEngine:
    """Plain torch in one process, on the GPU when there is one (see ``Engine``).

    Args:
        model: The ``EventModel`` (moved in place to the device: the optimizer keeps its parameters).
        optimizer: The trainer's torch optimizer.
        train_spec: The task's ``train`` section (``grad_clip``, ``precision``).
    """

    rank, world_size = 0, 1

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_spec: TrainSpec) -> None:
        self.model, self.optimizer, self.grad_clip = model, optimizer, train_spec.grad_clip
        precision = train_spec.precision
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(self.device)
        bf16_ok = self.device.type == "cpu" or torch.cuda.is_bf16_supported()
        if precision == "bf16" and not bf16_ok:
            raise HepfmError("train.precision bf16: this GPU does not support bfloat16; use fp32 or auto")
        # auto: bf16 autocast on a GPU that has it, fp32 on the CPU (bf16 matmuls are slow there)
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda" and bf16_ok)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_engine(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Engine:
    """The engine ``train.engine`` names, built as ``cls(model, optimizer, task.train)``."""
    t = task.train
    if t.engine == "local":
        return LocalEngine(model, optimizer, t)
    try:
        from ._deepspeed import DeepSpeedEngine
    except ImportError as exc:
        raise HepfmError(
            f"train.engine 'deepspeed' is not available ({exc}); "
            "pip install 'hepfm[deepspeed]' or use train.engine=local"
        ) from None
    return DeepSpeedEngine(model, optimizer, t)


def adamw(params, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """The trainer's optimizer: torch's AdamW, with its fused kernel (one pass per step, CPU or GPU)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def _no_decay(model: torch.nn.Module) -> set[int]:
    """Ids of the parameters without weight decay: 1-d ones (biases, scales) and those of norms and embeddings."""
    skip = {id(p) for p in model.parameters() if p.ndim < 2}
    for module in model.modules():
        if isinstance(module, _NO_DECAY_MODULES):
            skip.update(id(p) for p in module.parameters(recurse=False))
    return skip


def param_groups(model: torch.nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict]:
    """The optimizer's named parameter groups (see module docstring) of the parameters that train.

    Each group has ``name``, ``params``, ``lr``, ``base_lr`` (the schedule scales it) and ``weight_decay``.
    """
    skip = _no_decay(model)
    groups = []
    for part, part_lr in (("heads", lr), ("backbone", lr * backbone_lr_scale)):
        params = [
            p
            for n, p in model.named_parameters()
            if p.requires_grad and n.startswith("backbone.") == (part == "backbone")
        ]
        for name, decay, exempt in ((part, weight_decay, False), (f"{part}/no_decay", 0.0, True)):
            chosen = [p for p in params if (id(p) in skip) == exempt]
            if chosen:
                groups.append(
                    {"name": name, "params": chosen, "lr": part_lr, "base_lr": part_lr, "weight_decay": decay}
                )
    return groups


def check_group_layout(state: dict[str, Any], optimizer: torch.optim.Optimizer | None, where: str) -> None:
    """Refuse, in one line, optimizer state whose parameter groups are not the optimizer's (by name and size).

    Checkpoints of hepfm before the weight-decay groups (two unnamed groups, decay on every parameter)
    are refused: their moments cannot be mapped onto the new groups exactly. With ``optimizer=None``
    only that is checked.
    """
    theirs = [(g.get("name"), len(g["params"])) for g in state["param_groups"]]
    if any(name is None for name, _ in theirs):
        raise HepfmError(
            f"{where}: its optimizer state has the parameter groups of an older hepfm (weight decay on every "
            "parameter), which --resume cannot continue exactly; fine-tune from it (init.checkpoint) or train anew"
        )
    mine = [(g["name"], len(g["params"])) for g in optimizer.param_groups] if optimizer is not None else theirs
    if theirs != mine:
        raise HepfmError(
            f"{where}: its optimizer groups {theirs} are not this model's {mine}; resume with the run's own task"
        )
