"""``hepfm`` data commands: generate, convert, export, merge, inspect."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import plugins
from ._cli_app import Executor, command
from ._errors import HepfmError
from ._limits import MAX_CHUNK, MAX_EVENTS, MAX_SEED, MAX_WORKERS
from ._progress import console, err_console

ExecutorOpt = Annotated[
    Executor | None,
    typer.Option(help="write a folder of shards: 'dask' (a Dask cluster) or 'local' (one shard at a time here)"),
]
SchedulerOpt = Annotated[
    str | None, typer.Option(help="address of a running Dask scheduler (default: a local cluster of --workers)")
]


@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def generate(
    ctx: typer.Context,
    processes: Annotated[
        list[str] | None, typer.Argument(help="PROCESS[=FRACTION]..., e.g. toy_signal=0.3 toy_background")
    ] = None,
    list_processes: Annotated[bool, typer.Option("--list", help="list every generator's processes and exit")] = False,
    events: Annotated[int, typer.Option("--events", "-n", help="number of events", min=1, max=MAX_EVENTS)] = 10_000,
    out: Annotated[Path, typer.Option("--out", "-o", help="event store to write (*.zarr)")] = Path("data/events.zarr"),
    seed: Annotated[int, typer.Option(help="master seed; same seed, same bytes", min=0, max=MAX_SEED)] = 0,
    workers: Annotated[int, typer.Option(help="worker processes", min=1, max=MAX_WORKERS)] = 1,
    generator: Annotated[
        str | None, typer.Option(help="generator plugin (default: the one that knows the processes)")
    ] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="generator parameter key=value")] = None,
    chunk_events: Annotated[int, typer.Option(help="events per chunk", min=1, max=MAX_CHUNK)] = 4096,
    overwrite: Annotated[bool, typer.Option(help="replace an existing store")] = False,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    shard_events: Annotated[
        int | None, typer.Option(help="events per shard with --executor (default 16 chunks)", min=1, max=MAX_EVENTS)
    ] = None,
) -> None:
    """Generate events into a Zarr event store (resumes an interrupted run with the same arguments).

    With ``--executor dask`` the work is cut into shards, each a complete store written by a Dask
    worker, into the folder ``--out`` (a dataset as it is; ``hepfm merge`` makes one store of it).

    Every boolean parameter of the generator is also a switch: ``--NAME`` sets it to true (e.g.
    ``--fast`` for a generator with a ``fast`` parameter).
    """
    from .generate import find_generator, parse_processes, plan_generation, run_generation
    from .tasks import parse_override

    if list_processes:
        for r in plugins.generators():
            for name in r.cls.processes:
                console.print(f"{r.name:10s} {name}", highlight=False)
        return
    switches = [p for p in processes or [] if p.startswith("-")]  # --NAME: a boolean generator parameter
    processes = [p for p in processes or [] if not p.startswith("-")]
    _refuse_unknown_switches(ctx, switches)
    if not processes:
        raise HepfmError("generate: name at least one PROCESS (hepfm generate --list shows them)")
    params = {}
    for p in param or []:
        key, value = parse_override(p)
        params[".".join(key)] = value
    fractions = parse_processes(processes)
    if switches:
        params.update(_switch_params(switches, find_generator(list(fractions), generator)))
    plan = plan_generation(
        fractions,
        events,
        out,
        seed=seed,
        workers=workers,
        generator=generator,
        params=params,
        chunk_events=chunk_events,
        overwrite=overwrite,
        sharded=executor is not None,
    )
    err_console.print(plan.describe() + (f" (shards, executor {executor.value})" if executor else ""), highlight=False)
    if executor is not None:
        from .shards import generate_sharded

        r = generate_sharded(plan, str(executor), scheduler, shard_events)
        _print_shards(r)
        return
    store = run_generation(plan)
    console.print(f"wrote {store.n_events} events to {store.path}", highlight=False)


def _refuse_unknown_switches(ctx: typer.Context, switches: list[str]) -> None:
    """A ``--NAME`` that is neither an option nor a boolean parameter of any generator: a usage error, as before."""
    from .generate import generator_switches

    known = {s for r in plugins.generators() for s in generator_switches(r.cls)}
    options = [o for param in ctx.command.params for o in param.opts if o.startswith("--")]
    for switch in switches:
        if switch not in known:
            close = sorted(difflib.get_close_matches(switch, [*options, *known]))  # worded as click words it
            hint = f" Did you mean {close[0]}?" if len(close) == 1 else f" (Possible options: {', '.join(close)})"
            ctx.fail(f"No such option: {switch}" + (hint if close else ""))


def _switch_params(switches: list[str], cls: type) -> dict[str, bool]:
    """``--NAME`` switches as the generator's boolean parameters (``{"fast": True}``)."""
    from .generate import generator_switches

    own = generator_switches(cls)
    for switch in switches:
        if switch not in own:
            have = ", ".join(own) or "none"
            raise HepfmError(f"{switch}: generator '{cls.name}' has no such switch (its boolean parameters: {have})")
    return {own[switch]: True for switch in switches}


