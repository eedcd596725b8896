"""Atomic file writes: a temporary file beside the target, then a rename."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    from ._outputs import check_parents

    check_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (with a final newline), atomically."""
    return write_atomic(path, json.dumps(obj, indent=2) + "\n")
