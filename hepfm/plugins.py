"""Plugin manager: built-in and third-party plugins, and one name -> class registry per kind.

Built-in plugins are the modules of ``DEFAULT_PLUGINS``, registered directly, through the same
hooks a third-party package implements. Third-party plugins are found through the ``hepfm``
entry-point group, loaded one at a time: a plugin that fails to import, implements a hook that
does not exist, returns something that breaks its kind's contract (``hepfm.components.CONTRACTS``),
or registers a name another plugin already took, is set aside as *broken* (``hepfm plugins``
lists it with its entry point, package and reason). Everything else keeps working; only a command
that needs a component of the broken plugin fails, with one line that names it.

Environment:

- ``HEPFM_LOAD_PLUGINS=a,b``: load only these third-party entry points (empty: none).
- ``HEPFM_DISABLE_PLUGINS=a,b``: do not load these plugins (entry-point or built-in names).

A name in either variable that matches no plugin is reported on stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pluggy
from pydantic import BaseModel

from . import __version__, hookspecs
from ._errors import HepfmError
from .components import CONTRACTS

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Registry",
    "Registration",
    "BrokenPlugin",
    "get_plugin_manager",
    "heads",
    "datasets",
    "generators",
    "converters",
    "metrics",
    "commands",
    "broken",
    "registries",
    "reset",
]

ENTRY_POINT_GROUP = "hepfm"

#: The built-in plugins (plugin name -> module), declared here only; registered like any plugin.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("builtin_heads", "hepfm_builtin.heads"),
    ("builtin_datasets", "hepfm_builtin.datasets"),
    ("builtin_converters", "hepfm_builtin.converters"),
    ("builtin_metrics", "hepfm_builtin.metrics"),
    ("builtin_pythia", "hepfm_builtin.pythia"),
)
_BUILTIN_PACKAGE = f"hepfm {__version__} (built-in)"

#: kind -> hook name; ``command`` registers functions, every other kind classes.
KINDS: dict[str, str] = {**{k: c.hook for k, c in CONTRACTS.items()}, "command": "hepfm_register_commands"}

T = TypeVar("T")


@dataclass(frozen=True)
class Registration(Generic[T]):
    """A registered component class and where it came from."""

    name: str
    cls: type[T]
    plugin: str
    package: str


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that was set aside, and why."""

    plugin: str
    package: str
    reason: str


