"""hepfm: event-level foundation models for collider physics.

The public Python API; every CLI command is a thin call into one of these.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._awkward import latents_awkward, store_awkward
from ._errors import HepfmError, StoreError, TaskError
from ._hf_export import export_model_folder, load_model
from ._selection import Selection, SelectionError
from ._task_files import shipped_tasks, task_file
from .batch import Batch, EventBlock
from .hookspecs import hookimpl
from .normaliser import Normaliser
from .physics import compute_globals
from .run import Run
from .schema import EventSchema, Feature, FeatureStats
from .store import EventDataset, EventLoader, EventStore, SplitSpec, StoreWriter, open_data

try:
    __version__ = version("hepfm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = [
    "__version__",
    "hookimpl",
    "HepfmError",
    "StoreError",
    "TaskError",
    "Batch",
    "EventBlock",
    "EventSchema",
    "Feature",
    "FeatureStats",
    "Normaliser",
    "compute_globals",
    "EventLoader",
    "EventStore",
    "SplitSpec",
    "StoreWriter",
    "EventDataset",
    "open_data",
    "Selection",
    "SelectionError",
    "load_model",
    "Run",
    "export_model_folder",
    "store_awkward",
    "latents_awkward",
    "task_file",
    "shipped_tasks",
]
