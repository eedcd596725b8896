"""Benchmarks (``hepfm bench``): figures are ratios and rates from one run, never timed tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._progress import progress
from .batch import EventBlock
from .generate import generate_store
from .store import EventLoader, EventStore, StoreWriter

__all__ = [
    "bench_loader",
    "bench_model",
    "bench_train",
    "epoch_peak_rss",
    "bench_generation",
    "bench_remote",
    "bench_ddp",
    "bench_dataset_memory",
]

_RSS_SCRIPT = """
import json, sys, time
import psutil
from hepfm.store import EventLoader

def hwm(pid):  # peak RSS of the process's own address space (VmHWM; ru_maxrss would carry the parent's over exec)
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0

me = psutil.Process()
loader = EventLoader(sys.argv[1], split="all", batch_size=int(sys.argv[2]), num_workers=int(sys.argv[3]))
n, t, worker_peak = 0, time.perf_counter(), 0
for batch in loader:
    n += len(batch)
    for child in me.children():
        worker_peak = max(worker_peak, hwm(child.pid))
dt = time.perf_counter() - t
print(json.dumps({"events": n, "seconds": dt, "peak_rss_main": hwm(me.pid), "peak_rss_worker": worker_peak}))
"""


def epoch_peak_rss(store: str | os.PathLike, batch_size: int = 1024, num_workers: int = 0) -> dict[str, Any]:
    """Iterate one epoch of a store in a fresh process; its peak RSS (bytes) and events read."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(store), str(batch_size), str(num_workers)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "HEPFM_PROGRESS": "0"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loader_rate(store: EventStore, workers: int, batch_size: int, label: str | None = None) -> float:
    """Events/s of one shuffled epoch over every event of a store (or dataset)."""
    loader = EventLoader(store, split="all", batch_size=batch_size, num_workers=workers)
    n, t = 0, time.perf_counter()
    with progress(label or f"loader, {workers} workers", store.n_events) as advance:
        for batch in loader:
            n += len(batch)
            advance(len(batch))
    return n / (time.perf_counter() - t)


