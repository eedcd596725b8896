"""The converter toolkit: what a converter plugin hands to the driver and builds its event blocks with.

Public to plugins through ``hepfm.sdk`` (and re-exported by ``hepfm.convert``): ``SourceInfo`` (what
``Converter.describe`` reports), ``MappingError`` (a parameter that cannot work, named by the driver
with file, line and key), ``require`` (an optional dependency, or one line naming the extra), and
the array helpers ``jagged_to_padded``, ``pack_objects``, ``remap_indices`` and ``energy_from_mass``
that the built-in converters use to build ``EventBlock`` s. The driver is ``hepfm.convert``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ._errors import HepfmError
from .schema import EventSchema

__all__ = [
    "SourceInfo",
    "MappingError",
    "ObjectGroup",
    "Packed",
    "require",
    "jagged_to_padded",
    "energy_from_mass",
    "pack_objects",
    "remap_indices",
]


# --------------------------------------------------------------------------------------------
# what converters hand to the driver
# --------------------------------------------------------------------------------------------
@dataclass
class SourceInfo:
    """What one input holds, found by ``Converter.describe`` from metadata, before any writing.

    Attributes:
        n_events: Events the input will yield.
        targets: Target name -> {"dtype", "shape"} (shape without the event axis) of its blocks.
        processes: Process names that ``targets/process`` indexes (empty when it has no process).
        topology: Decay topology of its assignment targets (see docs/convert.md), or {}.
    """

    n_events: int
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    processes: list[str] = field(default_factory=list)
    topology: dict[str, Any] = field(default_factory=dict)


class MappingError(HepfmError):
    """A converter parameter (a ``--map`` key) that is valid YAML but cannot work.

    Args:
        loc: Key path inside the mapping, e.g. ("objects", "jets", "features", "E").
        message: What is wrong.
    """

    def __init__(self, loc: tuple, message: str) -> None:
        self.loc = tuple(loc)
        self.problem = message
        super().__init__(f"{'.'.join(str(p) for p in self.loc) or '(top level)'}: {message}")


def require(module: str, converter: str) -> ModuleType:
    """Import an optional dependency of a converter, or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HepfmError(
            f"converter '{converter}' needs the Python package '{module}', which is not installed; "
            f"install the ingest extra: pip install 'hepfm[ingest]'"
        ) from None


# --------------------------------------------------------------------------------------------
# array helpers shared by converters
# --------------------------------------------------------------------------------------------
def jagged_to_padded(counts: np.ndarray, flat: np.ndarray, width: int, dtype: Any = np.float64) -> np.ndarray:
    """Per-event variable-length values as a padded [n, width] array (entries beyond width dropped).

    Args:
        counts: [n] entries per event.
        flat: All entries, event after event (``sum(counts)`` values).
        width: Columns of the result.
        dtype: Result dtype; padding is 0.
    """
    counts = np.asarray(counts, np.int64)
    if width == 0 or len(flat) == 0:
        return np.zeros((len(counts), width), dtype)
    import awkward as ak

    jagged = ak.unflatten(np.asarray(flat), counts)
    return ak.to_numpy(ak.fill_none(ak.pad_none(jagged, width, axis=1, clip=True), 0)).astype(dtype)


def energy_from_mass(pt: np.ndarray, eta: np.ndarray, mass: np.ndarray | float) -> np.ndarray:
    """E = sqrt((pT cosh eta)^2 + m^2), in float64."""
    pt, eta = np.asarray(pt, np.float64), np.asarray(eta, np.float64)
    return np.sqrt((pt * np.cosh(eta)) ** 2 + np.asarray(mass, np.float64) ** 2)


@dataclass
class ObjectGroup:
    """One collection of objects (jets, electrons, one SPANet input, ...) padded to a fixed width.

    Attributes:
        features: Schema feature name -> [n, m] values (every schema object feature).
        mask: [n, m] bool, True for a real object.
        sources: Feature -> the input field it came from, for error messages.
    """

    features: dict[str, np.ndarray]
    mask: np.ndarray
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Packed:
    """Objects of a block in the schema's layout.

    Attributes:
        objects: float32 [n, N, F], pT-descending, zeros where masked.
        mask: bool [n, N].
        slot: [n, N] position of each kept object in the concatenation of the groups' slots
            (group after group, each ``m`` wide), -1 for padding: what SPANet-style indices count.
        source_mask: bool [n, M], the concatenated masks of the groups.
        truncated: Events that had more than N objects (the lowest-pT ones were dropped).
    """

    objects: np.ndarray
    mask: np.ndarray
    slot: np.ndarray
    source_mask: np.ndarray
    truncated: int


