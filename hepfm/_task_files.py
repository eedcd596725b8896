"""Task files by name: ``hepfm finetune qe_ttbar`` finds the task file that ships with hepfm."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import TaskError

__all__ = ["shipped_tasks", "task_file"]


def _shipped_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    # installed wheel: hepfm/task_files/; source tree: the repository's tasks/
    return [d for d in (here / "task_files", here.parent / "tasks") if d.is_dir()]


def shipped_tasks() -> dict[str, Path]:
    """Name -> file of every task file that ships with hepfm."""
    found: dict[str, Path] = {}
    for d in _shipped_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def task_file(name: str | os.PathLike) -> Path:
    """``name`` when it is a file, else the shipped task file of that name (``qe_ttbar`` or ``qe_ttbar.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_tasks()
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if stem in shipped and (len(path.parts) == 1 or path.parts[0] == "tasks"):
        return shipped[stem]
    if len(path.parts) == 1 or path.parts[0] == "tasks":
        raise TaskError(
            [f"{name}: no such task file, and no shipped task of that name (shipped: {', '.join(shipped)})"]
        )
    return path  # a path elsewhere: the loader reports it missing
