"""What is in an event store: a summary (``hepfm inspect``), a full integrity scan, and feature plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._outputs import prepare_output
from ._plots import pyplot, save_figure
from ._progress import progress
from .physics import four_vectors, mass
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
        for part in store.iter_chunks(mask_check=True):
            advance(len(part["objects"]))
    return store.n_events


def plot_store(path: str | os.PathLike, out_dir: str | os.PathLike, max_events: int = 200_000) -> list[Path]:
    """Histograms of every object feature and global, per process, as PNGs; returns the files.

    Physics validation plots go to ``out_dir/validation``: multiplicities, MET, m(ll) of two-lepton
    events, and, for stores with an ``assignment`` target and a topology naming its slots, the
    masses of truth-assigned resonance daughters (W -> jj, hadronic top, lepton-b of a top, a -> bb).
    """
    plt = pyplot()
    store = EventStore.open(path)
    n = min(store.n_events, max_events)
    data = store.read(0, n)
    labels = data.get("targets/process", np.zeros(n, dtype=np.int64))
    names = store.processes or ["all"]
    out = Path(out_dir)
    prepare_output(out, "plots", resume=True)
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
            if log:  # zeros (e.g. m_leps without leptons) cannot be drawn on a log axis
                values = values[(values >= bins[0]) & (values <= bins[-1])]
                if values.size == 0:
                    continue
            ax.hist(values, bins=bins, histtype="step", density=True, label=pname)
            if log:
                ax.set_xscale("log")
        unit = f" [{feature.unit}]" if feature.unit else ""
        ax.set_xlabel(f"{part[:-1]} {feature.name}{unit}")
        ax.set_ylabel("normalised entries")
        ax.legend(fontsize=7)
        ax.set_title(f"{Path(path).name}: {n} events", fontsize=8)
        files.append(save_figure(fig, out / f"{part}_{feature.name}.png"))
    files += _validation_plots(store, data, labels, names, out / "validation", f"{Path(path).name}: {n} events")
    return files


# --------------------------------------------------------------------------------------------
# physics validation plots: multiplicities, MET, key masses per process
# --------------------------------------------------------------------------------------------
#: Truth-pair masses drawn when the store's topology names these assignment slots:
#: file stem -> (title, slot groups (one object group per resonance), x range, reference value, its label).
TRUTH_MASSES: dict[str, tuple[str, list[tuple[str, ...]], tuple[float, float], float, str]] = {
    "mass_w_jj": ("m(jj), truth W -> q q' jets", [("t_q1", "t_q2"), ("tbar_q1", "tbar_q2")], (0, 200), 80.4, "m_W"),
    "mass_top_bjj": (
        "m(bjj), truth hadronic-top jets",
        [("t_b", "t_q1", "t_q2"), ("tbar_b", "tbar_q1", "tbar_q2")],
        (0, 350),
        172.5,
        "m_t",
    ),
    "mass_lb": (
        "m(lb), truth b and lepton of one top",
        [("t_b", "t_l"), ("tbar_b", "tbar_l")],
        (0, 250),
        153.0,
        "endpoint sqrt(mt^2 - mW^2)",
    ),
    "mass_a_bb": ("m(bb), truth b jets of one a (H -> a a)", [("a1_b1", "a1_b2"), ("a2_b1", "a2_b2")], (0, 120), 0, ""),
}


def store_topology(store: EventStore) -> dict[str, Any]:
    """The store's topology attribute or, for stores written without one, its generator's ``topology()``."""
    if store.topology:
        return store.topology
    prov = store.provenance or {}
    try:
        from . import plugins

        cls = plugins.datasets().get(prov["generator"])
        gen = cls(cls.Params.model_validate(prov.get("params", {})), store.schema)
        return dict(gen.topology()) if hasattr(gen, "topology") else {}
    except Exception:  # unknown or unavailable generator: no truth layout, no truth plots
        return {}


def truth_group_masses(store: EventStore, data: dict[str, np.ndarray], slots: list[str], group: tuple[str, ...]):
    """Invariant mass of the objects assigned to ``group`` slots, and the events where all are assigned."""
    assignment = data["targets/assignment"]
    cols = [slots.index(s) for s in group]
    idx = assignment[:, cols].astype(np.int64)
    ok = (idx >= 0).all(1)
    events = np.flatnonzero(ok)
    p = four_vectors(store.schema, data["objects"][events[:, None], idx[ok]]).sum(1)
    return mass(p), events


def _validation_plots(
    store: EventStore, data: dict[str, np.ndarray], labels: np.ndarray, names: list[str], out: Path, title: str
) -> list[Path]:
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    objects, mask = data["objects"], data["mask"]
    lep = (
        mask & (objects[..., store.schema.index("is_lepton")] > 0.5)
        if "is_lepton" in store.schema.object_names
        else None
    )
    gnames = store.schema.global_names

    def save(fig, stem: str) -> None:
        files.append(save_figure(fig, out / f"{stem}.png", title))

    # multiplicities
    counts = {"objects": mask.sum(1)}
    for g in ("n_jet", "n_bjet", "n_lepton"):
        if g in gnames:
            counts[g] = data["globals"][:, gnames.index(g)]
    fig, axes = plt.subplots(1, len(counts), figsize=(3.2 * len(counts), 3.2), squeeze=False)
    bins = np.arange(-0.5, store.schema.max_objects + 1.5)
    for ax, (what, values) in zip(axes[0], counts.items(), strict=True):
        for p, pname in enumerate(names):
            sel = labels == p
            if sel.any():
                ax.hist(values[sel], bins=bins, histtype="step", density=True, label=pname)
        ax.set_xlabel(what)
        ax.set_xlim(-0.5, max(4.5, float(values.max()) + 1))
    axes[0][0].set_ylabel("normalised entries")
    axes[0][0].legend(fontsize=6)
    save(fig, "multiplicity")

    # missing transverse momentum
    if "met" in gnames:
        met = data["globals"][:, gnames.index("met")]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for p, pname in enumerate(names):
            sel = labels == p
            if sel.any():
                ax.hist(
                    met[sel],
                    bins=np.linspace(0, max(200.0, np.percentile(met, 99)), 50),
                    histtype="step",
                    density=True,
                    label=pname,
                )
        ax.set_yscale("log")
        ax.set_xlabel("MET [GeV]")
        ax.set_ylabel("normalised entries")
        ax.legend(fontsize=6)
        save(fig, "met")

    # m(ll) of events with exactly two leptons (reconstructed, no truth needed)
    if lep is not None:
        two = np.flatnonzero(lep.sum(1) == 2)
        if two.size:
            first = np.argsort(~lep[two], axis=1, kind="stable")[:, :2]
            mll = mass(four_vectors(store.schema, objects[two[:, None], first]).sum(1))
            fig, ax = plt.subplots(figsize=(5, 3.6))
            for p, pname in enumerate(names):
                sel = labels[two] == p
                if sel.any():
                    ax.hist(mll[sel], bins=np.linspace(0, 200, 81), histtype="step", label=f"{pname} ({sel.sum()})")
            ax.axvline(91.19, color="grey", ls=":", lw=1, label="m_Z")
            ax.set_xlabel("m(ll), events with two leptons [GeV]")
            ax.set_ylabel("events")
            ax.legend(fontsize=6)
            save(fig, "mass_ll")

    # truth-assigned resonance masses
    slots = list(store_topology(store).get("assignment", {}).get("slots", []))
    if "targets/assignment" in data and slots:
        for stem, (what, groups, (lo, hi), ref, ref_label) in TRUTH_MASSES.items():
            groups = [g for g in groups if all(s in slots for s in g)]
            per_process: dict[str, np.ndarray] = {}
            for p, pname in enumerate(names):
                values = []
                for g in groups:
                    m, events = truth_group_masses(store, data, slots, g)
                    values.append(m[labels[events] == p])
                if values and sum(v.size for v in values):
                    per_process[pname] = np.concatenate(values)
            if not per_process:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.6))
            for pname, values in per_process.items():
                ax.hist(values, bins=np.linspace(lo, hi, 61), histtype="step", label=f"{pname} ({values.size})")
            if ref:
                ax.axvline(ref, color="grey", ls=":", lw=1, label=ref_label)
            ax.set_xlabel(f"{what} [GeV]")
            ax.set_ylabel("entries")
            ax.legend(fontsize=6)
            save(fig, stem)
    return files
