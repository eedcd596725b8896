"""Reading an event store: ``EventStore`` opens a complete store (local or remote) and reads event ranges.

``EventStore.open`` refuses a missing, incomplete, damaged or schema-mismatched store in one line
(the checks are in ``_check``); values are checked again as they are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .._errors import StoreError
from ..schema import SCHEMA_VERSION, EventSchema
from . import _check
from ._format import Segment, array_names, is_url
from ._splits import SplitSpec, split_segments
from ._statistics import WithStats

__all__ = ["EventStore", "check_url_scheme"]


def check_url_scheme(url: str) -> None:
    """One clear line when the package a URL scheme needs is missing (fsspec's own message otherwise)."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise StoreError(f"{url}: reading {scheme}:// stores needs an extra package ({exc})") from None
    except ValueError:
        raise StoreError(f"{url}: unknown URL scheme '{scheme}://' (fsspec knows no such protocol)") from None


class EventStore(WithStats):
    """A complete event store opened for reading (never loaded whole).

    Use ``EventStore.open(path)``; pass ``schema`` to refuse a store written with another one.
    """

    def __init__(self, path: Path | str, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self.path = path
        self._group = group
        self.attrs = attrs
        self.schema = EventSchema.model_validate(attrs["schema"])
        self.n_events = int(attrs["n_events"])
        self.chunk_events = int(attrs["chunk_events"])
        self.processes: list[str] = list(attrs.get("processes", []))
        self.targets: dict[str, dict[str, Any]] = dict(attrs.get("targets", {}))
        self.provenance: dict[str, Any] = dict(attrs.get("provenance", {}))
        self.topology: dict[str, Any] = dict(attrs.get("topology", {}))
        self._arrays = {name: group[name] for name in self.array_names}

    @classmethod
    def open(cls, path: str | os.PathLike, schema: EventSchema | None = None, check: bool = True) -> EventStore:
        """Open a store, refusing a missing, incomplete, truncated or schema-mismatched one.

        ``path`` may be a URL (``https://``, ``s3://``, ``root://`` where fsspec-xrootd is
        installed): remote stores are opened read-only through fsspec.
        """
        if is_url(path):
            path = os.fspath(path).rstrip("/")
            check_url_scheme(path)
            try:
                group = zarr.open_group(path, mode="r")
                attrs = dict(group.attrs)
            except Exception as exc:
                raise StoreError(
                    f"{path}: no readable Zarr v3 event store there ({type(exc).__name__}: {exc})"
                ) from None
        else:
            path = Path(path)
            if not path.exists():
                raise StoreError(f"{path}: no such event store")
            if not (path / "zarr.json").is_file():
                raise StoreError(f"{path}: not a Zarr v3 event store (zarr.json missing)")
            try:
                group = zarr.open_group(path, mode="r")
                attrs = dict(group.attrs)
            except Exception as exc:
                raise StoreError(f"{path}/zarr.json: unreadable store metadata ({type(exc).__name__}: {exc})") from exc
        if "hepfm" not in attrs:
            raise StoreError(f"{path}: not a hepfm event store (attribute 'hepfm' missing)")
        version = attrs["hepfm"].get("version") if isinstance(attrs["hepfm"], dict) else None
        if version != SCHEMA_VERSION:
            raise StoreError(f"{path}: attribute 'hepfm.version' is {version}, this hepfm reads {SCHEMA_VERSION}")
        if attrs.get("complete") is not True:
            raise StoreError(
                f"{path}: attribute 'complete' is missing, the write stopped after {attrs.get('n_events', 0)} "
                f"events; rerun the command that wrote it to resume"
            )
        stored = _check.check_attributes(path, attrs)
        if schema is not None:
            diff = stored.differences(schema)
            if diff:
                raise StoreError(f"{path}: attribute 'schema' does not match the expected schema: {'; '.join(diff)}")
        _check.check_arrays(path, group, stored, attrs)
        store = cls(path, group, attrs)
        if store.n_events == 0:
            raise StoreError(f"{path}: the store holds no events")
        if check:
            store._check_arrays()
            last = (store.n_events - 1) // store.chunk_events * store.chunk_events
            for start in sorted({0, last}):  # a sample of the values; every chunk with inspect --verify
                store.read(start, min(start + store.chunk_events, store.n_events), mask_check=True)
        return store

    @property
    def sources(self) -> list[str]:
        """Where the store lives: its absolute path, or its URL."""
        return [self.path if isinstance(self.path, str) else os.fspath(self.path.resolve())]

    def reopen(self) -> EventStore:
        """The same store opened afresh, without the array checks (for loader worker processes)."""
        return EventStore.open(self.path, check=False)

    @property
    def array_names(self) -> list[str]:
        return array_names(self.targets)

    def _check_arrays(self) -> None:
        expected_chunks = math.ceil(self.n_events / self.chunk_events)
        for name, arr in self._arrays.items():
            if arr.shape[0] != self.n_events:
                raise StoreError(
                    f"{self.path}/{name}: holds {arr.shape[0]} events, attribute 'n_events' says {self.n_events}"
                )
            try:
                have = arr.nchunks_initialized
            except Exception:  # a remote server that cannot list: chunks are checked as they are read
                if isinstance(self.path, str):
                    continue
                raise
            if have < expected_chunks:
                raise StoreError(
                    f"{self.path}/{name}: {expected_chunks - have} of {expected_chunks} chunks missing on disk "
                    f"(truncated or deleted store)"
                )

    # -- metadata (``stats`` and ``normaliser()`` from ``WithStats``) ---------------------------
    def bytes_on_disk(self) -> int | None:
        """Bytes of the store's files (``None`` for a remote store)."""
        if isinstance(self.path, str):
            return None
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def segments(self, split: str, spec: SplitSpec | None = None, fraction: float = 1.0) -> list[Segment]:
        """Event ranges of a split (see ``split_segments``)."""
        return split_segments(self.n_events, self.chunk_events, spec or SplitSpec(), split, fraction)

    def all_segments(self) -> list[Segment]:
        """Every chunk, in order."""
        c = self.chunk_events
        return [(a, min(a + c, self.n_events)) for a in range(0, self.n_events, c)]

    # -- data ---------------------------------------------------------------------------------
    def read(
        self, start: int, stop: int, names: list[str] | None = None, mask_check: bool = False
    ) -> dict[str, np.ndarray]:
        """Events [start, stop) of the named arrays (all by default), as numpy.

        Values are checked as they are read (NaN or inf, labels outside ``processes``; with
        ``mask_check`` also the mask against the objects): a bad value is a ``StoreError`` naming
        the store, the array, the feature and the event.
        """
        out = {}
        for name in names or self.array_names:
            try:
                out[name] = self._arrays[name][start:stop]
            except KeyError:
                raise StoreError(f"{self.path}: no array '{name}'; has {', '.join(self.array_names)}") from None
            except Exception as exc:
                c0, c1 = start // self.chunk_events, (stop - 1) // self.chunk_events
                raise StoreError(
                    f"{self.path}/{name}: chunk {c0}..{c1} is corrupt or truncated ({type(exc).__name__}: {exc})"
                ) from None
        _check.check_values(self.path, out, self.schema, self.processes, start, mask=mask_check)
        return out

    def iter_chunks(self, names: list[str] | None = None, mask_check: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Every chunk in order (a full sequential scan)."""
        for start in range(0, self.n_events, self.chunk_events):
            yield self.read(start, min(start + self.chunk_events, self.n_events), names, mask_check)

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        return f"EventStore({str(self.path)!r}, n_events={self.n_events}, processes={self.processes})"
