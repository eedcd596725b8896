"""The trainer behind ``hepfm pretrain`` and ``hepfm finetune``.

One loop for every task: AdamW with a smaller backbone learning rate where asked, warm-up then
cosine decay, gradient clipping, an EMA of the weights (used for validation and saved), stages
that switch heads on and ramp the visible-diffusion masking, validation every N steps with best
checkpoint selection, and exact resumption (weights, EMA, optimizer, schedule, RNG states and the
position in the data).

Run folder::

    RUN/task.yaml            the resolved task
    RUN/metrics.jsonl        one JSON line per log step and per validation
    RUN/checkpoints/last.safetensors, best.safetensors   (see hepfm.checkpoint)
    RUN/checkpoints/step-N.safetensors                   with train.keep_every = N
    RUN/train_summary.json   steps, best step, early stop, events seen, FLOPs, wall time
    RUN/init_report.json     fine-tunes: which tensors were loaded and which skipped
    RUN/MODEL_CARD.md
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, plugins
from ._errors import HepfmError
from ._files import write_atomic, write_json
from ._outputs import output_lock, prepare_output
from ._progress import err_console, progress
from ._yaml import read_yaml
from .checkpoint import build_model, check_finite, checkpoint_weights, load_checkpoint, save_checkpoint
from .model import config_from_spec
from .store import EventLoader, EventStore
from .tasks import Task, task_selection

__all__ = ["TrainResult", "train", "init_from", "model_config", "LocalEngine", "make_engine", "adamw"]


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


def model_config(task: Task, store: EventStore) -> dict[str, Any]:
    """Everything needed to rebuild the model: schema, normalisation statistics, sizes, heads."""
    m = task.model
    cfg = config_from_spec(
        m.preset,
        dim=m.dim,
        depth=m.depth,
        num_heads=m.num_heads,
        k_neighbours=m.k_neighbours,
        feature_dropout=m.feature_dropout,
    )
    return {
        "hepfm_version": __version__,
        "schema": store.schema.model_dump(mode="json"),
        "stats": store.attrs["stats"],
        "backbone": cfg.to_dict(),
        "heads": {
            k: {"name": h.name, "params": _bind(h.name, h.params, store), "weight": h.weight}
            for k, h in task.heads.items()
        },
        "processes": store.processes,
        "topology": store.topology,
    }


def _bind(name: str, params: dict[str, Any], store: EventStore) -> dict[str, Any]:
    """Let a head fill parameters the data decides (``bind`` classmethod, optional)."""
    cls = plugins.heads().get(name)
    if not hasattr(cls, "bind"):
        return params
    try:
        return cls.bind(dict(params), store)
    except ValueError as exc:
        raise HepfmError(f"head '{name}': {exc}") from None


def init_from(
    model: torch.nn.Module, checkpoint: str | os.PathLike, skip_mismatched: bool = True, weights: str | None = None
) -> dict[str, Any]:
    """Load matching tensors of a pretrained run; report loaded, skipped and missing, and which weights.

    ``weights``: ``ema`` or ``raw``; default: those the pretrained run selected its best checkpoint on.
    """
    from ._hf_export import load_pretrained

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
    from .schema import EventSchema

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
    checkpoint's architecture wins. ``feature_dropout`` (a training setting) stays the task's
    when it gives one.
    """
    if task.init is None:
        return task
    from ._hf_export import load_pretrained
    from .model.backbone import PRESETS

    path, ckpt = load_pretrained(task.init.checkpoint)
    theirs = dict(ckpt["config"].get("backbone", {}))
    sizes = ("dim", "depth", "num_heads", "k_neighbours")
    shape = [k for k in PRESETS["tiny"].to_dict() if k not in ("feature_dropout", "dropout")]
    preset = next((n for n, c in PRESETS.items() if all(c.to_dict()[k] == theirs.get(k) for k in shape)), None)
    m = task.model
    asked = m.model_fields_set - {"feature_dropout"}
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
    if "feature_dropout" in m.model_fields_set:
        spec["feature_dropout"] = m.feature_dropout
    else:
        spec["feature_dropout"] = theirs.get("feature_dropout")
    return task.model_copy(update={"model": type(m).model_validate(spec)})


