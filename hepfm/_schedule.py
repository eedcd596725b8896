"""What changes with the training step: the learning-rate schedule, the stage plan and the EMA of the weights.

``lr_factor`` is a linear warm-up then cosine decay to zero; ``stage_at`` says which stage (heads,
masking ramp) a step is in; ``EMA`` keeps the exponential moving average of the weights that
validation and the checkpoints use.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["EMA", "lr_factor", "stage_at"]


def lr_factor(step: int, total: int, warmup: float) -> float:
    """The learning rate of ``step`` as a share of the base rate: warm-up over ``warmup x total`` steps, then cosine."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    progress_ = (step - w) / max(1, total - w)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def stage_at(task: Task, step: int, total: int) -> tuple[str, list[str], float | None]:
    """The stage of ``step``: its name, the heads it trains and its masking fraction (None: no ramp)."""
    stages = task.train.stages
    if not stages:
        return "train", list(task.heads), None
    start = 0.0
    for i, st in enumerate(stages):
        end = start + st.fraction * total
        if step < end or i == len(stages) - 1:
            ramp = None
            if st.mask_fraction is not None:
                a, b = st.mask_fraction
                ramp = a + (b - a) * min(1.0, (step - start) / max(1.0, end - start))
            return st.name, st.heads or list(task.heads), ramp
        start = end
    raise AssertionError


class EMA:
    """Exponential moving average of a model's parameters and buffers, with a warm-up of its decay.

    Update ``t`` (0-based) uses ``decay_t = min(decay, (1 + t) / (10 + t))``: the first updates
    weigh the new weights heavily, so the average never carries a sizeable share of the
    initialisation (with a constant 0.999, 40 steps leave 96% of it). ``updates`` is the number of
    updates done; a resumed run restores it with the weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, t: int) -> float:
        """The decay used by update ``t``."""
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.decay_at(self.updates)
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)
        self.updates += 1
