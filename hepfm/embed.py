"""Frozen latents (``hepfm embed``) and linear probes on them (``hepfm probe``).

``embed`` streams per-object and per-event latents (of the weights the run selected its best
checkpoint on, normally the warmed-up EMA) into a Zarr store, event by event in store order, with
the events' targets, globals, weights, split and index in the source store carried along. With a
``selection`` (cuts as in a task's ``selection:``) only the events that pass are embedded. With
``pca=K`` an IncrementalPCA is fitted on a held-out slice (the validation split, as in the MLPF
latents paper) and the projections are stored beside the raw latents with the explained variance.

``probe`` trains a single linear layer on the latents (logistic for integer targets, linear for
real ones), per event or per object, with several seeds; following the MLPF protocol it keeps the
three seeds with the lowest validation loss and reports the median and interquartile range of
the test metric. With ``signal`` (process names) a process probe also reports the signal-vs-rest
AUC of the summed signal probabilities, the figure a fine-tuned classifier's ``roc_auc`` gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ._errors import HepfmError
from ._infer import infer, resolve_device, to_numpy
from ._limits import MAX_BATCH, MAX_EPOCHS, MAX_EVENTS, MAX_SEEDS, in_range
from ._outputs import output_lock, prepare_output
from ._progress import progress
from ._selection import Selection
from .run import Run
from .store import DEFAULT_CHUNK, ArrayWriter, EventLoader, EventStore, SplitSpec, open_arrays, open_data

__all__ = ["EmbedResult", "embed", "probe", "open_latents"]

LATENTS_FORMAT = {"format": "hepfm-latents", "version": 1}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass
class EmbedResult:
    path: Path
    n_events: int
    latent_dim: int
    pca_explained: float | None


def _split_labels(store: EventStore, spec: SplitSpec) -> np.ndarray:
    labels = np.full(store.n_events, -1, np.int8)
    for name, code in SPLIT_CODES.items():
        for a, b in store.segments(name, spec):
            labels[a:b] = code
    return labels


def _latents(model, batch) -> tuple[np.ndarray, np.ndarray]:
    """[B, N, D] object and [B, D] event latents of a batch on the model's device, on the host."""
    lat = model.encode(batch)
    return to_numpy(lat.objects), to_numpy(lat.event)


def embed(
    run: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    pca: int | None = None,
    batch_size: int = 1024,
    pca_events: int = 50_000,
    which: str = "best",
    overwrite: bool = False,
    selection: list[str] | None = None,
    device: str = "cpu",
) -> EmbedResult:
    """Write the frozen latents of every event of ``data`` that passes ``selection`` (see module docstring).

    ``device``: ``cpu`` or ``cuda``, where the model runs.
    """
    out = Path(out)
    in_range("--batch-size", batch_size, 1, MAX_BATCH)
    in_range("pca_events", pca_events, 1, MAX_EVENTS)
    resolve_device(device)
    prepare_output(out, "latents", overwrite)
    with output_lock(out):
        return _embed(Run(run), data, out, pca, batch_size, pca_events, which, selection, device)