class LocalEngine:
    """Plain torch in one process. The seam every engine implements.

    ``step(loss)`` does backward, clipping and the optimizer step; ``rank``/``world_size`` shard
    the data; only the main process (``is_main``) writes logs and checkpoints; ``barrier()``
    waits for every process; ``optimizer`` is the torch optimizer whose state is checkpointed
    (``None``: the engine cannot checkpoint it, and ``--resume`` is refused); batches go to
    ``device``; the forward pass runs inside ``autocast()``; ``mean(values)`` averages logged
    numbers over the processes (a collective). See ``hepfm._deepspeed`` for the other engine.
    """

    rank, world_size = 0, 1

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None,
        precision: str = "auto",
    ) -> None:
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        # one GPU when there is one (parameters move in place: the optimizer keeps them)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(self.device)
        bf16_ok = self.device.type == "cpu" or torch.cuda.is_bf16_supported()
        if precision == "bf16" and not bf16_ok:
            raise HepfmError("train.precision bf16: this GPU does not support bfloat16; use fp32 or auto")
        # auto: bf16 autocast on a GPU that has it, fp32 on the CPU (bf16 matmuls are slow there)
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda" and bf16_ok)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def adamw(params, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """The trainer's optimizer: torch's AdamW, with its fused kernel (one pass per step, CPU or GPU)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def make_engine(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """The engine ``train.engine`` names."""
    t = task.train
    if t.engine == "local":
        return LocalEngine(model, optimizer, t.grad_clip, t.precision)
    try:
        from ._deepspeed import DeepSpeedEngine
    except ImportError as exc:
        raise HepfmError(
            f"train.engine 'deepspeed' is not available ({exc}); "
            "pip install 'hepfm[deepspeed]' or use train.engine=local"
        ) from None
    return DeepSpeedEngine(model, optimizer, t)


class _EMA:
    """Exponential moving average of a model's parameters and buffers, with a warm-up of its decay.

    Update ``t`` (0-based) uses ``decay_t = min(decay, (1 + t) / (10 + t))``: the first updates
    weigh the new weights heavily, so the average never carries a sizeable share of the
    initialisation (with a constant 0.999, 40 steps leave 96% of it). ``updates`` is the number of
    updates done; a resumed run restores it with the weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, t: int) -> float:
        """The decay used by update ``t``."""
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.decay_at(self.updates)
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)
        self.updates += 1


def _flop_counter():
    """Torch's FLOP counter (matmul-class operations, forward and backward) for one training step."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def _lr_factor(step: int, total: int, warmup: float) -> float:
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    progress_ = (step - w) / max(1, total - w)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def _stage_at(task: Task, step: int, total: int) -> tuple[str, list[str], float | None]:
    stages = task.train.stages
    if not stages:
        return "train", list(task.heads), None
    start = 0.0
    for i, st in enumerate(stages):
        end = start + st.fraction * total
        if step < end or i == len(stages) - 1:
            ramp = None
            if st.mask_fraction is not None:
                a, b = st.mask_fraction
                ramp = a + (b - a) * min(1.0, (step - start) / max(1.0, end - start))
            return st.name, st.heads or list(task.heads), ramp
        start = end
    raise AssertionError


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


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


@torch.no_grad()
def _validate(
    model: torch.nn.Module, loader: EventLoader, max_batches: int | None, heads: list[str]
) -> dict[str, float]:
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    state = torch.get_rng_state()
    torch.manual_seed(0)  # the same noise every validation: comparable losses for best selection
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = batch.to(next(model.parameters()).device)
        _, parts, _ = model.loss(batch, heads)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch)
        n += len(batch)
    torch.set_rng_state(state)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _check_resumable(out: Path, task: Task, ckpt: dict[str, Any], mine: dict[str, Any]) -> None:
    """Refuse ``--resume`` with another task, preset, heads or data layout than the run's, or from NaN weights."""
    previous = out / "task.yaml"
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
    where = str(out / "checkpoints" / "last.safetensors")
    check_finite(ckpt["model"], where, "model/")
    check_finite(ckpt.get("ema") or {}, where, "ema/")


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
- Data: `{task.dataset.params.get("path")}`, processes {config.get("processes")}
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


