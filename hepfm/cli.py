"""The ``hepfm`` command line: each command parses, logs what it resolved, and calls the library.

The commands live in private modules by group: ``_cli_app`` (the app, shared options, one-line
errors), ``_cli_data`` (generate, convert, export, merge, inspect), ``_cli_tasks`` (validate,
plugins, pretrain, finetune), ``_cli_results`` (embed, probe, evaluate, predict, anomaly, xyh,
study) and ``_cli_bench`` (bench). This module adds plugin commands and is the entry point.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import __version__, plugins
from ._cli_app import _command, app
from ._progress import console, err_console

# isort: off
# importing a command group registers its commands on ``app``, in this order (the order of the help)
from . import _cli_data, _cli_tasks, _cli_results, _cli_bench  # noqa: E402, F401

# isort: on


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    """hepfm: pretrain once on simulated collisions, fine-tune or probe for many analyses."""
    if version:
        console.print(f"hepfm {__version__}")
        raise typer.Exit()


def add_plugin_commands() -> list[str]:
    """Add the commands plugins register (``hepfm_register_commands``) to ``app``; returns their names.

    A plugin command may not shadow a built-in one: it is skipped with a warning naming its plugin.
    """
    taken = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands}
    added = []
    for r in plugins.commands():
        if r.name in taken:
            if getattr(r.cls, "__wrapped__", None) is None:  # not one this function added earlier
                err_console.print(f"warning: plugin {r.plugin} ({r.package}): command '{r.name}' is taken; skipped")
            continue
        app.command(name=r.name)(_command(r.cls))
        taken.add(r.name)
        added.append(r.name)
    return added


def main() -> None:
    """Console-script entry point.

    Plugin commands are added (which loads every plugin) only when the command asked for is not a
    built-in one, or for the top-level help that lists them: built-in commands start without it.
    """
    import sys

    builtin = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands}
    first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if first not in builtin:
        add_plugin_commands()
    app()
