"""Hook specifications: the whole contract between hepfm and its plugins.

A plugin is a module (or object) with functions marked ``@hepfm.hookimpl`` whose names match
the specs below: one hook per kind of component. Built-in plugins and third-party ones are
registered the same way, through the ``hepfm`` entry-point group. What each returned class must
have is ``hepfm.components.CONTRACTS``; docs/plugins.md is the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

__all__ = ["hookspec", "hookimpl"]

hookspec = pluggy.HookspecMarker("hepfm")
hookimpl = pluggy.HookimplMarker("hepfm")


@hookspec
def hepfm_register_heads() -> list[type]:
    """Return head classes (protocol ``hepfm.components.Head``), each with a unique ``name``."""


@hookspec
def hepfm_register_datasets() -> list[type]:
    """Return dataset classes that open events for a task (protocol ``hepfm.components.Dataset``)."""


@hookspec
def hepfm_register_generators() -> list[type]:
    """Return generator classes for ``hepfm generate`` (protocol ``hepfm.components.Generator``)."""


@hookspec
def hepfm_register_converters() -> list[type]:
    """Return converter classes for ``hepfm convert``/``export`` (protocol ``hepfm.components.Converter``)."""


@hookspec
def hepfm_register_metrics() -> list[type]:
    """Return metric classes (protocol ``hepfm.components.Metric``), each with a unique ``name``."""


@hookspec
def hepfm_register_commands() -> list[Callable]:
    """Return functions that become ``hepfm`` commands (typer signatures; the name is the function's, _ as -)."""
