"""Writing an event store: ``StoreWriter`` appends whole chunks and resumes an interrupted write.

The store is created under a temporary name and renamed whole, so it always carries its
attributes; after every chunk the writer records ``n_events`` and the moments so far, and
``complete`` is written last by ``close``. A writer that finds an incomplete store with the same
layout and provenance cuts it back to the recorded events and continues.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .. import _outputs
from .._errors import StoreError
from ..batch import EventBlock
from ..schema import EventSchema
from ._format import DEFAULT_CHUNK, FORMAT, array_names, check_target_names, expected_layout, fresh_group, new_array
from ._reader import EventStore
from ._statistics import Moments

__all__ = ["StoreWriter"]


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
        check_target_names(self.targets, self.path)
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
        g = fresh_group(tmp)
        for name, (shape, dtype) in expected_layout(self.schema, self.targets).items():
            new_array(g, name, 0, shape, self.chunk, dtype)
        n_f, n_g = self.schema.n_object_features, self.schema.n_global_features
        self._obj_moments = Moments(n_f)
        self._glob_moments = Moments(n_g)
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
        for name in array_names(self.targets):
            arr = g[name]
            if arr.shape[0] != self.n_events:  # drop a chunk written after the last checkpoint
                arr.resize((self.n_events, *arr.shape[1:]))
        # the statistics are rebuilt from the events on disk, chunk by chunk as they were merged when written,
        # so a resumed store's statistics are bit-identical to an uninterrupted write's
        self._obj_moments = Moments(self.schema.n_object_features)
        self._glob_moments = Moments(self.schema.n_global_features)
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
