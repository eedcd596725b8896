"""Benchmarks of work beyond one process (``hepfm bench scale``).

Dask generation, remote reads, data parallelism, and memory over datasets of many stores. Figures
are rates and ratios from one run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .generate import generate_store, plan_generation, run_generation

__all__ = ["bench_generation", "bench_remote", "bench_ddp", "bench_dataset_memory"]

_MIX = {"toy_signal": 0.5, "toy_background": 0.5}


def bench_generation(
    events: int = 2000,
    processes: tuple[str, ...] = ("ttbar_dilepton",),
    workers: tuple[int, ...] = (1, 2),
    chunk_events: int = 100,
    fast: bool = True,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Generation events/s with the built-in process pool and with a local Dask cluster, per worker count.

    The Dask figure includes starting the cluster (a few seconds), as a user pays it; shards are
    ``events / (4 x workers)`` rounded to whole chunks, so every worker has several.
    """
    from .shards import generate_sharded

    fractions = {p: 1 / len(processes) for p in processes}
    params = {"fast": True} if fast else {}
    result: dict[str, Any] = {"events": events, "processes": list(processes), "pool": {}, "dask": {}}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for w in workers:
            for executor in ("pool", "dask"):
                out = Path(tmp) / f"{executor}{w}"
                plan = plan_generation(fractions, events, out, seed=1, workers=w, params=params,
                                       chunk_events=chunk_events, sharded=executor == "dask")  # fmt: skip
                t = time.perf_counter()
                if executor == "pool":
                    run_generation(plan)
                else:
                    generate_sharded(plan, "dask", shard_events=max(chunk_events, events // (4 * w)))
                result[executor][w] = events / (time.perf_counter() - t)
                shutil.rmtree(out)
    return result


@contextlib.contextmanager
def _http_server(root: Path) -> Iterator[str]:
    """``python -m http.server`` on a free loopback port, in its own process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def bench_remote(
    events: int = 200_000, batch_size: int = 1024, rounds: int = 2, directory: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Loader events/s over one store read from disk and the same store over HTTP on loopback.

    Rounds alternate local and HTTP epochs, so both see the same machine load.
    """
    from .bench import _loader_rate
    from .store import EventStore

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        generate_store(_MIX, events, Path(tmp) / "r.zarr", seed=1)
        local, remote = [], []
        with _http_server(Path(tmp)) as url:
            for _ in range(rounds):
                local.append(_loader_rate(EventStore.open(Path(tmp) / "r.zarr"), 0, batch_size, "loader, local"))
                remote.append(_loader_rate(EventStore.open(f"{url}/r.zarr"), 0, batch_size, "loader, http"))
        return {
            "events": events,
            "local_events_per_s": sum(local) / rounds,
            "http_events_per_s": sum(remote) / rounds,
            "http_over_local": sum(remote) / sum(local),
        }


_RANK_SCRIPT = textwrap.dedent(
    """
    import atexit, json, os, resource, sys
    report = sys.argv[1]

    @atexit.register
    def dump():
        with open(f"{report}/rank{os.environ.get('RANK', '0')}.json", "w") as f:
            json.dump({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, f)

    sys.argv = ["hepfm", *sys.argv[2:]]
    from hepfm.cli import main

    main()
    """
)


def bench_ddp(
    processes: tuple[int, ...] = (1, 2),
    preset: str = "small",
    steps: int = 30,
    batch_size: int = 128,
    target_events: float = 1e8,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Data-parallel training events/s per process with the ``deepspeed`` engine (gloo), 1 thread per process.

    Each configuration is ``torchrun --nproc_per_node N``; the rate is the run's own events/s over
    all processes at its last step (from the second step on, after warm-up), divided by N. Peak
    RSS is per process. ``projection_hours`` extrapolates the measured per-process rate and the
    measured scaling to ``target_events`` (one epoch), labelled as a projection.
    """
    result: dict[str, Any] = {"preset": preset, "steps": steps, "batch_size_per_process": batch_size, "runs": {}}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tmp = Path(tmp)
        store = generate_store(_MIX, 20_000, tmp / "d.zarr", seed=1)
        task = {
            "name": "bench_ddp",
            "dataset": {"name": "zarr", "params": {"path": str(store.path)}},
            "model": {"preset": preset},
            "heads": {
                "visible": {"name": "visible_diffusion", "params": {"mask_fraction": 0.5}},
                "process": {"name": "classification", "params": {"num_classes": 2}},
            },
            "train": {"max_steps": steps, "batch_size": batch_size, "log_every": 1, "val_every": 10 * steps,
                      "val_batches": 1, "engine": "deepspeed"},
        }  # fmt: skip
        (tmp / "task.yaml").write_text(json.dumps(task))
        (tmp / "launch.py").write_text(_RANK_SCRIPT)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(OMP_NUM_THREADS="1", HEPFM_PROGRESS="0")
        for n in processes:
            report = tmp / f"report{n}"
            report.mkdir()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   str(tmp / "launch.py"), str(report), "pretrain", str(tmp / "task.yaml"), "--out",
                   str(tmp / f"run{n}"), "--wandb", "disabled"]  # fmt: skip
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"torchrun with {n} processes failed:\n{r.stderr[-3000:]}")
            lines = [json.loads(x) for x in (tmp / f"run{n}" / "metrics.jsonl").read_text().splitlines()]
            rates = [x["events_per_s"] for x in lines if "events_per_s" in x]
            peaks = [json.loads((report / f"rank{k}.json").read_text())["peak_rss"] for k in range(n)]
            result["runs"][n] = {"events_per_s": rates[-1], "events_per_s_per_process": rates[-1] / n,
                                 "peak_rss_per_process": max(peaks)}  # fmt: skip
    one = result["runs"][min(processes)]["events_per_s_per_process"]
    for run in result["runs"].values():
        run["scaling_efficiency"] = run["events_per_s_per_process"] / one
    best = max(processes)
    rate = result["runs"][best]["events_per_s"]
    result["projection_hours"] = {
        "note": "projection from this machine's CPU processes at the measured scaling, not a measurement",
        "target_events": target_events,
        **{str(n): target_events / (rate * n / best) / 3600 for n in (best, 8 * best, 64 * best)},
    }
    return result


def _link_copy(src: Path, dst: Path) -> None:
    """A store's files hard-linked under another name (a distinct store, no extra disk)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def bench_dataset_memory(
    small: int = 1_000_000,
    factor: int = 10,
    stores: int = 10,
    batch_size: int = 1024,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Peak RSS of one epoch over a dataset of ``stores`` stores (``small`` events) and one ``factor`` x larger.

    The larger dataset holds ``factor x stores`` stores: the first ones and hard-linked copies of
    them under other names (distinct stores to the loader, no extra disk).
    """
    from .bench import epoch_peak_rss

    per = math.ceil(small / stores)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tmp = Path(tmp)
        base, big = tmp / "small", tmp / "big"
        for k in range(stores):
            generate_store(_MIX, per, base / f"s{k:03d}.zarr", seed=k)
        for k in range(stores * factor):
            _link_copy(base / f"s{k % stores:03d}.zarr", big / f"s{k:04d}.zarr")
        out: dict[str, Any] = {"batch_size": batch_size}
        for name, folder in (("small", base), ("big", big)):
            r = epoch_peak_rss(folder, batch_size, 0)
            out[name] = {"events": r["events"], "stores": len(list(folder.iterdir())), "seconds": r["seconds"],
                         "peak_rss": r["peak_rss_main"]}  # fmt: skip
        out["big_over_small_peak_rss"] = out["big"]["peak_rss"] / out["small"]["peak_rss"]
        return out
