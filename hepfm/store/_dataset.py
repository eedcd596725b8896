"""A dataset of many event stores, read as one: local paths, globs, shard folders and remote URLs.

A task's ``dataset.params.path`` (and ``--data``) names one store or many::

    path: data/ttbar.zarr                       # one store
    path: [data/a.zarr, data/b.zarr]            # a list
    path: "shards/*.zarr"                       # a glob (sorted)
    path: shards/                               # a folder of shard stores (its manifest, or every *.zarr)
    path: https://host/events.zarr              # a remote store (read-only, through fsspec)

``open_data`` returns the ``EventStore`` itself for one store, so nothing changes there, and an
``EventDataset`` for several. The dataset places the stores one after the other in one event index
(store ``i`` holds events ``offsets[i] .. offsets[i+1]``) and keeps each store's own splits: a split
of the dataset is the union of the stores' splits, so an event's split never depends on which other
stores are listed, on the number of loader workers or on the number of ranks. The loader deals the
union's chunk-aligned segments to ranks and workers exactly as for one store.

Every store must have the same schema and targets, and topologies that agree on every key they
both have (a store written by an older hepfm may lack a newer descriptive key, such as
``truth_masses``); anything else is refused with one line naming the store and the attribute.
Stores may hold different processes (one store per sample, as generated or converted): the
dataset's ``processes`` are all of them in order of first appearance, and each store's process
labels are renumbered into that list as they are read.

The normalisation statistics of the dataset are the stores' streaming moments merged exactly
(Chan et al.), the same figures one store holding all the events would carry, up to floating-point
rounding.
"""

from __future__ import annotations

import copy
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import StoreError
from ..schema import EventSchema
from ._format import Segment, is_url
from ._reader import EventStore
from ._splits import SplitSpec
from ._statistics import Moments, WithStats

__all__ = ["EventDataset", "MANIFEST", "open_data", "resolve_sources"]

MANIFEST = "hepfm-dataset.json"  # written last into a folder of shards by a sharded generation or conversion
_GLOB = set("*?[")


