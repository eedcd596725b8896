"""Zarr v3 event store: writer, reader, normalisation statistics, splits and a streaming loader.

Layout::

    events.zarr/
      objects   float32 [n, N, F]   chunked (C, N, F), Zstd
      mask      bool    [n, N]
      globals   float32 [n, G]
      weights   float32 [n]
      targets/<name>    [n, ...]    (process, assignment indices, ...)
      attributes: hepfm (format, version), schema, targets, processes, chunk_events, n_events,
                  provenance, stats, complete (written last)

The writer appends whole chunks and records ``n_events`` after each, so an interrupted write is
resumed by the same writer; readers refuse a store without ``complete``. The loader never reads
random single events: it shuffles chunk-aligned segments inside a bounded buffer, so memory is
O(batch x prefetch) whatever the store size.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import _outputs
from . import _store_check as _check
from ._errors import StoreError
from ._selection import Selection
from .schema import SCHEMA_VERSION, Batch, EventBlock, EventSchema, FeatureStats, Normaliser

__all__ = [
    "FORMAT",
    "SplitSpec",
    "StoreWriter",
    "EventStore",
    "EventLoader",
    "split_segments",
    "is_url",
]

FORMAT = {"format": "hepfm-event-store", "version": SCHEMA_VERSION}
CORE_ARRAYS = ("objects", "mask", "globals", "weights")
DEFAULT_CHUNK = 4096


# --------------------------------------------------------------------------------------------
# streaming statistics (Chan et al. parallel moments, float64)
# --------------------------------------------------------------------------------------------
class _Moments:
    """Count, mean, M2, min, max per feature, of x and of log1p(max(x, 0)), merged block by block."""

    KEYS = ("n", "mean", "m2", "min", "max", "lmean", "lm2")

    def __init__(self, n_features: int, state: dict[str, list[float]] | None = None) -> None:
        if state is not None:
            for k in self.KEYS:
                setattr(self, k, np.asarray(state[k], dtype=np.float64))
            return
        self.n = np.zeros(n_features)
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.min = np.full(n_features, np.inf)
        self.max = np.full(n_features, -np.inf)
        self.lmean = np.zeros(n_features)
        self.lm2 = np.zeros(n_features)

    def update(self, x: np.ndarray) -> None:
        """Merge rows x [k, F] (already restricted to real entries)."""
        if x.shape[0] == 0:
            return
        x = x.astype(np.float64)
        lx = np.log1p(np.clip(x, 0.0, None))
        nb = float(x.shape[0])
        n = self.n + nb
        for attr_mean, attr_m2, values in (("mean", "m2", x), ("lmean", "lm2", lx)):
            mb = values.mean(0)
            m2b = ((values - mb) ** 2).sum(0)
            ma = getattr(self, attr_mean)
            delta = mb - ma
            setattr(self, attr_mean, ma + delta * nb / n)
            setattr(self, attr_m2, getattr(self, attr_m2) + m2b + delta**2 * self.n * nb / n)
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))
        self.n = n

    @classmethod
    def merge(cls, parts: list[_Moments]) -> _Moments:
        """The moments of the union of the parts' rows (exact up to rounding, order-independent in value)."""
        out = cls(len(parts[0].n))
        for p in parts:
            n = out.n + p.n
            safe = np.where(n > 0, n, 1.0)
            for attr_mean, attr_m2 in (("mean", "m2"), ("lmean", "lm2")):
                ma, mb = getattr(out, attr_mean), getattr(p, attr_mean)
                delta = mb - ma
                setattr(out, attr_mean, ma + delta * p.n / safe)
                setattr(out, attr_m2, getattr(out, attr_m2) + getattr(p, attr_m2) + delta**2 * out.n * p.n / safe)
            out.min = np.where(p.n > 0, np.minimum(out.min, p.min), out.min)
            out.max = np.where(p.n > 0, np.maximum(out.max, p.max), out.max)
            out.n = n
        return out

    def state(self) -> dict[str, list[float]]:
        return {k: [float(v) if np.isfinite(v) else 0.0 for v in getattr(self, k)] for k in self.KEYS}

    def stats(self, names: list[str]) -> dict[str, dict[str, float]]:
        out = {}
        for i, name in enumerate(names):
            n = max(self.n[i], 1.0)
            out[name] = FeatureStats(
                count=int(self.n[i]),
                mean=float(self.mean[i]),
                std=float(math.sqrt(max(self.m2[i] / n, 0.0))),
                min=float(self.min[i]) if self.n[i] else 0.0,
                max=float(self.max[i]) if self.n[i] else 0.0,
                log_mean=float(self.lmean[i]),
                log_std=float(math.sqrt(max(self.lm2[i] / n, 0.0))),
            ).model_dump()
        return out


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
class SplitSpec(BaseModel):
    """Fractions of a store for training, validation and test, and the seed that places them."""

    model_config = ConfigDict(extra="forbid")

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSpec:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


