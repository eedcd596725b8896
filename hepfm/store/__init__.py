"""Zarr v3 event store: layout, writer, reader, checks, statistics, splits, datasets and a streaming loader.

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

Modules, one concern each: ``_format`` (layout, format tag, chunk size), ``_writer``
(``StoreWriter``), ``_reader`` (``EventStore``), ``_check`` (validation of attributes, arrays and
values), ``_statistics`` (streaming moments and the ``stats`` attribute), ``_splits``
(``SplitSpec``, ``split_segments``), ``_dataset`` (``open_data``, ``EventDataset``: many stores as
one), ``_loader`` (``EventLoader``) and ``_arrays`` (``ArrayWriter``: latents and other per-event
arrays written through the same format, ``complete`` last).
"""

from ._arrays import ArrayWriter, open_arrays
from ._check import check_stats
from ._dataset import MANIFEST, EventDataset, open_data, resolve_sources
from ._format import DEFAULT_CHUNK, FORMAT, Segment, check_target_names, is_url
from ._loader import EventLoader
from ._reader import EventStore
from ._splits import SplitSpec, split_segments
from ._writer import StoreWriter

__all__ = [
    "FORMAT",
    "DEFAULT_CHUNK",
    "Segment",
    "SplitSpec",
    "StoreWriter",
    "EventStore",
    "EventLoader",
    "EventDataset",
    "MANIFEST",
    "open_data",
    "resolve_sources",
    "split_segments",
    "is_url",
    "check_target_names",
    "check_stats",
    "ArrayWriter",
    "open_arrays",
]
