"""The kinds of pluggable component (heads, datasets, generators, converters, metrics) as small protocols.

Each component class has a registered ``name``, a pydantic ``Params`` model (``extra="forbid"``)
that validates its ``params`` block in a task file, and a short ``description`` shown by
``hepfm plugins``. Nothing here is a base class to inherit from: any class with these members
can be registered. ``CONTRACTS`` lists, per kind, the hook that registers it, the members every
class must have (checked at registration) and the optional members hepfm uses when present;
hepfm uses no member that is not listed there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .batch import Batch, EventBlock
from .schema import EventSchema

__all__ = [
    "Params",
    "Latents",
    "HeadDims",
    "Head",
    "Dataset",
    "Generator",
    "Converter",
    "Evaluation",
    "Metric",
    "Contract",
    "CONTRACTS",
]


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
    returns physics outputs (probabilities, assignments, generated momenta). Optional members:
    ``infer(latents, batch, generator)`` returns the physics outputs evaluation should use where
    they differ from ``predict(forward(...))`` (e.g. a full diffusion sampling chain);
    ``bind(params, store)`` (a classmethod) returns the params completed from the training store
    (e.g. its topology), called once when a run starts; ``store_targets(params)`` (a classmethod,
    given the validated bound params) returns the names of the store targets the head reads, and a
    run on a store without one of them is refused before training starts (heads without it are not
    checked).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def forward(self, latents: Latents, batch: Batch) -> dict[str, torch.Tensor]: ...

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Dataset(Protocol):
    """Where a task's events come from (task files name it under ``dataset``).

    Built as ``cls(params, schema)``; ``open()`` returns the opened events: an
    ``hepfm.EventStore`` or ``hepfm.EventDataset`` (anything with their reading members).
    Optional member: ``sources(params)`` (a classmethod, given the validated params) returns where
    the events are (a path, URL or list of them, as ``hepfm.open_data`` takes): ``hepfm evaluate``
    scores a run on it when no ``--data`` is given, and the model card names it.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def open(self) -> Any: ...


@runtime_checkable
class Generator(Protocol):
    """A dataset that makes events: ``generate(process, n, seed)`` returns an ``EventBlock``.

    ``processes`` lists the process names it knows; ``targets`` describes the targets its blocks
    carry (name -> {"dtype", "shape"}, shape without the event axis). An optional ``topology()``
    returns the decay topology (resonances, daughters, symmetric permutations) stored with the
    events as the ``topology`` attribute.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    processes: ClassVar[tuple[str, ...]]

    def __init__(self, params: BaseModel, schema: EventSchema) -> None: ...

    def targets(self) -> dict[str, dict[str, Any]]: ...

    def generate(self, process: str, n: int, seed: int) -> EventBlock: ...


@runtime_checkable
class Converter(Protocol):
    """A dataset that reads foreign files (``hepfm convert --format NAME``), streaming.

    Built as ``cls(params, schema)``; ``params`` is its ``Params`` validated from the ``--map``
    YAML. It may raise ``hepfm.sdk.MappingError(loc, message)`` for a parameter that cannot
    work, and the driver names the mapping file, line and key.

    ``describe(path)`` opens one input cheaply (metadata only), checks that every field the params
    name exists with consistent lengths, and returns a ``hepfm.sdk.SourceInfo``: the events it
    will yield and the targets (name -> {"dtype", "shape"}), process names and topology its blocks
    carry. The driver calls it for every input before writing anything.

    ``read(paths, step)`` yields ``EventBlock`` s of at most ``step`` events, in file order, with
    exactly the described targets; memory must not grow with the file. Optional members:
    ``counters`` (a dict the driver reports after the run, e.g. ``truncated`` events),
    ``path_params`` (names of params that are file paths, resolved relative to the mapping file),
    and, for a format that can also be written (``hepfm export``), ``export(store, out, advance)``
    returning the files written, with ``export_companions(out)`` naming any file besides ``out``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel, schema: EventSchema) -> None: ...

    def describe(self, path: str) -> Any: ...

    def read(self, paths: list[str], step: int = 8192) -> Iterator[EventBlock]: ...


