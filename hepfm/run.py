"""A run folder as one object: ``Run(path)`` owns what training wrote and what later commands read.

Run folder::

    RUN/task.yaml            the resolved task (``Run.task``, ``Run.split``, ``Run.sources``)
    RUN/metrics.jsonl        one JSON line per log step and per validation (``Run.metrics_log``)
    RUN/checkpoints/last.safetensors, best.safetensors, step-N.safetensors   (``Run.checkpoints``)
    RUN/train_summary.json   steps, best step, early stop, events seen, FLOPs, wall time (``Run.summary``)
    RUN/init_report.json     fine-tunes: which tensors were loaded and which skipped
    RUN/MODEL_CARD.md
    RUN/eval/metrics.json    ``hepfm evaluate``'s record (``Run.evaluation``)

A ``Run`` may also be given a checkpoint file (one checkpoint, no task) or a model folder written by
``hepfm export RUN --format hf`` (its weights serve as both ``ema`` and ``raw``). Every checkpoint
carries its typed model config (``ModelConfig``: schema, statistics, backbone sizes, heads), parsed
once when the checkpoint is read. The trainer writes a run through the same object, and
``evaluate``, ``embed``, ``study``, ``predict`` and ``load_model`` read one through it.

Example:
    >>> run = hepfm.Run("runs/qe_ttbar")  # doctest: +SKIP
    >>> run.checkpoints()  # doctest: +SKIP
    {'best': PosixPath('runs/qe_ttbar/checkpoints/best.safetensors'), 'last': ...}
    >>> model = run.load_model(weights="raw", device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError

from ._errors import HepfmError, describe_validation_error
from ._files import write_atomic, write_json
from ._model_config import HeadConfig, ModelConfig
from .checkpoint import check_weights, checkpoint_weights, find_checkpoint, load_checkpoint
from .schema import EventSchema

if TYPE_CHECKING:
    from .store import SplitSpec
    from .tasks import Task

__all__ = ["Run", "ModelConfig", "HeadConfig"]


class Run:
    """A run folder, a checkpoint file or an exported model folder (see module docstring).

    Args:
        path: The run folder (or a checkpoint file, or a model folder).

    Attributes:
        path: As given.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._checkpoints: dict[str, tuple[Path, dict[str, Any]]] = {}
        self._task: Task | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---------------------------------------------------------------------------------------
    # where things are
    # ---------------------------------------------------------------------------------------
    @property
    def is_model_folder(self) -> bool:
        """Whether the path is a model folder written by ``hepfm export --format hf``."""
        from ._hf_export import is_model_folder

        return is_model_folder(self.path)

    @property
    def folder(self) -> Path:
        """The folder of the run (the path itself, or the folder holding a checkpoint file)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def task_file(self) -> Path:
        return self.path / "task.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "train_summary.json"

    def checkpoint_path(self, name: str) -> Path:
        """Where the trainer writes checkpoint ``name`` (``best``, ``last``, ``step-N``)."""
        return self.path / "checkpoints" / f"{name}.safetensors"

    def checkpoints(self) -> dict[str, Path]:
        """The checkpoints of a run folder by name (``best``, ``last``, ``step-N`` in step order)."""
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return {}
        files = [p for p in folder.glob("*.safetensors") if p.is_file()]

        def order(p: Path) -> tuple[int, int]:
            name = p.stem
            return (1, int(name[5:])) if name.startswith("step-") and name[5:].isdigit() else (0, name != "best")

        return {p.stem: p for p in sorted(files, key=order)}

    def checkpoint(self, which: str = "best") -> Path:
        """The checkpoint file of a run folder (``best`` falls back to ``last``; or ``step-N``), or the file itself."""
        if which.startswith("step-") and self.path.is_dir():
            path = self.checkpoint_path(which)
            if not path.is_file():
                raise HepfmError(
                    f"{self.path}: no checkpoint checkpoints/{which}.safetensors (has {list(self.checkpoints())})"
                )
            return path
        return find_checkpoint(self.path, which)

    # ---------------------------------------------------------------------------------------
    # what the run folder says
    # ---------------------------------------------------------------------------------------
    @property
    def task(self) -> Task | None:
        """The run's resolved task (``task.yaml``; ``None`` for a checkpoint file or model folder)."""
        if self._task is None and self.path.is_dir() and self.task_file.is_file():
            from .tasks import load_task

            self._task = load_task(self.task_file)
        return self._task

    @property
    def split(self) -> SplitSpec:
        """The run's train/val/test split (read from ``task.yaml`` alone; the default split without one)."""
        from ._yaml import read_yaml
        from .store import SplitSpec

        if not (self.path.is_dir() and self.task_file.is_file()):
            return SplitSpec()
        raw = read_yaml(self.task_file, "task file")[0]
        try:
            return SplitSpec.model_validate((raw if isinstance(raw, dict) else {}).get("split") or {})
        except ValidationError as exc:
            raise HepfmError(f"{self.task_file}: split: {describe_validation_error(exc)}") from None

    def sources(self) -> Any:
        """The event data the run trained on, as its dataset declares it (``sources(params)``); None if unknown."""
        task = self.task
        return None if task is None else dataset_sources(task)

    @property
    def summary(self) -> dict[str, Any] | None:
        """``train_summary.json`` (written when training ended), or None."""
        return json.loads(self.summary_file.read_text()) if self.summary_file.is_file() else None

    @property
    def finished(self) -> bool:
        """Whether training ended (budget or early stopping) and wrote its summary."""
        return self.summary_file.is_file()

    def compute(self) -> dict[str, Any] | None:
        """Steps, events seen, FLOPs and wall time (``None`` where the run recorded none).

        A run folder gives its whole run (``train_summary.json``); a checkpoint file (e.g. an
        intermediate ``step-N`` one) gives the compute up to it.
        """
        keys = ("steps", "events_seen", "flops", "wall_s")
        if self.path.is_dir():
            summary = self.summary
            return {k: summary.get(k) for k in keys} if summary is not None else None
        state = (self.load_checkpoint()[1].get("trainer") or {}) if self.path.is_file() else {}
        return {k: state.get("step" if k == "steps" else k) for k in keys} if "events_seen" in state else None

    def metrics_log(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (training and validation), in order."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(x) for x in self.metrics_file.read_text().splitlines() if x]

    def evaluation(self, name: str = "eval") -> dict[str, Any] | None:
        """The record ``hepfm evaluate`` wrote into ``RUN/NAME/metrics.json``, or None."""
        file = self.folder / name / "metrics.json"
        return json.loads(file.read_text()) if file.is_file() else None

    # ---------------------------------------------------------------------------------------
    # checkpoints and models
    # ---------------------------------------------------------------------------------------
    def load_checkpoint(self, which: str = "best") -> tuple[Path, dict[str, Any]]:
        """The checkpoint file read and what ``hepfm.checkpoint.load_checkpoint`` returns for it.

        A model folder gives its exported weights as both ``ema`` and ``raw`` (no optimizer, no
        trainer state). Read once per ``which``.
        """
        if which not in self._checkpoints:
            self._checkpoints[which] = self._model_folder() if self.is_model_folder else self._read(which)
        return self._checkpoints[which]

    def _read(self, which: str) -> tuple[Path, dict[str, Any]]:
        path = self.checkpoint(which)
        return path, load_checkpoint(path)

    def _model_folder(self) -> tuple[Path, dict[str, Any]]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ._hf_export import MODEL_FORMAT

        file = self.path / "config.json"
        try:
            config = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HepfmError(f"{file}: not a readable model config ({exc})") from None
        if config.get("format") != MODEL_FORMAT:
            raise HepfmError(f"{file}: key 'format' is {config.get('format')!r}, this hepfm reads {MODEL_FORMAT!r}")
        weights = self.path / "model.safetensors"
        try:
            state = load_file(weights)
        except (SafetensorError, OSError, ValueError) as exc:
            raise HepfmError(f"{weights}: not a readable safetensors file ({exc})") from None
        return weights, {
            "config": config["model"],
            "model_config": ModelConfig.parse(config["model"], str(file)),
            "model": state,
            "ema": state,
            "tensors": state,
            "optimizer": None,
            "trainer": {"selected_on": "ema", "exported_weights": config.get("weights")},
        }

    def model_config(self, which: str = "best") -> ModelConfig:
        """The typed model config of checkpoint ``which``."""
        return self.load_checkpoint(which)[1]["model_config"]

    def weights(self, which: str = "best", weights: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
        """The state dict of checkpoint ``which`` and which it is (``ema`` or ``raw``; default: the selected ones)."""
        path, ckpt = self.load_checkpoint(which)
        return checkpoint_weights(ckpt, weights, str(path))

    def load_model(
        self,
        which: str = "best",
        weights: str | None = None,
        schema: EventSchema | None = None,
        device: str | torch.device = "cpu",
    ):
        """Rebuild the trained model, in eval mode, on ``device``.

        Args:
            which: ``best`` or ``last`` checkpoint of a run folder.
            weights: ``ema`` or ``raw``; default: the weights the run selected its best checkpoint on
                (a model folder holds one set of weights and ignores this).
            schema: Refuse a checkpoint of another event schema.
            device: ``cpu`` (default) or ``cuda`` (``cuda:N``).

        The model's ``checkpoint_config`` is the config it was rebuilt from and ``weights`` says which
        weights it carries.
        """
        from ._infer import resolve_device

        device = resolve_device(device)
        path, ckpt = self.load_checkpoint(which)
        config: ModelConfig = ckpt["model_config"]
        if self.is_model_folder:
            model = config.build(str(path))
            missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
            if missing or unexpected:
                raise HepfmError(
                    f"{path}: weights do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
            chosen = ckpt["trainer"]["exported_weights"] or "ema"
        else:
            state, chosen = checkpoint_weights(ckpt, weights, str(path))
            check_weights(config.build(str(path), device="meta"), state, str(path))
            model = config.build(str(path))
            if schema is not None:
                diff = model.schema.differences(schema)
                if diff:
                    raise HepfmError(f"{path}: checkpoint 'schema' does not match the data: {'; '.join(diff)}")
            model.load_state_dict(state)
        model.checkpoint_config = ckpt["config"]  # what it was rebuilt from (heads, processes, topology)
        model.weights = chosen
        model.eval()
        return model.to(device)

    # ---------------------------------------------------------------------------------------
    # writing (the trainer)
    # ---------------------------------------------------------------------------------------
    def write_task(self, task: Task) -> None:
        write_atomic(self.task_file, task.to_yaml())
        self._task = task

    def write_init_report(self, report: dict[str, Any]) -> None:
        write_atomic(self.path / "init_report.json", json.dumps(report, indent=2))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def forget_metrics_after(self, step: int) -> None:
        """Drop what was logged after ``step`` (a resumed run logs it again)."""
        if self.metrics_file.exists():
            text = self.metrics_file.read_text().splitlines()
            kept = [x for x in text if x and json.loads(x).get("step", 0) <= step]
            write_atomic(self.metrics_file, "".join(x + "\n" for x in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def write_model_card(self, text: str) -> None:
        write_atomic(self.path / "MODEL_CARD.md", text)


def dataset_sources(task: Task) -> Any:
    """Where a task's events come from, as its dataset's optional ``sources(params)`` says (None without)."""
    from . import plugins

    cls = plugins.datasets().get(task.dataset.name)
    declared = getattr(cls, "sources", None)
    return declared(cls.Params.model_validate(task.dataset.params)) if declared is not None else None