def _embed(run: Run, data, out: Path, pca, batch_size, pca_events, which, selection, device) -> EmbedResult:
    ckpt_path = run.checkpoint(which)
    model = run.load_model(which, device=device)
    store = open_data(data, schema=model.schema)
    config = model.checkpoint_config
    task_split = run.split
    d = model.config.dim
    cuts = Selection.parse(selection or [])
    if cuts:
        cuts.check(store.schema)
    keep = cuts.store_mask(store) if cuts else np.ones(store.n_events, bool)
    n = int(keep.sum())
    if n == 0:
        raise HepfmError(f"{store.path}: the selection {list(cuts.cuts)} leaves no events")
    if pca is not None and not 1 <= pca <= d:
        raise HepfmError(f"--pca {pca}: must be between 1 and the latent width {d}")

    fitted = None
    if pca is not None:
        from sklearn.decomposition import IncrementalPCA

        fitted = {"event": IncrementalPCA(pca), "object": IncrementalPCA(pca)}
        seen = 0
        loader = EventLoader(store, "val", batch_size, shuffle=False, split_spec=task_split, selection=cuts)
        usable = (batch for batch in loader if len(batch) >= pca)
        for batch, (objects, event) in infer(model, usable, lambda b: _latents(model, b)):
            fitted["event"].partial_fit(event)
            real = objects[batch.mask.numpy()]
            if len(real) >= pca:
                fitted["object"].partial_fit(real)
            seen += len(batch)
            if seen >= pca_events:
                break
        if seen == 0:
            raise HepfmError(f"{store.path}: the validation split has too few events to fit a {pca}-component PCA")

    writer = ArrayWriter(out, LATENTS_FORMAT, n, min(store.chunk_events, DEFAULT_CHUNK))
    array = writer.create
    n_obj = store.schema.max_objects
    arrays = {
        "object_latents": array("object_latents", (n_obj, d), "float32"),
        "event_latents": array("event_latents", (d,), "float32"),
        "mask": array("mask", (n_obj,), "bool"),
        "globals": array("globals", (store.schema.n_global_features,), "float32"),
        "weights": array("weights", (), "float32"),
        "split": array("split", (), "int8"),
        "event_index": array("event_index", (), "int64"),
    }
    for name, spec in store.targets.items():
        arrays[f"targets/{name}"] = array(f"targets/{name}", tuple(spec["shape"]), spec["dtype"])
    if fitted is not None:
        arrays["object_latents_pca"] = array("object_latents_pca", (n_obj, pca), "float32")
        arrays["event_latents_pca"] = array("event_latents_pca", (pca,), "float32")
    splits = _split_labels(store, task_split)[keep]
    index = np.flatnonzero(keep)
    pos = 0
    with progress("embed", n) as advance:
        everything = EventLoader(store, "all", batch_size, shuffle=False, selection=cuts)
        for batch, (objects, event) in infer(model, everything, lambda b: _latents(model, b)):
            b = len(batch)
            if not (np.isfinite(event).all() and np.isfinite(objects).all()):
                raise HepfmError(
                    f"{ckpt_path}: the model gives NaN or inf latents for events {pos}..{pos + b} of {store.path} "
                    f"(inputs far outside the training data?); nothing was written to {out}"
                )
            sl = slice(pos, pos + b)
            mask = batch.mask.numpy()
            arrays["object_latents"][sl] = objects
            arrays["event_latents"][sl] = event
            arrays["mask"][sl] = mask
            arrays["globals"][sl] = batch.globals.numpy()
            arrays["weights"][sl] = batch.weights.numpy()
            arrays["split"][sl] = splits[sl]
            arrays["event_index"][sl] = index[sl]
            for name, value in batch.targets.items():
                arrays[f"targets/{name}"][sl] = value.numpy()
            if fitted is not None:
                arrays["event_latents_pca"][sl] = fitted["event"].transform(event).astype(np.float32)
                proj = fitted["object"].transform(objects.reshape(-1, d)).reshape(b, n_obj, pca).astype(np.float32)
                arrays["object_latents_pca"][sl] = np.where(mask[..., None], proj, 0)
            pos += b
            advance(b)
    attrs: dict[str, Any] = {
        "path": str(out),
        "run": str(run.path),
        "checkpoint": str(ckpt_path),
        "data": str(store.path) if len(store.sources) == 1 else store.sources,
        "n_events": n,
        "latent_dim": d,
        "processes": store.processes,
        "targets": store.targets,
        "global_names": store.schema.global_names,
        "heads": config["heads"],
        "split": task_split.model_dump(),
        "selection": list(cuts.cuts),
        "weights": model.weights,
    }
    explained = None
    if fitted is not None:
        attrs["pca"] = {
            part: {
                "components": int(pca),
                "explained_variance_ratio": [float(v) for v in f.explained_variance_ratio_],
                "explained_total": float(np.sum(f.explained_variance_ratio_)),
                "mean": [float(v) for v in f.mean_],
                "basis": [[float(x) for x in row] for row in f.components_],
            }
            for part, f in fitted.items()
            if hasattr(f, "components_")
        }
        explained = attrs["pca"]["object"]["explained_total"] if "object" in attrs["pca"] else None
    writer.close(attrs)  # the format tag and attributes, then `complete`, then renamed onto `out`
    return EmbedResult(out, n, d, explained)


def open_latents(path: str | os.PathLike) -> zarr.Group:
    """A complete latents store (refuses anything else with one clear line)."""
    return open_arrays(path, LATENTS_FORMAT, "latents store")


def _features_and_target(g: zarr.Group, target: str, use_pca: bool, max_events: int):
    n = min(int(g.attrs["n_events"]), max_events)
    targets = g.attrs["targets"]
    globals_ = list(g.attrs["global_names"])
    split = g["split"][:n]
    if target in targets:
        y = g[f"targets/{target}"][:n]
    elif target in globals_:
        y = g["globals"][:n][:, globals_.index(target)]
    else:
        known = ", ".join(sorted(targets) + globals_)
        raise HepfmError(f"{g.attrs.get('path', 'latents')}: unknown --target '{target}'; known: {known}")
    suffix = "_pca" if use_pca else ""
    if use_pca and f"event_latents{suffix}" not in g:
        raise HepfmError("--pca given but the latents store has no PCA projections (embed with --pca K)")
    per_object = y.ndim == 2 and y.shape[1] == g["mask"].shape[1]
    if per_object:
        mask = g["mask"][:n]
        x = g[f"object_latents{suffix}"][:n][mask]
        y = y[mask]
        split = np.broadcast_to(split[:, None], mask.shape)[mask]
    else:
        x = g[f"event_latents{suffix}"][:n]
        y = y.reshape(n, -1) if y.ndim > 1 else y
    return x.astype(np.float32), y, split, per_object