class Registry(Generic[T]):
    """Name -> class for one kind of component; a second class under a taken name is refused."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registration[T]] = {}
        self.broken: list[BrokenPlugin] = []  # set by ``registries()``: mentioned when a name is unknown

    def check(self, item: Any, plugin: str = "?", package: str = "?") -> str:
        """The name ``item`` registers under; ``HepfmError`` when it breaks its kind's contract."""
        where = f"plugin {plugin} ({package})"
        if self.kind == "command":
            if inspect.isclass(item) or not callable(item):
                raise HepfmError(f"{where}: command {item!r} is not a function")
            return getattr(item, "hepfm_name", None) or item.__name__.replace("_", "-")
        if not inspect.isclass(item):
            raise HepfmError(f"{where}: registers an instance of {type(item).__qualname__} as a {self.kind}; "
                             f"return the class")  # fmt: skip
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise HepfmError(f"{where}: {self.kind} class {item.__qualname__} has no string `name`")
        contract = CONTRACTS.get(self.kind)
        for member in contract.required if contract else ("name", "description", "Params"):
            if not hasattr(item, member):
                raise HepfmError(f"{where}: {self.kind} '{name}' lacks the `{member}` member its protocol requires")
        params = item.Params
        if not (inspect.isclass(params) and issubclass(params, BaseModel)):
            raise HepfmError(f"{where}: {self.kind} '{name}': `Params` is not a pydantic model class")
        return name

    def register(self, item: Any, plugin: str = "?", package: str = "?") -> str:
        """Add a class (or, for commands, a function) under its name, after checking it; returns the name."""
        name = self.check(item, plugin, package)
        if name in self._entries:
            old = self._entries[name]
            raise HepfmError(
                f"plugin {plugin} ({package}): {self.kind} name '{name}' is already registered by "
                f"plugin {old.plugin} ({old.package}); names must be unique"
            )
        self._entries[name] = Registration(name, item, plugin, package)
        return name

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; an unknown name lists the known ones."""
        try:
            return self._entries[name].cls
        except KeyError:
            raise HepfmError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        known = ", ".join(sorted(self._entries)) or "(none installed)"
        msg = f"unknown {self.kind} '{name}'; known: {known}"
        if self.broken:
            msg += "; broken plugins: " + ", ".join(f"{b.plugin} ({b.reason})" for b in self.broken)
        return msg

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries.values(), key=lambda r: r.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


_pm: pluggy.PluginManager | None = None
_registries: dict[str, Registry] | None = None
_packages: dict[str, str] = {}
_broken: list[BrokenPlugin] = []


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    specs = set(KINDS.values())
    return [
        name
        for name in dir(plugin)
        if name.startswith("hepfm_") and name not in specs and pm.parse_hookimpl_opts(plugin, name) is not None
    ]


def _register(pm: pluggy.PluginManager, plugin: object, name: str, package: str) -> None:
    """Register one plugin, or set it aside as broken (a hook that does not exist, a bad signature)."""
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        known = ", ".join(KINDS.values())
        _broken.append(BrokenPlugin(name, package, f"implements unknown hook '{unknown[0]}' (hooks: {known})"))
        return
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # pluggy's PluginValidationError: wrong hook arguments, ...
        _broken.append(BrokenPlugin(name, package, f"{type(exc).__name__}: {exc}"))
        return
    _packages[name] = package


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and allowed entry points registered."""
    global _pm
    if _pm is not None:
        return _pm
    _packages.clear()
    _broken.clear()
    pm = pluggy.PluginManager("hepfm")
    pm.add_hookspecs(hookspecs)
    load, disable = _names_from_env("HEPFM_LOAD_PLUGINS"), _names_from_env("HEPFM_DISABLE_PLUGINS") or set()
    builtin_names = {name for name, _ in DEFAULT_PLUGINS}
    for name, module in DEFAULT_PLUGINS:
        if name not in disable:
            _register(pm, importlib.import_module(module), name, _BUILTIN_PACKAGE)
    eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name not in builtin_names]
    seen = builtin_names | {ep.name for ep in eps}
    for var, names in (("HEPFM_LOAD_PLUGINS", load or set()), ("HEPFM_DISABLE_PLUGINS", disable)):
        for name in sorted(names - seen):
            _warn(f"{var} names '{name}', which matches no plugin (plugins: {', '.join(sorted(seen))})")
    for ep in sorted(eps, key=lambda e: e.name):
        if ep.name in disable or (load is not None and ep.name not in load) or pm.has_plugin(ep.name):
            continue
        package = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        try:
            plugin = ep.load()
        except Exception as exc:
            _broken.append(BrokenPlugin(ep.name, package, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        _register(pm, plugin, ep.name, package)
    _pm = pm
    return _pm


def _collect(pm: pluggy.PluginManager) -> dict[str, list[tuple[str, Any]]]:
    """Plugin name -> [(kind, item)] of everything it returns, or it is set aside as broken."""
    out: dict[str, list[tuple[str, Any]]] = {}
    failed: set[str] = set()
    for kind, hook in KINDS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin_name in failed:
                continue
            try:
                items = list(impl.function() or [])
            except Exception as exc:
                failed.add(impl.plugin_name)
                _broken.append(BrokenPlugin(impl.plugin_name, _packages.get(impl.plugin_name, "?"),
                                            f"{hook}() raised {type(exc).__name__}: {exc}"))  # fmt: skip
                continue
            out.setdefault(impl.plugin_name, []).extend((kind, item) for item in items)
    return {name: items for name, items in out.items() if name not in failed}


def registries() -> dict[str, Registry]:
    """All registries by kind (``head``, ``dataset``, ``generator``, ``converter``, ``metric``, ``command``).

    Each plugin's components are checked and registered together: if one breaks its contract or
    takes a name already taken, none of that plugin's components are registered and the plugin is
    listed by ``broken()``.
    """
    global _registries
    if _registries is not None:
        return _registries
    pm = get_plugin_manager()
    regs: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
    order = [name for name, _ in DEFAULT_PLUGINS] + sorted(n for n in _packages if n not in dict(DEFAULT_PLUGINS))
    collected = _collect(pm)
    for plugin in order:
        items = collected.get(plugin, [])
        package = _packages.get(plugin, "?")
        staged: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        try:
            for kind, item in items:
                name = staged[kind].register(item, plugin, package)  # checks the contract
                if name in regs[kind]:
                    old = regs[kind]._entries[name]
                    raise HepfmError(f"{kind} name '{name}' is already registered by plugin {old.plugin} "
                                     f"({old.package})")  # fmt: skip
        except HepfmError as exc:
            reason = str(exc).removeprefix(f"plugin {plugin} ({package}): ")
            _broken.append(BrokenPlugin(plugin, package, reason))
            continue
        for kind, reg in staged.items():
            regs[kind]._entries.update(reg._entries)
    for reg in regs.values():
        reg.broken = list(_broken)
    _registries = regs
    return _registries


def heads() -> Registry:
    """Registered head classes."""
    return registries()["head"]


def datasets() -> Registry:
    """Registered dataset classes (what a task's ``dataset`` names)."""
    return registries()["dataset"]


def generators() -> Registry:
    """Registered generator classes (``hepfm generate``)."""
    return registries()["generator"]


def converters() -> Registry:
    """Registered converter classes (``hepfm convert --format``, ``hepfm export --format``)."""
    return registries()["converter"]


def metrics() -> Registry:
    """Registered metric classes."""
    return registries()["metric"]


def commands() -> Registry:
    """Registered plugin commands (functions)."""
    return registries()["command"]


def broken() -> list[BrokenPlugin]:
    """Plugins set aside (failed import, unknown hook, contract broken, duplicate name)."""
    registries()
    return list(_broken)


def reset() -> None:
    """Forget the plugin manager and registries (after installing a plugin, or in tests)."""
    global _pm, _registries
    _pm = None
    _registries = None
