"""Per-event predictions of a trained run, written next to the events (``hepfm predict``).

``predict(run, data, out)`` streams an event store through the run's model, batch by batch (memory
bounded by the batch, not the file), and writes one row per input event, in input order, to a
Parquet (``.parquet``), HDF5 (``.h5``, ``.hdf5``) or ROOT (``.root``, a TTree ``predictions``)
file chosen by the suffix of ``out``. Columns:

    event_index                 the event's row in the input store
    <id>                        the input's event identifiers, where it has them as targets
                                (event_number, run_number, lumi_block, ... see ``ID_TARGETS``)
    <head>_prob_<process>       classification: each class's probability
    <head>_<target>             regression: the predicted value (``_<j>`` per component)
    <head>_<res>_<daughter>     assignment: the object index of each daughter (-1: unassigned),
                                conflict-free; ``<head>_<res>_prob`` its probability
    <head>_momenta_<p>_<c>      invisible_diffusion: generated momentum component c of particle p
    <head>_<output>_<i>...      any other head output, flattened

The file is written under a temporary name (``.NAME.partial`` beside ``out``) and renamed when
complete, so a killed run never leaves a file that looks complete. ``predict_batch`` gives the
same columns in memory for one ``Batch`` (the notebook API uses it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._errors import HepfmError
from ._infer import head_outputs, infer, model_device, resolve_device, sampling_generator
from ._outputs import acquire_lock, prepare_output, release_lock
from ._progress import progress
from .batch import Batch
from .run import Run
from .store import EventStore

__all__ = ["PredictResult", "predict", "predict_batch", "predict_columns", "ID_TARGETS", "FORMATS"]

#: Targets copied to the output as event identifiers when the input store has them.
ID_TARGETS = (
    "event_number",
    "eventNumber",
    "event_id",
    "event",
    "run_number",
    "runNumber",
    "run",
    "lumi_block",
    "luminosityBlock",
    "lumi",
)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".h5": "hdf5", ".hdf5": "hdf5", ".root": "root"}
TREE = "predictions"


@dataclass
class PredictResult:
    """Where the predictions went, how many rows and which columns."""

    path: Path
    n_events: int
    columns: list[str]
    events_per_s: float


def _flatten(prefix: str, value: np.ndarray, names: list[list[str]] | None = None) -> dict[str, np.ndarray]:
    """[B, ...] -> one [B] column per trailing index, named ``prefix_i_j`` (or by ``names`` per axis)."""
    if value.ndim == 1:
        return {prefix: value}
    out = {}
    for idx in np.ndindex(*value.shape[1:]):
        parts = [names[a][i] if names and a < len(names) and i < len(names[a]) else str(i) for a, i in enumerate(idx)]
        out[f"{prefix}_{'_'.join(parts)}"] = np.ascontiguousarray(value[(slice(None), *idx)])
    return out


def _head_columns(key: str, head: torch.nn.Module, outputs: dict[str, torch.Tensor], processes: list[str]):
    cols: dict[str, np.ndarray] = {}
    arrays = {k: v.detach().cpu().numpy() for k, v in outputs.items()}
    if head.name == "classification":
        p = arrays["probabilities"]
        names = processes if len(processes) == p.shape[1] else [str(i) for i in range(p.shape[1])]
        return _flatten(f"{key}_prob", p, [names])
    if head.name == "regression":
        sizes = head.params.sizes or [1] * len(head.params.targets)
        names = [t if s == 1 else f"{t}_{j}" for t, s in zip(head.params.targets, sizes, strict=True) for j in range(s)]
        return _flatten(key, arrays["values"], [names])
    if head.name == "assignment":
        for i, res in enumerate(head.names):
            cols.update(_flatten(f"{key}_{res}", arrays[f"objects/{res}"], [head.params.resonances[res]]))
            cols[f"{key}_{res}_prob"] = arrays["probability"][:, i]
        return cols
    for name, value in arrays.items():
        cols.update(_flatten(f"{key}_{name.replace('/', '_')}", value))
    return cols


def predict_batch(
    model: torch.nn.Module, batch: Batch, generator: torch.Generator | None = None
) -> dict[str, np.ndarray]:
    """Every head's physics outputs for one batch as named numpy columns (see module docstring).

    The batch goes to the model's device. Heads with ``infer`` (a diffusion sampling chain) are
    sampled with ``generator`` (on the model's device); the others give ``predict(forward(...))``.
    """
    return next(infer(model, [batch], lambda b: _columns(model, b, generator)))[1]


def _columns(model: torch.nn.Module, batch: Batch, generator: torch.Generator | None) -> dict[str, np.ndarray]:
    """The named columns of one batch on the model's device."""
    processes = list((getattr(model, "checkpoint_config", None) or {}).get("processes", []))
    cols: dict[str, np.ndarray] = {}
    for key, outputs in head_outputs(model, batch, generator).items():
        cols.update(_head_columns(key, model.heads[key], outputs, processes))
    return cols


def _batches(data: Any, batch_size: int) -> Iterator[Batch]:
    """The events of a store or dataset in batches, in order."""
    for start in range(0, data.n_events, batch_size):
        stop = min(data.n_events, start + batch_size)
        yield Batch.from_arrays(data.read(start, stop, ["objects", "mask", "globals", "weights"]))


def predict_columns(
    model: torch.nn.Module, data: Any, batch_size: int = 1024, seed: int = 0, device: str | None = None
) -> dict[str, np.ndarray]:
    """Named per-event prediction columns for a ``Batch``, an awkward array, a store or dataset (or its path).

    This is ``model.predict`` for notebooks: one row per event, in input order, columns as
    ``hepfm predict`` writes them (``HEAD_prob_PROCESS``, ``HEAD_RES_DAUGHTER``, ...).
    ``device``: ``cpu`` or ``cuda`` to move the model there first (default: where it is).
    """
    if device is not None:
        model.to(resolve_device(device))
    generator = sampling_generator(seed, model_device(model))
    if isinstance(data, Batch):
        return predict_batch(model, data, generator)
    if type(data).__module__.startswith("awkward"):
        return predict_batch(model, Batch.from_awkward(data, model.schema), generator)
    if not hasattr(data, "read"):
        from .store import open_data

        data = open_data(data, schema=model.schema)
    parts = [cols for _, cols in infer(model, _batches(data, batch_size), lambda b: _columns(model, b, generator))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------------------------
# writers: one per format, each appends batches to a temporary file
# --------------------------------------------------------------------------------------------
class _Parquet:
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq, self.path, self.writer = pa, pq, path, None

    def write(self, cols: dict[str, np.ndarray]) -> None:
        table = self.pa.table(cols)
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(str(self.path), table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Hdf5:
    def __init__(self, path: Path) -> None:
        import h5py

        self.file, self.n = h5py.File(path, "w"), 0

    def write(self, cols: dict[str, np.ndarray]) -> None:
        n = len(next(iter(cols.values())))
        for name, v in cols.items():
            if name not in self.file:
                self.file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=v.dtype, chunks=(max(n, 1),))
            ds = self.file[name]
            ds.resize((self.n + n,))
            ds[self.n :] = v
        self.n += n

    def close(self) -> None:
        self.file.close()


class _Root:
    def __init__(self, path: Path) -> None:
        import uproot

        self.file, self.started = uproot.recreate(str(path)), False

    def write(self, cols: dict[str, np.ndarray]) -> None:
        if not self.started:
            self.file[TREE] = cols
            self.started = True
        else:
            self.file[TREE].extend(cols)

    def close(self) -> None:
        self.file.close()


def _writer(kind: str, path: Path):
    modules = {"parquet": "pyarrow", "hdf5": "h5py", "root": "uproot"}
    try:
        __import__(modules[kind])
    except ImportError:
        raise HepfmError(
            f"writing {kind} needs '{modules[kind]}', which is not installed; pip install 'hepfm[ingest]'"
        ) from None
    return {"parquet": _Parquet, "hdf5": _Hdf5, "root": _Root}[kind](path)


def predict(
    run: str | os.PathLike,
    data: str | os.PathLike | EventStore,
    out: str | os.PathLike,
    batch_size: int = 1024,
    weights: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> PredictResult:
    """Write a run's per-event predictions for every event of ``data`` to ``out`` (see module docstring).

    Args:
        run: Run folder (its best checkpoint) or checkpoint file.
        data: Event store in the run's schema.
        out: ``.parquet``, ``.h5`` / ``.hdf5`` or ``.root`` file.
        batch_size: Events per batch; memory is bounded by it.
        weights: ``ema`` or ``raw``; default: those the run selected its best checkpoint on.
        overwrite: Replace an existing ``out``.
        seed: Seed of generative heads' sampling (the same predictions for the same seed).
        device: ``cpu`` or ``cuda``: where the model runs.
    """
    out = Path(out)
    kind = FORMATS.get(out.suffix.lower())
    if kind is None:
        raise HepfmError(f"--out {out}: unknown format '{out.suffix}'; use one of {', '.join(FORMATS)}")
    resolve_device(device)
    prepare_output(out, "file", overwrite)
    if batch_size < 1:
        raise HepfmError(f"batch size {batch_size}: expected a positive integer")
    store = data if isinstance(data, EventStore) else EventStore.open(data)
    if store.n_events == 0:
        raise HepfmError(f"{store.path}: holds no events")
    model = Run(run).load_model(weights=weights, schema=store.schema, device=device)
    ids = [name for name in ID_TARGETS if name in store.targets and not store.targets[name]["shape"]]
    generator = sampling_generator(seed, model_device(model))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    lock = acquire_lock(out)  # one writer per output; released however this ends
    writer = _writer(kind, tmp)
    columns: list[str] = []
    start_time = time.perf_counter()
    try:
        with progress("predict", store.n_events) as advance:
            start = 0
            for batch, heads in infer(model, _batches(store, batch_size), lambda b: _columns(model, b, generator)):
                stop = start + len(batch)
                cols: dict[str, Any] = {"event_index": np.arange(start, stop, dtype=np.int64)}
                if ids:
                    found = store.read(start, stop, [f"targets/{name}" for name in ids])
                    cols.update({name: np.asarray(found[f"targets/{name}"]) for name in ids})
                cols.update(heads)
                writer.write(cols)
                columns = list(cols)
                advance(stop - start)
                start = stop
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        try:
            writer.close()
        finally:
            tmp.unlink(missing_ok=True)
            release_lock(lock)
        raise
    release_lock(lock)
    rate = store.n_events / max(time.perf_counter() - start_time, 1e-9)
    return PredictResult(out, store.n_events, columns, rate)