Segment = tuple[int, int]


def typed_stats(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, FeatureStats]]:
    """The ``stats`` attribute as ``FeatureStats``: {"objects"|"globals": {feature: FeatureStats}}."""
    return {part: {k: FeatureStats.model_validate(v) for k, v in raw[part].items()} for part in ("objects", "globals")}


def is_url(path: str | os.PathLike) -> bool:
    """Whether a store path is a URL (``https://``, ``s3://``, ``root://`` ...), read through fsspec."""
    return "://" in os.fspath(path)


def _check_url_scheme(url: str) -> None:
    """One clear line when the package a URL scheme needs is missing (fsspec's own message otherwise)."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise StoreError(f"{url}: reading {scheme}:// stores needs an extra package ({exc})") from None
    except ValueError:
        raise StoreError(f"{url}: unknown URL scheme '{scheme}://' (fsspec knows no such protocol)") from None


def split_segments(n_events: int, chunk: int, spec: SplitSpec, which: str, fraction: float = 1.0) -> list[Segment]:
    """Event ranges [start, stop) of one split, each inside one chunk.

    Chunks are laid out in an order fixed by ``spec.seed``; the train, val and test fractions take
    consecutive stretches of that order, so only the chunks on a boundary are shared between
    splits. ``fraction`` keeps the first part of the split in the same order (deterministic
    subsets for data-efficiency studies; smaller fractions are subsets of larger ones).
    """
    if which not in ("train", "val", "test"):
        raise StoreError(f"unknown split '{which}'; known: train, val, test")
    if not 0.0 < fraction <= 1.0:
        raise StoreError(f"fraction must be in (0, 1], got {fraction}")
    cuts = np.round(np.cumsum([0.0, spec.train, spec.val, spec.test]) * n_events).astype(int)
    cuts[-1] = n_events
    k = ("train", "val", "test").index(which)
    lo, hi = int(cuts[k]), int(cuts[k + 1])
    hi = lo + (max(1, round((hi - lo) * fraction)) if hi > lo else 0)
    n_chunks = math.ceil(n_events / chunk)
    order = np.random.default_rng(spec.seed).permutation(n_chunks)
    segments, pos = [], 0
    for c in order:
        start, length = int(c) * chunk, min(chunk, n_events - int(c) * chunk)
        a, b = max(lo, pos), min(hi, pos + length)
        if a < b:
            segments.append((start + a - pos, start + b - pos))
        pos += length
        if pos >= hi:
            break
    return segments


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------
def _describe_targets(targets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {"dtype": str(np.dtype(v["dtype"])), "shape": list(v.get("shape", []))} for k, v in targets.items()}


class StoreWriter:
    """Append events to a Zarr event store, chunk by chunk, resuming an interrupted write.

    Args:
        path: Store directory (``*.zarr``).
        schema: Event schema of the blocks.
        targets: Target name -> {"dtype", "shape"} (shape without the event axis).
        processes: Process names; ``targets/process`` holds indices into this list.
        chunk_events: Events per chunk (C); blocks are buffered to whole chunks.
        provenance: Free-form JSON (generator, seeds, settings) stored in the attributes.
        topology: Decay topology of the assignment targets (resonances, daughters, symmetries).
        overwrite: Replace an existing store. Without it a complete store is an error and an
            incomplete one with the same layout is resumed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: EventSchema,
        targets: dict[str, dict[str, Any]] | None = None,
        processes: list[str] | None = None,
        chunk_events: int = DEFAULT_CHUNK,
        provenance: dict[str, Any] | None = None,
        overwrite: bool = False,
        topology: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.topology = dict(topology or {})
        self.schema = schema
        self.targets = _describe_targets(targets or {})
        self.processes = list(processes or [])
        self.chunk = int(chunk_events)
        if self.chunk < 1:
            raise StoreError(f"{self.path}: chunk_events must be positive, got {chunk_events}")
        self._pending: list[EventBlock] = []
        self._n_pending = 0
        self._closed = False
        self._lock = _outputs.acquire_lock(self.path)  # one writer per store; released by close or exit
        try:
            if self.preflight(self.path, overwrite) == "overwrite":
                shutil.rmtree(self.path)
            if self.path.exists():
                self._resume(provenance or {})
            else:
                self._create(provenance or {})
        except BaseException:
            _outputs.release_lock(self._lock)
            raise

    # -- opening ------------------------------------------------------------------------------
    def _create(self, provenance: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # created under a temporary name and renamed whole: a kill never leaves a store without its attributes
        tmp = self.path.with_name(f".{self.path.name}.creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        g = zarr.open_group(tmp, mode="w-")
        n_obj, n_f, n_g = self.schema.max_objects, self.schema.n_object_features, self.schema.n_global_features
        layout = {
            "objects": ((n_obj, n_f), "float32"),
            "mask": ((n_obj,), "bool"),
            "globals": ((n_g,), "float32"),
            "weights": ((), "float32"),
        }
        layout.update({f"targets/{k}": (tuple(v["shape"]), v["dtype"]) for k, v in self.targets.items()})
        for name, (shape, dtype) in layout.items():
            g.create_array(
                name,
                shape=(0, *shape),
                chunks=(self.chunk, *shape),
                dtype=dtype,
                compressors=zarr.codecs.ZstdCodec(level=3),
                fill_value=0,
            )
        self._obj_moments = _Moments(n_f)
        self._glob_moments = _Moments(n_g)
        self.n_events = 0
        g.attrs.update(
            {
                "hepfm": FORMAT,
                "schema": self.schema.model_dump(mode="json"),
                "targets": self.targets,
                "processes": self.processes,
                "chunk_events": self.chunk,
                "topology": self.topology,
                "provenance": provenance,
                "n_events": 0,
                "accumulators": {"objects": self._obj_moments.state(), "globals": self._glob_moments.state()},
            }
        )
        os.replace(tmp, self.path)
        self._group = zarr.open_group(self.path, mode="r+")

    @staticmethod
    def preflight(path: str | os.PathLike, overwrite: bool = False) -> str:
        """Check an output path before any work: ``new``, ``resume`` or ``overwrite``.

        Raises ``StoreError`` for a complete store (without ``overwrite``) or a directory that is
        not a hepfm store, so nothing already written is touched.
        """
        path = Path(path)
        _outputs.check_parents(path)
        if not path.exists():
            return "new"
        if not path.is_dir():
            raise StoreError(f"{path}: exists and is not a directory; refusing to touch it")
        if overwrite:
            if any(path.iterdir()) and not StoreWriter._is_store(path):
                raise StoreError(f"{path}: not a hepfm event store; overwrite=True (--overwrite) only replaces stores")
            return "overwrite"
        StoreWriter._open_existing(path)
        return "resume"

    @staticmethod
    def _is_store(path: Path) -> bool:
        try:
            return zarr.open_group(path, mode="r").attrs.get("hepfm", {}).get("format") == FORMAT["format"]
        except Exception:
            return False

    @staticmethod
    def _open_existing(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
        try:
            g = zarr.open_group(path, mode="r+")
            attrs = dict(g.attrs)
        except Exception as exc:
            raise StoreError(f"{path}: exists and is not a readable event store ({type(exc).__name__})") from None
        if attrs.get("complete"):
            raise StoreError(f"{path}: complete store already exists; pass overwrite=True (--overwrite) or another out")
        if attrs.get("hepfm") != FORMAT or "n_events" not in attrs:
            raise StoreError(f"{path}: exists and is not a hepfm event store; refusing to touch it")
        return g, attrs

    def _resume(self, provenance: dict[str, Any]) -> None:
        g, attrs = self._open_existing(self.path)
        expected = {
            "schema": self.schema.model_dump(mode="json"),
            "targets": self.targets,
            "processes": self.processes,
            "chunk_events": self.chunk,
            "topology": self.topology,
        }
        for key, value in expected.items():
            if attrs.get(key) != value:
                raise StoreError(
                    f"{self.path}: cannot resume, attribute '{key}' differs from this write "
                    f"(pass overwrite=True (--overwrite) to start again)"
                )
        if attrs.get("provenance", {}) != provenance:
            raise StoreError(
                f"{self.path}: cannot resume, attribute 'provenance' differs (other seed or settings); "
                f"pass overwrite=True (--overwrite) to start again"
            )
        self.n_events = int(attrs["n_events"])
        for name in self._array_names():
            arr = g[name]
            if arr.shape[0] != self.n_events:  # drop a chunk written after the last checkpoint
                arr.resize((self.n_events, *arr.shape[1:]))
        # the statistics are rebuilt from the events on disk, chunk by chunk as they were merged when written,
        # so a resumed store's statistics are bit-identical to an uninterrupted write's
        self._obj_moments = _Moments(self.schema.n_object_features)
        self._glob_moments = _Moments(self.schema.n_global_features)
        for start in range(0, self.n_events, self.chunk):
            stop = min(start + self.chunk, self.n_events)
            self._accumulate(g["objects"][start:stop], g["mask"][start:stop], g["globals"][start:stop])
        self._group = g

    def _accumulate(self, objects: np.ndarray, mask: np.ndarray, globals_: np.ndarray) -> None:
        """Merge events into the statistics, one chunk at a time."""
        for a in range(0, len(objects), self.chunk):
            b = a + self.chunk
            self._obj_moments.update(objects[a:b][mask[a:b]])
            self._glob_moments.update(globals_[a:b])

    def _array_names(self) -> list[str]:
        return [*CORE_ARRAYS, *(f"targets/{k}" for k in self.targets)]

    # -- writing ------------------------------------------------------------------------------
    def _check(self, block: EventBlock) -> None:
        s, n = self.schema, len(block)
        where = f"{self.path}"
        expect = {
            "objects": (n, s.max_objects, s.n_object_features),
            "mask": (n, s.max_objects),
            "globals": (n, s.n_global_features),
            "weights": (n,),
        }
        for key, shape in expect.items():
            got = getattr(block, key).shape
            if tuple(got) != shape:
                detail = ""
                if key == "objects" and len(got) == 3 and got[2] != shape[2]:
                    detail = f" ({got[2]} features per object, schema has {shape[2]}: {', '.join(s.object_names)})"
                if key == "globals" and len(got) == 2 and got[1] != shape[1]:
                    detail = f" ({got[1]} globals, schema has {shape[1]}: {', '.join(s.global_names)})"
                raise StoreError(f"{where}: block key '{key}' has shape {tuple(got)}, expected {shape}{detail}")
        if set(block.targets) != set(self.targets):
            raise StoreError(
                f"{where}: block targets {sorted(block.targets)} differ from the store's {sorted(self.targets)}"
            )
        for key, spec in self.targets.items():
            got = block.targets[key].shape
            if tuple(got) != (n, *spec["shape"]):
                raise StoreError(
                    f"{where}: block key 'targets/{key}' has shape {tuple(got)}, expected {(n, *spec['shape'])}"
                )
        checks = (
            ("objects", block.objects, block.mask, s.object_names),
            ("globals", block.globals, None, s.global_names),
            ("weights", block.weights[:, None], None, ["weight"]),
        )
        for key, values, mask, names in checks:
            bad = ~np.isfinite(values)
            if mask is not None:
                bad &= mask[..., None]
            if bad.any():
                idx = np.argwhere(bad)[0]
                feature = names[idx[-1]]
                raise StoreError(
                    f"{where}: key '{key}' feature '{feature}' is {values[tuple(idx)]} (NaN or inf) in event "
                    f"{self.n_events + self._n_pending + int(idx[0])} of this write; nothing of this block was written"
                )
        if "process" in block.targets and self.processes:
            p = block.targets["process"]
            if p.size and (p.min() < 0 or p.max() >= len(self.processes)):
                raise StoreError(f"{where}: key 'targets/process' has labels outside 0..{len(self.processes) - 1}")

    def append(self, block: EventBlock) -> None:
        """Validate a block and queue it; whole chunks are written as soon as they fill."""
        if self._closed:
            raise StoreError(f"{self.path}: writer is closed")
        self._check(block)
        block = EventBlock(
            objects=np.where(block.mask[..., None], block.objects, 0).astype(np.float32),
            mask=block.mask.astype(bool),
            globals=block.globals.astype(np.float32),
            weights=block.weights.astype(np.float32),
            targets={k: v.astype(self.targets[k]["dtype"]) for k, v in block.targets.items()},
        )
        self._pending.append(block)
        self._n_pending += len(block)
        if self._n_pending >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool, extra: Any = None) -> None:
        """Write whole chunks (all that is queued when ``final``), then record them in one metadata write.

        With ``final`` the record also carries ``extra`` (the statistics and ``complete``), so a
        store is either complete or ends at a whole chunk: a resume never repeats events.
        """
        if not self._pending:
            return
        data = EventBlock.concatenate(self._pending)
        n_write = len(data) if final else (len(data) // self.chunk) * self.chunk
        if n_write == 0:
            return
        out, rest = data.take(slice(0, n_write)), data.take(slice(n_write, None))
        arrays = {"objects": out.objects, "mask": out.mask, "globals": out.globals, "weights": out.weights}
        arrays.update({f"targets/{k}": v for k, v in out.targets.items()})
        with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk on disk: truncation is detectable
            for name, values in arrays.items():
                self._group[name].append(values, axis=0)
        self._accumulate(out.objects, out.mask, out.globals)
        self.n_events += n_write
        record: dict[str, Any] = {  # the moments so far, merged by multi-store datasets (a resume rebuilds them)
            "n_events": self.n_events,
            "accumulators": {"objects": self._obj_moments.state(), "globals": self._glob_moments.state()},
        }
        if final and extra:
            record.update(extra() if callable(extra) else extra)
        self._group.attrs.update(record)
        self._pending = [rest] if len(rest) else []
        self._n_pending = len(rest)

    def close(self) -> EventStore:
        """Write what is queued, the statistics, and finally ``complete``; return the reader."""
        if not self._closed:
            if self.n_events + self._n_pending == 0:
                raise StoreError(f"{self.path}: nothing was written (0 events); the store is left incomplete")

            def finish() -> dict[str, Any]:
                stats = {
                    "objects": self._obj_moments.stats(self.schema.object_names),
                    "globals": self._glob_moments.stats(self.schema.global_names),
                }
                return {"stats": stats, "complete": True}

            if self._pending:
                self._flush(final=True, extra=finish)
            else:
                self._group.attrs.update(finish())
            self._closed = True
            _outputs.release_lock(self._lock)
        return EventStore.open(self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # on error: what was flushed stays, unmarked, for the next writer to resume
            _outputs.release_lock(self._lock)


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------
class EventStore:
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
            _check_url_scheme(path)
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
        return [*CORE_ARRAYS, *(f"targets/{k}" for k in self.targets)]

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

    # -- metadata -----------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, dict[str, FeatureStats]]:
        """Normalisation statistics: {"objects"|"globals": {feature: FeatureStats}}."""
        return typed_stats(self.attrs["stats"])

    def normaliser(self) -> Normaliser:
        """A ``Normaliser`` module with this store's statistics."""
        return Normaliser(self.schema, self.stats)

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


# --------------------------------------------------------------------------------------------
# loader
# --------------------------------------------------------------------------------------------
def _merge_contiguous(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for a, b in segments:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _SegmentStream(torch.utils.data.IterableDataset):
    """Reads a list of segments, a buffer of them at a time, and yields shuffled batches (numpy)."""

    def __init__(
        self,
        store: Any,
        segments: list[Segment],
        batch_size: int,
        shuffle: bool,
        seed: int,
        buffer_segments: int,
        drop_last: bool,
        names: list[str] | None,
        keep: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.store, self.segments, self.batch_size = store, segments, batch_size
        self.shuffle, self.seed, self.buffer_segments = shuffle, seed, buffer_segments
        self.drop_last, self.names = drop_last, names
        self.keep = keep  # bool [n_events] of the whole store (the selection), or None: every event

    def _read(self, store: Any, a: int, b: int) -> dict[str, np.ndarray] | None:
        """Events [a, b) that pass the selection; ``None`` when none does (nothing is read)."""
        if self.keep is None:
            return store.read(a, b, self.names)
        keep = self.keep[a:b]
        n_keep = int(np.count_nonzero(keep))
        if n_keep == 0:
            return None
        data = store.read(a, b, self.names)
        return data if n_keep == b - a else {k: v[keep] for k, v in data.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        segments = self.segments[wid::nw]
        rng = np.random.default_rng([self.seed, wid])
        store = self.store.reopen()  # fresh Zarr handles in every worker process
        carry: list[dict[str, np.ndarray]] = []
        bs = self.batch_size
        for i in range(0, len(segments), self.buffer_segments):
            group = segments[i : i + self.buffer_segments]
            reads = group if self.shuffle else _merge_contiguous(group)
            parts = [part for a, b in reads if (part := self._read(store, a, b)) is not None]
            if not carry and not parts:
                continue
            data = _concat(carry + parts)
            n = len(data["objects"]) if "objects" in data else len(next(iter(data.values())))
            if self.shuffle:
                perm = rng.permutation(n)
                data = {k: v[perm] for k, v in data.items()}
            n_full = (n // bs) * bs
            for j in range(0, n_full, bs):
                yield {k: v[j : j + bs] for k, v in data.items()}
            carry = [{k: v[n_full:] for k, v in data.items()}] if n_full < n else []
        if carry and not self.drop_last:
            yield carry[0]


class EventLoader:
    """Batches of one split of a store, streamed in chunk-aligned segments.

    Each epoch the split's segments are put in a seeded order, dealt to ranks (``rank::world_size``)
    and to worker processes, read ``buffer_segments`` at a time and shuffled inside that buffer.
    Every event of the split is yielded exactly once per epoch across ranks and workers.

    Args:
        store: An ``EventStore``, an ``EventDataset`` (several stores), or what ``open_data`` takes.
        split: ``train``, ``val``, ``test`` or ``all``.
        batch_size: Events per batch (the last one of each worker may be smaller).
        shuffle: Shuffle segment order and events inside the buffer.
        seed: Base seed; the epoch is mixed in (``set_epoch``).
        split_spec: Fractions and seed of the splits.
        fraction: Keep this deterministic leading fraction of the split.
        num_workers: Fork worker processes (0 reads in this process).
        rank, world_size: This process's shard for distributed training.
        buffer_segments: Segments (about a chunk each) per shuffle buffer.
        drop_last: Drop each worker's last short batch.
        names: Arrays to read besides objects, mask, globals and weights (default: all targets).
        pin_memory: Pin batches (for CUDA).
        selection: Yield only the events passing these cuts (a ``Selection``, or a list of cut
            strings), the same ones every epoch and on every rank. ``fraction`` applies before
            the selection; ``n_events`` and ``len()`` count selected events.
    """

    def __init__(
        self,
        store: Any,
        split: str = "train",
        batch_size: int = 512,
        shuffle: bool = True,
        seed: int = 0,
        split_spec: SplitSpec | None = None,
        fraction: float = 1.0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        buffer_segments: int = 8,
        drop_last: bool = False,
        names: list[str] | None = None,
        pin_memory: bool = False,
        selection: Selection | list[str] | None = None,
    ) -> None:
        if not hasattr(store, "segments"):
            from .dataset import open_data

            store = open_data(store)
        self.store = store
        if selection is not None and not isinstance(selection, Selection):
            selection = Selection.parse(selection)
        self.selection = selection if selection else None
        if batch_size < 1:
            raise StoreError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise StoreError(f"rank {rank} is outside world size {world_size}")
        if split == "all":
            base = self.store.all_segments()
        else:
            base = self.store.segments(split, split_spec, fraction)
        if not base:
            raise StoreError(f"{self.store.path}: split '{split}' holds no events")
        self.segments = self._subdivide(base, world_size * max(1, num_workers) * 2)
        self._keep: np.ndarray | None = None
        self._selected: dict[Segment, int] = {}
        if self.selection is not None:
            self._keep = self.selection.store_mask(self.store)
            self._selected = {(a, b): int(np.count_nonzero(self._keep[a:b])) for a, b in self.segments}
            if sum(self._selected.values()) == 0:
                raise StoreError(
                    f"{self.store.path}: the selection {list(self.selection.cuts)} leaves no events "
                    f"in the '{split}' split"
                )
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.buffer_segments, self.drop_last = buffer_segments, drop_last
        self.names = None if names is None else list(dict.fromkeys([*CORE_ARRAYS, *names]))
        self.pin_memory = pin_memory
        self.epoch = 0

    @staticmethod
    def _subdivide(segments: list[Segment], minimum: int, smallest: int = 64) -> list[Segment]:
        """Halve segments until every rank and worker has some (only matters for tiny stores)."""
        while len(segments) < minimum and max(b - a for a, b in segments) >= 2 * smallest:
            segments = [
                piece
                for a, b in segments
                for piece in (((a, (a + b) // 2), ((a + b) // 2, b)) if b - a >= 2 * smallest else ((a, b),))
            ]
        return segments

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order of this epoch (call before iterating, on every rank)."""
        self.epoch = epoch

    def shard(self) -> list[Segment]:
        """This rank's segments for the current epoch."""
        segments = list(self.segments)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(segments))
            segments = [segments[i] for i in order]
        return segments[self.rank :: self.world_size]

    def _count(self, segments: list[Segment]) -> int:
        """Events of these segments that the loader yields (those passing the selection)."""
        if self._keep is None:
            return sum(b - a for a, b in segments)
        return sum(self._selected[s] for s in segments)

    @property
    def n_events(self) -> int:
        """Events this rank sees per epoch (after the selection)."""
        return self._count(self.shard())

    @property
    def selected_fraction(self) -> float:
        """Events this rank yields / events of its shard before the selection (1.0 without one)."""
        if self._keep is None:
            return 1.0
        shard = self.shard()
        total = sum(b - a for a, b in shard)
        return self._count(shard) / total if total else 0.0

    def __len__(self) -> int:
        """Batches this rank yields per epoch (each worker ends on its own short batch)."""
        shard = self.shard()
        total = 0
        for w in range(max(1, self.num_workers)):
            n = self._count(shard[w :: max(1, self.num_workers)])
            total += n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return total

    def __iter__(self) -> Iterator[Batch]:
        stream = _SegmentStream(
            self.store,
            self.shard(),
            self.batch_size,
            self.shuffle,
            self.seed * 1_000_003 + self.epoch * 7919 + self.rank,
            self.buffer_segments,
            self.drop_last,
            self.names,
            self._keep,
        )
        if self.num_workers == 0:
            for arrays in stream:
                batch = Batch.from_arrays(arrays)
                yield batch.pin_memory() if self.pin_memory else batch
            return
        loader = torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            multiprocessing_context="fork",
            prefetch_factor=2,
            pin_memory=self.pin_memory,
        )
        for arrays in loader:
            yield Batch.from_arrays(arrays)