@dataclass
class Evaluation:
    """One evaluation set as metrics see it: inputs, truth and every head's physics outputs.

    Arrays are numpy with the event axis first; ``objects`` and ``globals`` are raw (not
    normalised) features in ``schema`` order.

    Attributes:
        schema: The event schema.
        objects: [E, N, F] object features.
        mask: [E, N] bool, True for real objects.
        globals: [E, G] global features.
        weights: [E] event weights.
        targets: The store's targets, name -> [E, ...].
        outputs: Head key (as in the task) -> that head's physics outputs, name -> [E, ...]
            (``Head.infer`` where a head has it, else ``predict(forward(...))``).
        heads: Head key -> {"name": registered head name, "params": its validated params}.
        processes: The store's process names (``targets["process"]`` indexes them).
        selected_fraction: Share of the split's events that passed the task's event selection.
    """

    schema: EventSchema
    objects: np.ndarray
    mask: np.ndarray
    globals: np.ndarray
    weights: np.ndarray
    targets: dict[str, np.ndarray]
    outputs: dict[str, dict[str, np.ndarray]]
    heads: dict[str, dict[str, Any]]
    processes: list[str]
    selected_fraction: float = 1.0

    def __len__(self) -> int:
        return len(self.weights)

    def head(self, key: str | None, kind: str) -> tuple[str, dict[str, np.ndarray]]:
        """A head's key and outputs: ``key`` itself, or with None the only head of plugin name ``kind``."""
        if key is None:
            keys = [k for k, h in self.heads.items() if h["name"] == kind]
            if len(keys) != 1:
                raise ValueError(f"needs exactly one '{kind}' head (found {keys or 'none'}); name it with params.head")
            key = keys[0]
        if key not in self.outputs:
            raise ValueError(f"head '{key}' is not in the model (heads: {sorted(self.outputs)})")
        return key, self.outputs[key]

    def truth(self, name: str) -> np.ndarray:
        """A target by name or, failing that, a global feature by name."""
        if name in self.targets:
            return self.targets[name]
        if name in self.schema.global_names:
            return self.globals[:, self.schema.global_names.index(name)]
        raise ValueError(f"no target or global feature '{name}' (targets: {sorted(self.targets)})")

    def process_indices(self, names: list[int | str]) -> list[int]:
        """Process indices from indices or process names."""
        out = []
        for p in names:
            if isinstance(p, str):
                if p not in self.processes:
                    raise ValueError(f"unknown process '{p}'; the data has {self.processes}")
                out.append(self.processes.index(p))
            else:
                out.append(int(p))
        return out


@runtime_checkable
class Metric(Protocol):
    """A metric over a whole evaluation set (``hepfm evaluate``).

    Built as ``cls(params)``; ``compute(evaluation)`` returns named floats (raise ``ValueError``
    for data it cannot score: the caller reports it as one line). Optional members: ``headline``
    (ClassVar tuple of the result names a study tabulates and plots and ``hepfm evaluate`` headlines;
    patterns allowed; default all), ``units`` (ClassVar dict: figure-name pattern -> unit, e.g.
    ``{"*resolution": "GeV"}``), and ``figures(evaluation)`` returning ``{stem: matplotlib Figure}``
    (saved as ``stem.png``; the older ``plot(evaluation, out_dir)`` returning written PNGs still works).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def compute(self, evaluation: Evaluation) -> dict[str, float]: ...


@dataclass(frozen=True)
class Contract:
    """What a kind of component must and may have, and the hook that registers it."""

    hook: str
    protocol: type
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


_BASE = ("name", "description", "Params")

#: kind -> its contract. Registration refuses a class without a required member.
CONTRACTS: dict[str, Contract] = {
    "head": Contract(
        "hepfm_register_heads", Head, (*_BASE, "forward", "loss", "predict"), ("infer", "bind", "store_targets")
    ),  # fmt: skip
    "dataset": Contract("hepfm_register_datasets", Dataset, (*_BASE, "open"), ("sources",)),
    "generator": Contract(
        "hepfm_register_generators", Generator, (*_BASE, "processes", "targets", "generate"), ("topology",)
    ),  # fmt: skip
    "converter": Contract(
        "hepfm_register_converters",
        Converter,
        (*_BASE, "describe", "read"),
        ("counters", "path_params", "export", "export_companions"),
    ),  # fmt: skip
    "metric": Contract("hepfm_register_metrics", Metric, (*_BASE, "compute"), ("headline", "units", "figures", "plot")),
}
