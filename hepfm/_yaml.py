"""Safe YAML reading with limits, remembering the line of every key for errors naming file, line and key.

Every YAML hepfm reads goes through ``load_yaml`` (text) or ``read_yaml`` (a file): ``SafeLoader``
only (no Python objects), a size limit, a nesting-depth limit, a limit on the nodes an alias may
expand to (so a "billion laughs" document is refused at once instead of exhausting memory), and
duplicate mapping keys refused (YAML says keys are unique; PyYAML would silently keep the last).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ._errors import HepfmError

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "load_yaml",
    "read_yaml",
    "key_lines",
    "line_of",
    "dotted",
    "located",
]

MAX_YAML_BYTES = 16 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


class _Refused(yaml.YAMLError):
    """A document over a limit or with a duplicate key (reported like a syntax error, with its line)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _UniqueKeyLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused("a mapping key must be a plain value, not a list or mapping", key_node.start_mark)
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise _Refused(f"duplicate key '{key_node.value}' (first on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _check_limits(text: str) -> None:
    """Refuse too deep nesting and aliases expanding past ``MAX_YAML_NODES``, from the event stream.

    The scan is iterative and linear in the text: each anchored collection's expanded size is
    remembered, and an alias adds that size, so the expanded total is known without expanding.
    """
    sizes: dict[str, int] = {}
    stack: list[list] = [[0, None]]  # [expanded nodes so far, anchor] per open collection
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) > MAX_YAML_DEPTH:
                raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
            stack.append([0, event.anchor])
        elif isinstance(event, yaml.CollectionEndEvent):
            count, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = count + 1
            stack[-1][0] += count + 1
        elif isinstance(event, yaml.ScalarEvent):
            stack[-1][0] += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            stack[-1][0] += sizes.get(event.anchor, 1)
        else:
            continue
        if stack[-1][0] > MAX_YAML_NODES or (len(stack) > 1 and stack[0][0] > MAX_YAML_NODES):
            raise _Refused(
                f"expands to more than {MAX_YAML_NODES:,} values (aliases repeating aliases?)",
                event.start_mark,
            )


def load_yaml(text: str, source: str = "<text>") -> tuple[Any, dict[tuple, int]]:
    """Parse YAML text safely and within limits; return the data and each key's line.

    Args:
        text: The document.
        source: Name used in errors (a file path, ``--set key``).

    Raises:
        HepfmError: One line ``SOURCE:LINE: YAML ...: problem`` for a syntax error, a duplicate
            key, nesting deeper than ``MAX_YAML_DEPTH`` or more than ``MAX_YAML_NODES`` values.
    """
    if len(text) > MAX_YAML_BYTES:
        raise HepfmError(f"{source}: {len(text):,} characters, over the {MAX_YAML_BYTES:,} hepfm reads as YAML")
    try:
        _check_limits(text)
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "YAML refused" if isinstance(exc, _Refused) else "YAML syntax error"
        raise HepfmError(f"{source}{line}: {kind}: {problem}") from None
    except RecursionError:
        raise HepfmError(f"{source}: YAML refused: nested too deeply") from None
    return data, key_lines(node)


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
    """Read a file with ``load_yaml``; return the data and each key's line.

    A missing file, unreadable bytes, a file over ``MAX_YAML_BYTES``, a syntax error or a refused
    document raise one ``HepfmError`` line naming the file (and the line where known).
    """
    path = Path(path)
    if not path.is_file():
        raise HepfmError(f"{path}: no such {what}")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise HepfmError(f"{path}: {size:,} bytes, over the {MAX_YAML_BYTES:,} hepfm reads as a {what}")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise HepfmError(f"{path}: cannot read ({exc})") from None
    return load_yaml(text, str(path))
