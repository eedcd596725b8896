"""``hepfm`` commands on trained runs: embed, probe, evaluate, predict, anomaly, xyh, study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ._cli_app import DeviceOpt, SetOpt, SplitName, WandbProjectOpt, WeightsName, Which, _resolve, command
from ._errors import HepfmError
from ._files import write_json
from ._limits import MAX_BATCH, MAX_EPOCHS, MAX_EVENTS, MAX_SEED, MAX_SEEDS
from ._outputs import prepare_output
from ._progress import console, err_console


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
    device: DeviceOpt = "cpu",
) -> None:
    """Write frozen per-object and per-event latents (EMA weights) to a Zarr store."""
    from .embed import embed as run_embed

    err_console.print(f"embed {' '.join(data)} with {run} -> {out}" + (f" (PCA {pca})" if pca else ""), markup=False)
    r = run_embed(run, data, out, pca=pca, batch_size=batch_size, overwrite=overwrite, selection=select, device=device)
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
    device: DeviceOpt = "cpu",
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
        device=device,
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
    device: DeviceOpt = "cpu",
) -> None:
    """Write per-event predictions (one row per input event, in input order) next to the events."""
    from .predict import predict as run_predict

    res = run_predict(
        run, data, out, batch_size=batch_size, weights=weights, overwrite=overwrite, seed=seed, device=device
    )
    console.print(
        f"wrote {res.n_events} rows, {len(res.columns)} columns to {res.path} ({res.events_per_s:,.0f} events/s)",
        highlight=False,
    )


@command()
def anomaly(
    config: Annotated[Path, typer.Argument(help="anomaly search YAML, e.g. tasks/anomaly/dimuon_ad.yaml")],
    store: Annotated[list[str] | None, typer.Option(help="event store (repeat; default: the config's stores)")] = None,
    out: Annotated[Path, typer.Option(help="output folder: metrics.json and spectrum_fit.png")] = Path("runs/anomaly"),
    pretrained: Annotated[
        Path | None, typer.Option(help="pretrained run: the background model fine-tunes its backbone")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="pretrained vs scratch vs the plain bump hunt over --seeds")
    ] = False,
    seeds: Annotated[int, typer.Option(help="seeds per backbone arm of --compare", min=1, max=MAX_SEEDS)] = 3,
    set_: SetOpt = None,
) -> None:
    """Weakly supervised resonant anomaly search (CATHODE-style) with a bump fit; see docs/anomaly.md."""
    from .anomaly import compare_anomaly, load_anomaly_config, search_stores

    if compare and pretrained is None:
        raise HepfmError("--compare needs --pretrained RUN (the pretrained arm of the comparison)")
    cfg = load_anomaly_config(config, set_, pretrained)
    err_console.print(f"anomaly search '{cfg.name}' on {', '.join(store or cfg.stores)}", markup=False)
    if compare:
        r = compare_anomaly(cfg, pretrained, seeds, out, store)
        console.print(r["table"].read_text(), markup=False)
        console.print(f"wrote {r['table']}, {out / 'comparison.json'} and one folder per search in {out}", markup=False)
        return
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
