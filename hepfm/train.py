"""The trainer behind ``hepfm pretrain`` and ``hepfm finetune``.

One loop for every task: AdamW with a smaller backbone learning rate where asked and no weight
decay on biases, norms and embeddings (``hepfm._engine``), warm-up then cosine decay, gradient
clipping, an EMA of the weights (used for validation and saved; ``hepfm._schedule``), stages that
switch heads on and ramp the visible-diffusion masking, validation every N steps with best
checkpoint selection, and exact resumption (weights, EMA, optimizer, schedule, RNG states and the
position in the data).

The recipe, one small step each (``_Trainer``): set up the data, the model and the optimizer with
its engine; resume; then step, validate and save until the budget or early stopping ends it; close.
The run folder it writes is described in ``hepfm.run`` (``Run``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, plugins
from ._engine import Engine, LocalEngine, adamw, check_group_layout, make_engine, param_groups
from ._errors import HepfmError
from ._infer import infer
from ._model_config import ModelConfig, init_architecture, init_from
from ._outputs import output_lock, prepare_output
from ._progress import err_console, progress
from ._schedule import EMA, lr_factor, stage_at
from ._yaml import read_yaml
from .checkpoint import check_finite, load_checkpoint, save_checkpoint
from .run import Run, dataset_sources
from .store import EventLoader
from .tasks import Task, task_selection

__all__ = ["TrainResult", "train", "init_from", "init_architecture", "LocalEngine", "make_engine", "adamw"]


@dataclass
class TrainResult:
    """Where a run's outputs are and how it ended."""

    run: Path
    steps: int
    best_val: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_step: int | None = None
    stopped_early: bool = False
    events_seen: int = 0
    flops: float = 0.0


@dataclass
class _Progress:
    """What the trainer checkpoints besides the tensors (the ``trainer`` metadata, with ``rng`` and more)."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    best_val: float | None = None
    best_step: int | None = None
    stalled: int = 0
    stopped_early: bool = False
    events_seen: int = 0
    flops: float = 0.0
    flops_per_event: dict[str, float] = field(default_factory=dict)  # per stage, counted on its first step
    wall_s: float = 0.0  # before this process started

    @classmethod
    def restore(cls, st: dict[str, Any]) -> _Progress:
        return cls(
            st["step"],
            st["epoch"],
            st["position"],
            st["best_val"],
            st.get("best_step"),
            st.get("stalled", 0),
            st.get("stopped_early", False),
            st.get("events_seen", 0),
            st.get("flops", 0.0),
            st.get("flops_per_event", {}),
            st.get("wall_s", 0.0),
        )


def _flop_counter():
    """Torch's FLOP counter (matmul-class operations, forward and backward) for one training step."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
    }


def _set_rng(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"]))
    torch.set_rng_state(torch_state)


def _validate(
    model: torch.nn.Module, loader: EventLoader, max_batches: int | None, heads: list[str]
) -> dict[str, float]:
    """Mean losses over (at most ``max_batches`` batches of) the validation split, with fixed noise."""
    sums: dict[str, float] = {}
    n = 0
    state = torch.get_rng_state()
    torch.manual_seed(0)  # the same noise every validation: comparable losses for best selection
    for batch, parts in infer(model, itertools.islice(loader, max_batches), lambda b: model.loss(b, heads)[1]):
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch)
        n += len(batch)
    torch.set_rng_state(state)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _check_resumable(run: Run, task: Task, ckpt: dict[str, Any], mine: dict[str, Any]) -> None:
    """Refuse ``--resume`` with another task, model or data layout, NaN weights or old optimizer state."""
    out, previous = run.path, run.task_file
    if previous.is_file():
        data = read_yaml(previous, "task file")[0]
        name = data.get("name") if isinstance(data, dict) else None
        if name != task.name:
            raise HepfmError(f"{out}: --resume with task '{task.name}', but the run is of task '{name}' ({previous})")
    theirs = ckpt["config"]
    for key in ("backbone", "heads", "schema", "processes"):
        if theirs.get(key) == mine.get(key):
            continue
        what = f"the run's {key} differ from this task's"
        if key == "backbone":
            what = "; ".join(
                f"{k} {theirs[key].get(k)} (run) != {v} (task)" for k, v in mine[key].items() if theirs[key].get(k) != v
            )
        raise HepfmError(
            f"{out}: --resume with another model than the run's: config '{key}': {what}; "
            "resume with the run's own task and preset, or choose another --out"
        )
    where = str(run.checkpoint_path("last"))
    check_finite(ckpt["model"], where, "model/")
    check_finite(ckpt.get("ema") or {}, where, "ema/")
    if ckpt["optimizer"] is not None:
        check_group_layout(ckpt["optimizer"], None, where)


