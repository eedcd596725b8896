"""The ``hepfm`` command line: each command parses, logs what it resolved, and calls the library."""

from __future__ import annotations

import enum
import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from . import __version__, plugins
from ._errors import HepfmError
from ._files import write_json
from ._limits import MAX_BATCH, MAX_CHUNK, MAX_EPOCHS, MAX_EVENTS, MAX_SEED, MAX_SEEDS, MAX_WORKERS
from ._outputs import FS_REFUSALS, os_error_line, prepare_output
from ._progress import console, err_console

app = typer.Typer(
    name="hepfm",
    help="Event-level foundation models for collider physics.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


class SplitName(enum.StrEnum):
    """Splits a command can read."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


class Which(enum.StrEnum):
    """Checkpoints of a run folder."""

    best = "best"
    last = "last"


class Executor(enum.StrEnum):
    """Where sharded generation and conversion run."""

    dask = "dask"
    local = "local"


class WeightsName(enum.StrEnum):
    """Weights of a checkpoint."""

    ema = "ema"
    raw = "raw"


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a task key, e.g. train.max_steps=30")]


def _command(fn):
    """Turn a ``HepfmError`` into one red line on stderr and its exit status; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HepfmError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # the file system said no: one line naming the path, never a traceback
            if exc.errno not in FS_REFUSALS:
                raise
            line = os_error_line(exc, kwargs.get("out"))
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def command(*args, **kwargs):
    """``app.command`` with the one-line error handling of ``_command``."""

    def decorate(fn):
        return app.command(*args, **kwargs)(_command(fn))

    return decorate


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
ExecutorOpt = Annotated[
    Executor | None,
    typer.Option(help="write a folder of shards: 'dask' (a Dask cluster) or 'local' (one shard at a time here)"),
]
SchedulerOpt = Annotated[
    str | None, typer.Option(help="address of a running Dask scheduler (default: a local cluster of --workers)")
]


@command()
def generate(
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
    fast: Annotated[
        bool, typer.Option("--fast", help="multi-parton interactions off (generators with a `fast` parameter)")
    ] = False,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    shard_events: Annotated[
        int | None, typer.Option(help="events per shard with --executor (default 16 chunks)", min=1, max=MAX_EVENTS)
    ] = None,
) -> None:
    """Generate events into a Zarr event store (resumes an interrupted run with the same arguments).

    With ``--executor dask`` the work is cut into shards, each a complete store written by a Dask
    worker, into the folder ``--out`` (a dataset as it is; ``hepfm merge`` makes one store of it).
    """
    from .generate import find_generator, parse_processes, plan_generation, run_generation
    from .tasks import parse_override

    if list_processes:
        for r in plugins.generators():
            for name in r.cls.processes:
                console.print(f"{r.name:10s} {name}", highlight=False)
        return
    if not processes:
        raise HepfmError("generate: name at least one PROCESS (hepfm generate --list shows them)")
    params = {}
    for p in param or []:
        key, value = parse_override(p)
        params[".".join(key)] = value
    fractions = parse_processes(processes)
    if fast:
        cls = find_generator(list(fractions), generator)
        if "fast" not in getattr(cls.Params, "model_fields", {}):
            raise HepfmError(f"--fast: generator '{cls.name}' has no fast mode (it has no `fast` parameter)")
        params["fast"] = True
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


# --------------------------------------------------------------------------------------------
# tasks and plugins
# --------------------------------------------------------------------------------------------
@command()
def validate(
    tasks: Annotated[list[Path], typer.Argument(help="task YAML files, or names of shipped ones (qe_ttbar)")],
    set_: SetOpt = None,
) -> None:
    """Validate task files; report every problem (file:line: key: message) at once."""
    from ._task_files import task_file
    from .tasks import validate_files

    report = validate_files([task_file(t) for t in tasks], set_ or [])
    bad = 0
    for path, problems in report.items():
        if problems:
            bad += 1
            for p in problems:
                err_console.print(f"[bold red]error:[/] {escape(p)}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]ok[/] {path}", highlight=False)
    if bad:
        if len(report) > 1:
            err_console.print(f"{bad} of {len(report)} task files invalid", highlight=False)
        raise typer.Exit(1)


@command(name="plugins")
def list_plugins(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every registered component (heads, datasets, generators, converters, metrics, commands), broken plugins."""
    regs = plugins.registries()
    rows = [
        {
            "kind": kind,
            "name": r.name,
            "description": _describe(r.cls),
            "plugin": r.plugin,
            "package": r.package,
        }
        for kind, reg in regs.items()
        for r in reg
    ]
    rows += [
        {"kind": "broken", "name": b.plugin, "description": b.reason, "plugin": b.plugin, "package": b.package}
        for b in plugins.broken()
    ]
    if json_out:
        console.print_json(json.dumps(rows))
        return
    t = Table(title="hepfm plugins", title_justify="left")
    for col in ("kind", "name", "description", "plugin", "package"):
        t.add_column(col)
    for row in rows:
        style = "red" if row["kind"] == "broken" else None
        t.add_row(*(escape(row[c]) for c in ("kind", "name", "description", "plugin", "package")), style=style)
    console.print(t)


def _describe(item) -> str:
    doc = getattr(item, "description", None) or (item.__doc__ or "").strip().split("\n")[0]
    return str(doc)


# --------------------------------------------------------------------------------------------
# training and downstream (contract fixed now; capabilities land with later issues)
# --------------------------------------------------------------------------------------------
def _resolve(task: Path, overrides: list[str] | None):
    from ._task_files import task_file
    from .tasks import load_task

    task = task_file(task)
    resolved = load_task(task, overrides or [])
    heads = ", ".join(f"{k}={h.name}" for k, h in resolved.heads.items())
    t = resolved.train
    model = resolved.model.preset if resolved.init is None else f"of {resolved.init.checkpoint}"
    err_console.print(
        f"resolved task {resolved.name} from {task}: data {resolved.dataset.params.get('path')}, "
        f"model {model}, heads [{heads}], steps {t.max_steps or str(t.epochs) + ' epochs'}, "
        f"batch {t.batch_size}, lr {t.lr}, engine {t.engine}",
        highlight=False,
        markup=False,
    )
    return resolved


WandbOpt = Annotated[str, typer.Option("--wandb", help="offline (default, no network) | online | disabled")]
DataOpt = Annotated[
    list[str] | None,
    typer.Option(help="event store, URL, glob or shard folder; repeat for a dataset of several (overrides the task's)"),
]


def _data_override(data: list[str] | None) -> list[str]:
    """``--data`` as a ``--set`` override (JSON is YAML: a path or glob is never read as YAML syntax)."""
    if not data:
        return []
    return [f"dataset.params.path={json.dumps(data[0] if len(data) == 1 else list(data))}"]


WandbProjectOpt = Annotated[
    str | None, typer.Option("--wandb-project", help="W&B project (default: $WANDB_PROJECT, else hepfm)")
]


def _wandb_project(project: str | None) -> None:
    if project:
        import os

        os.environ["WANDB_PROJECT"] = project


def _train(task, out: Path | None, resume: bool, fraction: float, wandb: str) -> None:
    from .train import train

    result = train(task, out or Path("runs") / task.name, resume=resume, fraction=fraction, wandb_mode=wandb)
    console.print(
        f"trained {result.steps} steps; best validation loss {result.best_val}; run folder {result.run} "
        f"(checkpoints/best.safetensors, metrics.jsonl, MODEL_CARD.md)",
        highlight=False,
    )


@command()
def pretrain(
    task: Annotated[Path | None, typer.Argument(help="task YAML (default: tasks/pretrain.yaml)")] = None,
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option(help="run folder")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run")] = False,
    wandb: WandbOpt = "offline",
    wandb_project: WandbProjectOpt = None,
) -> None:
    """Pretrain a backbone (self-supervised stage, then multi-task), as the task's stages declare."""
    _wandb_project(wandb_project)
    if task is None:  # ./tasks/pretrain.yaml, else the one shipped with hepfm
        task = Path("tasks/pretrain.yaml")
    overrides = list(set_ or []) + _data_override(data)
    _train(_resolve(task, overrides), out, resume, 1.0, wandb)


@command()
def finetune(
    task: Annotated[Path, typer.Argument(help="task YAML, or the name of a shipped one (qe_ttbar)")],
    init: Annotated[Path | None, typer.Option(help="pretrained run folder (or exported model folder)")] = None,
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option(help="run folder")] = None,
    fraction: Annotated[
        float, typer.Option(help="train on this fraction of the training split", min=0.0, max=1.0)
    ] = 1.0,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run")] = False,
    wandb: WandbOpt = "offline",
    wandb_project: WandbProjectOpt = None,
) -> None:
    """Fine-tune a pretrained backbone with the heads a task names (or train from scratch without init)."""
    _wandb_project(wandb_project)
    overrides = list(set_ or []) + _data_override(data)
    overrides += [f"init.checkpoint={init}"] if init else []
    _train(_resolve(task, overrides), out, resume, fraction, wandb)


@command()
def embed(
    run: Annotated[Path, typer.Argument(help="run folder (or a checkpoint file)")],
    data: Annotated[list[str], typer.Option(help="event store, URL, glob or shard folder (repeat for several)")],
    out: Annotated[Path, typer.Option(help="latents store (*.zarr)")],
    pca: Annotated[
        int | None, typer.Option(help="also store K principal components (fitted on the val split)", min=1)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="events per batch", min=1, max=MAX_BATCH)] = 1024,
    overwrite: Annotated[bool, typer.Option(help="replace an existing latents store")] = False,
    select: Annotated[
        list[str] | None, typer.Option("--select", help="a cut, e.g. 'n_jet >= 4' (repeat: ANDed); only passing events")
    ] = None,
) -> None:
    """Write frozen per-object and per-event latents (EMA weights) to a Zarr store."""
    from .embed import embed as run_embed

    err_console.print(f"embed {' '.join(data)} with {run} -> {out}" + (f" (PCA {pca})" if pca else ""), markup=False)
    r = run_embed(run, data, out, pca=pca, batch_size=batch_size, overwrite=overwrite, selection=select)
    extra = f"; PCA keeps {100 * r.pca_explained:.1f}% of the object-latent variance" if r.pca_explained else ""
    console.print(f"wrote latents of {r.n_events} events ({r.latent_dim} dims) to {r.path}{extra}", markup=False)


