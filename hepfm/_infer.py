"""The one inference loop: a model over batches, without gradients, on a device.

``infer(model, batches, fn, device)`` puts the model in eval mode, moves each batch to ``device``
and yields ``(batch, fn(batch on device))`` with the batch as it came (on the host); ``max_events``
stops after that many events, cutting the last batch. Validation (losses), ``hepfm evaluate`` (head
outputs), ``hepfm embed`` (latents) and ``hepfm predict`` (columns) all run through it.
``head_outputs`` is what evaluation and prediction take from each head: ``Head.infer`` where a head
has it (e.g. a diffusion sampling chain), ``predict(forward(...))`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from ._errors import HepfmError
from .batch import Batch

__all__ = ["infer", "head_outputs", "resolve_device", "model_device", "to_numpy", "sampling_generator"]

T = TypeVar("T")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu`` (also for None), ``cuda`` or ``cuda:N``; a GPU that is not there is refused in one line."""
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise HepfmError(f"--device '{device}': expected cpu or cuda ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HepfmError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "meta"):
        raise HepfmError(f"--device {device}: expected cpu or cuda")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are."""
    return next(model.parameters()).device


def to_numpy(value: torch.Tensor) -> np.ndarray:
    """A tensor on the host as numpy (floating point as float32: bfloat16 has no numpy type)."""
    value = value.detach().cpu()
    return value.float().numpy() if value.dtype.is_floating_point else value.numpy()


@torch.no_grad()
def infer(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    fn: Callable[[Batch], T],
    device: str | torch.device | None = None,
    max_events: int | None = None,
) -> Iterator[tuple[Batch, T]]:
    """``(batch, fn(batch on device))`` for each batch, in eval mode and without gradients (see module docstring).

    Args:
        model: The model (``fn`` calls it); moved to ``device`` when given.
        batches: Batches on the host.
        fn: What to compute from a batch on the device.
        device: Where to run (default: where the model is).
        max_events: Stop after this many events (the last batch is cut).
    """
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    where = model_device(model)
    seen = 0
    for batch in batches:
        if max_events is not None:
            if seen >= max_events:
                break
            if seen + len(batch) > max_events:
                batch = batch.apply(lambda t, k=max_events - seen: t[:k])
        yield batch, fn(batch.to(where))
        seen += len(batch)


def head_outputs(
    model: torch.nn.Module, batch: Batch, generator: torch.Generator | None = None
) -> dict[str, dict[str, Any]]:
    """Every head's physics outputs for one batch: head key -> output name -> tensor (on the model's device)."""
    latents = model.encode(batch)
    out = {}
    for key, head in model.heads.items():
        if hasattr(head, "infer"):
            out[key] = head.infer(latents, batch, generator=generator)
        else:
            out[key] = head.predict(head(latents, batch))
    return out


def sampling_generator(seed: int, device: torch.device) -> torch.Generator:
    """The random generator of generative heads' sampling, on the device they sample on."""
    return torch.Generator(device=device).manual_seed(seed)