def bench_loader(
    events: int = 1_000_000,
    rss_events: int = 2_000_000,
    workers: tuple[int, ...] = (0, 2),
    batch_size: int = 1024,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write, read and memory figures of the event store on ``synthetic`` events.

    Returns:
        write_events_per_s (pure writer: compression and I/O of in-memory blocks),
        generate_events_per_s (toy generator plus writer), bytes_per_event,
        loader_events_per_s {workers: rate}, and the peak RSS of one epoch over a
        ``rss_events`` store (main process and largest worker).
    """
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        store = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, events, tmp / "bench.zarr", seed=1)
        generate_rate = events / (time.perf_counter() - t)

        blocks = [EventBlock.from_arrays(store.read(a, a + 4096)) for a in range(0, min(events, 8 * 4096), 4096)]
        writer = StoreWriter(tmp / "write.zarr", store.schema, targets=store.targets, processes=store.processes)
        t = time.perf_counter()
        written = 0
        while written < events:
            block = blocks[(written // 4096) % len(blocks)]
            writer.append(block)
            written += len(block)
        writer.close()
        write_rate = written / (time.perf_counter() - t)

        rates = {w: _loader_rate(store, w, batch_size) for w in workers}
        result: dict[str, Any] = {
            "events": events,
            "write_events_per_s": write_rate,
            "generate_events_per_s": generate_rate,
            "bytes_per_event": store.bytes_on_disk() / store.n_events,
            "loader_events_per_s": rates,
        }
        if rss_events:
            big = tmp / "rss.zarr"
            if rss_events == events:
                big = store.path
            else:
                generate_store({"toy_signal": 0.5, "toy_background": 0.5}, rss_events, big, seed=2)
            rss = epoch_peak_rss(big, batch_size, 0)
            rss2 = epoch_peak_rss(big, batch_size, 2)
            result["rss_events"] = rss_events
            result["peak_rss_bytes"] = {
                "workers=0": rss["peak_rss_main"],
                "workers=2 main": rss2["peak_rss_main"],
                "workers=2 worker": rss2["peak_rss_worker"],
            }
        return result


def _matmul_window(seconds: float, n: int = 1024) -> tuple[float, float]:
    """Dense float32 n x n matmuls for ``seconds``: (FLOPs done, seconds taken), at torch's thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count, time.perf_counter() - t


def _train_step(model, opt, batch) -> None:
    import torch

    loss, _, _ = model.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _window(fn, seconds: float) -> tuple[int, float]:
    """Calls of ``fn`` in ``seconds``: (calls, seconds taken)."""
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn()
        n += 1
    return n, time.perf_counter() - t


def bench_model(
    presets: tuple[str, ...] = ("tiny", "small"),
    batch_size: int = 256,
    seconds: float = 5.0,
    rounds: int = 5,
    full: bool = False,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Parameters, FLOPs per event, train-step and inference events/s per preset, and MFU.

    The model is the backbone with a classification head on 18 x 7 inputs (toy events). A train
    step is forward, loss, backward, gradient clipping and the trainer's AdamW. MFU is the achieved FLOP/s
    (forward + backward FLOPs counted by ``torch.utils.flop_counter``) over the dense matmul
    FLOP/s of the same machine. The matmul peak of a shared machine drifts with its neighbours'
    load, so each preset runs ``rounds`` rounds of (matmul, train, inference) windows, each window
    ``seconds / rounds`` long, and every ratio is of totals over the same rounds. FLOPs are
    those executed: the backbone skips padded objects, so they scale with the real ones
    (``real_object_fraction`` of the batch's object slots). With ``full``, every event fills all 18
    slots with real objects (drawn from the batch's own), so nothing is padding.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import plugins
    from ._engine import adamw
    from .model import PRESETS, EventModel

    window = seconds / rounds
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, max(batch_size, 4096), Path(tmp) / "m.zarr")
        batch = next(iter(EventLoader(store, batch_size=batch_size, shuffle=False)))
        if full:
            pool = batch.objects[batch.mask]  # [R, F]
            fill = pool[torch.randint(len(pool), batch.mask.shape, generator=torch.Generator().manual_seed(0))]
            batch = replace(
                batch, objects=torch.where(batch.mask[..., None], batch.objects, fill), mask=torch.ones_like(batch.mask)
            )
        cls = plugins.heads().get("classification")
        result: dict[str, Any] = {
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "real_object_fraction": float(batch.mask.float().mean()),  # the rest is padding, skipped
        }
        peaks: list[float] = []
        for preset in presets:
            torch.manual_seed(0)
            model = EventModel(store.schema, store.stats, PRESETS[preset], {"p": (cls, cls.Params(num_classes=2), 1.0)})
            params = sum(p.numel() for p in model.parameters())
            opt = adamw(model.parameters(), 1e-3)

            model.train()
            with FlopCounterMode(display=False) as fc:
                loss, _, _ = model.loss(batch)
                loss.backward()
            train_flops = fc.get_total_flops() / batch_size
            model.eval()
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(batch)
            infer_flops = fc.get_total_flops() / batch_size

            def train_step(m=model, o=opt) -> None:
                m.train()
                _train_step(m, o, batch)

            def infer_step(m=model) -> None:
                m.eval()
                with torch.no_grad():
                    m(batch)

            train_step(), infer_step()  # warm-up
            totals = {"peak": [0.0, 0.0], "train": [0.0, 0.0], "infer": [0.0, 0.0]}  # [work, seconds]
            for _ in range(rounds):
                flops, dt = _matmul_window(window / 2)
                peaks.append(flops / dt)
                totals["peak"][0] += flops
                totals["peak"][1] += dt
                for key, fn in (("train", train_step), ("infer", infer_step)):
                    calls, dt = _window(fn, window)
                    totals[key][0] += calls * batch_size
                    totals[key][1] += dt
            peak = totals["peak"][0] / totals["peak"][1]
            train_rate = totals["train"][0] / totals["train"][1]
            infer_rate = totals["infer"][0] / totals["infer"][1]
            result[preset] = {
                "parameters": params,
                "forward_flops_per_event": infer_flops,
                "train_flops_per_event": train_flops,
                "train_events_per_s": train_rate,
                "inference_events_per_s": infer_rate,
                "matmul_flops": peak,
                "mfu_train": train_rate * train_flops / peak,
                "mfu_inference": infer_rate * infer_flops / peak,
            }
        result["matmul_flops"] = sum(peaks) / len(peaks)
        result["matmul_flops_range"] = [min(peaks), max(peaks)]
        for preset in PRESETS:
            if preset not in presets:
                model = EventModel(
                    store.schema, store.stats, PRESETS[preset], {"p": (cls, cls.Params(num_classes=2), 1.0)}
                )
                result.setdefault("parameters_only", {})[preset] = sum(p.numel() for p in model.parameters())
        return result


def bench_train(
    presets: tuple[str, ...] = ("tiny", "small"),
    steps: int = 30,
    batch_size: int = 256,
    engine: str = "local",
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Training events/s of the full trainer (loader, model, EMA, logging) per preset.

    Trains visible diffusion plus classification (both heads every step) on toy events for
    ``steps`` steps; the rate is the run's own events/s at its last step (``metrics.jsonl``),
    counted from the first step.
    """
    from .tasks import Task
    from .train import train

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tmp = Path(tmp)
        store = generate_store(
            {"toy_signal": 0.5, "toy_background": 0.5}, max(20_000, 4 * batch_size * 2), tmp / "t.zarr"
        )
        result: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "engine": engine}
        for preset in presets:
            task = Task.model_validate(
                {
                    "name": f"bench_{preset}",
                    "dataset": {"name": "zarr", "params": {"path": str(store.path)}},
                    "model": {"preset": preset},
                    "heads": {
                        "visible": {"name": "visible_diffusion", "params": {"mask_fraction": 0.5}},
                        "process": {"name": "classification", "params": {"num_classes": 2}},
                    },
                    "train": {
                        "max_steps": steps,
                        "batch_size": batch_size,
                        "log_every": 1,
                        "val_every": 10 * steps,
                        "val_batches": 1,
                        "engine": engine,
                    },
                }
            )
            t0 = time.perf_counter()
            train(task, tmp / f"run_{preset}", wandb_mode="disabled")
            wall = time.perf_counter() - t0
            lines = [json.loads(x) for x in (tmp / f"run_{preset}" / "metrics.jsonl").read_text().splitlines()]
            rates = [x["events_per_s"] for x in lines if "events_per_s" in x]
            result[preset] = {"events_per_s": rates[-1], "wall_s": wall}
        return result


from ._bench_scale import bench_dataset_memory, bench_ddp, bench_generation, bench_remote  # noqa: E402