def train(
    task: Task,
    out: str | os.PathLike,
    resume: bool = False,
    fraction: float = 1.0,
    wandb_mode: str = "offline",
) -> TrainResult:
    """Train a task into a run folder (see module docstring); ``resume`` continues exactly.

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
    """``train`` with the run folder checked and locked."""
    t = task.train
    if wandb_mode not in ("offline", "online", "disabled"):
        raise HepfmError(f"--wandb '{wandb_mode}': expected offline, online or disabled")
    last_path = out / "checkpoints" / "last.safetensors"
    if resume and not last_path.is_file():
        raise HepfmError(f"{out}: resume=True (--resume) given but no checkpoint at checkpoints/last.safetensors")
    if not resume and last_path.exists():
        raise HepfmError(f"{out}: a run already exists here; pass resume=True (--resume) to continue it or another out")

    store = (
        plugins.datasets()
        .get(task.dataset.name)(plugins.datasets().get(task.dataset.name).Params.model_validate(task.dataset.params))
        .open()
    )
    task = init_architecture(task)  # a fine-tune takes the architecture of the checkpoint it starts from
    config = model_config(task, store)
    for key, head in config["heads"].items():  # bound params: a head may have found its targets by name
        params = head["params"]
        needed = [v for k, v in params.items() if k in ("target", "mask_target") and isinstance(v, str)]
        if isinstance(params.get("targets"), dict):  # per-part targets (assignment: one per resonance)
            needed = [str(v) for v in params["targets"].values()]
        missing = [n for n in needed if n not in store.targets]
        if missing:
            raise HepfmError(
                f"{store.path}: head '{key}' needs target {missing[0]!r}; the store has {sorted(store.targets)}"
            )
    selection = task_selection(task, store.schema)
    ckpt = load_checkpoint(last_path) if resume else None
    if ckpt is not None:  # before anything in the run folder changes
        _check_resumable(out, task, ckpt, config)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)
    model = build_model(config)
    out.mkdir(parents=True, exist_ok=True)
    report = None
    if task.init is not None and not resume:
        report = init_from(model, task.init.checkpoint, task.init.skip_mismatched, task.init.weights)
        err_console.print(
            f"init from {report['checkpoint']} ({report['weights']} weights): loaded {len(report['loaded'])} tensors, "
            f"skipped {len(report['skipped'])}, new {len(report['missing'])}",
            highlight=False,
        )
    if task.init is not None and task.init.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    others = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    groups = [{"params": others, "lr": t.lr, "base_lr": t.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": t.lr * t.backbone_lr_scale, "base_lr": t.lr * t.backbone_lr_scale})
    optimizer = adamw(groups, lr=t.lr, weight_decay=t.weight_decay)
    engine = make_engine(task, model, optimizer)
    if engine.is_main:  # one writer: with several processes only the main one writes files
        write_atomic(out / "task.yaml", task.to_yaml())
        if report is not None:
            write_atomic(out / "init_report.json", json.dumps(report, indent=2))
    ema = _EMA(model, t.ema_decay)

    def train_loader_of(rank: int) -> EventLoader:
        return EventLoader(
            store,
            "train",
            t.batch_size,
            True,
            t.seed,
            task.split,
            fraction,
            t.num_workers,
            rank=rank,
            world_size=engine.world_size,
            drop_last=True,
            selection=selection,
        )

    train_loader = train_loader_of(engine.rank)
    val_loader = EventLoader(store, "val", t.batch_size, False, t.seed, task.split, selection=selection)
    # every rank takes the same number of steps per epoch
    per_epoch = min(len(train_loader_of(r)) for r in range(engine.world_size))
    if per_epoch == 0:
        raise HepfmError(f"{store.path}: the training split has fewer events than one batch ({t.batch_size})")
    total = t.max_steps or t.epochs * per_epoch
    step, epoch, position, best = 0, 0, 0, None
    best_step, stalled, stopped, seen_total, flops, wall_before = None, 0, False, 0, 0.0, 0.0
    flops_per_event: dict[str, float] = {}  # per stage, counted on its first step
    if ckpt is not None:
        if engine.optimizer is None or ckpt["optimizer"] is None:
            engine.close()
            raise HepfmError(
                f"{out}: --resume needs the optimizer state, which train.engine=deepspeed with zero_stage > 0 "
                "partitions across processes and does not checkpoint; resume only runs with zero_stage 0"
            )
        model.load_state_dict(ckpt["model"])
        ema.model.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        st = ckpt["trainer"]
        step, epoch, position, best = st["step"], st["epoch"], st["position"], st["best_val"]
        best_step, stalled, stopped = st.get("best_step"), st.get("stalled", 0), st.get("stopped_early", False)
        seen_total, flops, flops_per_event = (
            st.get("events_seen", 0),
            st.get("flops", 0.0),
            st.get("flops_per_event", {}),
        )
        ema.updates = st.get("ema_updates", step)
        wall_before = st.get("wall_s", 0.0)
        metrics_file = out / "metrics.jsonl"
        if engine.is_main and metrics_file.exists():  # forget what was logged after the checkpoint
            kept = [x for x in metrics_file.read_text().splitlines() if x and json.loads(x).get("step", 0) <= step]
            write_atomic(metrics_file, "".join(x + "\n" for x in kept))
        _set_rng(st["rng"], ckpt["tensors"]["rng/torch"])
        err_console.print(f"resumed {out} at step {step} (epoch {epoch}, batch {position})", highlight=False)
    if engine.rank > 0:  # every process draws its own noise; rank 0 keeps the run's stream
        torch.manual_seed(t.seed * 1_000_003 + engine.rank * 7919 + step)

    t0 = time.perf_counter()
    run = _start_wandb(task, out, wandb_mode) if engine.is_main else None
    metrics_path = out / "metrics.jsonl"
    n_params = sum(p.numel() for p in model.parameters())
    err_console.print(
        f"training {task.name}: {n_params:,} parameters, {total} steps of {t.batch_size} events -> {out}",
        highlight=False,
    )

    def checkpoint(name: str) -> Path:
        state = {
            "step": step,
            "epoch": epoch,
            "position": position,
            "best_val": best,
            "best_step": best_step,
            "stalled": stalled,
            "stopped_early": stopped,
            "selected_on": t.select_on,
            "ema_updates": ema.updates,
            "events_seen": seen_total,
            "flops": flops,
            "flops_per_event": flops_per_event,
            "wall_s": wall_before + time.perf_counter() - t0,
            "rng": _rng_state(),
        }
        return save_checkpoint(
            out / "checkpoints" / f"{name}.safetensors",
            model,
            config,
            ema.model,
            engine.optimizer,
            state,
            {"rng/torch": torch.get_rng_state()},
        )

    model.train()
    seen = 0
    with progress(f"{task.name}", total, unit="steps") as advance:
        advance(step)
        while step < total and not stopped:
            train_loader.set_epoch(epoch)
            for i, batch in enumerate(train_loader):
                if i >= per_epoch:
                    break
                if i < position:
                    continue  # resuming inside an epoch: the same batches in the same order
                stage, heads, ramp = _stage_at(task, step, total)
                if ramp is not None:
                    for h in model.heads.values():
                        if hasattr(h, "set_mask_fraction"):
                            h.set_mask_fraction(ramp)
                factor = _lr_factor(step, total, t.warmup)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * factor
                batch = batch.to(engine.device)
                counter = _flop_counter() if stage not in flops_per_event else contextlib.nullcontext()
                with counter:
                    with engine.autocast():
                        loss, parts, _ = model.loss(batch, heads)
                    if not torch.isfinite(loss):
                        raise HepfmError(
                            f"step {step}: loss is {float(loss)} (parts {parts}); lower train.lr or check the data"
                        )
                    engine.step(loss)
                if hasattr(counter, "get_total_flops"):  # this step was counted
                    flops_per_event[stage] = counter.get_total_flops() / len(batch)
                ema.update(model)
                step += 1
                position = i + 1
                seen += len(batch) * engine.world_size
                seen_total += len(batch) * engine.world_size
                flops += flops_per_event.get(stage, 0.0) * len(batch) * engine.world_size
                log_now = step % t.log_every == 0 or step == total
                if log_now:
                    parts = engine.mean(parts)  # over the processes (every process must call it)
                advance(1, f"loss {parts['total']:.4g}" if log_now and "total" in parts else None)
                if engine.is_main and (step % t.log_every == 0 or step == total):
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "stage": stage,
                        "lr": optimizer.param_groups[0]["lr"],
                        "events_per_s": rate,
                        **{f"train/{k}": v for k, v in parts.items()},
                    }
                    _append_jsonl(metrics_path, record)
                    if run is not None:
                        run.log(record, step=step)
                validating = step % t.val_every == 0 or step == total
                if validating:
                    val = _validate(ema.model if t.select_on == "ema" else model, val_loader, t.val_batches, heads)
                    final_stage = not t.stages or stage == t.stages[-1].name  # best is chosen in the last stage
                    min_delta = t.early_stopping.min_delta if t.early_stopping else 0.0
                    improved = final_stage and (best is None or val["total"] < best - min_delta)
                    if improved:
                        best, best_step, stalled = val["total"], step, 0
                    elif final_stage:
                        stalled += 1
                    # every rank validates the same events, so every rank decides to stop alike
                    stopped = t.early_stopping is not None and stalled >= t.early_stopping.patience
                    model.train()
                if validating and not engine.is_main:
                    engine.barrier()  # the main process writes the logs and checkpoints
                elif validating:
                    _append_jsonl(
                        metrics_path,
                        {"step": step, **{f"val/{k}": v for k, v in val.items()}, "best": improved, "stalled": stalled},
                    )
                    if run is not None:
                        run.log({f"val/{k}": v for k, v in val.items()}, step=step)
                    checkpoint("last")
                    if improved:
                        checkpoint("best")
                    engine.barrier()
                if engine.is_main and t.keep_every and step % t.keep_every == 0:
                    checkpoint(f"step-{step}")  # kept: a pretraining-length ablation fine-tunes from each
                if step >= total or stopped:
                    break
            if stopped:
                err_console.print(
                    f"early stopping at step {step}: no validation improvement for {stalled} rounds "
                    f"(best at step {best_step})",
                    highlight=False,
                )
                break
            if step < total:  # the epoch is over: next one from its first batch
                epoch += 1
                position = 0
    engine.close()
    if engine.is_main:
        checkpoint("last")
        summary = {
            "steps": step,
            "best_val": best,
            "best_step": best_step,
            "stopped_early": stopped,
            "events_seen": seen_total,
            "flops": flops,
            "parameters": n_params,
            "wall_s": wall_before + time.perf_counter() - t0,
            "selected_on": t.select_on,
            "selected_fraction": train_loader.selected_fraction,
        }
        write_json(out / "train_summary.json", summary)
        write_atomic(out / "MODEL_CARD.md", _model_card(out, task, config, summary))
    if run is not None:
        run.finish()
    best_path = out / "checkpoints" / "best.safetensors"
    return TrainResult(
        out, step, best, last_path, best_path if best_path.exists() else None, best_step, stopped, seen_total, flops
    )


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
