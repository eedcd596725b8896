"""What is in an event store: a summary (``hepfm inspect``), a full integrity scan, and feature plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import progress
from .store import EventStore

__all__ = ["summarize_store", "verify_store", "plot_store"]


def summarize_store(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``hepfm inspect`` prints, as plain data.

    Keys: path, complete, n_events, chunk_events, n_chunks, bytes_on_disk, bytes_per_event,
    processes ({name: count}), schema, stats ({"objects"|"globals": {feature: stats}}),
    targets ({name: {dtype, shape}}), provenance, topology, splits ({train|val|test: events}).
    """
    store = EventStore.open(path)
    counts: dict[str, int] = {}
    if "process" in store.targets:
        labels = np.zeros(max(1, len(store.processes)), dtype=np.int64)
        for part in store.iter_chunks(["targets/process"]):
            labels += np.bincount(part["targets/process"], minlength=len(labels))[: len(labels)]
        counts = {name: int(labels[i]) for i, name in enumerate(store.processes)}
    size = store.bytes_on_disk()
    return {
        "path": str(store.path),
        "complete": True,
        "n_events": store.n_events,
        "chunk_events": store.chunk_events,
        "n_chunks": -(-store.n_events // store.chunk_events),
        "bytes_on_disk": size,
        "bytes_per_event": size / store.n_events,
        "processes": counts,
        "schema": store.schema.model_dump(mode="json"),
        "stats": {part: {k: v.model_dump() for k, v in s.items()} for part, s in store.stats.items()},
        "targets": store.targets,
        "provenance": store.provenance,
        "topology": store.topology,
        "splits": {name: sum(b - a for a, b in store.segments(name)) for name in ("train", "val", "test")},
    }


def verify_store(path: str | os.PathLike) -> int:
    """Read every chunk of every array; raise ``StoreError`` naming the first bad one. Returns events read."""
    store = EventStore.open(path)
    with progress("verify", store.n_events) as advance:
        for part in store.iter_chunks():
            advance(len(part["objects"]))
    return store.n_events


def plot_store(path: str | os.PathLike, out_dir: str | os.PathLike, max_events: int = 200_000) -> list[Path]:
    """Histograms of every object feature and global, per process, as PNGs; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = EventStore.open(path)
    n = min(store.n_events, max_events)
    data = store.read(0, n)
    labels = data.get("targets/process", np.zeros(n, dtype=np.int64))
    names = store.processes or ["all"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    panels = [("objects", f, i) for i, f in enumerate(store.schema.object_features)]
    panels += [("globals", f, i) for i, f in enumerate(store.schema.global_features)]
    for part, feature, i in panels:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for p, pname in enumerate(names):
            sel = labels == p
            if part == "objects":
                values = data["objects"][sel][..., i][data["mask"][sel]]
            else:
                values = data["globals"][sel][:, i]
            if values.size == 0:
                continue
            log = feature.norm == "log_standardise" and values.min() >= 0
            bins = (
                np.geomspace(max(values[values > 0].min(initial=1e-3), 1e-3), max(values.max(), 1e-2), 50)
                if log
                else 50
            )
            ax.hist(values, bins=bins, histtype="step", density=True, label=pname)
            if log:
                ax.set_xscale("log")
        unit = f" [{feature.unit}]" if feature.unit else ""
        ax.set_xlabel(f"{part[:-1]} {feature.name}{unit}")
        ax.set_ylabel("normalised entries")
        ax.legend(fontsize=7)
        ax.set_title(f"{Path(path).name}: {n} events", fontsize=8)
        fig.tight_layout()
        file = out / f"{part}_{feature.name}.png"
        tmp = file.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, file)
        files.append(file)
    return files
