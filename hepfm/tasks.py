"""Declarative task files: a pydantic schema, ``--set`` overrides, and errors that name file, key and line.

A task names its components (dataset, heads, metrics) by registered plugin name; each component
validates its own ``params`` with its own pydantic model. ``load_task`` collects *every* problem
in a file before failing (field errors, plugin parameters, selection syntax and the cross-field
rules of ``hepfm._task_rules`` together), so one ``hepfm validate`` run shows them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import plugins
from ._errors import HepfmError, TaskError
from ._limits import MAX_BATCH, MAX_DEPTH, MAX_EPOCHS, MAX_SEED, MAX_WIDTH
from ._selection import Selection, SelectionError
from ._task_rules import rule_problems
from ._yaml import dotted, line_of, load_yaml, located, read_yaml
from .store import SplitSpec

__all__ = [
    "Component",
    "HeadSpec",
    "MetricSpec",
    "InitSpec",
    "ModelSpec",
    "TrainSpec",
    "EarlyStoppingSpec",
    "StageSpec",
    "Task",
    "load_task",
    "task_selection",
    "validate_files",
    "apply_overrides",
    "parse_override",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(_Strict):
    """A plugin referenced by registered name, with its own parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class MetricSpec(Component):
    """A metric, optionally under its own key in the results (``roc_auc_ma30`` rather than ``roc_auc#2``)."""

    key: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="key of its figures")


class HeadSpec(Component):
    """A head and the weight of its loss in the total."""

    weight: float = Field(1.0, ge=0)


class InitSpec(_Strict):
    """Where a fine-tune starts from."""

    checkpoint: str
    skip_mismatched: bool = True
    freeze_backbone: bool = False
    weights: Literal["ema", "raw"] | None = Field(
        None, description="which weights of the checkpoint (default: those its best checkpoint was selected on)"
    )


class ModelSpec(_Strict):
    """Backbone size: a preset, optionally with explicit sizes overriding it."""

    preset: Literal["tiny", "small", "lite", "standard"] = "small"
    dim: int | None = Field(None, ge=8, le=MAX_WIDTH)
    depth: int | None = Field(None, ge=1, le=MAX_DEPTH)
    num_heads: int | None = Field(None, ge=1, le=256)
    k_neighbours: int | None = Field(None, ge=1, le=512)
    feature_dropout: float | None = Field(None, ge=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1, description="attention and MLP dropout (a training setting)")


class StageSpec(_Strict):
    """One training stage: which heads train, for what share of the steps, and the masking ramp."""

    name: str
    fraction: float = Field(gt=0, le=1, description="share of the total steps")
    heads: list[str] | None = Field(None, description="head keys trained in this stage (default: all)")
    mask_fraction: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, description="visible-diffusion masking fraction ramped linearly from start to end"
    )


class EarlyStoppingSpec(_Strict):
    """Stop when the validation loss has not improved for ``patience`` validation rounds."""

    patience: int = Field(5, ge=1, description="validation rounds without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="an improvement smaller than this does not count")


class TrainSpec(_Strict):
    """Optimisation and run settings."""

    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    max_steps: int | None = Field(None, ge=1, le=10**9)
    batch_size: int = Field(512, ge=1, le=MAX_BATCH)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_scale: float = Field(1.0, ge=0)
    backbone_frozen_steps: int = Field(
        0,
        ge=0,
        description="steps at the start in which only the heads train (linear probe, then fine-tune); early "
        "stopping's patience counts from the step after",
    )
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.05, ge=0, lt=1, description="fraction of the steps spent warming up")
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay (warmed up: min(decay, (1+t)/(10+t)))")
    select_on: Literal["ema", "raw"] = Field("ema", description="weights validated for best-checkpoint selection")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop when validation stalls (max_steps or epochs is then the budget)"
    )
    engine: Literal["local", "deepspeed"] = "local"
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    val_every: int = Field(200, ge=1, description="steps between validations and checkpoints")
    keep_every: int | None = Field(
        None, ge=1, description="also keep checkpoints/step-N.safetensors every N steps (pretraining-length studies)"
    )
    val_batches: int | None = Field(20, ge=1, description="batches per validation (None: the whole split)")
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)
    stages: list[StageSpec] = Field(default_factory=list, description="training stages (default: one, all heads)")


