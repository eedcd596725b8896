"""A generic store of named arrays (latents and other per-event products), written all at once.

``ArrayWriter`` writes under ``<out>.partial``: arrays of a fixed number of rows are created in the
event-store format (Zstd chunks along the event axis), filled by the caller, then ``close`` writes
the attributes, ``complete`` last, and renames the folder onto ``out`` (an existing output stays
until the new one is complete). A killed write leaves only the ``.partial`` folder, which the next
writer replaces; ``open_arrays`` refuses a store whose format tag or ``complete`` is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import zarr

from .._errors import StoreError
from ._format import fresh_group, new_array

__all__ = ["ArrayWriter", "open_arrays"]


class ArrayWriter:
    """Named arrays of ``n_rows`` rows each, written under a temporary name and renamed when complete.

    Args:
        path: The output (``*.zarr``); the write goes to ``<path>.partial``.
        fmt: The format tag stored as attribute ``hepfm`` (``{"format": ..., "version": ...}``).
        n_rows: Rows (events) of every array.
        chunk_rows: Rows per chunk.
    """

    def __init__(self, path: str | os.PathLike, fmt: dict[str, Any], n_rows: int, chunk_rows: int) -> None:
        self.path = Path(path)
        self.fmt = dict(fmt)
        self.n_rows = int(n_rows)
        self.chunk = max(1, int(chunk_rows))
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self._group = fresh_group(self.tmp)
        self.arrays: dict[str, zarr.Array] = {}

    def create(self, name: str, shape: tuple, dtype: Any) -> zarr.Array:
        """A new zero-filled array ``name`` of [n_rows, *shape] (``a/b`` names nest in groups)."""
        if name in self.arrays:
            raise StoreError(f"{self.tmp}: array '{name}' created twice")
        self.arrays[name] = new_array(self._group, name, self.n_rows, tuple(shape), self.chunk, dtype)
        return self.arrays[name]

    def __getitem__(self, name: str) -> zarr.Array:
        return self.arrays[name]

    def close(self, attrs: dict[str, Any]) -> Path:
        """Write ``attrs`` and the format tag, then ``complete``, and move the store onto ``path``."""
        self._group.attrs.update({"hepfm": self.fmt, **attrs})
        self._group.attrs.update({"complete": True})  # last: a store without it is refused
        old = self.path.with_name(self.path.name + ".replaced")
        if self.path.exists():  # overwrite: the old output stays until the new one is complete
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old.exists():
            shutil.rmtree(old)
        return self.path


def open_arrays(path: str | os.PathLike, fmt: dict[str, Any], what: str) -> zarr.Group:
    """A complete store written by ``ArrayWriter`` with format tag ``fmt``; ``what`` names it in errors."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: no such {what}")
    g = zarr.open_group(path, mode="r")
    if g.attrs.get("hepfm") != fmt or not g.attrs.get("complete"):
        raise StoreError(f"{path}: not a complete hepfm {what} (attribute 'hepfm'/'complete')")
    return g
