"""The chunk-aware loader: batches of one split, streamed in chunk-aligned segments.

The loader never reads random single events: it shuffles chunk-aligned segments inside a bounded
buffer, so memory is O(batch x prefetch) whatever the store size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .._errors import StoreError
from .._selection import Selection
from ..batch import Batch
from ._dataset import open_data
from ._format import CORE_ARRAYS, Segment
from ._splits import SplitSpec

__all__ = ["EventLoader"]


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
