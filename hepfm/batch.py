"""Events in memory: ``EventBlock`` (numpy, what producers hand the writer), ``Batch`` (tensors, for models)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .schema import EventSchema

__all__ = ["EventBlock", "Batch"]


@dataclass
class EventBlock:
    """A block of events as numpy arrays, the unit generators and converters hand to the writer.

    Attributes:
        objects: float32 [n, N, F] raw (unnormalised) object features; zeros where masked.
        mask: bool [n, N], True for a real object.
        globals: float32 [n, G].
        weights: float32 [n] per-event weights.
        targets: name -> array with leading dimension n (process labels, assignments, ...).
    """

    objects: np.ndarray
    mask: np.ndarray
    globals: np.ndarray
    weights: np.ndarray
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EventBlock:
        """Build from the flat dict ``EventStore.read`` returns (``targets/<name>`` keys)."""
        targets = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("targets/")}
        return cls(arrays["objects"], arrays["mask"], arrays["globals"], arrays["weights"], targets)

    def take(self, index: np.ndarray | slice) -> EventBlock:
        """Events selected by an index array or slice (a new block)."""
        return EventBlock(
            objects=self.objects[index],
            mask=self.mask[index],
            globals=self.globals[index],
            weights=self.weights[index],
            targets={k: v[index] for k, v in self.targets.items()},
        )

    @staticmethod
    def concatenate(blocks: list[EventBlock]) -> EventBlock:
        """Join blocks along the event axis (targets must agree in names)."""
        return EventBlock(
            objects=np.concatenate([b.objects for b in blocks]),
            mask=np.concatenate([b.mask for b in blocks]),
            globals=np.concatenate([b.globals for b in blocks]),
            weights=np.concatenate([b.weights for b in blocks]),
            targets={k: np.concatenate([b.targets[k] for b in blocks]) for k in blocks[0].targets},
        )


@dataclass
class Batch:
    """A batch of events as tensors: what models and heads consume.

    Attributes:
        objects: [B, N, F] raw object features (the model normalises them itself).
        mask: [B, N] bool.
        globals: [B, G] raw globals.
        weights: [B].
        targets: name -> tensor with leading dimension B.
    """

    objects: torch.Tensor
    mask: torch.Tensor
    globals: torch.Tensor
    weights: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    def apply(self, fn) -> Batch:
        """A batch with ``fn`` applied to every tensor."""
        return Batch(
            fn(self.objects),
            fn(self.mask),
            fn(self.globals),
            fn(self.weights),
            {k: fn(v) for k, v in self.targets.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on another device."""
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """The same batch in pinned host memory (faster copies to a GPU)."""
        return self.apply(lambda t: t.pin_memory())

    @classmethod
    def from_awkward(cls, events, schema: EventSchema, max_objects: int | None = None) -> Batch:
        """A batch from awkward event records (e.g. built from uproot branches).

        The records need ``objects`` (jagged, one field per object feature), the globals or
        ``met``/``met_phi`` to compute them, and optionally ``weight`` (see ``hepfm._awkward``).

        Example:
            >>> batch = Batch.from_awkward(events, model.schema)  # doctest: +SKIP
        """
        from ._awkward import batch_from_awkward

        return batch_from_awkward(cls, events, schema, max_objects)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray | torch.Tensor]) -> Batch:
        """Build from the flat dict the loader yields (``targets/<name>`` keys for targets)."""

        def tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
            return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))

        targets = {k.split("/", 1)[1]: tensor(v) for k, v in arrays.items() if k.startswith("targets/")}
        return cls(
            tensor(arrays["objects"]),
            tensor(arrays["mask"]),
            tensor(arrays["globals"]),
            tensor(arrays["weights"]),
            targets,
        )
