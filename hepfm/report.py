"""What is in an event store: a summary (``hepfm inspect``), a full integrity scan, and feature plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._outputs import prepare_output
from ._plots import draw_hist, feature_label, fill, flow_note, hep_label, make_axis, new_figure, save_figure, styled
from ._progress import progress
from .physics import four_vectors, mass
from .store import EventStore

__all__ = ["summarize_store", "verify_store", "plot_store", "store_figures"]


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
        "bytes_per_event": None if size is None else size / store.n_events,
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
    """Write ``store_figures`` as PNGs (``out_dir/NAME.png``, validation plots under ``validation/``)."""
    out = Path(out_dir)
    prepare_output(out, "plots", resume=True)
    return [save_figure(fig, out / f"{name}.png") for name, fig in store_figures(path, max_events).items()]


@styled
def store_figures(path: str | os.PathLike, max_events: int = 200_000) -> dict[str, Any]:
    """Histograms of every object feature and global, per process, as matplotlib Figures.

    Keys are file stems: ``objects_FEATURE``, ``globals_FEATURE`` and ``validation/NAME`` for the
    physics validation plots: multiplicities, MET, m(ll) of two-lepton events, and, for stores with
    an assignment target and a topology naming its slots, the masses of truth-assigned resonance
    daughters that the topology declares (``assignment.truth_masses``; pythia's: W -> jj, hadronic
    top, lepton-b of a top, a -> bb). Each histogram shows, per bin,
    the fraction of each process's entries with its statistical error; integer features (counts,
    charge, b-tag) get one bin per value, energies a log axis from their smallest value.
    """
    store = EventStore.open(path)
    n = min(store.n_events, max_events)
    data = store.read(0, n)
    labels = data.get("targets/process", np.zeros(n, dtype=np.int64))
    names = store.processes or ["all"]
    ecm = _ecm_tev(store)
    figures: dict[str, Any] = {}
    panels = [("objects", f, i) for i, f in enumerate(store.schema.object_features)]
    panels += [("globals", f, i) for i, f in enumerate(store.schema.global_features)]
    for part, feature, i in panels:
        if part == "objects":
            all_values = data["objects"][..., i][data["mask"]]
        else:
            all_values = data["globals"][:, i]
        log = feature.norm == "log_standardise" and all_values.size and all_values.min() >= 0
        axis = make_axis(all_values, log=bool(log), unit=feature.unit)
        fig, ax = new_figure()
        notes = []
        for p, pname in enumerate(names):
            sel = labels == p
            values = (
                data["objects"][sel][..., i][data["mask"][sel]] if part == "objects" else data["globals"][sel][:, i]
            )
            if values.size == 0:
                continue
            h = fill(axis, values)
            draw_hist(ax, h, label=pname, fraction=True)
            note = flow_note(h)
            if note:
                notes.append(f"{pname}: {note}")
        what = "objects" if part == "objects" else "events"
        ax.set_xlabel(feature_label(feature.name, feature.unit, "object" if part == "objects" else ""))
        ax.set_ylabel(f"fraction of {what} / bin")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        hep_label(ax, f"{n:,} events", ecm)
        ax.legend(loc="upper right", fontsize="x-small")
        if notes:
            ax.text(0.04, 0.84, "\n".join(notes[:5]), transform=ax.transAxes, fontsize=7, va="top", color="grey")
        figures[f"{part}_{feature.name}"] = fig
    figures.update(
        {f"validation/{k}": v for k, v in _validation_figures(store, data, labels, names, f"{n:,} events", ecm).items()}
    )
    return figures


def _ecm_tev(store: EventStore) -> float | None:
    """Centre-of-mass energy of the store's generator in TeV (13 when it records none)."""
    params = (store.provenance or {}).get("params") or {}
    return float(params["ecm"]) / 1000 if "ecm" in params else 13.0


# --------------------------------------------------------------------------------------------
# physics validation plots: multiplicities, MET, key masses per process
# --------------------------------------------------------------------------------------------
def store_topology(store: EventStore) -> dict[str, Any]:
    """The store's topology attribute or, for stores written without one, its generator's ``topology()``."""
    return store.topology or _generator_topology(store)


def _generator_topology(store: EventStore) -> dict[str, Any]:
    """The ``topology()`` of the generator named in the store's provenance ({} when unknown or unavailable)."""
    prov = store.provenance or {}
    try:
        from . import plugins

        cls = plugins.generators().get(prov["generator"])
        gen = cls(cls.Params.model_validate(prov.get("params", {})), store.schema)
        return dict(gen.topology()) if hasattr(gen, "topology") else {}
    except Exception:  # unknown or unavailable generator: no truth layout, no truth plots
        return {}


def _truth_masses(store: EventStore) -> tuple[str, list[str], dict[str, dict[str, Any]]]:
    """(assignment target, its slot names, the truth-mass figures) the topology declares.

    ``topology.assignment.truth_masses`` maps a figure's file stem to its ``title``, slot ``groups``,
    ``range`` [GeV], ``reference`` value (0: none) and ``reference_label``. A store written before
    its generator declared them takes them from the generator's topology.
    """
    assignment = store_topology(store).get("assignment") or {}
    figures = assignment.get("truth_masses")
    if figures is None and store.topology:
        figures = (_generator_topology(store).get("assignment") or {}).get("truth_masses")
    return assignment.get("target", "assignment"), list(assignment.get("slots", [])), dict(figures or {})


