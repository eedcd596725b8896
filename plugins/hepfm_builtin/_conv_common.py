"""What the built-in converters share: the decay-topology attribute and its SPANet-style symmetries.

A store's ``topology`` attribute (docs/convert.md)::

    {"resonances": {"t1": ["b", "q1", "q2"], ...},       # resonance -> daughters, in target order
     "permutations": {"EVENT": [["t1", "t2"]],           # interchangeable resonances
                      "t1": [["q1", "q2"]]}}             # interchangeable daughters

and for each resonance R an int target ``assignment/R`` of shape [len(daughters)]: the index of the
object matched to each daughter, -1 when none. ``permutations`` follows SPANet's PERMUTATIONS: a
list of complete symmetric groups (lists of names) or of explicit cycles (lists of lists of names).
"""

from __future__ import annotations

from typing import Any

ASSIGNMENT_PREFIX = "assignment/"


def assignment_target(resonance: str) -> str:
    """Name of the assignment target of a resonance."""
    return f"{ASSIGNMENT_PREFIX}{resonance}"


def _names(group: Any) -> list[Any]:
    if isinstance(group, list | tuple):
        return [name for item in group for name in _names(item)]
    return [group]


def permutation_problem(permutations: Any, resonances: dict[str, list[str]]) -> tuple[tuple, str] | None:
    """The first problem of a PERMUTATIONS block as (key path, message), or None when it is valid."""
    if not isinstance(permutations, dict):
        return (), "must be a mapping of EVENT and resonance names to lists of symmetric groups"
    for key, groups in permutations.items():
        if key == "EVENT":
            known, what = list(resonances), "resonance"
        elif key in resonances:
            known, what = resonances[key], f"daughter of '{key}'"
        else:
            return (key,), f"unknown resonance '{key}'; known: {', '.join(resonances) or 'none'}"
        if not isinstance(groups, list):
            return (key,), "must be a list of symmetric groups, e.g. [[q1, q2]]"
        for i, group in enumerate(groups):
            if not isinstance(group, list) or len(group) < 2 and not any(isinstance(g, list) for g in group):
                return (key, i), "a symmetric group lists at least two names, e.g. [q1, q2]"
            for name in _names(group):
                if name not in known:
                    return (key, i), f"unknown {what} '{name}'; known: {', '.join(map(str, known))}"
    return None


def make_topology(resonances: dict[str, list[str]], permutations: dict[str, Any]) -> dict[str, Any]:
    """The store attribute (empty when there are no resonances)."""
    if not resonances:
        return {}
    return {
        "resonances": {k: list(v) for k, v in resonances.items()},
        "permutations": {k: v for k, v in permutations.items() if v},
    }
