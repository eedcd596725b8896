"""Event stores -> SPANet HDF5 and its event YAML (``hepfm export --format spanet``).

One SEQUENTIAL input ``Source`` with every object feature, one GLOBAL input ``Globals`` with every
global, TARGETS from the store's topology, scalar targets as REGRESSIONS (floats) or
CLASSIFICATIONS (integers, ``process`` among them), and what SPANet has no place for (weights,
per-object or vector targets, exact dtypes, process names, topology) under ``HEPFM/`` and in file
attributes, so converting the export back (``_conv_spanet``) gives the store's arrays exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hepfm import EventStore
from hepfm.sdk import require

from ._conv_common import ASSIGNMENT_PREFIX, assignment_target, slot_resonances

__all__ = ["EXPORT_FORMAT", "export_companions", "export_layout", "export_spanet"]

EXPORT_FORMAT = "hepfm-spanet-export/1"
SEQUENCE, GLOBALS = "Source", "Globals"
_NORMS = {"log_standardise": "log_normalize", "standardise": "normalize", "uniform": "normalize", "none": "none"}


def export_companions(out: Path) -> list[Path]:
    """The event YAML written beside the HDF5 file."""
    return [Path(out).with_suffix(".yaml")]


def export_layout(store: EventStore) -> tuple[dict[str, list[str]], dict[str, tuple[str, ...]], dict]:
    """(resonance -> daughters written as TARGETS, target -> HDF5 path parts, YAML sections).

    The sections also hold ``PERMUTATIONS`` and ``sources`` (resonance -> (target, columns)):
    per-resonance ``assignment/R`` targets, or a generator's named slots (``slot_resonances``).
    """
    topo = store.topology or {}
    raw = topo.get("resonances") if isinstance(topo, dict) else None
    resonances: dict[str, list[str]] = {}
    for r, daughters in (raw or {}).items():
        spec = store.targets.get(assignment_target(r))
        if (
            isinstance(daughters, list)
            and all(isinstance(d, str) for d in daughters)
            and spec is not None
            and spec["shape"] == [len(daughters)]
            and np.dtype(spec["dtype"]).kind in "iu"
        ):
            resonances[r] = daughters
    sources = {r: (assignment_target(r), list(range(len(d)))) for r, d in resonances.items()}
    permutations = {k: v for k, v in (topo.get("permutations") or {}).items() if k == "EVENT" or k in resonances}
    slots_target = (topo.get("assignment") or {}).get("target", "assignment") if isinstance(topo, dict) else None
    if not resonances and slots_target in store.targets:  # a generator's named slots of one target
        resonances, permutations = slot_resonances(topo, list(store.processes))
        slots = topo["assignment"]["slots"]
        sources = {r: (slots_target, [slots.index(f"{r}_{d}") for d in ds]) for r, ds in resonances.items()}
    where: dict[str, tuple[str, ...]] = {}
    regressions: dict[str, Any] = {}
    classifications: dict[str, Any] = {}

    def add(section: dict, parts: tuple[str, ...]) -> None:
        if parts[0] == "EVENT":
            section.setdefault("EVENT", []).append(parts[1])
        else:
            section.setdefault(parts[0], {}).setdefault(parts[1], []).append(parts[2])

    for name, spec in store.targets.items():
        if name.startswith(ASSIGNMENT_PREFIX) and name[len(ASSIGNMENT_PREFIX) :] in resonances:
            continue
        kind = np.dtype(spec["dtype"]).kind
        pieces = name.split("/")
        scalar = spec["shape"] == [] and kind in "iubf" and pieces[-1] != "MASK"
        parts: tuple[str, ...] | None = None
        if scalar and len(pieces) == 1:
            parts = ("EVENT", name)
        elif scalar and len(pieces) == 2 and pieces[0] in resonances:
            parts = (pieces[0], "PARTICLE", pieces[1])
        elif scalar and len(pieces) == 3 and pieces[0] in resonances and pieces[1] in resonances[pieces[0]]:
            parts = tuple(pieces)
        if parts is None:
            where[name] = ("HEPFM", "targets", *pieces)
        elif kind == "f":
            where[name] = ("REGRESSIONS", *parts)
            add(regressions, parts)
        else:
            where[name] = ("CLASSIFICATIONS", *parts)
            add(classifications, parts)

    def as_yaml(section: dict) -> dict:
        out: dict[str, Any] = {}
        for key, value in section.items():
            out[key] = value if key == "EVENT" else [{sub: names} for sub, names in value.items()]
        return out

    sections = {"REGRESSIONS": as_yaml(regressions), "CLASSIFICATIONS": as_yaml(classifications)}
    return resonances, where, {**sections, "PERMUTATIONS": permutations, "sources": sources}


def export_spanet(store: EventStore, out: Path, advance: Callable[[int], None], converter: str) -> list[Path]:
    """Write ``store`` as SPANet HDF5 at ``out`` and its event YAML beside it, chunk by chunk.

    ``advance(n)`` is called after each chunk of ``n`` events; ``converter`` names the converter in
    the error when h5py is missing.
    """
    h5py = require("h5py", converter)
    s, n, chunk = store.schema, store.n_events, store.chunk_events
    out = Path(out)
    yaml_path = export_companions(out)[0]
    resonances, where, sections = export_layout(store)
    sources, permutations = sections.pop("sources"), sections.pop("PERMUTATIONS")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp_yaml = yaml_path.with_name(yaml_path.name + ".partial")
    rows = min(chunk, n)
    try:
        # whole chunks are written once each; HDF5's chunk cache would only hold on to them (it grows with n)
        with h5py.File(tmp, "w", rdcc_nbytes=0) as f:

            def create(name: str, shape: tuple, dtype: Any) -> Any:
                return f.create_dataset(
                    name,
                    shape=(n, *shape),
                    dtype=dtype,
                    chunks=(rows, *shape),
                    compression="gzip",
                    compression_opts=1,
                    shuffle=True,
                )

            big_n = s.max_objects
            sinks: list[tuple[Any, Callable[[dict], np.ndarray]]] = []
            sinks.append((create(f"INPUTS/{SEQUENCE}/MASK", (big_n,), bool), lambda d: d["mask"]))
            for j, feature in enumerate(s.object_names):
                sinks.append(
                    (
                        create(f"INPUTS/{SEQUENCE}/{feature}", (big_n,), np.float32),
                        lambda d, j=j: d["objects"][..., j],
                    )
                )
            for j, name in enumerate(s.global_names):
                sinks.append((create(f"INPUTS/{GLOBALS}/{name}", (), np.float32), lambda d, j=j: d["globals"][:, j]))
            for r, daughters in resonances.items():
                for k, d in enumerate(daughters):
                    sinks.append(
                        (
                            create(f"TARGETS/{r}/{d}", (), np.int64),
                            lambda x, r=r, k=k: x[f"targets/{sources[r][0]}"][:, sources[r][1][k]],
                        )
                    )
            for name, parts in where.items():
                spec = store.targets[name]
                kind = np.dtype(spec["dtype"]).kind
                dtype = spec["dtype"] if parts[0] == "HEPFM" or kind == "f" else np.int64  # SPANet: int64 labels
                ds = create("/".join(parts), tuple(spec["shape"]), dtype)
                if name == "process":
                    ds.attrs["processes"] = json.dumps(store.processes)
                sinks.append((ds, lambda x, name=name: x[f"targets/{name}"]))
            sinks.append((create("HEPFM/weights", (), np.float32), lambda d: d["weights"]))
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                data = store.read(start, stop)
                for ds, get in sinks:
                    ds[start:stop] = get(data)
                advance(stop - start)
            f.attrs["hepfm_format"] = EXPORT_FORMAT
            f.attrs["hepfm_schema"] = json.dumps(s.model_dump(mode="json"))
            f.attrs["hepfm_targets"] = json.dumps(store.targets)
            f.attrs["hepfm_topology"] = json.dumps(store.topology)
            f.attrs["hepfm_source"] = str(store.path)
        event = {
            "INPUTS": {
                "SEQUENTIAL": {SEQUENCE: {x.name: _NORMS[x.norm] for x in s.object_features}},
                "GLOBAL": {GLOBALS: {x.name: _NORMS[x.norm] for x in s.global_features}},
            },
            "EVENT": {r: list(d) for r, d in resonances.items()},
            "PERMUTATIONS": permutations,
            **{k: v for k, v in sections.items() if v},
        }
        header = f"# SPANet event file written by hepfm export from {store.path}\n"
        tmp_yaml.write_text(header + yaml.safe_dump(event, sort_keys=False))
        os.replace(tmp_yaml, yaml_path)
        os.replace(tmp, out)
    except BaseException:
        for path in (tmp, tmp_yaml):
            path.unlink(missing_ok=True)
        raise
    return [out, yaml_path]