def _print_shards(r) -> None:
    kept = f" ({r.reused} found complete and kept)" if r.reused else ""
    console.print(f"wrote {r.n_events} events in {len(r.shards)} shards to {r.out}{kept}", highlight=False)


@command()
def convert(
    inputs: Annotated[list[str], typer.Argument(help="input files")],
    format: Annotated[str, typer.Option("--format", help="delphes | parquet | spanet (or a plugin's converter)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="event store to write (*.zarr)")],
    map: Annotated[
        Path | None, typer.Option("--map", help="mapping YAML: the converter's parameters (docs/convert.md)")
    ] = None,
    process: Annotated[
        list[str] | None, typer.Option("--process", help="process name of each input, in order (repeat per input)")
    ] = None,
    chunk_events: Annotated[int, typer.Option(help="events per chunk", min=1, max=MAX_CHUNK)] = 4096,
    overwrite: Annotated[bool, typer.Option(help="replace an existing store")] = False,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    workers: Annotated[int, typer.Option(help="local Dask workers with --executor dask", min=1, max=MAX_WORKERS)] = 2,
) -> None:
    """Convert foreign files (Delphes ROOT, Parquet, SPANet HDF5) into an event store (resumable).

    With ``--executor dask`` every input file becomes one shard store, written by a Dask worker, in
    the folder ``--out``.
    """
    from .convert import plan_conversion, run_conversion

    plan = plan_conversion(
        inputs,
        format,
        out,
        mapping=map,
        labels=process,
        chunk_events=chunk_events,
        overwrite=overwrite,
        sharded=executor is not None,
    )
    err_console.print(plan.describe(), markup=False, highlight=False)
    if executor is not None:
        from .shards import convert_sharded

        r = convert_sharded(plan, str(executor), scheduler, workers)
        _print_shards(r)
        return
    result = run_conversion(plan)
    for note in result.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    console.print(
        f"wrote {result.store.n_events} events to {result.store.path} "
        f"({result.n_events} converted at {result.events_per_s:,.0f} events/s)",
        markup=False,
        highlight=False,
    )


@command()
def export(
    store: Annotated[Path, typer.Argument(help="event store (*.zarr), or a run folder with --format onnx | hf")],
    format: Annotated[
        str, typer.Option("--format", help="spanet (a store) | onnx (a run) | hf (a run: shareable model folder)")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write, e.g. events.h5 (hf: a folder)")],
    overwrite: Annotated[bool, typer.Option(help="replace existing output files")] = False,
) -> None:
    """Write an event store in another format (SPANet HDF5 plus its event YAML), or a run as ONNX or a model folder."""
    from ._onnx_export import export_onnx, is_run_folder

    if format in ("onnx", "hf") and not is_run_folder(store):
        raise HepfmError(f"{store}: not a run folder (no checkpoints/); --format {format} exports a trained run")
    if format == "onnx":
        meta = export_onnx(store, out, overwrite=overwrite)
        console.print(f"wrote {out} ({meta['weights']} weights, heads {', '.join(meta['heads'])})", highlight=False)
        return
    if format == "hf":
        from ._hf_export import export_model_folder

        folder = export_model_folder(store, out, overwrite=overwrite)
        console.print(f"wrote {folder}/config.json, model.safetensors (EMA weights) and README.md", markup=False)
        return
    from .convert import plan_export, run_export

    plan = plan_export(store, format, out, overwrite=overwrite)
    err_console.print(plan.describe(), markup=False, highlight=False)
    result = run_export(plan)
    console.print(
        f"wrote {result.n_events} events to {', '.join(map(str, result.files))} ({result.events_per_s:,.0f} events/s)",
        markup=False,
        highlight=False,
    )


@command()
def merge(
    stores: Annotated[list[str], typer.Argument(help="stores, globs or shard folders, merged in order")],
    out: Annotated[Path, typer.Option("--out", "-o", help="event store to write (*.zarr)")],
    chunk_events: Annotated[
        int | None, typer.Option(help="events per chunk (default: the first store's)", min=1, max=MAX_CHUNK)
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing store")] = False,
) -> None:
    """Merge event stores (e.g. a folder of shards) into one store, in order (resumable)."""
    from .shards import merge_stores

    store = merge_stores(stores, out, chunk_events=chunk_events, overwrite=overwrite)
    console.print(f"wrote {store.n_events} events to {store.path}", highlight=False)


@command()
def inspect(
    store: Annotated[str, typer.Argument(help="event store (*.zarr), or its URL (https://, s3://, root://)")],
    plots: Annotated[Path | None, typer.Option(help="write feature histograms (PNG) here")] = None,
    verify: Annotated[bool, typer.Option(help="read every chunk to check integrity")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Summarise an event store: events, processes, features and their statistics, targets."""
    from .report import plot_store, summarize_store, verify_store

    if verify:
        verify_store(store)
    s = summarize_store(store)
    if json_out:
        console.print_json(json.dumps(s))
    else:
        _print_summary(s)
    if plots is not None:
        files = plot_store(store, plots)
        console.print(f"wrote {len(files)} plots to {plots}", highlight=False)


def _print_summary(s: dict) -> None:
    head = Table(title=f"{s['path']}", show_header=False, title_justify="left")
    head.add_row("complete", "yes" if s["complete"] else "NO")
    head.add_row("events", f"{s['n_events']:,}")
    head.add_row("chunks", f"{s['n_chunks']} x {s['chunk_events']} events")
    if s["bytes_on_disk"] is None:
        head.add_row("on disk", "remote store")
    else:
        head.add_row("on disk", f"{s['bytes_on_disk'] / 1e6:.1f} MB ({s['bytes_per_event']:.0f} bytes/event)")
    head.add_row("splits (default 0.8/0.1/0.1)", ", ".join(f"{k} {v:,}" for k, v in s["splits"].items()))
    head.add_row("processes", ", ".join(f"{k} {v:,}" for k, v in s["processes"].items()) or "-")
    head.add_row("targets", ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in s["targets"].items()) or "-")
    prov = s["provenance"]
    head.add_row("provenance", ", ".join(f"{k}={v}" for k, v in prov.items() if k != "params") or "-")
    if s["topology"]:
        head.add_row("topology", json.dumps(s["topology"]))
    console.print(head)
    units = {f["name"]: f for part in ("object_features", "global_features") for f in s["schema"][part]}
    for part in ("objects", "globals"):
        over = "real objects" if part == "objects" else "all events"
        t = Table(title=f"{part} (over {over})", title_justify="left")
        for col in ("feature", "unit", "norm", "count", "min", "max", "mean", "std"):
            t.add_column(col, justify="right" if col not in ("feature", "unit", "norm") else "left")
        for name, st in s["stats"][part].items():
            f = units[name]
            t.add_row(
                name,
                f["unit"],
                f["norm"],
                f"{st['count']:,}",
                f"{st['min']:.4g}",
                f"{st['max']:.4g}",
                f"{st['mean']:.4g}",
                f"{st['std']:.4g}",
            )
        console.print(t)
