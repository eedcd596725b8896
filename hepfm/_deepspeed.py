"""The ``deepspeed`` training engine: data parallel over processes, ZeRO stages 0-2, CPU or GPU.

Chosen with ``train.engine: deepspeed``; ``hepfm._engine.make_engine`` builds it, as it builds
``hepfm._engine.LocalEngine``: ``cls(model, optimizer, train_spec)``. It implements the same
``hepfm._engine.Engine`` protocol, so the training loop does not change: the loop computes
the loss with the plain module (``model.loss``), and ``step(loss)`` runs DeepSpeed's backward (which
averages the gradients over the ranks), gradient clipping (DeepSpeed's ``gradient_clipping``) and the
optimizer step.

Launch::

    hepfm pretrain TASK --set train.engine=deepspeed                       # one process
    torchrun --nproc_per_node 2 -m hepfm pretrain TASK --set train.engine=deepspeed
    deepspeed --no_local_rank --num_gpus 2 --module hepfm pretrain TASK --set train.engine=deepspeed

``train.batch_size`` is the micro batch of one process: the global batch is ``batch_size x world size``.

Backends and compiled ops: gloo on CPU, NCCL on GPU. Nothing is compiled: the optimizer is the torch
``AdamW`` object the trainer builds (DeepSpeed's fused or CPU Adam would be compiled with g++ on first
use), and the ``deepspeed_shm_comm`` op (a shared-memory all-reduce that DeepSpeed would otherwise
build for CPU, about 85 s) is switched off, so CPU collectives are plain gloo.

A plain ``python`` or ``hepfm`` process with no launcher environment runs as world size 1: the
variables torch.distributed needs (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) are filled in, with a free local port, and removed again by ``close()``.

Precision: ``fp32``; ``bf16`` (torch autocast to bfloat16 around the forward pass, on CPU or GPU,
with fp32 weights, gradients and optimizer state); ``auto`` is ``bf16`` on a GPU that supports it and
``fp32`` otherwise (CPU bf16 autocast is usually slower than fp32 on CPUs without AMX).

ZeRO and checkpoints (the trainer writes single-file safetensors checkpoints from rank 0 alone):

- stage 0: every rank holds the whole optimizer state; ``optimizer`` is the torch optimizer and
  ``--resume`` works as with the local engine.
- stages 1 and 2: the optimizer state (and at stage 2 the gradients) is partitioned across the ranks
  as flat fp32 buffers. Weights and EMA are whole on every rank and are checkpointed as usual, but
  hepfm does not consolidate the partitioned optimizer state: ``optimizer`` is ``None``, checkpoints
  hold no optimizer state, and ``--resume`` is refused with one error line. A stage 1-2 run can still
  initialise a fine-tune or a new run.
- stage 3 partitions the weights themselves, which the EMA and the single-writer checkpoints need
  whole on every rank; the task file is refused (``hepfm validate`` and every command that loads it;
  these models are small enough for stages 0-2).

Across ranks the weights, the EMA and the floating-point buffers (broadcast from rank 0 after each
step, as DDP does) stay identical; at stage 0, parameters that the backward pass did not reach on any
rank (heads that the current training stage leaves out) are not stepped, as with the local engine.
See docs/training-deepspeed.md.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from typing import Any

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported: no accelerator probing noise

import deepspeed  # noqa: E402  (an ImportError here becomes make_engine's "not available" error)
import deepspeed.comm as dist  # noqa: E402
from deepspeed.constants import default_pg_timeout  # noqa: E402
from deepspeed.utils import logger as ds_logger  # noqa: E402

from ._errors import HepfmError  # noqa: E402
from .tasks import TrainSpec  # noqa: E402

__all__ = ["DeepSpeedEngine", "deepspeed_config"]

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_process_env() -> dict[str, str | None]:
    """Fill in a world-size-1 launch environment if no launcher set one; return what was there before."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {}
    before = {k: os.environ.get(k) for k in _LAUNCH_VARS}
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    return before


