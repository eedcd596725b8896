"""The three kinds of pluggable component (heads, datasets, metrics) as small protocols.

Each component class has a registered ``name``, a pydantic ``Params`` model (``extra="forbid"``)
that validates its ``params`` block in a task file, and a short ``description`` shown by
``hepfm plugins``. Nothing here is a base class to inherit from: any class with these members
can be registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .schema import Batch, EventBlock, EventSchema

__all__ = ["Params", "Latents", "HeadDims", "Head", "Dataset", "Generator", "Converter", "Metric"]


class Params(BaseModel):
    """Base for component parameter models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Latents:
    """What the backbone hands to heads.

    Attributes:
        objects: [B, N, D] per-object latents.
        event: [B, D] per-event latent.
        mask: [B, N] bool, True for real objects.
        context: What generative heads need to run the backbone again on perturbed inputs
            (``hepfm.model.ModelContext``); None outside a model.
    """

    objects: torch.Tensor
    event: torch.Tensor
    mask: torch.Tensor
    context: Any = None


@dataclass(frozen=True)
class HeadDims:
    """Sizes a head is built for: the backbone width and the event schema."""

    latent_dim: int
    schema: EventSchema


@runtime_checkable
class Head(Protocol):
    """A task head: a torch module on the backbone's latents.

    Built as ``cls(params, dims)``; ``forward(latents, batch)`` returns named output tensors;
    ``loss(outputs, batch)`` returns a scalar and named parts for logging; ``predict(outputs)``
    returns physics outputs (probabilities, assignments, generated momenta).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]: ...

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Dataset(Protocol):
    """A source of events.

    ``kind`` says how it is used: ``store`` datasets open an existing event store for training
    (task files name them); ``generator`` datasets make events (``hepfm generate``); ``converter``
    datasets read foreign formats (``hepfm convert``).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[Literal["store", "generator", "converter"]]
    Params: ClassVar[type[BaseModel]]


@runtime_checkable
class Generator(Dataset, Protocol):
    """A dataset that makes events: ``generate(process, n, seed)`` returns an ``EventBlock``.

    ``processes`` lists the process names it knows; ``targets`` describes the targets its blocks
    carry (name -> {"dtype", "shape"}, shape without the event axis). An optional ``topology()``
    returns the decay topology (resonances, daughters, symmetric permutations) stored with the
    events as the ``topology`` attribute.
    """

    processes: ClassVar[tuple[str, ...]]

    def __init__(self, params: BaseModel, schema: EventSchema) -> None: ...

    def targets(self) -> dict[str, dict[str, Any]]: ...

    def generate(self, process: str, n: int, seed: int) -> EventBlock: ...


@runtime_checkable
class Converter(Dataset, Protocol):
    """A dataset that reads foreign files: ``read(paths)`` yields ``EventBlock`` s, streaming."""

    def __init__(self, params: BaseModel, schema: EventSchema) -> None: ...

    def read(self, paths: list[str]) -> Iterator[EventBlock]: ...


@runtime_checkable
class Metric(Protocol):
    """A metric over predictions and targets of a whole evaluation set.

    Built as ``cls(params)``; ``compute(predictions, targets, weights)`` gets numpy arrays and
    returns named floats.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def compute(
        self, predictions: dict[str, np.ndarray], targets: dict[str, np.ndarray], weights: np.ndarray
    ) -> dict[str, float]: ...
