"""One validation of an event store's metadata and arrays, run by ``EventStore.open`` (every command).

A store that passes ``check_attributes`` and ``check_arrays`` has every attribute the readers
use, statistics that are finite and cover every feature, arrays of the schema's dtypes and
shapes, and a chunking the readers can walk; ``check_values`` then looks at event values (the
first and last chunk on open, every chunk with ``hepfm inspect --verify`` and on every read):
NaN or inf, labels outside ``processes``, objects flagged real whose features are all zero.
Every problem is one ``StoreError`` line naming the store, the array or attribute and the feature.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from .._errors import StoreError, describe_validation_error
from ..schema import EventSchema, FeatureStats
from ._format import expected_layout

__all__ = ["check_attributes", "check_arrays", "check_values", "check_finite", "check_stats", "MAX_CHUNK_EVENTS"]

MAX_CHUNK_EVENTS = 2**20


def _int_attr(path: Path, attrs: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int:
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"an integer >= {lo}" + (f" and <= {hi:,}" if hi is not None else "")
        raise StoreError(f"{path}: attribute '{key}' is {value!r}, expected {bound}")
    return value


def check_attributes(path: Path, attrs: dict[str, Any]) -> EventSchema:
    """Refuse missing or malformed attributes (schema, sizes, processes, targets, statistics)."""
    for key in ("schema", "n_events", "chunk_events", "stats"):
        if key not in attrs:
            raise StoreError(f"{path}: attribute '{key}' missing (damaged store)")
    try:
        schema = EventSchema.model_validate(attrs["schema"])
    except ValidationError as exc:
        raise StoreError(f"{path}: attribute 'schema' is invalid: {describe_validation_error(exc)}") from None
    _int_attr(path, attrs, "n_events", 0)
    _int_attr(path, attrs, "chunk_events", 1, MAX_CHUNK_EVENTS)
    processes = attrs.get("processes", [])
    if not isinstance(processes, list) or not all(isinstance(p, str) for p in processes):
        raise StoreError(f"{path}: attribute 'processes' must be a list of process names")
    targets = attrs.get("targets", {})
    if not isinstance(targets, dict):
        raise StoreError(f"{path}: attribute 'targets' must be a mapping name -> {{dtype, shape}}")
    for name, spec in targets.items():
        try:
            np.dtype(spec["dtype"])
            if not all(isinstance(s, int) and s >= 0 for s in spec.get("shape", [])):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"{path}: attribute 'targets.{name}' is not {{dtype, shape}}: {spec!r}") from None
    check_stats(path, attrs["stats"], schema)
    return schema


def check_stats(path: Path | str, stats: Any, schema: EventSchema, what: str = "attribute") -> None:
    """Statistics that are a mapping per part, cover every feature, validate and are finite."""
    for part, names in (("objects", schema.object_names), ("globals", schema.global_names)):
        table = stats.get(part) if isinstance(stats, dict) else None
        if not isinstance(table, dict):
            raise StoreError(f"{path}: {what} 'stats.{part}' missing or not a mapping (damaged store)")
        for name in names:
            if name not in table:
                raise StoreError(f"{path}: {what} 'stats.{part}' lacks feature '{name}'")
            try:
                st = FeatureStats.model_validate(table[name])
            except ValidationError as exc:
                raise StoreError(
                    f"{path}: {what} 'stats.{part}.{name}' is invalid: {describe_validation_error(exc)}"
                ) from None
            for key, value in st.model_dump().items():
                if not math.isfinite(value):
                    raise StoreError(f"{path}: {what} 'stats.{part}.{name}.{key}' is {value} (not finite)")
            if st.count < 0 or st.std < 0 or st.log_std < 0 or st.min > st.max:
                raise StoreError(
                    f"{path}: {what} 'stats.{part}.{name}' is inconsistent "
                    f"(count {st.count}, std {st.std}, log_std {st.log_std}, min {st.min} > max {st.max}?)"
                )


def check_arrays(path: Path, group: Any, schema: EventSchema, attrs: dict[str, Any]) -> dict[str, Any]:
    """Every array present, with the schema's dtype and shape and the store's chunking; return them."""
    n, chunk = attrs["n_events"], attrs["chunk_events"]
    arrays = {}
    for name, (shape, dtype) in expected_layout(schema, attrs.get("targets", {})).items():
        try:
            arr = group[name]
        except KeyError:
            raise StoreError(f"{path}: array '{name}' missing (damaged store)") from None
        if np.dtype(arr.dtype) != dtype:
            raise StoreError(f"{path}/{name}: dtype {arr.dtype}, the format stores {dtype}")
        if tuple(arr.shape[1:]) != shape:
            what = {"objects": " (object slots, features)", "mask": " (object slots)", "globals": " (globals)"}
            raise StoreError(
                f"{path}/{name}: shape {tuple(arr.shape)}, the schema needs (n, {', '.join(map(str, shape))})"
                f"{what.get(name, '')}"
            )
        if arr.shape[0] != n:
            raise StoreError(f"{path}/{name}: holds {arr.shape[0]} events, attribute 'n_events' says {n}")
        if arr.chunks[0] != chunk:
            raise StoreError(f"{path}/{name}: chunks of {arr.chunks[0]} events, attribute 'chunk_events' says {chunk}")
        arrays[name] = arr
    return arrays


def check_finite(path: Path, data: dict[str, np.ndarray], schema: EventSchema, first_event: int = 0) -> None:
    """Refuse NaN or inf in real objects, globals or weights, naming the array, feature and event."""
    parts = (
        ("objects", schema.object_names, "mask"),
        ("globals", schema.global_names, None),
        ("weights", ["weight"], None),
    )
    for name, names, mask_name in parts:
        values = data.get(name)
        if values is None or values.size == 0:
            continue
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        if name == "weights":
            bad = bad[:, None]
        elif mask_name is not None and mask_name in data:
            bad &= data[mask_name][..., None]
            if not bad.any():
                continue
        idx = np.argwhere(bad)[0]
        value = values[tuple(idx[: values.ndim])]
        raise StoreError(
            f"{path}/{name}: feature '{names[int(idx[-1])]}' is {value} (NaN or inf) in event "
            f"{first_event + int(idx[0])}"
        )


def check_values(
    path: Path,
    data: dict[str, np.ndarray],
    schema: EventSchema,
    processes: list[str],
    first_event: int = 0,
    mask: bool = True,
) -> None:
    """Finite values, process labels inside ``processes`` and (with ``mask``) a mask that agrees with the objects."""
    check_finite(path, data, schema, first_event)
    labels = data.get("targets/process")
    if labels is not None and processes and labels.size:
        out = (labels < 0) | (labels >= len(processes))
        if out.any():
            i = int(np.argmax(out))
            raise StoreError(
                f"{path}/targets/process: label {labels[i]} in event {first_event + i} is outside "
                f"0..{len(processes) - 1} (attribute 'processes' has {len(processes)})"
            )
    objects, real = data.get("objects"), data.get("mask")
    if mask and objects is not None and real is not None and objects.size:
        empty = ~np.any(objects != 0, axis=-1)
        real_empty = real & empty
        if real_empty.any():
            e, o = (int(v) for v in np.argwhere(real_empty)[0])
            raise StoreError(
                f"{path}/mask: object {o} of event {first_event + e} is marked real but all its features are 0 "
                f"(mask and objects disagree)"
            )
        ghost = ~real & ~empty
        if ghost.any():
            e, o = (int(v) for v in np.argwhere(ghost)[0])
            raise StoreError(
                f"{path}/mask: object {o} of event {first_event + e} is marked padding but has non-zero features "
                f"(mask and objects disagree)"
            )
