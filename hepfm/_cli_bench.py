"""``hepfm bench``: throughput and memory figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import plugins
from ._cli_app import command
from ._errors import HepfmError
from ._files import write_json
from ._limits import MAX_EVENTS
from ._progress import console


@command()
def bench(
    kind: Annotated[str, typer.Argument(help="loader | model | train | scale")],
    events: Annotated[int, typer.Option(help="events in the benchmark store", min=1, max=MAX_EVENTS)] = 1_000_000,
    rss_events: Annotated[
        int, typer.Option(help="events in the store whose epoch peak RSS is measured (0: skip)", min=0, max=MAX_EVENTS)
    ] = 2_000_000,
    workers: Annotated[str, typer.Option(help="comma-separated loader worker counts")] = "0,2",
    batch_size: Annotated[int | None, typer.Option(help="[default: loader 1024, model and train 256]")] = None,
    full: Annotated[
        bool, typer.Option(help="model: every event fills all 18 object slots (no padding), not toy multiplicities")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures here")] = None,
) -> None:
    """Measure throughput and memory: loader (store I/O), model (size, FLOPs, speed), train, scale.

    ``scale``: generation with Dask against the process pool, loader over HTTP against local disk,
    data-parallel training on 1 and 2 processes, and the epoch peak RSS of a dataset of many stores
    (``--events`` events) against one ten times larger.
    """
    if batch_size is not None and batch_size < 1:
        raise HepfmError(f"--batch-size {batch_size}: expected a positive integer")
    if kind == "model":
        _bench_model(batch_size or 256, full, json_out)
        return
    if kind == "train":
        from .bench import bench_train

        r = bench_train(batch_size=batch_size or 256)
        for preset in ("tiny", "small"):
            console.print(
                f"train {preset}: {r[preset]['events_per_s']:,.0f} events/s ({r['engine']} engine, batch "
                f"{r['batch_size']}, {r['steps']} steps in {r[preset]['wall_s']:.0f} s)",
                markup=False,
            )
        if json_out:
            write_json(json_out, r)
        return
    if kind == "scale":
        _bench_scale(events, json_out)
        return
    if kind != "loader":
        raise HepfmError(f"unknown benchmark '{kind}'; known: loader, model, train, scale")
    from .bench import bench_loader

    try:
        counts = tuple(int(w) for w in workers.split(","))
    except ValueError:
        raise HepfmError(f"--workers '{workers}': expected comma-separated integers") from None
    r = bench_loader(events, rss_events, counts, batch_size or 1024)
    t = Table(title=f"bench loader ({events:,} synthetic events)", title_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("write events/s (writer only)", f"{r['write_events_per_s']:,.0f}")
    t.add_row("generate+write events/s (synthetic)", f"{r['generate_events_per_s']:,.0f}")
    t.add_row("bytes per event on disk", f"{r['bytes_per_event']:.1f}")
    for w, rate in r["loader_events_per_s"].items():
        t.add_row(f"loader events/s, {w} workers", f"{rate:,.0f}")
    for k, v in r.get("peak_rss_bytes", {}).items():
        t.add_row(f"peak RSS, {r['rss_events']:,}-event epoch, {k}", f"{v / 2**20:,.0f} MiB")
    console.print(t)
    if json_out:
        write_json(json_out, r)


def _bench_scale(events: int, json_out: Path | None) -> None:
    from ._bench_scale import bench_dataset_memory, bench_ddp, bench_generation, bench_remote

    pythia = "pythia" in plugins.generators()
    gen = bench_generation() if pythia else bench_generation(processes=("toy_signal",), events=200_000,
                                                             chunk_events=4096, fast=False)  # fmt: skip
    r = {"generation": gen, "remote": bench_remote(), "ddp": bench_ddp(), "memory": bench_dataset_memory(events)}
    t = Table(title="bench scale", title_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for executor in ("pool", "dask"):
        for w, rate in gen[executor].items():
            t.add_row(f"generate {'+'.join(gen['processes'])} events/s, {executor}, {w} workers", f"{rate:,.1f}")
    rem = r["remote"]
    t.add_row(f"loader events/s, local store ({rem['events']:,} events)", f"{rem['local_events_per_s']:,.0f}")
    t.add_row("loader events/s, same store over HTTP (loopback)", f"{rem['http_events_per_s']:,.0f}")
    ddp = r["ddp"]
    for n, run in ddp["runs"].items():
        t.add_row(
            f"train {ddp['preset']} events/s per process, {n} processes (gloo)",
            f"{run['events_per_s_per_process']:,.0f} ({100 * run['scaling_efficiency']:.0f}%)",
        )
        t.add_row(f"peak RSS per process, {n} processes", f"{run['peak_rss_per_process'] / 2**20:,.0f} MiB")
    proj = ddp["projection_hours"]
    for k, v in proj.items():
        if k not in ("note", "target_events"):
            t.add_row(f"projection: {proj['target_events']:.0e} events, {k} CPU processes", f"{v:,.1f} h")
    mem = r["memory"]
    for name in ("small", "big"):
        m = mem[name]
        rss = f"{m['peak_rss'] / 2**20:,.0f} MiB"
        t.add_row(f"epoch peak RSS, {m['events']:,} events in {m['stores']} stores", rss)
    t.add_row("peak RSS ratio, 10x the events", f"{mem['big_over_small_peak_rss']:.3f}")
    console.print(t)
    if json_out:
        write_json(json_out, r)


def _bench_model(batch_size: int, full: bool, json_out: Path | None) -> None:
    from .bench import bench_model

    r = bench_model(batch_size=batch_size, full=full)
    t = Table(
        title=f"bench model (batch {r['batch_size']}, 18x7 inputs, {100 * r['real_object_fraction']:.0f}% of object "
        f"slots real, {r['threads']} threads)",
        title_justify="left",
    )
    for col in ("preset", "parameters", "fwd GFLOP/event", "train ev/s", "infer ev/s", "MFU train", "MFU infer"):
        t.add_column(col, justify="right")
    for preset in ("tiny", "small"):
        m = r[preset]
        t.add_row(
            preset,
            f"{m['parameters'] / 1e6:.2f}M",
            f"{m['forward_flops_per_event'] / 1e9:.4f}",
            f"{m['train_events_per_s']:,.0f}",
            f"{m['inference_events_per_s']:,.0f}",
            f"{100 * m['mfu_train']:.1f}%",
            f"{100 * m['mfu_inference']:.1f}%",
        )
    for preset, n in r.get("parameters_only", {}).items():
        t.add_row(preset, f"{n / 1e6:.2f}M", "", "", "", "", "")
    console.print(t)
    lo, hi = r["matmul_flops_range"]
    console.print(
        f"dense matmul: {r['matmul_flops'] / 1e9:.1f} GFLOP/s (windows {lo / 1e9:.0f}-{hi / 1e9:.0f}); "
        f"each MFU is over the matmul windows interleaved with its own ({r['rounds']} rounds)",
        highlight=False,
    )
    if json_out:
        write_json(json_out, r)