def _model_card(run: Path, task: Task, config: dict[str, Any], result: dict[str, Any]) -> str:
    params = result.get("parameters", 0)
    heads = "\n".join(f"- `{k}`: {h['name']} (weight {h['weight']})" for k, h in config["heads"].items())
    return f"""# Model card: {task.name}

Trained with hepfm {__version__}. {task.description}

## Model
- Backbone: {json.dumps(config["backbone"])}
- Parameters: {params:,}
- Heads:
{heads}
- Input schema: {len(config["schema"]["object_features"])} features x {config["schema"]["max_objects"]} objects,
  {len(config["schema"]["global_features"])} globals; normalisation statistics from the training store.

## Training
- Data: `{dataset_sources(task)}`, processes {config.get("processes")}
- Steps: {result.get("steps")}, batch size {task.train.batch_size}, lr {task.train.lr}, EMA decay {task.train.ema_decay}
- Stages: {[s.name for s in task.train.stages] or ["train"]}
- Best validation loss ({result.get("selected_on")} weights): {result.get("best_val")} at step {
        result.get("best_step")
    }{" (then stopped early: validation stalled)" if result.get("stopped_early") else ""}
- Events seen: {result.get("events_seen", 0):,}; training compute {result.get("flops", 0.0):.3g} FLOPs
  (matmul-class operations, forward and backward, counted by torch's FLOP counter); wall time
  {result.get("wall_s", 0.0):.0f} s
- Event selection: {task.selection or "none"} (keeps {100 * (result.get("selected_fraction") or 1.0):.1f}% of
  the training split)

## Files
`checkpoints/best.safetensors` (EMA and raw weights, config, statistics; safetensors, no pickle),
`metrics.jsonl`, `task.yaml`. Rebuild with `hepfm.load_model("{run}")`; share as a model folder with
`hepfm export {run} --format hf --out DIR`.

## Limitations
Trained on simulation only; validate and calibrate before use on collision data.
"""