def _is_store_dir(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def resolve_sources(spec: str | os.PathLike | list[str | os.PathLike]) -> list[str]:
    """The stores a path, glob, shard folder, URL or list of them names, in a fixed order.

    Raises:
        StoreError: a name that matches nothing, a folder without stores, a shard folder whose
            manifest lists a missing store, or a store named twice.
    """
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    if not items:
        raise StoreError("no event store given (an empty list of stores)")
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if is_url(text):
            out.append(text.rstrip("/"))
        elif _GLOB & set(text):
            matches = sorted(m for m in glob.glob(text) if _is_store_dir(Path(m)))
            if not matches:
                raise StoreError(f"{text}: no event store matches this pattern")
            out.extend(os.fspath(Path(m).resolve()) for m in matches)
        else:
            path = Path(text)
            if path.is_dir() and not _is_store_dir(path):
                out.extend(_shard_folder(path))
            else:
                out.append(os.fspath(path.resolve()) if path.exists() else text)
    seen: set[str] = set()
    for s in out:
        if s in seen:
            raise StoreError(f"{s}: this store is listed twice; its events would be read twice per epoch")
        seen.add(s)
    return out


def _shard_folder(path: Path) -> list[str]:
    """The stores of a folder of shards: those its manifest lists, or every ``*.zarr`` in it."""
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text())
            shards = [path / name for name in info["shards"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{manifest}: unreadable dataset manifest ({type(exc).__name__}: {exc})") from None
        missing = [s.name for s in shards if not _is_store_dir(s)]
        if missing:
            raise StoreError(f"{manifest}: lists shard '{missing[0]}', which is not in {path} ({len(missing)} missing)")
        return [os.fspath(s.resolve()) for s in shards]
    shards = sorted(p for p in path.glob("*.zarr") if _is_store_dir(p))
    if not shards:
        raise StoreError(f"{path}: neither an event store nor a folder of event stores (*.zarr)")
    return [os.fspath(p.resolve()) for p in shards]


def open_data(
    spec: str | os.PathLike | list[str | os.PathLike], schema: EventSchema | None = None, check: bool = True
) -> EventStore | EventDataset:
    """Open what a dataset path names: the ``EventStore`` for one store, an ``EventDataset`` for several.

    Args:
        spec: A path, URL, glob, shard folder, or a list of them (see the module docstring).
        schema: Refuse stores written with another schema.
        check: Check every array's length and chunks on disk (a truncated store is refused).
    """
    sources = resolve_sources(spec)
    stores = [EventStore.open(s, schema=schema, check=check) for s in sources]
    return stores[0] if len(stores) == 1 else EventDataset(stores)


def _merge_agreeing(into: dict[str, Any], other: dict[str, Any], prefix: str = "") -> str | None:
    """Merge ``other`` into ``into`` where they agree; the dotted key of the first conflict, else None."""
    for key, value in other.items():
        if key not in into:
            into[key] = copy.deepcopy(value)  # never alias a store's own attribute
        elif isinstance(into[key], dict) and isinstance(value, dict):
            conflict = _merge_agreeing(into[key], value, f"{prefix}{key}.")
            if conflict:
                return conflict
        elif into[key] != value:
            return f"{prefix}{key}"
    return None


class EventDataset(WithStats):
    """Several complete event stores read as one (see the module docstring).

    It offers what the loader, the trainer, ``embed`` and ``evaluate`` use of an ``EventStore``:
    ``schema``, ``n_events``, ``processes``, ``targets``, ``topology``, ``stats``, ``attrs["stats"]``,
    ``segments``, ``read``, ``iter_chunks`` and ``normaliser``.

    Args:
        stores: Open stores, in the order their events are numbered.
    """

    def __init__(self, stores: list[EventStore]) -> None:
        if not stores:
            raise StoreError("a dataset needs at least one event store")
        self.stores = list(stores)
        first = stores[0]
        for store in stores[1:]:
            diff = store.schema.differences(first.schema)
            if diff:
                raise StoreError(
                    f"{store.path}: attribute 'schema' differs from {first.path}'s: {'; '.join(diff)}; "
                    f"a dataset's stores share one schema"
                )
            shared = ("targets",) if store.processes and first.processes else ("targets", "processes")
            for key in shared:
                if getattr(store, key) != getattr(first, key):
                    raise StoreError(
                        f"{store.path}: attribute '{key}' differs from {first.path}'s "
                        f"({getattr(store, key)} vs {getattr(first, key)}); a dataset's stores share it"
                    )
        topology: dict[str, Any] = {}
        for store in stores:
            conflict = _merge_agreeing(topology, store.topology)
            if conflict:
                raise StoreError(
                    f"{store.path}: attribute 'topology.{conflict}' differs from {first.path}'s; "
                    f"a dataset's stores share their topology"
                )
        self.schema = first.schema
        self.targets, self.topology = first.targets, topology
        # the processes of all stores, in order of first appearance; each store's labels are
        # renumbered into this list as they are read (None: the store's own numbering already is)
        self.processes = list(first.processes)
        for store in stores[1:]:
            self.processes += [p for p in store.processes if p not in self.processes]
        self._relabel = [
            None
            if s.processes == self.processes[: len(s.processes)]
            else np.array([self.processes.index(p) for p in s.processes], dtype=np.int64)
            for s in stores
        ]
        self.offsets = np.cumsum([0, *(s.n_events for s in stores)]).tolist()
        self.n_events = int(self.offsets[-1])
        self.chunk_events = min(s.chunk_events for s in stores)
        self.sources = [src for s in stores for src in s.sources]
        self.path = f"{first.path} (+{len(stores) - 1} more stores)"
        self.provenance: dict[str, Any] = {"stores": [s.provenance for s in stores]}
        self.attrs: dict[str, Any] = {"stats": self._merged_stats()}

    # -- metadata -----------------------------------------------------------------------------
    def _merged_stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for part, names in (("objects", self.schema.object_names), ("globals", self.schema.global_names)):
            states = []
            for store in self.stores:
                acc = store.attrs.get("accumulators", {}).get(part)
                if acc is None:
                    raise StoreError(
                        f"{store.path}: attribute 'accumulators.{part}' missing; its statistics cannot be "
                        f"merged with other stores' (rewrite it with this hepfm)"
                    )
                states.append(Moments(0, acc))
            out[part] = Moments.merge(states).stats(names)
        return out

    def bytes_on_disk(self) -> int | None:
        sizes = [s.bytes_on_disk() for s in self.stores]
        return None if any(b is None for b in sizes) else sum(sizes)

    def reopen(self) -> EventDataset:
        """The same dataset opened afresh (for loader worker processes)."""
        return EventDataset([s.reopen() for s in self.stores])

    # -- event index --------------------------------------------------------------------------
    def _shift(self, i: int, segments: list[Segment]) -> list[Segment]:
        o = self.offsets[i]
        return [(a + o, b + o) for a, b in segments]

    def segments(self, split: str, spec: SplitSpec | None = None, fraction: float = 1.0) -> list[Segment]:
        """The union of every store's own split, in dataset event numbers."""
        return [seg for i, s in enumerate(self.stores) for seg in self._shift(i, s.segments(split, spec, fraction))]

    def all_segments(self) -> list[Segment]:
        """Every chunk of every store, in order."""
        return [seg for i, s in enumerate(self.stores) for seg in self._shift(i, s.all_segments())]

    def _locate(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(store, local start, local stop) pieces of dataset events [start, stop)."""
        if not 0 <= start <= stop <= self.n_events:
            raise StoreError(f"{self.path}: events [{start}, {stop}) outside 0..{self.n_events}")
        pieces = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, self.offsets[i + 1])
            if end > start:
                pieces.append((i, start - self.offsets[i], end - self.offsets[i]))
            start, i = end, i + 1
        return pieces

    def read(self, start: int, stop: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Dataset events [start, stop) of the named arrays, as numpy (may span stores)."""
        parts = [self._labelled(i, self.stores[i].read(a, b, names)) for i, a, b in self._locate(start, stop)]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def iter_chunks(self, names: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every chunk of every store, in order."""
        for i, store in enumerate(self.stores):
            for chunk in store.iter_chunks(names):
                yield self._labelled(i, chunk)

    def _labelled(self, i: int, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Store ``i``'s process labels renumbered into the dataset's ``processes``."""
        relabel, labels = self._relabel[i], part.get("targets/process")
        if relabel is not None and labels is not None:
            part["targets/process"] = relabel[labels].astype(labels.dtype)
        return part

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        return f"EventDataset({len(self.stores)} stores, n_events={self.n_events}, processes={self.processes})"
