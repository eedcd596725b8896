"""Plugin manager: built-in and third-party plugins, and one name -> class registry per kind.

Plugins are found through the ``hepfm`` entry-point group, which is also how the built-in ones
(``DEFAULT_PLUGINS``) are declared in hepfm's own pyproject. When hepfm runs from a source tree
that was not installed, the built-ins are registered directly under the same names, through the
same hooks.

Set ``HEPFM_LOAD_PLUGINS`` to a comma-separated list of entry-point names to load only those
third-party plugins (an empty value loads none); the built-ins are always loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pluggy

from . import hookspecs
from ._errors import HepfmError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Registry",
    "Registration",
    "get_plugin_manager",
    "heads",
    "datasets",
    "metrics",
    "registries",
    "reset",
]

ENTRY_POINT_GROUP = "hepfm"

#: Built-in plugins: entry-point name -> module, exactly as declared in pyproject.toml.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("builtin_heads", "hepfm_builtin.heads"),
    ("builtin_datasets", "hepfm_builtin.datasets"),
    ("builtin_converters", "hepfm_builtin.converters"),
    ("builtin_metrics", "hepfm_builtin.metrics"),
    ("builtin_pythia", "hepfm_builtin.pythia"),
)

T = TypeVar("T")


@dataclass(frozen=True)
class Registration(Generic[T]):
    """A registered component class and where it came from."""

    name: str
    cls: type[T]
    plugin: str
    package: str


class Registry(Generic[T]):
    """Name -> class for one kind of component; a second class under a taken name is refused."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registration[T]] = {}

    def register(self, cls: type[T], plugin: str = "?", package: str = "?") -> None:
        """Add a class under its ``name`` attribute."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise HepfmError(f"plugin {plugin}: {self.kind} class {cls.__qualname__} has no string `name`")
        if name in self._entries:
            old = self._entries[name]
            raise HepfmError(
                f"plugin {plugin} ({package}): {self.kind} name '{name}' is already registered by "
                f"plugin {old.plugin} ({old.package}); names must be unique"
            )
        for attr in ("Params", "description"):
            if not hasattr(cls, attr):
                raise HepfmError(f"plugin {plugin}: {self.kind} '{name}' lacks the `{attr}` attribute")
        self._entries[name] = Registration(name, cls, plugin, package)

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; an unknown name lists the known ones."""
        try:
            return self._entries[name].cls
        except KeyError:
            raise HepfmError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        known = ", ".join(sorted(self._entries)) or "(none installed)"
        return f"unknown {self.kind} '{name}'; known: {known}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries.values(), key=lambda r: r.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


_pm: pluggy.PluginManager | None = None
_registries: dict[str, Registry] | None = None


def _allowed_entry_points() -> set[str] | None:
    raw = os.environ.get("HEPFM_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_entry_points()
    if allowed is not None:
        builtin = {name for name, _ in DEFAULT_PLUGINS}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in builtin and ep.name not in allowed:
                pm.set_blocked(ep.name)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken third-party package must name itself, not crash the CLI
        raise HepfmError(f"a plugin in entry-point group '{ENTRY_POINT_GROUP}' failed to load: {exc!r}") from exc


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and allowed entry points registered."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("hepfm")
        pm.add_hookspecs(hookspecs)
        _load_entry_points(pm)
        for name, module in DEFAULT_PLUGINS:  # source tree not installed: same modules, same names
            if pm.get_plugin(name) is None:
                pm.register(importlib.import_module(module), name=name)
        _pm = pm
    return _pm


def _package_of(pm: pluggy.PluginManager, plugin: object) -> str:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return f"{dist.project_name} {dist.version}"
    module = getattr(plugin, "__name__", type(plugin).__name__)
    return f"{module.split('.')[0]} (not installed)"


_KINDS: dict[str, Callable] = {
    "head": lambda pm: pm.hook.hepfm_register_heads,
    "dataset": lambda pm: pm.hook.hepfm_register_datasets,
    "metric": lambda pm: pm.hook.hepfm_register_metrics,
}


def registries() -> dict[str, Registry]:
    """All registries by kind (``head``, ``dataset``, ``metric``), filled on first use."""
    global _registries
    if _registries is None:
        pm = get_plugin_manager()
        regs: dict[str, Registry] = {}
        for kind, hook_of in _KINDS.items():
            reg: Registry = Registry(kind)
            for impl in hook_of(pm).get_hookimpls():
                package = _package_of(pm, impl.plugin)
                for cls in impl.function() or []:
                    reg.register(cls, plugin=impl.plugin_name, package=package)
            regs[kind] = reg
        _registries = regs
    return _registries


def heads() -> Registry:
    """Registered head classes."""
    return registries()["head"]


def datasets() -> Registry:
    """Registered dataset classes."""
    return registries()["dataset"]


def metrics() -> Registry:
    """Registered metric classes."""
    return registries()["metric"]


def reset() -> None:
    """Forget the plugin manager and registries (after installing a plugin, or in tests)."""
    global _pm, _registries
    _pm = None
    _registries = None