class _Trainer:
    """One training run, step by step (see module docstring); ``train`` calls these in order."""

    def __init__(self, task: Task, run: Run, resume: bool, fraction: float, wandb_mode: str) -> None:
        if wandb_mode not in ("offline", "online", "disabled"):
            raise HepfmError(f"--wandb '{wandb_mode}': expected offline, online or disabled")
        last = run.checkpoint_path("last")
        if resume and not last.is_file():
            raise HepfmError(
                f"{run.path}: resume=True (--resume) given but no checkpoint at checkpoints/last.safetensors"
            )
        if not resume and last.exists():
            raise HepfmError(
                f"{run.path}: a run already exists here; pass resume=True (--resume) to continue it or another out"
            )
        self.task, self.run, self.resuming, self.fraction, self.wandb_mode = task, run, resume, fraction, wandb_mode
        self.t = task.train
        self.state = _Progress()
        self.wandb = None

    # ---------------------------------------------------------------------------------------
    # setup
    # ---------------------------------------------------------------------------------------
    def setup_data(self) -> None:
        """Open the task's store; take a fine-tune's architecture from its checkpoint; the selection."""
        cls = plugins.datasets().get(self.task.dataset.name)
        self.store = cls(cls.Params.model_validate(self.task.dataset.params)).open()
        self.task = init_architecture(self.task)  # a fine-tune takes the architecture of the checkpoint it starts from
        self.config = ModelConfig.from_task(self.task, self.store)  # built once: bound, validated, targets checked
        self.selection = task_selection(self.task, self.store.schema)

    def setup_model(self, ckpt: dict[str, Any] | None) -> None:
        """Seed, build the model and, for a new fine-tune, load the pretrained tensors (reported)."""
        t = self.t
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed % 2**32)
        self.model = self.config.build()
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.init_report = None
        init = self.task.init
        if init is not None and ckpt is None:
            report = init_from(self.model, init.checkpoint, init.skip_mismatched, init.weights)
            err_console.print(
                f"init from {report['checkpoint']} ({report['weights']} weights): loaded {len(report['loaded'])} "
                f"tensors, skipped {len(report['skipped'])}, new {len(report['missing'])}",
                highlight=False,
            )
            self.init_report = report
        if init is not None and init.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)

    def setup_optimizer(self) -> None:
        """AdamW over the named groups, the engine (which places the model), the run files, the EMA."""
        t = self.t
        groups = param_groups(self.model, t.lr, t.backbone_lr_scale, t.weight_decay)
        self.optimizer = adamw(groups, lr=t.lr, weight_decay=t.weight_decay)
        self.engine: Engine = make_engine(self.task, self.model, self.optimizer)
        if self.engine.is_main:  # one writer: with several processes only the main one writes files
            self.run.write_task(self.task)
            if self.init_report is not None:
                self.run.write_init_report(self.init_report)
        self.ema = EMA(self.model, t.ema_decay)

    def setup_loaders(self) -> None:
        """This rank's training loader, the validation loader and the step budget."""
        t, engine = self.t, self.engine

        def train_loader_of(rank: int) -> EventLoader:
            return EventLoader(
                self.store,
                "train",
                t.batch_size,
                True,
                t.seed,
                self.task.split,
                self.fraction,
                t.num_workers,
                rank=rank,
                world_size=engine.world_size,
                drop_last=True,
                selection=self.selection,
            )

        self.train_loader = train_loader_of(engine.rank)
        self.val_loader = EventLoader(
            self.store, "val", t.batch_size, False, t.seed, self.task.split, selection=self.selection
        )
        # every rank takes the same number of steps per epoch
        self.per_epoch = min(len(train_loader_of(r)) for r in range(engine.world_size))
        if self.per_epoch == 0:
            raise HepfmError(f"{self.store.path}: the training split has fewer events than one batch ({t.batch_size})")
        self.total = t.max_steps or t.epochs * self.per_epoch

    # ---------------------------------------------------------------------------------------
    # resume
    # ---------------------------------------------------------------------------------------
    def load_resumable(self) -> dict[str, Any] | None:
        """The last checkpoint when resuming, checked against this task before anything in the run changes."""
        if not self.resuming:
            return None
        ckpt = load_checkpoint(self.run.checkpoint_path("last"))
        _check_resumable(self.run, self.task, ckpt, self.config.to_dict())
        return ckpt

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Weights, EMA, optimizer, trainer state and RNG states of the last checkpoint; forget later logs."""
        where = self.run.checkpoint_path("last")
        if self.engine.optimizer is None or ckpt["optimizer"] is None:
            self.engine.close()
            raise HepfmError(
                f"{self.run.path}: --resume needs the optimizer state, which train.engine=deepspeed with "
                "zero_stage > 0 partitions across processes and does not checkpoint; resume only runs with zero_stage 0"
            )
        check_group_layout(ckpt["optimizer"], self.optimizer, str(where))
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        st = ckpt["trainer"]
        self.state = _Progress.restore(st)
        self.ema.updates = st.get("ema_updates", self.state.step)
        if self.engine.is_main:
            self.run.forget_metrics_after(self.state.step)
        _set_rng(st["rng"], ckpt["tensors"]["rng/torch"])
        s = self.state
        err_console.print(
            f"resumed {self.run.path} at step {s.step} (epoch {s.epoch}, batch {s.position})", highlight=False
        )

    # ---------------------------------------------------------------------------------------
    # the loop's steps
    # ---------------------------------------------------------------------------------------
    def step(self, batch, stage: str, heads: list[str], ramp: float | None) -> dict[str, float]:
        """One optimizer step on a batch: schedule, forward under autocast, engine step, EMA; the loss parts."""
        s, model, engine = self.state, self.model, self.engine
        if ramp is not None:
            for h in model.heads.values():
                if hasattr(h, "set_mask_fraction"):
                    h.set_mask_fraction(ramp)
        factor = lr_factor(s.step, self.total, self.t.warmup)
        frozen = s.step < self.t.backbone_frozen_steps  # the new heads settle before the backbone moves
        for g in self.optimizer.param_groups:
            g["lr"] = 0.0 if frozen and g.get("name", "").startswith("backbone") else g["base_lr"] * factor
        batch = batch.to(engine.device)
        counter = _flop_counter() if stage not in s.flops_per_event else contextlib.nullcontext()
        with counter:
            with engine.autocast():
                loss, parts, _ = model.loss(batch, heads)
            if not torch.isfinite(loss):
                raise HepfmError(
                    f"step {s.step}: loss is {float(loss)} (parts {parts}); lower train.lr or check the data"
                )
            engine.step(loss)
        if hasattr(counter, "get_total_flops"):  # this step was counted
            s.flops_per_event[stage] = counter.get_total_flops() / len(batch)
        self.ema.update(model)
        s.step += 1
        events = len(batch) * engine.world_size
        self.seen += events
        s.events_seen += events
        s.flops += s.flops_per_event.get(stage, 0.0) * events
        return parts

    def log(self, parts: dict[str, float], stage: str) -> None:
        """One ``metrics.jsonl`` line (and W&B) of the training losses (main process)."""
        s = self.state
        record = {
            "step": s.step,
            "epoch": s.epoch,
            "stage": stage,
            "lr": self.optimizer.param_groups[0]["lr"],
            "events_per_s": self.seen / max(time.perf_counter() - self.t0, 1e-9),
            **{f"train/{k}": v for k, v in parts.items()},
        }
        self.run.append_metrics(record)
        if self.wandb is not None:
            self.wandb.log(record, step=s.step)

    def validate(self, stage: str, heads: list[str]) -> None:
        """Validate the selected weights; keep the best, count stalls, decide early stopping; save (main process)."""
        t, s = self.t, self.state
        val = _validate(self.ema.model if t.select_on == "ema" else self.model, self.val_loader, t.val_batches, heads)
        final_stage = not t.stages or stage == t.stages[-1].name  # best is chosen in the last stage
        min_delta = t.early_stopping.min_delta if t.early_stopping else 0.0
        improved = final_stage and (s.best_val is None or val["total"] < s.best_val - min_delta)
        if improved:
            s.best_val, s.best_step, s.stalled = val["total"], s.step, 0
        elif final_stage and s.step > t.backbone_frozen_steps:  # patience counts once the backbone trains
            s.stalled += 1
        # every rank validates the same events, so every rank decides to stop alike
        s.stopped_early = t.early_stopping is not None and s.stalled >= t.early_stopping.patience
        self.model.train()
        if not self.engine.is_main:
            self.engine.barrier()  # the main process writes the logs and checkpoints
            return
        record = {"step": s.step, **{f"val/{k}": v for k, v in val.items()}, "best": improved, "stalled": s.stalled}
        self.run.append_metrics(record)
        if self.wandb is not None:
            self.wandb.log({f"val/{k}": v for k, v in val.items()}, step=s.step)
        self.save("last")
        if improved:
            self.save("best")
        self.engine.barrier()

    def save(self, name: str) -> Path:
        """Checkpoint ``name``: weights, EMA, optimizer, config, trainer state and RNG states."""
        s = self.state
        state = {
            "step": s.step,
            "epoch": s.epoch,
            "position": s.position,
            "best_val": s.best_val,
            "best_step": s.best_step,
            "stalled": s.stalled,
            "stopped_early": s.stopped_early,
            "selected_on": self.t.select_on,
            "ema_updates": self.ema.updates,
            "events_seen": s.events_seen,
            "flops": s.flops,
            "flops_per_event": s.flops_per_event,
            "wall_s": s.wall_s + time.perf_counter() - self.t0,
            "rng": _rng_state(),
        }
        return save_checkpoint(
            self.run.checkpoint_path(name),
            self.model,
            self.config,
            self.ema.model,
            self.engine.optimizer,
            state,
            {"rng/torch": torch.get_rng_state()},
        )

    def fit(self) -> None:
        """Epochs of steps, validating and saving, until the budget or early stopping."""
        t, s, engine = self.t, self.state, self.engine
        if engine.rank > 0:  # every process draws its own noise; rank 0 keeps the run's stream
            torch.manual_seed(t.seed * 1_000_003 + engine.rank * 7919 + s.step)
        self.t0 = time.perf_counter()
        self.seen = 0
        self.wandb = _start_wandb(self.task, self.run.path, self.wandb_mode) if engine.is_main else None
        self.n_params = sum(p.numel() for p in self.model.parameters())
        err_console.print(
            f"training {self.task.name}: {self.n_params:,} parameters, {self.total} steps of {t.batch_size} events "
            f"-> {self.run.path}",
            highlight=False,
        )
        self.model.train()
        with progress(f"{self.task.name}", self.total, unit="steps") as advance:
            advance(s.step)
            while s.step < self.total and not s.stopped_early:
                self._epoch(advance)
                if s.stopped_early:
                    err_console.print(
                        f"early stopping at step {s.step}: no validation improvement for {s.stalled} rounds "
                        f"(best at step {s.best_step})",
                        highlight=False,
                    )
                    break
                if s.step < self.total:  # the epoch is over: next one from its first batch
                    s.epoch += 1
                    s.position = 0

    def _epoch(self, advance) -> None:
        """The rest of the current epoch (from ``position`` when resuming inside it)."""
        t, s, engine = self.t, self.state, self.engine
        self.train_loader.set_epoch(s.epoch)
        for i, batch in enumerate(self.train_loader):
            if i >= self.per_epoch:
                break
            if i < s.position:
                continue  # resuming inside an epoch: the same batches in the same order
            stage, heads, ramp = stage_at(self.task, s.step, self.total)
            parts = self.step(batch, stage, heads, ramp)
            s.position = i + 1
            log_now = s.step % t.log_every == 0 or s.step == self.total
            if log_now:
                parts = engine.mean(parts)  # over the processes (every process must call it)
            advance(1, f"loss {parts['total']:.4g}" if log_now and "total" in parts else None)
            if engine.is_main and log_now:
                self.log(parts, stage)
            if s.step % t.val_every == 0 or s.step == self.total:
                self.validate(stage, heads)
            if engine.is_main and t.keep_every and s.step % t.keep_every == 0:
                self.save(f"step-{s.step}")  # kept: a pretraining-length ablation fine-tunes from each
            if s.step >= self.total or s.stopped_early:
                break

    def close(self) -> TrainResult:
        """Release the engine; the last checkpoint, summary and model card (main process); the result."""
        s = self.state
        self.engine.close()
        if self.engine.is_main:
            self.save("last")
            summary = {
                "steps": s.step,
                "best_val": s.best_val,
                "best_step": s.best_step,
                "stopped_early": s.stopped_early,
                "events_seen": s.events_seen,
                "flops": s.flops,
                "parameters": self.n_params,
                "wall_s": s.wall_s + time.perf_counter() - self.t0,
                "selected_on": self.t.select_on,
                "selected_fraction": self.train_loader.selected_fraction,
            }
            self.run.write_summary(summary)
            self.run.write_model_card(_model_card(self.run.path, self.task, self.config.to_dict(), summary))
        if self.wandb is not None:
            self.wandb.finish()
        best = self.run.checkpoint_path("best")
        return TrainResult(
            self.run.path,
            s.step,
            s.best_val,
            self.run.checkpoint_path("last"),
            best if best.exists() else None,
            s.best_step,
            s.stopped_early,
            s.events_seen,
            s.flops,
        )


def train(
    task: Task,
    out: str | os.PathLike,
    resume: bool = False,
    fraction: float = 1.0,
    wandb_mode: str = "offline",
) -> TrainResult:
    """Train a task into a run folder (see ``hepfm.run``); ``resume`` continues exactly.

    The run folder is locked while training: a second ``train`` into it is refused in one line.
    """
    out = Path(out)
    if not 0.0 < fraction <= 1.0:
        raise HepfmError(f"--fraction {fraction}: must be in (0, 1] (a share of the training split)")
    prepare_output(out, "run", resume=True)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 writes (and locks) the run folder
        return _train(task, out, resume, fraction, wandb_mode)
    with output_lock(out):
        return _train(task, out, resume, fraction, wandb_mode)


def _train(task: Task, out: Path, resume: bool, fraction: float, wandb_mode: str) -> TrainResult:
    """``train`` with the run folder checked and locked: the recipe."""
    trainer = _Trainer(task, Run(out), resume, fraction, wandb_mode)
    trainer.setup_data()
    ckpt = trainer.load_resumable()
    trainer.setup_model(ckpt)
    trainer.setup_optimizer()
    trainer.setup_loaders()
    if ckpt is not None:
        trainer.resume(ckpt)
    trainer.fit()
    return trainer.close()


def _start_wandb(task: Task, out: Path, mode: str):
    if mode == "disabled":  # the mode was checked when train() started
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb.init(
        project=os.environ.get("WANDB_PROJECT") or "hepfm",  # --wandb-project sets it
        name=task.name,
        dir=str(out),
        mode=mode,
        config=task.model_dump(mode="json"),
        reinit="finish_previous",
    )
