"""SPANet's event YAML: inputs, the decay tree, its symmetries, regression and classification targets.

Read by the ``spanet`` converter (``_conv_spanet``) for every input file; problems are one line
naming the event file and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hepfm import HepfmError
from hepfm.sdk import read_yaml

from ._conv_common import permutation_problem

__all__ = ["EventInfo", "load_event_info", "target_name"]


# --------------------------------------------------------------------------------------------
# the event YAML
# --------------------------------------------------------------------------------------------
@dataclass
class EventInfo:
    """A SPANet event file: inputs, the decay tree, its symmetries, regression and classification targets."""

    path: Path
    sequential: dict[str, dict[str, Any]]
    global_: dict[str, dict[str, Any]]
    event: dict[str, list[str]]
    permutations: dict[str, Any]
    regressions: list[tuple[str, ...]] = field(default_factory=list)
    classifications: list[tuple[str, ...]] = field(default_factory=list)


def _item_name(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and len(item) == 1:
        return str(next(iter(item)))
    return None


def _tree_targets(section: str, value: Any, event: dict[str, list[str]], where: Path) -> list[tuple[str, ...]]:
    """REGRESSIONS / CLASSIFICATIONS as dataset paths: (EVENT, x), (p, PARTICLE, x), (p, d, x)."""
    if value in (None, {}):
        return []
    if not isinstance(value, dict):
        raise HepfmError(f"{where}: {section}: expected a mapping of EVENT and particle names")
    out: list[tuple[str, ...]] = []

    def names(items: Any, key: str) -> list[str]:
        if items is None:
            return []
        if not isinstance(items, list):
            raise HepfmError(f"{where}: {key}: expected a list of target names")
        got = [_item_name(i) for i in items]
        if None in got:
            raise HepfmError(f"{where}: {key}: each entry is a name (or name: type)")
        return got  # type: ignore[return-value]

    for key, items in value.items():
        if key == "EVENT":
            out += [("EVENT", x) for x in names(items, f"{section}.EVENT")]
            continue
        if key not in event:
            raise HepfmError(f"{where}: {section}.{key}: unknown particle; EVENT declares {', '.join(event) or 'none'}")
        parts = items.items() if isinstance(items, dict) else []
        if isinstance(items, list):
            parts = []
            for entry in items:
                if not isinstance(entry, dict) or len(entry) != 1:
                    raise HepfmError(f"{where}: {section}.{key}: entries are PARTICLE: [...] or <daughter>: [...]")
                parts.append(next(iter(entry.items())))
        for sub, sub_items in parts:
            if sub != "PARTICLE" and sub not in event[key]:
                raise HepfmError(f"{where}: {section}.{key}.{sub}: unknown daughter of '{key}'")
            out += [(key, sub, x) for x in names(sub_items, f"{section}.{key}.{sub}")]
    return out


def load_event_info(path: Path) -> EventInfo:
    """Parse and check a SPANet event YAML; problems are one line naming the file and key."""
    if not path.is_file():
        raise HepfmError(f"{path}: no such SPANet event file")
    data, _ = read_yaml(path, "SPANet event file")
    if not isinstance(data, dict):
        raise HepfmError(f"{path}: a SPANet event file is a mapping with INPUTS and EVENT")
    inputs = data.get("INPUTS")
    if not isinstance(inputs, dict) or not isinstance(inputs.get("SEQUENTIAL"), dict) or not inputs["SEQUENTIAL"]:
        raise HepfmError(f"{path}: INPUTS.SEQUENTIAL: missing; declare at least one sequential input")
    sequential = {str(k): dict(v or {}) for k, v in inputs["SEQUENTIAL"].items()}
    global_ = {str(k): dict(v or {}) for k, v in (inputs.get("GLOBAL") or {}).items()}
    raw_event = data.get("EVENT") or {}
    if not isinstance(raw_event, dict):
        raise HepfmError(f"{path}: EVENT: expected a mapping of particle -> list of daughters")
    event: dict[str, list[str]] = {}
    for particle, daughters in raw_event.items():
        if not isinstance(daughters, list) or not daughters:
            raise HepfmError(f"{path}: EVENT.{particle}: expected a list of daughters")
        names = [_item_name(d) for d in daughters]
        if None in names or len(set(names)) != len(names):
            raise HepfmError(f"{path}: EVENT.{particle}: daughters must be distinct names (or name: input)")
        event[str(particle)] = [str(n) for n in names]
    permutations = data.get("PERMUTATIONS") or {}
    problem = permutation_problem(permutations, event)
    if problem is not None:
        raise HepfmError(f"{path}: {'.'.join(map(str, ('PERMUTATIONS', *problem[0])))}: {problem[1]}")
    return EventInfo(
        path,
        sequential,
        global_,
        event,
        dict(permutations),
        _tree_targets("REGRESSIONS", data.get("REGRESSIONS"), event, path),
        _tree_targets("CLASSIFICATIONS", data.get("CLASSIFICATIONS"), event, path),
    )


def target_name(parts: tuple[str, ...]) -> str:
    if parts[0] == "EVENT":
        return parts[1]
    if parts[1] == "PARTICLE":
        return f"{parts[0]}/{parts[2]}"
    return "/".join(parts)