def truth_group_masses(
    store: EventStore, data: dict[str, np.ndarray], slots: list[str], group: tuple[str, ...], target: str = "assignment"
):
    """Invariant mass of the objects assigned to ``group`` slots, and the events where all are assigned."""
    assignment = data[f"targets/{target}"]
    cols = [slots.index(s) for s in group]
    idx = assignment[:, cols].astype(np.int64)
    ok = (idx >= 0).all(1)
    events = np.flatnonzero(ok)
    p = four_vectors(store.schema, data["objects"][events[:, None], idx[ok]]).sum(1)
    return mass(p), events


def _validation_figures(
    store: EventStore, data: dict[str, np.ndarray], labels: np.ndarray, names: list[str], text: str, ecm: float | None
) -> dict[str, Any]:
    import hist

    figures: dict[str, Any] = {}
    objects, mask = data["objects"], data["mask"]
    lep = (
        mask & (objects[..., store.schema.index("is_lepton")] > 0.5)
        if "is_lepton" in store.schema.object_names
        else None
    )
    gnames = store.schema.global_names

    # multiplicities: one integer bin per count
    counts = {"objects": mask.sum(1)}
    for g in ("n_jet", "n_bjet", "n_lepton"):
        if g in gnames:
            counts[g] = data["globals"][:, gnames.index(g)]
    fig, axes = new_figure(1, len(counts), size=(4.8, 4.4))
    axes = np.atleast_2d(axes)
    for ax, (what, values) in zip(axes[0], counts.items(), strict=True):
        axis = hist.axis.Integer(0, int(max(values.max(), 4)) + 1, underflow=False, overflow=False)
        for p, pname in enumerate(names):
            sel = labels == p
            if sel.any():
                draw_hist(ax, fill(axis, values[sel]), label=pname, fraction=True)
        ax.set_xlabel(feature_label(what) if what != "objects" else "$N_{\\mathrm{objects}}$")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    axes[0][0].set_ylabel("fraction of events")
    hep_label(axes[0][0], text, ecm)
    axes[0][-1].legend(loc="upper right", fontsize="x-small")
    figures["multiplicity"] = fig

    # missing transverse momentum
    if "met" in gnames:
        met = data["globals"][:, gnames.index("met")]
        axis = hist.axis.Regular(40, 0, float(max(200.0, np.percentile(met, 99))))
        fig, ax = new_figure()
        for p, pname in enumerate(names):
            sel = labels == p
            if sel.any():
                draw_hist(ax, fill(axis, met[sel]), label=pname, fraction=True)
        ax.set_yscale("log")
        ax.set_xlabel(feature_label("met", "GeV"))
        ax.set_ylabel("fraction of events / bin")
        hep_label(ax, text, ecm)
        ax.legend(loc="upper right", fontsize="x-small")
        figures["met"] = fig

    # m(ll) of events with exactly two leptons (reconstructed, no truth needed)
    if lep is not None:
        two = np.flatnonzero(lep.sum(1) == 2)
        if two.size:
            first = np.argsort(~lep[two], axis=1, kind="stable")[:, :2]
            mll = mass(four_vectors(store.schema, objects[two[:, None], first]).sum(1))
            axis = hist.axis.Regular(50, 0, 200)
            fig, ax = new_figure()
            for p, pname in enumerate(names):
                sel = labels[two] == p
                if sel.any():
                    n_sel = int(sel.sum())
                    draw_hist(ax, fill(axis, mll[sel]), label=f"{pname} ({n_sel:,} event{'s' * (n_sel != 1)})")
            ax.axvline(91.19, color="grey", ls=":", lw=1, label="$m_Z$")
            ax.set_xlabel("$m_{\\ell\\ell}$, events with two leptons [GeV]")
            ax.set_ylabel("events / 4 GeV")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
            hep_label(ax, text, ecm)
            ax.legend(loc="upper right", fontsize="x-small")
            figures["mass_ll"] = fig

    # truth-assigned resonance masses
    target, slots, truth_masses = _truth_masses(store)
    if f"targets/{target}" in data and slots:
        for stem, spec in truth_masses.items():
            what, (lo, hi), ref, ref_label = spec["title"], spec["range"], spec["reference"], spec["reference_label"]
            groups = [tuple(g) for g in spec["groups"] if all(s in slots for s in g)]
            per_process: dict[str, np.ndarray] = {}
            for p, pname in enumerate(names):
                values = []
                for g in groups:
                    m, events = truth_group_masses(store, data, slots, g, target)
                    values.append(m[labels[events] == p])
                if values and sum(v.size for v in values):
                    per_process[pname] = np.concatenate(values)
            if not per_process:
                continue
            axis = hist.axis.Regular(50, lo, hi)
            fig, ax = new_figure()
            for pname, values in per_process.items():
                draw_hist(ax, fill(axis, values), label=f"{pname} ({values.size:,} entries)")
            if ref:
                ax.axvline(ref, color="grey", ls=":", lw=1, label=ref_label)
            ax.set_xlabel(f"{what} [GeV]")
            ax.set_ylabel(f"entries / {(hi - lo) / 50:g} GeV")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
            hep_label(ax, text, ecm)
            ax.legend(loc="upper right", fontsize="x-small")
            figures[stem] = fig
    return figures