def probe(
    latents: str | os.PathLike,
    target: str,
    seeds: int = 5,
    keep: int = 3,
    epochs: int = 50,
    use_pca: bool = False,
    max_events: int = 500_000,
    signal: list[str] | None = None,
) -> dict[str, Any]:
    """A linear probe of ``target`` on frozen latents (see module docstring); returns the report."""
    in_range("--seeds", seeds, 1, MAX_SEEDS)
    in_range("keep", keep, 1, MAX_SEEDS)
    in_range("--epochs", epochs, 1, MAX_EPOCHS)
    in_range("max_events", max_events, 1, MAX_EVENTS)
    g = open_latents(latents)
    x, y, split, per_object = _features_and_target(g, target, use_pca, max_events)
    classify = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    signal_ids = None
    if signal:
        processes = list(g.attrs.get("processes", []))
        unknown = [s for s in signal if s not in processes]
        if target != "process" or per_object or unknown:
            raise HepfmError(
                f"--signal {','.join(signal)}: needs --target process and process names of the latents' data "
                f"({', '.join(processes)})"
            )
        signal_ids = [processes.index(s) for s in signal]
    if classify and y.ndim != 1:
        raise HepfmError(
            f"{latents}: --target '{target}' holds {y.shape[1]} integers per event; a probe needs one label per "
            "event or per object"
        )
    keep = min(keep, seeds)
    if classify:
        valid = y >= 0 if y.ndim == 1 else np.ones(len(y), bool)
        x, y, split = x[valid], y[valid], split[valid]
        classes = np.unique(y)
        if len(classes) < 2:
            raise HepfmError(f"--target '{target}': needs at least two classes, found {classes.tolist()}")
        is_signal = np.isin(y, signal_ids) if signal_ids is not None else None
        signal_columns = np.flatnonzero(np.isin(classes, signal_ids)) if signal_ids is not None else None
        y = np.searchsorted(classes, y)
    parts = {name: split == code for name, code in SPLIT_CODES.items()}
    if min(p.sum() for p in parts.values()) == 0:
        raise HepfmError(f"{latents}: the train, val and test splits must all hold events for a probe")
    mu, sd = x[parts["train"]].mean(0), x[parts["train"]].std(0) + 1e-6
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y.astype(np.int64) if classify else y.astype(np.float32))
    if not classify and yt.ndim == 1:
        yt = yt[:, None]
    if not classify:
        ym, ys = yt[parts["train"]].mean(0), yt[parts["train"]].std(0) + 1e-6
        yt = (yt - ym) / ys
    n_out = len(classes) if classify else yt.shape[1]
    runs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(xt.shape[1], n_out)
        opt = torch.optim.AdamW(layer.parameters(), 1e-2, weight_decay=1e-4)
        idx = np.flatnonzero(parts["train"])
        rng = np.random.default_rng(seed)
        bs = 4096
        for _ in range(epochs):
            rng.shuffle(idx)
            for i in range(0, len(idx), bs):
                sel = torch.from_numpy(idx[i : i + bs])
                out = layer(xt[sel])
                loss = torch.nn.functional.cross_entropy(out, yt[sel]) if classify else ((out - yt[sel]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            res = {}
            for name in ("val", "test"):
                m = torch.from_numpy(parts[name])
                out = layer(xt[m])
                if classify:
                    res[f"{name}_loss"] = float(torch.nn.functional.cross_entropy(out, yt[m]))
                    prob = out.softmax(-1).numpy()
                    res[f"{name}_accuracy"] = float((prob.argmax(1) == yt[m].numpy()).mean())
                    from sklearn.metrics import roc_auc_score

                    if n_out == 2:
                        res[f"{name}_auc"] = float(roc_auc_score(yt[m].numpy(), prob[:, 1]))
                    if is_signal is not None:
                        score = prob[:, signal_columns].sum(1)
                        res[f"{name}_signal_auc"] = float(roc_auc_score(is_signal[parts[name]], score))
                else:
                    res[f"{name}_loss"] = float(((out - yt[m]) ** 2).mean())
                    res[f"{name}_r2"] = float(1 - ((out - yt[m]) ** 2).sum() / ((yt[m] - yt[m].mean(0)) ** 2).sum())
            runs.append(res)
    best = sorted(runs, key=lambda r: r["val_loss"])[:keep]
    metric = "test_auc" if classify and n_out == 2 else "test_accuracy" if classify else "test_r2"
    metric = "test_signal_auc" if signal_ids is not None else metric
    values = np.array([r[metric] for r in best])
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {
        "target": target,
        "level": "object" if per_object else "event",
        "kind": "logistic" if classify else "linear",
        "features": ("pca " if use_pca else "") + f"{xt.shape[1]}-dim latents",
        "rows": {k: int(v.sum()) for k, v in parts.items()},
        "metric": metric.removeprefix("test_"),
        "median": float(q50),
        "iqr": float(q75 - q25),
        "seeds": seeds,
        "kept": keep,
        "runs": runs,
    }
