"""The event-store layout: format tag, array names and shapes, chunk size, attribute names.

One place that says what an event store holds on disk; the writer creates this layout and the
checks refuse anything else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from .._errors import StoreError
from ..schema import SCHEMA_VERSION, EventSchema

__all__ = [
    "FORMAT",
    "CORE_ARRAYS",
    "DEFAULT_CHUNK",
    "Segment",
    "array_names",
    "expected_layout",
    "check_target_names",
    "is_url",
    "fresh_group",
    "new_array",
]

FORMAT = {"format": "hepfm-event-store", "version": SCHEMA_VERSION}
CORE_ARRAYS = ("objects", "mask", "globals", "weights")
DEFAULT_CHUNK = 4096

#: Event range [start, stop) of a store, inside one chunk (the unit splits and the loader deal in).
Segment = tuple[int, int]


def array_names(targets: dict[str, Any]) -> list[str]:
    """The arrays of a store with these targets: the core arrays, then ``targets/<name>``."""
    return [*CORE_ARRAYS, *(f"targets/{k}" for k in targets)]


def check_target_names(names: Any, where: str | os.PathLike) -> None:
    """Refuse targets a store cannot hold together: ``a`` and ``a/b`` (one would be a group of the other).

    ``where`` (the store, or the input a converter reads) starts the error line.
    """
    names = list(names)
    clash = next(((a, b) for a in names for b in names if b.startswith(a + "/")), None)
    if clash is not None:
        raise StoreError(
            f"{where}: target '{clash[0]}' and target '{clash[1]}' cannot both be stored (one would be a group "
            f"of the other)"
        )


def expected_layout(schema: EventSchema, targets: dict[str, dict[str, Any]]) -> dict[str, tuple[tuple, np.dtype]]:
    """Array name -> (shape without the event axis, dtype) of a store with this schema and targets."""
    layout = {
        "objects": ((schema.max_objects, schema.n_object_features), np.dtype("float32")),
        "mask": ((schema.max_objects,), np.dtype("bool")),
        "globals": ((schema.n_global_features,), np.dtype("float32")),
        "weights": ((), np.dtype("float32")),
    }
    layout.update({f"targets/{k}": (tuple(v.get("shape", [])), np.dtype(v["dtype"])) for k, v in targets.items()})
    return layout


def is_url(path: str | os.PathLike) -> bool:
    """Whether a store path is a URL (``https://``, ``s3://``, ``root://`` ...), read through fsspec."""
    return "://" in os.fspath(path)


def fresh_group(path: Path) -> zarr.Group:
    """An empty Zarr group at ``path`` (a temporary name), replacing what a killed write left there."""
    if path.exists():
        shutil.rmtree(path)
    return zarr.open_group(path, mode="w-")


def new_array(group: zarr.Group, name: str, n: int, shape: tuple, chunk: int, dtype: Any) -> zarr.Array:
    """An array of the format: ``n`` events of ``shape``, ``chunk`` events per Zstd-compressed chunk, zero-filled."""
    return group.create_array(
        name,
        shape=(n, *shape),
        chunks=(chunk, *shape),
        dtype=dtype,
        compressors=zarr.codecs.ZstdCodec(level=3),
        fill_value=0,
    )
