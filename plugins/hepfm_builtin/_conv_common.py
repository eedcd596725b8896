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


def slot_resonances(topology: dict[str, Any], processes: list[str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Per-resonance daughters and SPANet-style permutations from a generator's slot topology.

    A generator (``pythia``) describes one ``assignment`` target of named slots (``t_b``,
    ``tbar_q1``, ...), the slots each process fills and slot-swap symmetries. For the ``processes``
    of a store this gives the resonances a per-resonance format (SPANet's TARGETS) can hold:
    resonances that are no other's parent, with the daughters some process fills; and permutations:
    a swap inside one resonance becomes a daughter group, a swap of whole resonances an EVENT group
    (process-specific swaps only when every process has them).

    Returns:
        (resonance -> daughter names, permutations), both empty when there is nothing to export.
    """
    spec = topology.get("assignment") if isinstance(topology, dict) else None
    if not isinstance(spec, dict) or not spec.get("slots"):
        return {}, {}
    filled = {s for p in processes for alt in (spec.get("process_slots") or {}).get(p, []) for s in alt}
    info = spec.get("resonances") or {}
    parents = {r.get("parent") for r in info.values() if isinstance(r, dict)}
    resonances: dict[str, list[str]] = {}
    for name, r in info.items():
        if name in parents or not isinstance(r, dict):
            continue
        daughters = [s[len(name) + 1 :] for s in r.get("slots", []) if s in filled and s.startswith(f"{name}_")]
        if daughters:
            resonances[name] = daughters
    symmetries = spec.get("symmetries") or {}
    swaps = list(symmetries.get("all", []))
    specific = [k for k in symmetries if k != "all"]
    for key in specific:
        if processes and all(p == key for p in processes):
            swaps += symmetries[key]
    owner = {f"{r}_{d}": (r, d) for r, ds in resonances.items() for d in ds}
    permutations: dict[str, Any] = {}
    for swap in swaps:
        pairs = [(owner.get(a), owner.get(b)) for a, b in swap]
        if any(a is None or b is None for a, b in pairs):
            continue
        if all(a[0] == b[0] for a, b in pairs) and len(pairs) == 1:
            (r, d1), (_, d2) = pairs[0]
            permutations.setdefault(r, []).append([d1, d2])
        elif all(a[0] != b[0] and a[1] == b[1] for a, b in pairs):
            r1, r2 = pairs[0][0][0], pairs[0][1][0]
            if len(pairs) == len(resonances[r1]) == len(resonances[r2]):
                permutations.setdefault("EVENT", []).append([r1, r2])
    return resonances, permutations
