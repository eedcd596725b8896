"""SPANet's HDF5 layout and event YAML, both ways (docs/convert.md).

Reading: every SEQUENTIAL input of the event YAML is one object group (slots numbered input after
input, each MASK-wide, as SPANet numbers its assignment targets); features are found by name, and
the ones a file lacks are derived where physics allows (E from mass, phi from sin/cos or px/py, pT
from px/py, charge 0 and is_lepton 0 for jets, b-tag 0 for leptons) or given explicitly by the
mapping's ``fill``; anything else is refused with one line. ``TARGETS/<particle>/<daughter>``
become ``assignment/<particle>`` re-pointed to the pT-ordered objects; ``REGRESSIONS`` and
``CLASSIFICATIONS`` become targets named ``x`` (EVENT), ``particle/x`` (PARTICLE) and
``particle/daughter/x``.

Writing (``hepfm export``): one SEQUENTIAL input ``Source`` with every object feature, one GLOBAL
input ``Globals`` with every global, TARGETS from the store's topology, scalar targets as
REGRESSIONS (floats) or CLASSIFICATIONS (integers, ``process`` among them), and what SPANet has no
place for (weights, per-object or vector targets, exact dtypes, process names, topology) under
``HEPFM/`` and in file attributes, so converting the export back gives the store's arrays exactly.

The event YAML is read by ``_spanet_event``, the export written by ``_spanet_export``; this module
is the converter (the reading plan and the blocks).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from hepfm import EventBlock, EventSchema, EventStore, HepfmError, compute_globals
from hepfm.components import Params
from hepfm.sdk import (
    MappingError,
    ObjectGroup,
    SourceInfo,
    check_target_names,
    energy_from_mass,
    pack_objects,
    remap_indices,
    require,
)

from ._conv_common import assignment_target, make_topology
from ._spanet_event import EventInfo, load_event_info, target_name
from ._spanet_export import export_companions, export_spanet

_ALIASES = {
    "E": ("e", "energy"),
    "pt": ("pt",),
    "eta": ("eta",),
    "phi": ("phi",),
    "btag": ("btag", "b_tag"),
    "is_lepton": ("is_lepton",),
    "charge": ("charge", "q"),
    "mass": ("mass", "m", "invmass"),
    "sin_phi": ("sin_phi", "sinphi"),
    "cos_phi": ("cos_phi", "cosphi"),
    "px": ("px", "pt_x"),
    "py": ("py", "pt_y"),
}


# --------------------------------------------------------------------------------------------
# reading plan for one file
# --------------------------------------------------------------------------------------------
Recipe = tuple  # ("ds", name) | ("mass", name) | ("atan2", y, x) | ("hypot", x, y) | ("const", value)


@dataclass
class _Group:
    name: str
    width: int
    recipes: dict[str, Recipe]


@dataclass
class _FilePlan:
    n: int
    groups: list[_Group]
    globals_direct: str | None
    met: Recipe | None
    met_phi: Recipe | None
    assignments: dict[str, list[str]]
    scalars: dict[str, str]  # target -> dataset path (regressions, classifications, HEPFM extras)
    process: str | None
    weight: str | None
    info: SourceInfo


class SpanetConverter:
    """SPANet HDF5 files with their event YAML -> events; and event stores -> SPANet HDF5."""

    name: ClassVar[str] = "spanet"
    description: ClassVar[str] = "SPANet HDF5 + event YAML, both ways (convert and export; needs hepfm[ingest])"
    kind: ClassVar[str] = "converter"
    path_params: ClassVar[tuple[str, ...]] = ("event_info",)

    class Params(Params):
        event_info: str | None = Field(None, description="SPANet event YAML (default: INPUT.yaml beside each input)")
        groups: dict[str, Literal["jet", "lepton"]] = Field(
            default_factory=dict, description="kind of each sequential input without an is_lepton feature"
        )
        features: dict[str, dict[str, str]] = Field(
            default_factory=dict, description="input -> {schema feature (or mass, sin_phi, ...): dataset name}"
        )
        fill: dict[str, float] = Field(
            default_factory=dict, description="explicit constants for features (or met, met_phi) a file lacks"
        )
        met: str | None = Field(None, description="dataset of the missing transverse momentum, e.g. INPUTS/Met/met")
        met_phi: str | None = Field(None, description="dataset of its azimuth")
        process: str | None = Field(None, description="classification dataset holding process labels")
        processes: list[str] | None = Field(None, description="process names, in label order")
        weight: str | None = Field(None, description="dataset of per-event weights (default: HEPFM/weights or 1)")

        @classmethod
        def from_mapping_file(cls, path: Path, data: dict[str, Any]) -> dict[str, Any]:
            """A SPANet event YAML given as ``--map`` stands for ``event_info: <it>``."""
            if "EVENT" in data or "INPUTS" in data:
                return {"event_info": str(Path(path).resolve())}
            return data

    def __init__(self, params: Params, schema: EventSchema) -> None:
        self.params, self.schema = params, schema
        self.counters: Counter = Counter()
        allowed = [*schema.object_names, "met", "met_phi"]
        for key in params.fill:
            if key not in allowed:
                raise MappingError(("fill", key), f"unknown; fill takes {', '.join(allowed)}")
        if params.process is None and params.processes is not None:
            raise MappingError(("process",), "processes are listed but no process dataset is named")

    # -- files ----------------------------------------------------------------------------------
    def _event_info(self, path: str) -> EventInfo:
        if self.params.event_info is not None:
            return load_event_info(Path(self.params.event_info))
        for suffix in (".yaml", ".yml"):
            candidate = Path(path).with_suffix(suffix)
            if candidate.is_file():
                return load_event_info(candidate)
        raise HepfmError(
            f"{path}: no SPANet event file beside it ({Path(path).with_suffix('.yaml').name}); "
            f"pass it with --map EVENT.yaml or set event_info in the mapping"
        )

    def _open(self, path: str) -> Any:
        h5py = require("h5py", self.name)
        try:
            return h5py.File(path, "r")
        except Exception as exc:
            raise HepfmError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from None

    def _plan(self, f: Any, path: str) -> _FilePlan:
        info = self._event_info(path)
        p, s = self.params, self.schema
        h5py = require("h5py", self.name)
        lengths: dict[str, int] = {}

        def dataset(name: str, ndim: int | None = None) -> Any:
            obj = f.get(name)
            if not isinstance(obj, h5py.Dataset):
                raise HepfmError(f"{path}: dataset '{name}' missing")
            if ndim is not None and obj.ndim != ndim:
                raise HepfmError(f"{path}: dataset '{name}' has shape {obj.shape}, expected {ndim} dimension(s)")
            lengths[name] = obj.shape[0] if obj.ndim else -1
            return obj

        # object groups
        groups = []
        for g in info.sequential:
            mask = dataset(f"INPUTS/{g}/MASK", 2)
            grp = f[f"INPUTS/{g}"]
            present = {k.lower(): k for k, v in grp.items() if isinstance(v, h5py.Dataset) and k != "MASK"}
            overrides = p.features.get(g, {})

            def find(
                feature: str, grp_name: str = g, present: dict = present, overrides: dict = overrides
            ) -> str | None:
                if feature in overrides:
                    name = overrides[feature]
                    if name not in present.values():
                        raise HepfmError(
                            f"{path}: dataset 'INPUTS/{grp_name}/{name}' (features.{grp_name}.{feature}) missing"
                        )
                    return name
                for alias in _ALIASES.get(feature, (feature.lower(),)):
                    if alias in present:
                        return present[alias]
                return None

            def ds(name: str, grp_name: str = g) -> Recipe:
                dataset(f"INPUTS/{grp_name}/{name}", 2)
                return ("ds", f"INPUTS/{grp_name}/{name}")

            kind = p.groups.get(g)
            has_flag = find("is_lepton") is not None
            if kind is None and not has_flag:
                low = g.lower()
                if any(k in low for k in ("lep", "electron", "muon")):
                    kind = "lepton"
                elif "jet" in low:
                    kind = "jet"
            recipes: dict[str, Recipe] = {}
            for feature in s.object_names:
                name = find(feature)
                if name is not None:
                    recipes[feature] = ds(name)
                    continue
                recipe: Recipe | None = None
                if feature == "pt" and find("px") and find("py"):
                    recipe = ("hypot", ds(find("px"))[1], ds(find("py"))[1])
                elif feature == "phi" and find("sin_phi") and find("cos_phi"):
                    recipe = ("atan2", ds(find("sin_phi"))[1], ds(find("cos_phi"))[1])
                elif feature == "phi" and find("px") and find("py"):
                    recipe = ("atan2", ds(find("py"))[1], ds(find("px"))[1])
                elif feature == "E" and find("mass"):
                    recipe = ("mass", ds(find("mass"))[1])
                elif feature == "is_lepton" and kind is not None:
                    recipe = ("const", 1.0 if kind == "lepton" else 0.0)
                elif feature == "charge" and kind == "jet":
                    recipe = ("const", 0.0)
                elif feature == "btag" and kind == "lepton":
                    recipe = ("const", 0.0)
                elif feature in p.fill:
                    recipe = ("const", float(p.fill[feature]))
                if recipe is None:
                    hint = {
                        "is_lepton": f"its name does not say jets or leptons; declare groups: {{{g}: jet}} (or lepton)",
                        "E": "and no mass to derive it from",
                        "charge": "and leptons have no default charge",
                        "btag": "and jets have no default b-tag",
                    }.get(feature, "and it cannot be derived")
                    raise HepfmError(
                        f"{path}: INPUTS/{g} has no feature '{feature}' {hint}; map it under features.{g} "
                        f"or give fill: {{{feature}: VALUE}} in --map"
                    )
                recipes[feature] = recipe
            if "E" in recipes and recipes["E"][0] == "mass":
                for need in ("pt", "eta"):
                    if recipes[need][0] == "const":
                        raise HepfmError(f"{path}: INPUTS/{g}: E from mass needs a real {need}")
            groups.append(_Group(g, mask.shape[1], recipes))

        # globals
        globals_direct, met, met_phi = None, None, None
        for g in info.global_:
            grp = f.get(f"INPUTS/{g}")
            if grp is not None and all(name in grp for name in s.global_names):
                globals_direct = g
                for name in s.global_names:
                    dataset(f"INPUTS/{g}/{name}", 1)
                break
        if globals_direct is None:
            met, met_phi = self._met(f, info, path, dataset)

        # assignment targets
        targets_group = f.get("TARGETS")
        if targets_group is not None:
            for particle, obj in targets_group.items():
                if particle not in info.event:
                    raise HepfmError(
                        f"{path}: unknown target 'TARGETS/{particle}'; {info.path.name} EVENT declares "
                        f"{', '.join(info.event) or 'none'}"
                    )
                for daughter in obj:
                    if daughter not in info.event[particle]:
                        raise HepfmError(
                            f"{path}: unknown target 'TARGETS/{particle}/{daughter}'; {info.path.name} gives "
                            f"{particle} the daughters {', '.join(info.event[particle])}"
                        )
        # A hepfm export of a store whose assignment is one target of named slots (a generated
        # store) wrote TARGETS from those slots and the slot target itself under HEPFM/targets:
        # converting back keeps the slot target alone, as the store had it.
        declared = json.loads(f.attrs.get("hepfm_targets", "{}"))
        from_slots = bool(declared) and not any(assignment_target(p) in declared for p in info.event)
        assignments = {}
        for particle, daughters in info.event.items():
            names = [f"TARGETS/{particle}/{d}" for d in daughters]
            for name in names:
                dataset(name, 1)
            if not from_slots:
                assignments[particle] = names

        # scalar targets: regressions, classifications, hepfm extras
        scalars: dict[str, str] = {}
        kinds: dict[str, str] = {}
        process = p.process
        processes = list(p.processes or [])
        for root, parts_list, kind in (
            ("REGRESSIONS", info.regressions, "float32"),
            ("CLASSIFICATIONS", info.classifications, "int32"),
        ):
            for parts in parts_list:
                ds_name = "/".join((root, *parts))
                dataset(ds_name, 1)
                if ds_name == process:
                    continue
                if process is None and ds_name == "CLASSIFICATIONS/EVENT/process" and "processes" in f[ds_name].attrs:
                    process = ds_name
                    continue
                name = target_name(parts)
                if name in scalars:
                    raise HepfmError(f"{path}: target '{name}' is both '{scalars[name]}' and '{ds_name}'")
                scalars[name], kinds[name] = ds_name, kind
        extras = f.get("HEPFM/targets")
        if extras is not None:
            found: list[str] = []
            extras.visit(lambda k: found.append(k) if isinstance(extras[k], h5py.Dataset) else None)
            for name in found:
                if name in scalars:
                    raise HepfmError(f"{path}: target '{name}' is both '{scalars[name]}' and 'HEPFM/targets/{name}'")
                obj = dataset(f"HEPFM/targets/{name}")
                scalars[name], kinds[name] = f"HEPFM/targets/{name}", str(obj.dtype)
        if process is not None:
            obj = dataset(process, 1)
            if not processes:
                raw = obj.attrs.get("processes")
                if raw is None:
                    raise HepfmError(
                        f"{path}: dataset '{process}' has no 'processes' attribute; "
                        f"list the names as processes in --map"
                    )
                processes = list(json.loads(raw))
        weight = p.weight
        if weight is None and isinstance(f.get("HEPFM/weights"), h5py.Dataset):
            weight = "HEPFM/weights"
        if weight is not None:
            dataset(weight, 1)

        # lengths agree?
        reference = f"INPUTS/{groups[0].name}/MASK"
        n = lengths[reference]
        for name, length in lengths.items():
            if length != n:
                raise HepfmError(
                    f"{path}: dataset '{name}' has {length} events, '{reference}' has {n} (mismatched lengths)"
                )

        # what the blocks carry
        targets: dict[str, dict[str, Any]] = {}
        if process is not None:
            targets["process"] = {"dtype": "int32", "shape": []}
        for particle in assignments:
            targets[assignment_target(particle)] = {"dtype": "int16", "shape": [len(info.event[particle])]}
        for name, ds_name in scalars.items():
            targets[name] = {"dtype": kinds[name], "shape": list(f[ds_name].shape[1:])}
        check_target_names(targets, path)  # before anything is written, naming the input file
        for name, spec in declared.items():  # exact dtypes of a hepfm export
            if name in targets and list(spec.get("shape", [])) == targets[name]["shape"]:
                targets[name]["dtype"] = str(np.dtype(spec["dtype"]))
        if set(declared) == set(targets):  # and their order
            targets = {name: targets[name] for name in declared}
        topology = make_topology(info.event, info.permutations)
        stored = json.loads(f.attrs.get("hepfm_topology", "{}"))
        if stored and (from_slots or stored.get("resonances") == topology.get("resonances")):
            topology = stored
        source = SourceInfo(int(n), targets, processes, topology)
        return _FilePlan(n, groups, globals_direct, met, met_phi, assignments, scalars, process, weight, source)

    def _met(self, f: Any, info: EventInfo, path: str, dataset: Callable) -> tuple[Recipe, Recipe]:
        p = self.params
        met = ("ds", p.met) if p.met else None
        phi = ("ds", p.met_phi) if p.met_phi else None
        if met is None:
            for g in info.global_:
                grp = f.get(f"INPUTS/{g}")
                if grp is None:
                    continue
                present = {k.lower(): k for k in grp}
                if "met" in present:
                    met = ("ds", f"INPUTS/{g}/{present['met']}")
                    if phi is None:
                        for alias in ("met_phi", "phi"):
                            if alias in present:
                                phi = ("ds", f"INPUTS/{g}/{present[alias]}")
                                break
                        else:
                            sin = next((present[a] for a in _ALIASES["sin_phi"] if a in present), None)
                            cos = next((present[a] for a in _ALIASES["cos_phi"] if a in present), None)
                            if sin and cos:
                                phi = ("atan2", f"INPUTS/{g}/{sin}", f"INPUTS/{g}/{cos}")
                    break
        if met is None and "met" in p.fill:
            met = ("const", float(p.fill["met"]))
        if phi is None and "met_phi" in p.fill:
            phi = ("const", float(p.fill["met_phi"]))
        for key, recipe in (("met", met), ("met_phi", phi)):
            if recipe is None:
                raise HepfmError(
                    f"{path}: no '{key}' found for the globals (a GLOBAL input with met and phi, or all "
                    f"{len(self.schema.global_names)} globals); name the datasets with met and met_phi in --map, "
                    f"or give fill: {{met: 0, met_phi: 0}}"
                )
            for name in recipe[1:] if recipe[0] != "const" else ():
                dataset(name, 1)
        return met, phi  # type: ignore[return-value]

    # -- protocol -------------------------------------------------------------------------------
    def describe(self, path: str) -> SourceInfo:
        with self._open(path) as f:
            return self._plan(f, path).info

    def read(self, paths: list[str], step: int = 8192) -> Iterator[EventBlock]:
        for path in paths:
            with self._open(path) as f:
                plan = self._plan(f, path)
                for start in range(0, plan.n, step):
                    yield self._block(f, plan, path, start, min(plan.n, start + step))

    @staticmethod
    def _values(f: Any, recipe: Recipe, a: int, b: int, shape: tuple) -> np.ndarray:
        op = recipe[0]
        if op == "const":
            return np.full(shape, recipe[1], np.float64)
        x = np.asarray(f[recipe[1]][a:b], np.float64)
        if op == "ds":
            return x
        y = np.asarray(f[recipe[2]][a:b], np.float64)
        return np.arctan2(x, y) if op == "atan2" else np.hypot(x, y)

    def _block(self, f: Any, plan: _FilePlan, path: str, a: int, b: int) -> EventBlock:
        s, n = self.schema, b - a
        groups = []
        for g in plan.groups:
            mask = np.asarray(f[f"INPUTS/{g.name}/MASK"][a:b]).astype(bool)
            feats, sources = {}, {}
            for feature, recipe in sorted(g.recipes.items(), key=lambda kv: kv[1][0] == "mass"):  # E after pt, eta
                if recipe[0] == "mass":
                    feats[feature] = energy_from_mass(feats["pt"], feats["eta"], np.asarray(f[recipe[1]][a:b]))
                else:
                    feats[feature] = self._values(f, recipe, a, b, mask.shape)
                if recipe[0] != "const":
                    sources[feature] = recipe[1]
            groups.append(ObjectGroup(feats, mask, sources))
        packed = pack_objects(s, groups, path, a)
        self.counters["truncated"] += packed.truncated
        dtypes = plan.info.targets
        targets: dict[str, np.ndarray] = {}
        if plan.process is not None:
            labels = np.asarray(f[plan.process][a:b])
            bad = (labels < 0) | (labels >= len(plan.info.processes)) | (labels != np.round(labels))
            if bad.any():
                ev = int(np.flatnonzero(bad)[0])
                raise HepfmError(
                    f"{path}: dataset '{plan.process}' holds {labels[ev]} in event {a + ev}, not a label "
                    f"0..{len(plan.info.processes) - 1} (processes: {', '.join(plan.info.processes)})"
                )
            targets["process"] = labels.astype(np.int32)
        for particle, names in plan.assignments.items():
            idx = np.stack([np.asarray(f[name][a:b], np.int64) for name in names], 1)
            new, lost = remap_indices(packed, idx, path, f"TARGETS/{particle}", a)
            self.counters["lost_assignments"] += lost
            name = assignment_target(particle)
            targets[name] = new.astype(dtypes[name]["dtype"])
        for name, ds_name in plan.scalars.items():
            targets[name] = np.asarray(f[ds_name][a:b]).astype(dtypes[name]["dtype"])
        if plan.globals_direct is not None:
            globals_ = np.stack([np.asarray(f[f"INPUTS/{plan.globals_direct}/{k}"][a:b]) for k in s.global_names], 1)
            globals_ = globals_.astype(np.float32)
            bad = ~np.isfinite(globals_)
            if bad.any():
                ev, j = np.argwhere(bad)[0]
                raise HepfmError(
                    f"{path}: dataset 'INPUTS/{plan.globals_direct}/{s.global_names[j]}' is NaN or inf "
                    f"in event {a + ev}"
                )
        else:
            met = self._values(f, plan.met, a, b, (n,))
            met_phi = self._values(f, plan.met_phi, a, b, (n,))
            for recipe, values in ((plan.met, met), (plan.met_phi, met_phi)):
                if not np.isfinite(values).all():
                    ev = int(np.flatnonzero(~np.isfinite(values))[0])
                    raise HepfmError(f"{path}: dataset '{recipe[1]}' is NaN or inf in event {a + ev}")
            globals_ = compute_globals(s, packed.objects, packed.mask, met, met_phi)
        weights = np.ones(n, np.float32)
        if plan.weight is not None:
            weights = np.asarray(f[plan.weight][a:b], np.float32)
            if not np.isfinite(weights).all():
                ev = int(np.flatnonzero(~np.isfinite(weights))[0])
                raise HepfmError(f"{path}: dataset '{plan.weight}' is NaN or inf in event {a + ev}")
        return EventBlock(packed.objects, packed.mask, globals_, weights, targets)

    # -- export ---------------------------------------------------------------------------------
    @staticmethod
    def export_companions(out: Path) -> list[Path]:
        """The event YAML written beside the HDF5 file."""
        return export_companions(out)

    def export(self, store: EventStore, out: Path, advance: Callable[[int], None]) -> list[Path]:
        """Write ``store`` as SPANet HDF5 at ``out`` and its event YAML beside it, chunk by chunk."""
        return export_spanet(store, out, advance, self.name)
