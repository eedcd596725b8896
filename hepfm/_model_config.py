"""The typed model config: built once from a task and its store, written to a checkpoint, parsed back once.

A ``ModelConfig`` holds everything needed to rebuild a model: the event schema, the normalisation
statistics of the training store, the backbone sizes and, per head, a ``HeadConfig`` (registered
name, validated ``Params``, loss weight). ``ModelConfig.from_task`` makes it when a run starts (each
head's ``bind`` completes its params from the store, and its params are validated there, once);
``to_dict`` is the JSON written into every checkpoint; ``ModelConfig.parse`` reads it back (checked
and validated once, with errors naming the key); ``build`` makes the ``EventModel``.

``init_architecture`` and ``init_from`` start a fine-tune from another run's checkpoint: the first
takes the checkpoint's backbone sizes into the task, the second copies the matching tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ValidationError

from ._errors import HepfmError, describe_validation_error
from .schema import EventSchema, FeatureStats

if TYPE_CHECKING:
    from .model import BackboneConfig, EventModel
    from .tasks import Task

__all__ = ["HeadConfig", "ModelConfig", "init_architecture", "init_from"]

#: Upper bounds of the integer backbone sizes a checkpoint config may name (besides ``hepfm._limits``).
_SIZE_LIMITS = {"num_heads": 256, "k_neighbours": 512, "mlp_ratio": 64}


@dataclass
class HeadConfig:
    """One head of a model: its registered ``name``, validated ``params`` and loss ``weight``.

    ``raw`` is the params mapping as written to the checkpoint (the task's params completed by the
    head's ``bind``); ``params`` is it validated by the head's ``Params`` (done once, here).
    """

    name: str
    params: BaseModel
    weight: float = 1.0
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        """The registered head class."""
        from . import plugins

        return plugins.heads().get(self.name)

    def store_targets(self) -> list[str]:
        """The store targets this head reads (its optional ``store_targets`` classmethod; none without)."""
        declared = getattr(self.cls, "store_targets", None)
        return [str(t) for t in declared(self.params)] if declared is not None else []

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.raw, "weight": self.weight}

    @classmethod
    def parse(cls, spec: Any, where: str, key: str) -> HeadConfig:
        """A head of a checkpoint config, refused in one line naming ``heads.KEY`` when it is not valid."""
        from . import plugins

        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise HepfmError(f"{where}: config 'heads.{key}' must be a mapping with a 'name'")
        registry = plugins.heads()
        if spec["name"] not in registry:
            raise HepfmError(f"{where}: config 'heads.{key}.name': {registry.unknown_message(spec['name'])}")
        raw = spec.get("params") or {}
        try:
            params = registry.get(spec["name"]).Params.model_validate(raw)
        except ValidationError as exc:
            raise HepfmError(f"{where}: config 'heads.{key}.params': {describe_validation_error(exc)}") from None
        return cls(spec["name"], params, spec.get("weight", 1.0), raw)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (see module docstring).

    Attributes:
        schema: The event schema.
        stats: Normalisation statistics, ``{"objects"|"globals": {feature: FeatureStats}}``.
        backbone: Backbone sizes.
        heads: Head key (as in the task) -> ``HeadConfig``.
        processes: The training store's process names.
        topology: The training store's decay topology (or None).
        raw: The JSON mapping it was parsed from or is written as (``to_dict``).
    """

    schema: EventSchema
    stats: dict[str, dict[str, FeatureStats]]
    backbone: BackboneConfig
    heads: dict[str, HeadConfig]
    processes: list[str] = field(default_factory=list)
    topology: Any = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_task(cls, task: Task, store: Any) -> ModelConfig:
        """The config of a task's model on its (opened) training store; heads bound and validated once.

        Refuses, naming the store and the head, a head whose declared ``store_targets`` the store lacks.
        """
        from . import __version__, plugins
        from .model import config_from_spec

        m = task.model
        backbone = config_from_spec(
            m.preset,
            dim=m.dim,
            depth=m.depth,
            num_heads=m.num_heads,
            k_neighbours=m.k_neighbours,
            feature_dropout=m.feature_dropout,
            dropout=m.dropout,
        )
        heads = {}
        for key, h in task.heads.items():
            head_cls = plugins.heads().get(h.name)
            raw = dict(h.params)
            if hasattr(head_cls, "bind"):  # a head fills parameters the data decides
                try:
                    raw = head_cls.bind(raw, store)
                except ValueError as exc:
                    raise HepfmError(f"head '{h.name}': {exc}") from None
            try:
                params = head_cls.Params.model_validate(raw)
            except ValidationError as exc:
                raise HepfmError(f"head '{key}': params: {describe_validation_error(exc)}") from None
            heads[key] = HeadConfig(h.name, params, h.weight, raw)
            missing = [n for n in heads[key].store_targets() if n not in store.targets]
            if missing:
                raise HepfmError(
                    f"{store.path}: head '{key}' needs target {missing[0]!r}; the store has {sorted(store.targets)}"
                )
        raw_config = {
            "hepfm_version": __version__,
            "schema": store.schema.model_dump(mode="json"),
            "stats": store.attrs["stats"],
            "backbone": backbone.to_dict(),
            "heads": {k: h.to_dict() for k, h in heads.items()},
            "processes": store.processes,
            "topology": store.topology,
        }
        stats = _parse_stats(raw_config["stats"])
        return cls(store.schema, stats, backbone, heads, store.processes, store.topology, raw_config)

    @classmethod
    def parse(cls, config: Any, where: str = "checkpoint") -> ModelConfig:
        """A checkpoint's config, checked once, in one line naming the key when it cannot rebuild a model.

        Checks the schema, statistics (present, finite, every feature), backbone sizes (within
        ``hepfm._limits``), and every head (a mapping with a registered name and valid params).
        """
        if isinstance(config, ModelConfig):
            return config
        from ._limits import MAX_DEPTH, MAX_WIDTH
        from .model import BackboneConfig
        from .store import check_stats

        if not isinstance(config, dict):
            raise HepfmError(f"{where}: config is not a mapping")
        for key in ("schema", "stats", "backbone", "heads"):
            if not isinstance(config.get(key), dict):
                raise HepfmError(f"{where}: config '{key}' missing or not a mapping")
        try:
            schema = EventSchema.model_validate(config["schema"])
        except ValidationError as exc:
            raise HepfmError(f"{where}: config 'schema' is invalid: {describe_validation_error(exc)}") from None
        check_stats(where, config["stats"], schema, what="config")
        backbone = config["backbone"]
        unknown = sorted(set(backbone) - set(BackboneConfig.__dataclass_fields__))
        if unknown:
            raise HepfmError(f"{where}: config 'backbone' has unknown keys {unknown} (another hepfm version?)")
        limits = {"dim": MAX_WIDTH, "depth": MAX_DEPTH, "pair_dim": MAX_WIDTH, "encoder_depth": MAX_DEPTH}
        limits.update(_SIZE_LIMITS)
        for key, value in backbone.items():
            if key in limits and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits[key]
            ):
                raise HepfmError(f"{where}: config 'backbone.{key}' is {value!r}, expected an integer 1..{limits[key]}")
            if key in ("feature_dropout", "dropout") and not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise HepfmError(f"{where}: config 'backbone.{key}' is {value!r}, expected a number in [0, 1)")
        if "dim" in backbone and "num_heads" in backbone and backbone["dim"] % backbone["num_heads"]:
            raise HepfmError(f"{where}: config 'backbone.dim' {backbone['dim']} is not a multiple of num_heads")
        heads = {key: HeadConfig.parse(spec, where, key) for key, spec in config["heads"].items()}
        return cls(
            schema,
            _parse_stats(config["stats"]),
            BackboneConfig(**backbone),
            heads,
            list(config.get("processes") or []),
            config.get("topology"),
            config,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping written into a checkpoint (and read back by ``parse``)."""
        return self.raw

    def build(self, where: str = "checkpoint", device: str | torch.device = "cpu") -> EventModel:
        """An ``EventModel`` of this config (random weights).

        ``device="meta"`` builds it without allocating memory (to compare sizes before loading).
        """
        from .model import EventModel

        heads = {key: (h.cls, h.params, h.weight) for key, h in self.heads.items()}
        try:
            with torch.device(device):
                return EventModel(self.schema, self.stats, self.backbone, heads)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HepfmError(f"{where}: config cannot build a model ({type(exc).__name__}: {exc})") from None


def _parse_stats(raw: dict[str, Any]) -> dict[str, dict[str, FeatureStats]]:
    return {part: {k: FeatureStats.model_validate(v) for k, v in s.items()} for part, s in raw.items()}


def init_from(
    model: torch.nn.Module, checkpoint: str | os.PathLike, skip_mismatched: bool = True, weights: str | None = None
) -> dict[str, Any]:
    """Load matching tensors of a pretrained run; report loaded, skipped and missing, and which weights.

    ``weights``: ``ema`` or ``raw``; default: those the pretrained run selected its best checkpoint on.
    """
    from ._hf_export import load_pretrained
    from .checkpoint import check_finite, checkpoint_weights

    path, ckpt = load_pretrained(checkpoint)  # a run folder, checkpoint file or exported model folder
    source, chosen = checkpoint_weights(ckpt, weights, str(path))
    check_finite(source, str(path))
    theirs = ckpt["config"].get("backbone", {})
    mine = model.config.to_dict()
    differ = [
        f"{k} {theirs.get(k)} (checkpoint) != {v} (task)"
        for k, v in mine.items()
        if k not in ("feature_dropout", "dropout") and theirs.get(k) != v
    ]
    if differ:
        raise HepfmError(
            f"{path}: the pretrained backbone has other sizes: {'; '.join(differ)}; "
            "set the task's model to the pretrained preset"
        )
    schema_diff = EventSchema.model_validate(ckpt["config"]["schema"]).differences(model.schema)
    if schema_diff:
        raise HepfmError(f"{path}: checkpoint 'schema' differs from the data's: {'; '.join(schema_diff)}")
    own = model.state_dict()
    loaded, skipped = [], []
    for key, value in source.items():
        if key.startswith("normaliser."):
            skipped.append(f"{key} (normalisation comes from this task's data)")
        elif key in own and own[key].shape == value.shape:
            own[key] = value
            loaded.append(key)
        elif key in own:
            if not skip_mismatched:
                raise HepfmError(
                    f"{path}: tensor '{key}' has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}"
                )
            skipped.append(f"{key} (shape {tuple(value.shape)} != {tuple(own[key].shape)})")
        else:
            skipped.append(f"{key} (not in this model)")
    model.load_state_dict(own)
    missing = [k for k in own if k not in source and not k.startswith("normaliser.")]
    if not any(k.startswith("backbone.") for k in loaded):
        raise HepfmError(f"{path}: no backbone tensor matches this model (another preset or schema?)")
    return {"checkpoint": str(path), "weights": chosen, "loaded": loaded, "skipped": skipped, "missing": missing}


def init_architecture(task: Task) -> Task:
    """The task with its backbone sizes taken from its ``init`` checkpoint (as ``from_pretrained`` does).

    When the task file (or ``--set``) names model sizes that differ, one line says so; the
    checkpoint's architecture wins. ``feature_dropout`` and ``dropout`` (training settings) stay the
    task's when it gives them.
    """
    if task.init is None:
        return task
    from ._hf_export import load_pretrained
    from ._progress import err_console
    from .model import config_from_spec
    from .model.backbone import PRESETS

    path, ckpt = load_pretrained(task.init.checkpoint)
    theirs = dict(ckpt["config"].get("backbone", {}))
    sizes = ("dim", "depth", "num_heads", "k_neighbours")
    training = ("feature_dropout", "dropout")
    shape = [k for k in PRESETS["tiny"].to_dict() if k not in training]
    preset = next((n for n, c in PRESETS.items() if all(c.to_dict()[k] == theirs.get(k) for k in shape)), None)
    m = task.model
    asked = m.model_fields_set - set(training)
    mine = config_from_spec(m.preset, **{k: getattr(m, k) for k in sizes}).to_dict()
    differ = [k for k in shape if mine.get(k) != theirs.get(k)]
    if asked and differ:
        err_console.print(
            f"note: the task asks for model {m.model_dump(include=asked)}, but {path} was trained as "
            f"{preset or 'a custom backbone'} ({', '.join(f'{k} {theirs.get(k)}' for k in differ)}); "
            "the fine-tune takes the checkpoint's architecture",
            highlight=False,
            markup=False,
        )
    if preset is None:
        raise HepfmError(f"{path}: its backbone matches no preset ({theirs}); fine-tune it with those sizes")
    spec = {"preset": preset, **{k: theirs[k] for k in sizes}}
    for key in training:
        spec[key] = getattr(m, key) if key in m.model_fields_set else theirs.get(key)
    return task.model_copy(update={"model": type(m).model_validate(spec)})
