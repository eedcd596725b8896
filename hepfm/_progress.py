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


class _RateColumn(ProgressColumn):
    """Completed units per second."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextmanager
def progress(description: str, total: int | None, unit: str = "events") -> Iterator[callable]:
    """Show a bar; yields ``advance(n)``. Silenced with ``HEPFM_PROGRESS=0``."""
    disable = os.environ.get("HEPFM_PROGRESS", "1") == "0"
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance
