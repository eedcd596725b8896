"""Safe YAML reading that remembers the line of every key, for errors that name file, line and key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ._errors import HepfmError

__all__ = ["read_yaml", "key_lines", "line_of", "dotted", "located"]


def key_lines(node: yaml.Node | None, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, key.value)
            out[path] = key.start_mark.line + 1
            key_lines(value, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[(*prefix, i)] = value.start_mark.line + 1
            key_lines(value, (*prefix, i), out)
    return out


def line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of ``loc``, or of its closest parent that has one."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def dotted(loc: tuple) -> str:
    """``("train", "lr")`` -> ``"train.lr"``."""
    return ".".join(str(p) for p in loc) or "(top level)"


def located(path: str | os.PathLike, lines: dict[tuple, int], loc: tuple, message: str) -> str:
    """``FILE:LINE: key.path: message`` (the line where known)."""
    line = line_of(lines, loc)
    return f"{path}{f':{line}' if line else ''}: {dotted(loc)}: {message}"


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> tuple[Any, dict[tuple, int]]:
    """Parse a file with ``yaml.safe_load``; return the data and each key's line.

    A missing file, unreadable bytes or a syntax error raise one ``HepfmError`` line naming the
    file (and the line of a syntax error).
    """
    path = Path(path)
    if not path.is_file():
        raise HepfmError(f"{path}: no such {what}")
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HepfmError(f"{path}{line}: YAML syntax error: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HepfmError(f"{path}: cannot read ({exc})") from None
    return data, key_lines(node)