@command()
def probe(
    latents: Annotated[Path, typer.Argument(help="latents store")],
    target: Annotated[str, typer.Option(help="target or global feature name")],
    seeds: Annotated[
        int, typer.Option(help="seeds; the 3 with the lowest validation loss are kept", min=1, max=MAX_SEEDS)
    ] = 5,
    pca: Annotated[bool, typer.Option("--pca", help="probe the PCA projections instead of the raw latents")] = False,
    epochs: Annotated[int, typer.Option(help="training epochs per seed", min=1, max=MAX_EPOCHS)] = 50,
    signal: Annotated[
        str | None, typer.Option(help="comma-separated signal processes: report the signal-vs-rest AUC")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report here")] = None,
) -> None:
    """Fit a linear probe on frozen latents and report its test metric (median and IQR over seeds)."""
    from .embed import probe as run_probe

    signals = [x.strip() for x in signal.split(",") if x.strip()] if signal else None
    if json_out is not None:
        prepare_output(json_out, "file", overwrite=True)
    r = run_probe(latents, target, seeds=seeds, epochs=epochs, use_pca=pca, signal=signals)
    console.print(
        f"probe {r['kind']} on {r['level']} {r['features']} -> {r['target']}: test {r['metric']} "
        f"{r['median']:.4f} (IQR {r['iqr']:.4f}, best {r['kept']} of {r['seeds']} seeds by validation loss; "
        f"{r['rows']['train']} train / {r['rows']['test']} test rows)",
        markup=False,
    )
    if json_out:
        write_json(json_out, r)


def _print_headline(rows, title: str) -> None:
    """Model, baseline and difference per figure, grouped under their metric (fits 80 columns)."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("figure", "model", "baseline", "model - baseline" if len(rows) < 40 else "difference"):
        table.add_column(col, justify="left" if col == "figure" else "right", no_wrap=True)
    previous = None
    for row in rows:
        if row.metric != previous:
            table.add_row(f"[bold]{escape(row.metric)}[/]", "", "", "")
            previous = row.metric
        table.add_row(f"  {escape(row.label())}", *row.cells())
    console.print(table)


@command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder (its task.yaml names the metrics and the split)")],
    data: Annotated[
        list[str] | None, typer.Option(help="event store, URL, glob or shard folder (default: the run's dataset)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: RUN/eval)")] = None,
    split: Annotated[SplitName, typer.Option(help="train | val | test | all")] = SplitName.test,
    which: Annotated[Which, typer.Option(help="best | last checkpoint")] = Which.best,
    weights: Annotated[
        WeightsName | None,
        typer.Option(help="ema | raw (default: the weights the best checkpoint was selected on)"),
    ] = None,
    max_events: Annotated[
        int | None, typer.Option(help="score at most this many events", min=1, max=MAX_EVENTS)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="events per batch", min=1, max=MAX_BATCH)] = 512,
    seed: Annotated[
        int, typer.Option(help="seed of the generative heads' sampling and of the bootstrap", min=0, max=MAX_SEED)
    ] = 0,
    bootstrap: Annotated[
        int, typer.Option(help="bootstrap resamples for the uncertainties (0: none)", min=0, max=100_000)
    ] = 30,
    all_: Annotated[bool, typer.Option("--all", help="print every figure, not only the headline")] = False,
    wandb: Annotated[str, typer.Option("--wandb", help="log figures and plots: disabled | offline | online")] = (
        "disabled"
    ),
    wandb_project: WandbProjectOpt = None,
) -> None:
    """Evaluate a run with its task's metrics on a store; print the headline; write summary.md, metrics.json, plots."""
    from .evaluate import evaluate as run_evaluate

    where = " ".join(data) if data else "its own data"
    err_console.print(f"evaluate {run} ({which.value}) on the {split.value} split of {where}", markup=False)
    r = run_evaluate(
        run,
        data,
        out,
        split=split.value,
        which=which.value,
        weights=weights.value if weights else None,
        batch_size=batch_size,
        max_events=max_events,
        seed=seed,
        bootstrap_resamples=bootstrap,
    )
    from .evaluate import headline_rows

    errs = f"± bootstrap std over {bootstrap} resamples" if bootstrap else "no bootstrap"
    title = f"{r.n_events:,} events ({100 * r.selected_fraction:.1f}% pass the selection), {r.weights} weights; {errs}"
    _print_headline(r.headline, title)
    if all_:
        names = {key: spec.name for key, spec in zip(r.metrics, r.specs, strict=True)}
        _print_headline(headline_rows(r.metrics, r.errors, names, everything=True), "every figure")
    console.print(
        f"wrote {r.summary}, {r.path / 'metrics.json'} (every figure) and {len(r.plots)} plots in {r.path / 'plots'}",
        markup=False,
    )
    if wandb != "disabled":
        from .evaluate import log_to_wandb

        folder = log_to_wandb(r, wandb, wandb_project)
        console.print(f"logged the evaluation to W&B ({wandb}): {folder}", markup=False)


@command()
def predict(
    run: Annotated[Path, typer.Argument(help="run folder or checkpoint")],
    data: Annotated[Path, typer.Option("--data", help="event store to predict (*.zarr)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output file: .parquet, .h5 or .root")],
    batch_size: Annotated[int, typer.Option(help="events per batch (memory is bounded by it)")] = 1024,
    weights: Annotated[str | None, typer.Option(help="ema | raw (default: those the run selected on)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
    seed: Annotated[int, typer.Option(help="seed of generative heads' sampling")] = 0,
) -> None:
    """Write per-event predictions (one row per input event, in input order) next to the events."""
    from .predict import predict as run_predict

    res = run_predict(run, data, out, batch_size=batch_size, weights=weights, overwrite=overwrite, seed=seed)
    console.print(
        f"wrote {res.n_events} rows, {len(res.columns)} columns to {res.path} ({res.events_per_s:,.0f} events/s)",
        highlight=False,
    )


@command()
def anomaly(
    config: Annotated[Path, typer.Argument(help="anomaly search YAML, e.g. tasks/anomaly/dimuon_ad.yaml")],
    store: Annotated[list[str] | None, typer.Option(help="event store (repeat; default: the config's stores)")] = None,
    out: Annotated[Path, typer.Option(help="output folder: metrics.json and spectrum_fit.png")] = Path("runs/anomaly"),
    set_: SetOpt = None,
) -> None:
    """Weakly supervised resonant anomaly search (CATHODE-style) with a bump fit; see docs/anomaly.md."""
    from .anomaly import load_anomaly_config, search_stores

    cfg = load_anomaly_config(config, set_)
    err_console.print(f"anomaly search '{cfg.name}' on {', '.join(store or cfg.stores)}", markup=False)
    r = search_stores(cfg, out, store)
    console.print(
        f"Z before the cut {r.z_before:.2f}, after {r.z_after:.2f} (fitted mean {r.mean_after:.3f}, "
        f"{r.n_selected} of {r.n_events} events kept); wrote {out / 'metrics.json'} and {out / 'spectrum_fit.png'}",
        highlight=False,
    )


@command()
def xyh(
    config: Annotated[Path, typer.Argument(help="mass-grid search YAML, e.g. tasks/xyh/xyh_grid.yaml")],
    store: Annotated[list[str] | None, typer.Option(help="event store (repeat; default: the config's stores)")] = None,
    out: Annotated[Path, typer.Option(help="output folder: metrics.json and grid.png")] = Path("runs/xyh"),
    set_: SetOpt = None,
) -> None:
    """Classifier parametrised by the mass point over an (m_X, m_Y) grid; see docs/xyh.md."""
    from .xyh import load_xyh_config, search_stores

    cfg = load_xyh_config(config, set_)
    err_console.print(f"xyh grid search '{cfg.name}' on {', '.join(store or cfg.stores)}", markup=False)
    r = search_stores(cfg, out, store)
    console.print(
        f"{len(r.points)} mass points: median binned significance {r.median_z:.2f}, median AUC {r.median_auc:.3f}; "
        f"wrote {out / 'metrics.json'} and {out / 'grid.png'}",
        highlight=False,
    )


@command()
def study(
    task: Annotated[Path, typer.Argument(help="fine-tuning task YAML (its metrics are reported)")],
    pretrained: Annotated[Path, typer.Option(help="pretrained run folder (or checkpoint file)")],
    fractions: Annotated[str, typer.Option(help="comma-separated training fractions")] = "1,0.3,0.1,0.03",
    seeds: Annotated[int, typer.Option(help="seeds per fraction and mode", min=1, max=MAX_SEEDS)] = 3,
    out: Annotated[Path, typer.Option(help="study folder (an existing one is continued)")] = Path("runs/study"),
    max_events: Annotated[
        int | None, typer.Option(help="evaluate at most this many test events per cell", min=1, max=MAX_EVENTS)
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="converged (early stopping within the budget) | equal-steps")
    ] = "converged",
    max_steps: Annotated[int | None, typer.Option(help="step budget of every cell", min=1)] = None,
    modes: Annotated[str, typer.Option(help="comma-separated: pretrained, scratch (ablations: pretrained)")] = (
        "pretrained,scratch"
    ),
    set_: SetOpt = None,
) -> None:
    """Pretrained vs from-scratch fine-tunes at several training fractions and seeds; table and plots."""
    from .study import study as run_study

    try:
        values = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise HepfmError(f"--fractions '{fractions}': expected comma-separated numbers, e.g. 1,0.3,0.1") from None
    resolved = _resolve(task, set_)
    err_console.print(
        f"study {resolved.name}: fractions {values}, {seeds} seeds, pretrained {pretrained} -> {out}", markup=False
    )
    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    r = run_study(
        resolved, pretrained, out, values, seeds, chosen, max_events=max_events, protocol=protocol, max_steps=max_steps
    )
    console.print((out / "table.md").read_text(), markup=False)
    console.print(f"wrote {out}/table.md, table.csv, table.json and {len(r.plots)} plots in {out}/plots", markup=False)


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


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    """hepfm: pretrain once on simulated collisions, fine-tune or probe for many analyses."""
    if version:
        console.print(f"hepfm {__version__}")
        raise typer.Exit()


def add_plugin_commands() -> list[str]:
    """Add the commands plugins register (``hepfm_register_commands``) to ``app``; returns their names.

    A plugin command may not shadow a built-in one: it is skipped with a warning naming its plugin.
    """
    taken = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands}
    added = []
    for r in plugins.commands():
        if r.name in taken:
            if getattr(r.cls, "__wrapped__", None) is None:  # not one this function added earlier
                err_console.print(f"warning: plugin {r.plugin} ({r.package}): command '{r.name}' is taken; skipped")
            continue
        app.command(name=r.name)(_command(r.cls))
        taken.add(r.name)
        added.append(r.name)
    return added


def main() -> None:
    """Console-script entry point.

    Plugin commands are added (which loads every plugin) only when the command asked for is not a
    built-in one, or for the top-level help that lists them: built-in commands start without it.
    """
    import sys

    builtin = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands}
    first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if first not in builtin:
        add_plugin_commands()
    app()
