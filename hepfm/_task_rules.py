"""Rules across the keys of a task file: what training or evaluation would refuse, known from the file alone.

Every rule reads the raw task mapping (after ``--set`` overrides) and returns ``(loc, message)``
problems, one per thing wrong, each at the key to change. A part of the mapping that is malformed
(a list where a mapping belongs, an unknown plugin name) is skipped here: the field validation
reports it, and ``hepfm.tasks.load_task`` reports both kinds together, in one pass.

The rules:

- a task names at least one head;
- every head a stage names is under ``heads:``, and the stages' fractions sum to 1;
- a masking ramp (``train.stages.N.mask_fraction``) needs a head that masks (a head class with a
  ``set_mask_fraction`` method, e.g. ``visible_diffusion``);
- ``train.zero_stage`` 3 is refused (hepfm's EMA and single-file checkpoints need the weights whole
  on every rank), and stages 1-2 need ``train.engine: deepspeed``;
- a metric parameter naming a head (``head``, ``*_head``) names a key under ``heads:``;
- no two metrics report under the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import plugins

__all__ = ["RULES", "metric_keys", "rule_problems"]

Problem = tuple[tuple, str]


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _head_classes(data: dict) -> dict[str, type] | None:
    """Head key -> registered class; ``None`` when a head is malformed or unknown (reported elsewhere)."""
    registry = plugins.registries()["head"]
    classes = {}
    for key, ref in _mapping(data.get("heads")).items():
        name = ref.get("name") if isinstance(ref, dict) else None
        if not isinstance(name, str) or name not in registry:
            return None
        classes[key] = registry.get(name)
    return classes


def _some_head(data: dict) -> list[Problem]:
    heads = data.get("heads")
    if heads is None or (isinstance(heads, dict) and not heads):
        return [(("heads",), "a task needs at least one head, e.g. heads: {process: {name: classification}}")]
    return []


def _stages(data: dict) -> list[Problem]:
    stages = _list(_mapping(data.get("train")).get("stages"))
    heads = data.get("heads")
    problems: list[Problem] = []
    for i, st in enumerate(stages):
        named = _mapping(st).get("heads")
        if isinstance(heads, dict) and isinstance(named, list):
            unknown = sorted({str(h) for h in named} - {str(k) for k in heads})
            if unknown:
                message = f"stage '{st.get('name')}' names heads {unknown} that are not under heads:"
                problems.append((("train", "stages", i, "heads"), message))
    fractions = [_mapping(st).get("fraction") for st in stages]
    if fractions and all(isinstance(f, int | float) and not isinstance(f, bool) for f in fractions):
        total = sum(fractions)
        if abs(total - 1.0) > 1e-6:
            problems.append((("train", "stages"), f"the stages' fractions sum to {total:g}; they must sum to 1"))
    return problems


def _masking(data: dict) -> list[Problem]:
    stages = _list(_mapping(data.get("train")).get("stages"))
    ramps = [i for i, st in enumerate(stages) if _mapping(st).get("mask_fraction") is not None]
    classes = _head_classes(data)
    if not ramps or classes is None or any(hasattr(cls, "set_mask_fraction") for cls in classes.values()):
        return []
    maskers = [r.name for r in plugins.registries()["head"] if hasattr(r.cls, "set_mask_fraction")]
    message = (
        f"a masking ramp, but no head under heads: masks (heads: {', '.join(map(str, classes)) or 'none'}; "
        f"heads that mask: {', '.join(maskers) or 'none installed'})"
    )
    return [(("train", "stages", i, "mask_fraction"), message) for i in ramps]


def _engine(data: dict) -> list[Problem]:
    train = _mapping(data.get("train"))
    stage, engine = train.get("zero_stage", 0), train.get("engine", "local")
    if not isinstance(stage, int) or isinstance(stage, bool):
        return []
    if stage == 3:
        return [
            (
                ("train", "zero_stage"),
                "zero_stage 3 partitions the weights, which hepfm's EMA and single-file checkpoints need "
                "whole on every rank; use zero_stage 0, 1 or 2",
            )
        ]
    if stage in (1, 2) and engine == "local":
        return [
            (
                ("train", "zero_stage"),
                f"zero_stage {stage} partitions over the processes of the deepspeed engine; "
                "set train.engine: deepspeed, or zero_stage 0 with the local engine",
            )
        ]
    return []


def _metric_heads(data: dict) -> list[Problem]:
    """A metric parameter naming a head (``head``, ``*_head``) must name a key under ``heads:``."""
    heads = data.get("heads")
    if not isinstance(heads, dict):
        return []
    problems = []
    for i, ref in enumerate(_list(data.get("metrics"))):
        params = ref.get("params") if isinstance(ref, dict) else None
        for key, value in _mapping(params).items():
            if (key == "head" or key.endswith("_head")) and isinstance(value, str) and value not in heads:
                known = ", ".join(map(str, heads)) or "none"
                problems.append(
                    (("metrics", i, "params", key), f"names head '{value}', which is not under heads: (heads: {known})")
                )
    return problems


def metric_keys(specs: Iterable[tuple[str, str | None]]) -> list[str]:
    """Result keys of metrics given as ``(name, key)``: the own key, else the name, numbered when repeated.

    ``[("roc_auc", None), ("roc_auc", None), ("roc_auc", "auc_ma30")]`` -> ``["roc_auc", "roc_auc#2", "auc_ma30"]``.
    """
    keys, seen = [], {}
    for name, own in specs:
        seen[name] = seen.get(name, 0) + (own is None)
        keys.append(own or (name if seen[name] == 1 else f"{name}#{seen[name]}"))
    return keys


def _metric_keys(data: dict) -> list[Problem]:
    metrics = _list(data.get("metrics"))
    specs = [({"name": m} if isinstance(m, str) else m) for m in metrics]
    if not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in specs):
        return []
    keys = metric_keys((s["name"], s.get("key") if isinstance(s.get("key"), str) else None) for s in specs)
    problems = []
    for i, key in enumerate(keys):
        if key in keys[:i]:
            loc = ("metrics", i, "key") if isinstance(specs[i].get("key"), str) else ("metrics", i)
            problems.append((loc, f"a second metric reports under the key '{key}'; give each its own 'key'"))
    return problems


RULES: tuple[Callable[[dict], list[Problem]], ...] = (
    _some_head,
    _stages,
    _masking,
    _engine,
    _metric_heads,
    _metric_keys,
)
"""Every cross-field rule, in the order its problems are reported."""


def rule_problems(data: dict[str, Any]) -> list[Problem]:
    """Every cross-field problem of a raw task mapping, as ``(loc, message)``."""
    return [problem for rule in RULES for problem in rule(data)]
