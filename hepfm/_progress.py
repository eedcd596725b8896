"""Rich progress bars with events/s and ETA, on stderr, for anything longer than a few seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["progress", "console", "err_console"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def format_rate(speed: float | None, unit: str) -> str:
    """``1,234 events/s``, ``2.5 steps/s``, or below one per second ``3.2 s/step`` (empty when unknown)."""
    if not speed or speed <= 0:
        return ""
    if speed >= 100:
        return f"{speed:,.0f} {unit}/s"
    if speed >= 1:
        return f"{speed:.1f} {unit}/s"
    single = unit[:-1] if unit.endswith("s") else unit
    return f"{1 / speed:.1f} s/{single}"


class _RateColumn(ProgressColumn):
    """Completed units per second: the recent speed, else the average since the start (never a bare dash)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed and task.elapsed and task.completed:
            speed = task.completed / task.elapsed
        return Text(format_rate(speed, self.unit) or "", style="cyan")


@contextmanager
def progress(description: str, total: int | None, unit: str = "events") -> Iterator[callable]:
    """Show a bar; yields ``advance(n, note=None)``; ``note`` (e.g. ``loss 0.42``) shows after the rate.

    Silenced with ``HEPFM_PROGRESS=0``.
    """
    disable = os.environ.get("HEPFM_PROGRESS", "1") == "0"
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TextColumn("{task.fields[note]}", style="magenta"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total, note="")

        def advance(n: int, note: str | None = None) -> None:
            if note is None:
                bar.advance(task, n)
            else:
                bar.update(task, advance=n, note=note)

        yield advance
