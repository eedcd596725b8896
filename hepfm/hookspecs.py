"""Hook specifications: the whole contract between hepfm and its plugins.

A plugin is a module (or object) with functions marked ``@hepfm.hookimpl`` whose names match
the specs below. Built-in plugins and third-party ones are registered the same way, through the
``hepfm`` entry-point group.
"""

from __future__ import annotations

import pluggy

__all__ = ["hookspec", "hookimpl"]

hookspec = pluggy.HookspecMarker("hepfm")
hookimpl = pluggy.HookimplMarker("hepfm")


@hookspec
def hepfm_register_heads() -> list[type]:
    """Return head classes (see ``hepfm.components.Head``), each with a unique ``name``."""


@hookspec
def hepfm_register_datasets() -> list[type]:
    """Return dataset classes (see ``hepfm.components.Dataset``), each with a unique ``name``."""


@hookspec
def hepfm_register_metrics() -> list[type]:
    """Return metric classes (see ``hepfm.components.Metric``), each with a unique ``name``."""