class Task(_Strict):
    """A whole task file."""

    name: str
    description: str = ""
    dataset: Component
    split: SplitSpec = Field(default_factory=SplitSpec)
    init: InitSpec | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    heads: dict[str, HeadSpec] = Field(default_factory=dict)
    train: TrainSpec = Field(default_factory=TrainSpec)
    metrics: list[MetricSpec] = Field(default_factory=list)
    selection: list[str] = Field(
        default_factory=list, description="event selection, cuts ANDed (e.g. 'n_jet >= 4'); every split"
    )

    @model_validator(mode="after")
    def _cross_field_rules(self, info: ValidationInfo) -> Task:
        """The rules of ``hepfm._task_rules`` (``load_task`` applies them to the raw file, with lines)."""
        if (info.context or {}).get("rules", True):
            problems = rule_problems(self.model_dump(mode="json"))
            if problems:
                raise ValueError("; ".join(f"{dotted(loc)}: {message}" for loc, message in problems))
        return self

    @field_validator("metrics", mode="before")
    @classmethod
    def _names_as_components(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    _source: str | None = PrivateAttr(None)
    _lines: dict[tuple, int] = PrivateAttr(default_factory=dict)

    def error(self, loc: tuple, message: str) -> HepfmError:
        """One error line ``FILE:LINE: key: message`` for a key of this task (file known when loaded)."""
        return HepfmError(located(self._source or f"task '{self.name}'", self._lines, loc, message))

    def to_yaml(self) -> str:
        """The resolved task (defaults filled in) as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003).

    The value is parsed as YAML, and a plain number YAML 1.1 leaves as a string (``3e-4``) is
    read as a number.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise TaskError([f"--set {text}: expected key=value, e.g. train.max_steps=30"])
    try:
        value = load_yaml(raw, f"--set {key.strip()}")[0] if raw.strip() else ""
    except HepfmError as exc:
        if "YAML refused" in str(exc):
            raise TaskError([str(exc)]) from None
        value = raw
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return [p for p in key.strip().split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw task mapping (before validation, so validation covers them).

    A numeric part indexes a list: ``train.stages.0.mask_fraction=[0.5,0.5]``. A head set to null
    is removed: ``heads.assignment=null`` trains without the task's ``assignment`` head.
    """
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    raise TaskError([f"--set {text}: '{part}' is not an index of a {len(node)}-element list"])
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise TaskError([f"--set {text}: '{path[depth - 1]}' is not a mapping"])
            if last and value is None and path[:-1] == ["heads"]:
                if part not in node:
                    known = ", ".join(node) or "none"
                    raise TaskError([f"--set {text}: the task has no head '{part}'; it has {known}"])
                del node[part]
            elif last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _component_problems(data: dict[str, Any]) -> list[tuple[tuple, str]]:
    """Plugin names and each plugin's own params, on the raw mapping (where well-formed enough)."""
    problems: list[tuple[tuple, str]] = []
    regs = plugins.registries()

    def check(kind: str, loc: tuple, ref: Any) -> None:
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            return  # structural error, reported by the Task model
        registry = regs[kind]
        if ref["name"] not in registry:
            message = registry.unknown_message(ref["name"])
            other = next((k for k in ("generator", "converter") if kind == "dataset" and ref["name"] in regs[k]), None)
            if other:
                message = (
                    f"dataset '{ref['name']}' is a {other}, not a store; make a store with "
                    f"`hepfm generate`/`hepfm convert` and name one of: {', '.join(registry.names())}"
                )
            problems.append(((*loc, "name"), message))
            return
        cls = registry.get(ref["name"])
        params = ref.get("params") or {}
        if not isinstance(params, dict):
            return
        try:
            cls.Params.model_validate(params)
        except ValidationError as exc:
            for err in exc.errors():
                problems.append(((*loc, "params", *err["loc"]), err["msg"]))

    check("dataset", ("dataset",), data.get("dataset"))
    heads = data.get("heads")
    if isinstance(heads, dict):
        for key, ref in heads.items():
            check("head", ("heads", key), ref)
    metrics = data.get("metrics")
    if isinstance(metrics, list):
        for i, ref in enumerate(metrics):
            check("metric", ("metrics", i), {"name": ref} if isinstance(ref, str) else ref)
    return problems


def _selection_problems(data: dict[str, Any]) -> list[tuple[tuple, str]]:
    """Syntax of every cut of ``selection`` (feature names are checked against the store's schema later)."""
    cuts = data.get("selection")
    if not isinstance(cuts, list) or not all(isinstance(c, str) for c in cuts):
        return []  # structural error, reported by the Task model
    problems = []
    for i, cut in enumerate(cuts):
        try:
            Selection.parse([cut])
        except SelectionError as exc:
            problems.append((("selection", i), str(exc)))
    return problems


def task_selection(task: Task, schema) -> Selection | None:
    """The task's event selection checked against a store's schema (``None`` when it selects nothing).

    An unknown feature is one error line naming the task file, the line and ``selection.I``.
    """
    if not task.selection:
        return None
    try:
        selection = Selection.parse(task.selection)
        selection.check(schema)
    except SelectionError as exc:
        raise task.error(("selection", exc.index), str(exc)) from None
    return selection


def load_task(path: str | os.PathLike, overrides: list[str] | None = None) -> Task:
    """Read, override and validate a task file; raise ``TaskError`` listing every problem.

    Each problem is one line ``FILE:LINE: KEY: message``. Component ``params`` are validated by
    the component's own model and come back with defaults filled in.
    """
    path = Path(path)
    where = str(path)
    try:
        data, lines = read_yaml(path, "task file")
    except HepfmError as exc:
        raise TaskError([str(exc)]) from None
    if not isinstance(data, dict):
        raise TaskError([f"{where}: a task file must be a mapping of keys (name, dataset, heads, ...)"])
    try:
        override_paths = {tuple(parse_override(o)[0]) for o in overrides or []}
    except TaskError as exc:
        raise TaskError([f"{where}: {p}" for p in exc.problems]) from None
    data = apply_overrides(data, list(overrides or []))

    problems: list[tuple[tuple, str]] = []
    try:
        Task.model_validate(data, context={"rules": False})  # the rules run below, on the raw mapping
    except ValidationError as exc:
        for err in exc.errors():
            problems.append((tuple(err["loc"]), err["msg"]))
    problems += _component_problems(data)
    problems += _selection_problems(data)
    problems += rule_problems(data)
    if problems:
        formatted, seen = [], set()
        for loc, msg in problems:
            key = dotted(loc)
            if (key, msg) in seen:
                continue
            seen.add((key, msg))
            from_set = any(loc[: len(p)] == p for p in override_paths)
            line = line_of(lines, loc)
            origin = f"{where} (--set)" if from_set else f"{where}:{line}" if line else where
            formatted.append(f"{origin}: {key}: {msg}")
        raise TaskError(formatted)
    task = Task.model_validate(data)
    task._source, task._lines = where, lines
    regs = plugins.registries()
    task.dataset.params = (
        regs["dataset"].get(task.dataset.name).Params.model_validate(task.dataset.params).model_dump(mode="json")
    )
    for spec in task.heads.values():
        spec.params = regs["head"].get(spec.name).Params.model_validate(spec.params).model_dump(mode="json")
    for spec in task.metrics:
        spec.params = regs["metric"].get(spec.name).Params.model_validate(spec.params).model_dump(mode="json")
    return task


def validate_files(paths: list[str | os.PathLike], overrides: list[str] | None = None) -> dict[str, list[str]]:
    """Validate several task files; return file -> its problems (empty list when valid)."""
    report: dict[str, list[str]] = {}
    for path in paths:
        try:
            load_task(path, overrides)
            report[str(path)] = []
        except TaskError as exc:
            report[str(path)] = exc.problems
    return report
