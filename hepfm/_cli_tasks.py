"""``hepfm`` task commands: validate, plugins, pretrain, finetune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from . import plugins
from ._cli_app import SetOpt, WandbProjectOpt, _resolve, command
from ._progress import console, err_console


@command()
def validate(
    tasks: Annotated[list[Path], typer.Argument(help="task YAML files, or names of shipped ones (qe_ttbar)")],
    set_: SetOpt = None,
) -> None:
    """Validate task files; report every problem (file:line: key: message) at once."""
    from ._task_files import task_file
    from .tasks import validate_files

    report = validate_files([task_file(t) for t in tasks], set_ or [])
    bad = 0
    for path, problems in report.items():
        if problems:
            bad += 1
            for p in problems:
                err_console.print(f"[bold red]error:[/] {escape(p)}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]ok[/] {path}", highlight=False)
    if bad:
        if len(report) > 1:
            err_console.print(f"{bad} of {len(report)} task files invalid", highlight=False)
        raise typer.Exit(1)


@command(name="plugins")
def list_plugins(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every registered component (heads, datasets, generators, converters, metrics, commands), broken plugins."""
    regs = plugins.registries()
    rows = [
        {
            "kind": kind,
            "name": r.name,
            "description": _describe(r.cls),
            "plugin": r.plugin,
            "package": r.package,
        }
        for kind, reg in regs.items()
        for r in reg
    ]
    rows += [
        {"kind": "broken", "name": b.plugin, "description": b.reason, "plugin": b.plugin, "package": b.package}
        for b in plugins.broken()
    ]
    if json_out:
        console.print_json(json.dumps(rows))
        return
    t = Table(title="hepfm plugins", title_justify="left")
    for col in ("kind", "name", "description", "plugin", "package"):
        t.add_column(col)
    for row in rows:
        style = "red" if row["kind"] == "broken" else None
        t.add_row(*(escape(row[c]) for c in ("kind", "name", "description", "plugin", "package")), style=style)
    console.print(t)


def _describe(item) -> str:
    doc = getattr(item, "description", None) or (item.__doc__ or "").strip().split("\n")[0]
    return str(doc)


WandbOpt = Annotated[str, typer.Option("--wandb", help="offline (default, no network) | online | disabled")]
DataOpt = Annotated[
    list[str] | None,
    typer.Option(help="event store, URL, glob or shard folder; repeat for a dataset of several (overrides the task's)"),
]


def _data_override(data: list[str] | None) -> list[str]:
    """``--data`` as a ``--set`` override (JSON is YAML: a path or glob is never read as YAML syntax)."""
    if not data:
        return []
    return [f"dataset.params.path={json.dumps(data[0] if len(data) == 1 else list(data))}"]


def _wandb_project(project: str | None) -> None:
    if project:
        import os

        os.environ["WANDB_PROJECT"] = project


def _train(task, out: Path | None, resume: bool, fraction: float, wandb: str) -> None:
    from .train import train

    result = train(task, out or Path("runs") / task.name, resume=resume, fraction=fraction, wandb_mode=wandb)
    console.print(
        f"trained {result.steps} steps; best validation loss {result.best_val}; run folder {result.run} "
        f"(checkpoints/best.safetensors, metrics.jsonl, MODEL_CARD.md)",
        highlight=False,
    )


@command()
def pretrain(
    task: Annotated[Path | None, typer.Argument(help="task YAML (default: tasks/pretrain.yaml)")] = None,
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option(help="run folder")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run")] = False,
    wandb: WandbOpt = "offline",
    wandb_project: WandbProjectOpt = None,
) -> None:
    """Pretrain a backbone (self-supervised stage, then multi-task), as the task's stages declare."""
    _wandb_project(wandb_project)
    if task is None:  # ./tasks/pretrain.yaml, else the one shipped with hepfm
        task = Path("tasks/pretrain.yaml")
    overrides = list(set_ or []) + _data_override(data)
    _train(_resolve(task, overrides), out, resume, 1.0, wandb)


@command()
def finetune(
    task: Annotated[Path, typer.Argument(help="task YAML, or the name of a shipped one (qe_ttbar)")],
    init: Annotated[Path | None, typer.Option(help="pretrained run folder (or exported model folder)")] = None,
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option(help="run folder")] = None,
    fraction: Annotated[
        float, typer.Option(help="train on this fraction of the training split", min=0.0, max=1.0)
    ] = 1.0,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run")] = False,
    wandb: WandbOpt = "offline",
    wandb_project: WandbProjectOpt = None,
) -> None:
    """Fine-tune a pretrained backbone with the heads a task names (or train from scratch without init)."""
    _wandb_project(wandb_project)
    overrides = list(set_ or []) + _data_override(data)
    overrides += [f"init.checkpoint={init}"] if init else []
    _train(_resolve(task, overrides), out, resume, fraction, wandb)
