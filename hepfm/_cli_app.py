"""The ``hepfm`` application: the Typer app, options shared by several commands, and one-line error handling."""

from __future__ import annotations

import enum
import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._errors import HepfmError
from ._outputs import FS_REFUSALS, os_error_line
from ._progress import err_console

app = typer.Typer(
    name="hepfm",
    help="Event-level foundation models for collider physics.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


class SplitName(enum.StrEnum):
    """Splits a command can read."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


class Which(enum.StrEnum):
    """Checkpoints of a run folder."""

    best = "best"
    last = "last"


class Executor(enum.StrEnum):
    """Where sharded generation and conversion run."""

    dask = "dask"
    local = "local"


class WeightsName(enum.StrEnum):
    """Weights of a checkpoint."""

    ema = "ema"
    raw = "raw"


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a task key, e.g. train.max_steps=30")]
DeviceOpt = Annotated[str, typer.Option("--device", help="where the model runs: cpu | cuda | cuda:N")]


def _command(fn):
    """Turn a ``HepfmError`` into one red line on stderr and its exit status; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HepfmError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # the file system said no: one line naming the path, never a traceback
            if exc.errno not in FS_REFUSALS:
                raise
            line = os_error_line(exc, kwargs.get("out"))
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def command(*args, **kwargs):
    """``app.command`` with the one-line error handling of ``_command``."""

    def decorate(fn):
        return app.command(*args, **kwargs)(_command(fn))

    return decorate


def _resolve(task: Path, overrides: list[str] | None):
    from ._task_files import task_file
    from .tasks import load_task

    task = task_file(task)
    resolved = load_task(task, overrides or [])
    heads = ", ".join(f"{k}={h.name}" for k, h in resolved.heads.items())
    t = resolved.train
    model = resolved.model.preset if resolved.init is None else f"of {resolved.init.checkpoint}"
    err_console.print(
        f"resolved task {resolved.name} from {task}: data {resolved.dataset.params.get('path')}, "
        f"model {model}, heads [{heads}], steps {t.max_steps or str(t.epochs) + ' epochs'}, "
        f"batch {t.batch_size}, lr {t.lr}, engine {t.engine}",
        highlight=False,
        markup=False,
    )
    return resolved


WandbProjectOpt = Annotated[
    str | None, typer.Option("--wandb-project", help="W&B project (default: $WANDB_PROJECT, else hepfm)")
]