def _restore_env(before: dict[str, str | None]) -> None:
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def deepspeed_config(spec: TrainSpec, world_size: int) -> dict[str, Any]:
    """The DeepSpeed configuration for a task's ``train`` section.

    Args:
        spec: The task's training settings (``batch_size`` is the per-process micro batch).
        world_size: Number of processes.

    Returns:
        A DeepSpeed config dict: batch sizes, ``gradient_clipping`` and ``zero_optimization``. It names
        no optimizer, scheduler or fp16/bf16 section: the optimizer is the trainer's torch AdamW, the
        trainer sets the learning rate every step, and bf16 is autocast with fp32 weights.
    """
    bucket = int(5e7)  # elements; DeepSpeed's 5e8 default would reserve 2 GB buffers on a CPU
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.zero_stage > 0:
        zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
    return {
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": spec.batch_size * world_size,
        "gradient_clipping": float(spec.grad_clip or 0.0),
        "zero_optimization": zero,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    """Data-parallel training through DeepSpeed, behind the trainer's ``Engine`` protocol.

    Args:
        model: The plain ``EventModel`` (DeepSpeed wraps it; the trainer keeps calling the module).
        optimizer: The trainer's torch ``AdamW`` (passed to DeepSpeed as is: nothing is compiled).
        train_spec: The task's ``train`` section: ``zero_stage``, ``grad_clip``, ``batch_size``
            (per process) and ``precision``.

    Attributes:
        rank: This process's rank.
        world_size: Number of processes.
        device: Where the model lives and batches must go (``cuda:LOCAL_RANK`` or ``cpu``).
        optimizer: The torch optimizer whose state the trainer checkpoints; ``None`` for ZeRO
            stages 1-2, whose optimizer state is partitioned across ranks and not consolidated.
        engine: The ``deepspeed.DeepSpeedEngine``.

    Raises:
        HepfmError: When DeepSpeed cannot start. (ZeRO stage 3 never reaches here: the task rules,
            ``hepfm._task_rules``, refuse it when the task is loaded.)
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_spec: TrainSpec) -> None:
        cuda = torch.cuda.is_available()
        self._env_before = _single_process_env()
        ds_logger.setLevel(logging.WARNING)  # DeepSpeed logs its whole config at INFO
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # pure gloo: compile nothing
        self._owns_group = not torch.distributed.is_initialized()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
        backend = "nccl" if cuda else "gloo"
        try:
            if self._owns_group:  # bound to this process's GPU up front (NCCL would otherwise guess it)
                bound = {"device_id": torch.device("cuda", local_rank)} if cuda else {}
                torch.distributed.init_process_group(backend, timeout=default_pg_timeout, **bound)
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            self.engine, _, _, _ = deepspeed.initialize(
                model=model,
                optimizer=optimizer,
                config=deepspeed_config(train_spec, self.world_size),
                dist_init_required=False,
            )
        except (RuntimeError, ValueError, AssertionError) as exc:
            self._release()
            raise HepfmError(f"deepspeed engine failed to start: {type(exc).__name__}: {exc}") from None
        self.device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
        self.model = model
        self.zero_stage = train_spec.zero_stage
        self.optimizer = optimizer if self.zero_stage == 0 else None
        # Stage 0: remember which parameters the backward reached, so that the ones it did not (heads
        # that the current training stage leaves out) keep no gradient and are not stepped, as with the
        # local engine. DeepSpeed's all-reduce fills them with zeros, and AdamW would then decay them
        # and advance their step counts. ZeRO 1-2 step flat partitions and cannot skip them.
        self._params = [p for p in model.parameters() if p.requires_grad] if self.zero_stage == 0 else []
        self._reached = torch.zeros(len(self._params), dtype=torch.uint8, device=self.device)
        self._hooks = [
            p.register_post_accumulate_grad_hook(functools.partial(self._mark, i)) for i, p in enumerate(self._params)
        ]
        precision = train_spec.precision
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints (rank 0)."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context for the forward pass: bf16 autocast when ``precision`` is bf16, else nothing."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged numbers over the ranks (a collective: every rank must call it).

        Args:
            values: Name to number, the same names on every rank.

        Returns:
            The same names with the mean over ranks.
        """
        if self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def _mark(self, index: int, _param: torch.Tensor) -> None:
        self._reached[index] = 1

    def step(self, loss: torch.Tensor) -> None:
        """Backward (gradients averaged over ranks), clipping and the optimizer step.

        Args:
            loss: This rank's scalar loss on its micro batch, computed with the plain module.
        """
        self._reached.zero_()
        self.engine.backward(loss)
        if self._params:
            reached = self._reached.clone()
            if self.world_size > 1:  # a parameter reached on any rank is stepped on every rank
                torch.distributed.all_reduce(reached, op=torch.distributed.ReduceOp.MAX)
            for p, hit in zip(self._params, reached.tolist(), strict=True):
                if not hit:
                    p.grad = None
        self.engine.step()  # clips (gradient_clipping), steps the optimizer, zeroes the gradients
        self._broadcast_buffers()

    def _broadcast_buffers(self) -> None:
        """Give every rank rank 0's floating-point buffers (as DDP does).

        Buffers that a forward pass updates from its batch (a regression head's running target
        moments) would otherwise drift apart across ranks, and so would the EMA and what rank 0 saves.
        """
        if self.world_size == 1:
            return
        buffers = [b for b in self.model.buffers() if b.dtype.is_floating_point]
        for dtype in dict.fromkeys(b.dtype for b in buffers):  # the same order on every rank
            group = [b for b in buffers if b.dtype == dtype]
            flat = torch.cat([b.reshape(-1) for b in group])
            torch.distributed.broadcast(flat, src=0)
            offset = 0
            for b in group:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier()

    def close(self) -> None:
        """Release DeepSpeed's hooks and, where this engine created it, the process group."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()
        self._release()

    def _release(self) -> None:
        if self._owns_group and torch.distributed.is_initialized():
            dist.destroy_process_group()
        _restore_env(self._env_before)
        self._env_before = {}