def pack_objects(schema: EventSchema, groups: list[ObjectGroup], where: str, first_event: int = 0) -> Packed:
    """Concatenate object groups, order by pT (descending, stable), keep ``schema.max_objects``.

    Args:
        schema: Event schema; every group must give all its object features, and ``pt``.
        groups: The collections, in the order their slots are numbered.
        where: The input file, for error messages.
        first_event: Index of the block's first event in the file, for error messages.

    Raises:
        HepfmError: A real object with a NaN or infinite feature (naming the file and field).
    """
    names = schema.object_names
    n = len(groups[0].mask) if groups else 0
    width = sum(g.mask.shape[1] for g in groups)
    x = np.zeros((n, width, len(names)), np.float32)
    source_mask = np.zeros((n, width), bool)
    at = 0
    for g in groups:
        m = g.mask.shape[1]
        source_mask[:, at : at + m] = g.mask
        missing = [name for name in names if name not in g.features]
        if missing:
            raise HepfmError(f"{where}: no values for object features {missing}")
        checked = [
            *(k for k in ("pt", "eta", "phi") if k in names),
            *(k for k in names if k not in ("pt", "eta", "phi")),
        ]
        for name in checked:  # the measured kinematics first: a NaN there is named, not its derived E
            j = names.index(name)
            values = np.asarray(g.features[name])
            bad = g.mask & ~np.isfinite(values)
            if bad.any():
                ev, obj = np.argwhere(bad)[0]
                field_name = g.sources.get(name, name)
                raise HepfmError(
                    f"{where}: field '{field_name}' is {values[ev, obj]} (NaN or inf) for object {obj} of event "
                    f"{first_event + ev}"
                )
            x[:, at : at + m, j] = np.where(g.mask, values, 0.0)
        at += m
    big_n = schema.max_objects
    pt = x[..., names.index("pt")]
    order = np.argsort(np.where(source_mask, -pt, np.inf), axis=1, kind="stable")[:, :big_n]
    mask = np.take_along_axis(source_mask, order, axis=1)
    objects = np.take_along_axis(x, order[..., None], axis=1)
    slot = np.where(mask, order, -1)
    if order.shape[1] < big_n:
        pad = big_n - order.shape[1]
        objects = np.concatenate([objects, np.zeros((n, pad, len(names)), np.float32)], axis=1)
        mask = np.concatenate([mask, np.zeros((n, pad), bool)], axis=1)
        slot = np.concatenate([slot, np.full((n, pad), -1, slot.dtype)], axis=1)
    objects[~mask] = 0.0
    truncated = int((source_mask.sum(1) > big_n).sum())
    return Packed(objects, mask, slot, source_mask, truncated)


def remap_indices(
    packed: Packed, indices: np.ndarray, where: str, field_name: str, first_event: int = 0
) -> tuple[np.ndarray, int]:
    """Assignment indices into the groups' slots -> indices into the packed (pT-ordered) objects.

    -1 stays -1 (no matched object). An index of an object dropped by the ``max_objects`` cap
    becomes -1 and is counted.

    Returns:
        ([n, k] int64 new indices, how many indices were lost to the cap).

    Raises:
        HepfmError: An index outside -1..M-1 or one that points at a padding slot.
    """
    idx = np.asarray(indices, np.int64)
    squeeze = idx.ndim == 1
    if squeeze:
        idx = idx[:, None]
    n, width = packed.source_mask.shape
    bad = (idx < -1) | (idx >= width)
    if bad.any():
        ev, k = np.argwhere(bad)[0]
        raise HepfmError(
            f"{where}: field '{field_name}' holds index {idx[ev, k]} in event {first_event + ev}, "
            f"outside -1..{width - 1} (the objects' slots)"
        )
    valid = idx >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    safe = np.where(valid, idx, 0)
    real = valid & packed.source_mask[rows, safe] if width else valid & False
    if (valid & ~real).any():
        ev, k = np.argwhere(valid & ~real)[0]
        raise HepfmError(
            f"{where}: field '{field_name}' points at object {idx[ev, k]} in event {first_event + ev}, "
            f"which the mask marks as padding"
        )
    inverse = np.full((n, max(width, 1)), -1, np.int64)
    r, c = np.nonzero(packed.slot >= 0)
    inverse[r, packed.slot[r, c]] = c
    out = np.where(valid, inverse[rows, safe], -1)
    lost = int((valid & (out < 0)).sum())
    return (out[:, 0] if squeeze else out), lost
