"""Parquet tables -> events, mapped column by column by a small YAML (docs/convert.md).

Each object group is either *per-object columns* (``count`` set, column names with ``{i}``, e.g.
``jet{i}_pt`` for jet1_pt ... jet6_pt) or *list columns* (one list per row). Read with
``pyarrow.parquet.ParquetFile.iter_batches``, ``step`` rows at a time, only the mapped columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from hepfm import EventBlock, EventSchema, HepfmError, compute_globals
from hepfm.components import Params
from hepfm.sdk import (
    MappingError,
    ObjectGroup,
    SourceInfo,
    energy_from_mass,
    jagged_to_padded,
    pack_objects,
    remap_indices,
    require,
)

from ._conv_common import assignment_target, make_topology, permutation_problem

Value = str | float


class GroupMap(Params):
    """One object group: which column (or constant) gives each feature."""

    kind: Literal["jet", "lepton"] | None = Field(
        None, description="jet: is_lepton 0, charge 0; lepton: is_lepton 1, btag 0 (unless mapped)"
    )
    count: int | None = Field(None, ge=1, le=4096, description="objects per row in per-object columns ({i})")
    start: int = Field(1, ge=0, description="first {i} of per-object columns")
    max: int | None = Field(None, ge=1, description="slots of a list group in assignment-index numbering")
    mask: str | None = Field(None, description="column (or {i} columns) that is true for a real object")
    features: dict[str, Value] = Field(description="schema feature (or mass) -> column, {i} column or constant")


class TargetMap(Params):
    """A target read from one column (shape []) or several (shape [k])."""

    column: str | None = None
    columns: list[str] | None = None
    dtype: str = "float32"

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        try:
            return str(np.dtype(value))
        except TypeError:
            raise ValueError(f"not a numpy dtype: {value!r}") from None


def _is_list(pa: Any, t: Any) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


class ParquetConverter:
    """Parquet tables mapped by YAML: object groups, MET (or ready-made globals), weights, targets.

    Assignment targets (``assignments``) hold indices into the mapped object slots, group after
    group in mapping order, each group ``count`` (per-object columns) or ``max`` (list columns)
    wide, as in SPANet; they are re-pointed to the pT-ordered objects of the store.
    """

    name: ClassVar[str] = "parquet"
    description: ClassVar[str] = "Parquet tables mapped by a YAML (--map): per-object or list columns"
    kind: ClassVar[str] = "converter"

    class Params(Params):
        objects: dict[str, GroupMap] = Field(min_length=1, description="object groups, in slot order")
        met: Value | None = Field(None, description="column (or constant) of the missing transverse momentum")
        met_phi: Value | None = Field(None, description="column (or constant) of its azimuth")
        globals: dict[str, str] | None = Field(None, description="read every global from a column instead")
        weight: Value | None = Field(None, description="per-event weight column (default: 1)")
        process: str | None = Field(None, description="process column: integer labels or names")
        processes: list[str] | None = Field(None, description="process names, in label order")
        targets: dict[str, TargetMap | str] = Field(default_factory=dict, description="target name -> column(s)")
        assignments: dict[str, dict[str, str]] = Field(
            default_factory=dict, description="resonance -> {daughter: index column}"
        )
        permutations: dict[str, Any] = Field(default_factory=dict, description="SPANet-style symmetries")

    def __init__(self, params: Params, schema: EventSchema) -> None:
        self.params, self.schema = params, schema
        self.counters: Counter = Counter()
        self._check()

    # -- mapping checks (no file needed) -----------------------------------------------------------
    def _check(self) -> None:
        p, names = self.params, self.schema.object_names
        for g, spec in p.objects.items():
            loc = ("objects", g, "features")
            for key, value in spec.features.items():
                if key not in names and key != "mass":
                    raise MappingError((*loc, key), f"unknown feature; schema features: {', '.join(names)} (or mass)")
                if isinstance(value, str) and (spec.count is not None) != ("{i}" in value):
                    need = (
                        "per-object columns (count is set) need {i} in the name"
                        if spec.count
                        else ("a {i} column needs count (objects per row)")
                    )
                    raise MappingError((*loc, key), need)
            if spec.mask is not None and (spec.count is not None) != ("{i}" in spec.mask):
                raise MappingError(("objects", g, "mask"), "use {i} exactly when count is set")
            for req in ("pt", "eta", "phi"):
                if req in names and req not in spec.features:
                    raise MappingError((*loc, req), "missing; every object needs pt, eta and phi")
            if "E" in names and "E" not in spec.features and "mass" not in spec.features:
                raise MappingError((*loc, "E"), "missing; map E, or mass to derive E from pt, eta and mass")
            if "is_lepton" in names and "is_lepton" not in spec.features and spec.kind is None:
                raise MappingError((*loc, "is_lepton"), "missing; set objects." + g + ".kind: jet|lepton or map it")
            if "btag" in names and "btag" not in spec.features and spec.kind != "lepton":
                raise MappingError((*loc, "btag"), "missing; map it, or write 'btag: 0' if there is no b-tagging")
            if "charge" in names and "charge" not in spec.features and spec.kind != "jet":
                raise MappingError((*loc, "charge"), "missing; leptons need their charge (a column or a constant)")
            for other in names:
                if other not in ("E", "pt", "eta", "phi", "btag", "is_lepton", "charge") and other not in spec.features:
                    raise MappingError((*loc, other), "missing; map this schema feature")
        gl = self.schema.global_names
        if p.globals is not None:
            missing = [k for k in gl if k not in p.globals]
            unknown = [k for k in p.globals if k not in gl]
            if unknown:
                raise MappingError(("globals", unknown[0]), f"unknown global; schema globals: {', '.join(gl)}")
            if missing:
                raise MappingError(("globals",), f"map every schema global, missing: {', '.join(missing)}")
        else:
            for key in ("met", "met_phi"):
                if getattr(p, key) is None:
                    raise MappingError(
                        (key,),
                        "missing; map met and met_phi (columns or constants) so the globals can be computed, "
                        "or give every global under 'globals'",
                    )
        if p.process is not None and not p.processes:
            raise MappingError(("processes",), "give the process names (in label order) for the process column")
        if p.processes is not None and p.process is None:
            raise MappingError(("process",), "processes are listed but no process column is named")
        resonances = {r: list(d) for r, d in p.assignments.items()}
        for r, daughters in resonances.items():
            if not daughters:
                raise MappingError(("assignments", r), "a resonance needs at least one daughter")
        problem = permutation_problem(p.permutations, resonances)
        if problem is not None:
            raise MappingError(("permutations", *problem[0]), problem[1])
        for name in self._targets():
            if name == "process" or name.startswith("assignment/") and name.split("/", 1)[1] in resonances:
                raise MappingError(("targets", name), "reserved name (process and assignment/<resonance> are made)")
        if resonances:
            groups = list(p.objects.items())
            for g, spec in groups[:-1]:
                if spec.count is None and spec.max is None:
                    raise MappingError(
                        ("objects", g, "max"),
                        "needed: assignment indices count slots group after group, so every list group but the "
                        "last needs a fixed width",
                    )

    def _targets(self) -> dict[str, TargetMap]:
        return {k: TargetMap(column=v) if isinstance(v, str) else v for k, v in self.params.targets.items()}

    # -- columns --------------------------------------------------------------------------------
    def _columns(self) -> dict[str, tuple[str, str]]:
        """Column -> (mapping key, role) for every column the mapping reads; role: list|scalar|any."""
        p = self.params
        out: dict[str, tuple[str, str]] = {}

        def add(col: Value | None, key: str, role: str) -> None:
            if isinstance(col, str):
                out.setdefault(col, (key, role))

        for g, spec in p.objects.items():
            values = [(f"objects.{g}.features.{k}", v) for k, v in spec.features.items()]
            values += [(f"objects.{g}.mask", spec.mask)] if spec.mask else []
            for key, v in values:
                if spec.count is None:
                    add(v, key, "list")
                elif isinstance(v, str):
                    for i in range(spec.start, spec.start + spec.count):
                        add(v.format(i=i), key, "scalar")
        for key in ("met", "met_phi", "weight"):
            add(getattr(p, key), key, "scalar")
        for k, col in (p.globals or {}).items():
            add(col, f"globals.{k}", "scalar")
        add(p.process, "process", "any")
        for name, t in self._targets().items():
            for col in [t.column] if t.column else t.columns or []:
                add(col, f"targets.{name}", "scalar")
        for r, daughters in p.assignments.items():
            for d, col in daughters.items():
                add(col, f"assignments.{r}.{d}", "scalar")
        return out

    def _open(self, path: str) -> Any:
        pq = require("pyarrow.parquet", self.name)
        try:
            # pre_buffer would keep every row group read so far in memory: the whole file by the end
            return pq.ParquetFile(path, pre_buffer=False)
        except Exception as exc:
            raise HepfmError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None

    def describe(self, path: str) -> SourceInfo:
        pa = require("pyarrow", self.name)
        pf = self._open(path)
        schema = pf.schema_arrow
        for col, (key, role) in self._columns().items():
            idx = schema.get_field_index(col)
            if idx < 0:
                raise HepfmError(f"{path}: column '{col}' ({key} in the mapping) missing")
            t = schema.field(idx).type
            if role == "list" and not _is_list(pa, t):
                raise HepfmError(f"{path}: column '{col}' ({key}) is {t}, expected a list column (or set count)")
            if role == "scalar" and not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise HepfmError(f"{path}: column '{col}' ({key}) is {t}, expected a number per row")
        p = self.params
        targets: dict[str, dict[str, Any]] = {}
        if p.process is not None:
            targets["process"] = {"dtype": "int32", "shape": []}
        for r, daughters in p.assignments.items():
            targets[assignment_target(r)] = {"dtype": "int16", "shape": [len(daughters)]}
        for name, t in self._targets().items():
            targets[name] = {"dtype": t.dtype, "shape": [] if t.column else [len(t.columns or [])]}
        topology = make_topology({r: list(d) for r, d in p.assignments.items()}, p.permutations)
        return SourceInfo(int(pf.metadata.num_rows), targets, list(p.processes or []), topology)

    def read(self, paths: list[str], step: int = 8192) -> Iterator[EventBlock]:
        for path in paths:
            pf = self._open(path)
            first = 0
            for batch in pf.iter_batches(batch_size=step, columns=list(self._columns())):
                yield self._block(batch, path, first)
                first += batch.num_rows

    # -- one batch ------------------------------------------------------------------------------
    def _scalar(self, batch: Any, col: str, first: int, path: str, allow_null: bool = False) -> np.ndarray:
        arr = batch.column(col)
        if arr.null_count and not allow_null:
            row = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
            raise HepfmError(f"{path}: column '{col}' is null in row {first + row}")
        return np.asarray(arr.to_numpy(zero_copy_only=False), np.float64)

    def _value(self, batch: Any, v: Value, n: int, first: int, path: str) -> np.ndarray:
        return np.full(n, float(v)) if not isinstance(v, str) else self._scalar(batch, v, first, path)

    def _group(self, batch: Any, g: str, spec: GroupMap, path: str, first: int) -> ObjectGroup:
        pc = require("pyarrow.compute", self.name)
        n = batch.num_rows
        raw: dict[str, np.ndarray] = {}
        sources: dict[str, str] = {}
        if spec.count is not None:
            width = spec.count
            for key, v in spec.features.items():
                if isinstance(v, str):
                    cols = [v.format(i=i) for i in range(spec.start, spec.start + width)]
                    raw[key] = np.stack([self._scalar(batch, c, first, path, allow_null=True) for c in cols], 1)
                    sources[key] = v
            if spec.mask is not None:
                cols = [spec.mask.format(i=i) for i in range(spec.start, spec.start + width)]
                mask = np.stack([np.nan_to_num(self._scalar(batch, c, first, path, True)) != 0 for c in cols], 1)
            else:
                pt = raw["pt"] if "pt" in raw else np.full((n, width), float(spec.features["pt"]))
                mask = np.isfinite(pt) & (pt > 0)
        else:
            counts, ref = None, None
            flats = {}
            for key, v in [*spec.features.items(), *([("__mask", spec.mask)] if spec.mask else [])]:
                if not isinstance(v, str):
                    continue
                arr = batch.column(v)
                c = np.asarray(pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False), np.int64)
                if counts is None:
                    counts, ref = c, v
                elif not np.array_equal(c, counts):
                    row = int(np.flatnonzero(c != counts)[0])
                    raise HepfmError(
                        f"{path}: list column '{v}' has {c[row]} entries in row {first + row}, but '{ref}' has "
                        f"{counts[row]} (mismatched lengths in objects.{g})"
                    )
                flats[key] = np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), np.float64)
                sources[key] = v
            if counts is None:
                raise HepfmError(f"{path}: objects.{g} maps no list column, so the number of objects is unknown")
            if spec.max is not None and (counts > spec.max).any():
                row = int(np.flatnonzero(counts > spec.max)[0])
                raise HepfmError(
                    f"{path}: list column '{ref}' has {counts[row]} entries in row {first + row}, "
                    f"more than objects.{g}.max = {spec.max}"
                )
            width = spec.max if spec.max is not None else int(counts.max(initial=0))
            raw = {k: jagged_to_padded(counts, x, width) for k, x in flats.items() if k != "__mask"}
            mask = np.arange(width)[None, :] < counts[:, None]
            if "__mask" in flats:
                mask &= np.nan_to_num(jagged_to_padded(counts, flats["__mask"], width)) != 0
        shape = (n, width)
        feats = {k: raw[k] if k in raw else np.full(shape, float(v)) for k, v in spec.features.items()}
        if "E" not in feats and "E" in self.schema.object_names:
            feats["E"] = energy_from_mass(feats["pt"], feats["eta"], feats["mass"])
            sources["E"] = sources.get("mass", "mass")
        defaults = {"jet": {"is_lepton": 0.0, "charge": 0.0}, "lepton": {"is_lepton": 1.0, "btag": 0.0}}
        for k, v in defaults.get(spec.kind or "", {}).items():
            feats.setdefault(k, np.full(shape, v))
        feats.pop("mass", None)
        return ObjectGroup(feats, mask, sources)

    def _block(self, batch: Any, path: str, first: int) -> EventBlock:
        p, s = self.params, self.schema
        n = batch.num_rows
        groups = [self._group(batch, g, spec, path, first) for g, spec in p.objects.items()]
        packed = pack_objects(s, groups, path, first)
        self.counters["truncated"] += packed.truncated
        if p.globals is not None:
            globals_ = np.stack([self._scalar(batch, p.globals[k], first, path) for k in s.global_names], 1)
            bad = ~np.isfinite(globals_)
            if bad.any():
                row, j = np.argwhere(bad)[0]
                raise HepfmError(f"{path}: column '{p.globals[s.global_names[j]]}' is NaN or inf in row {first + row}")
            globals_ = globals_.astype(np.float32)
        else:
            met = self._value(batch, p.met, n, first, path)
            met_phi = self._value(batch, p.met_phi, n, first, path)
            for key, values in (("met", met), ("met_phi", met_phi)):
                if not np.isfinite(values).all():
                    row = int(np.flatnonzero(~np.isfinite(values))[0])
                    raise HepfmError(f"{path}: column '{getattr(p, key)}' is NaN or inf in row {first + row}")
            globals_ = compute_globals(s, packed.objects, packed.mask, met, met_phi)
        weights = np.ones(n, np.float32) if p.weight is None else self._value(batch, p.weight, n, first, path)
        if not np.isfinite(weights).all():
            row = int(np.flatnonzero(~np.isfinite(weights))[0])
            raise HepfmError(f"{path}: column '{p.weight}' is NaN or inf in row {first + row}")
        targets: dict[str, np.ndarray] = {}
        if p.process is not None:
            targets["process"] = self._process(batch, path, first)
        for r, daughters in p.assignments.items():
            cols = list(daughters.values())
            idx = np.stack([self._integers(batch, c, path, first) for c in cols], 1)
            new, lost = remap_indices(packed, idx, path, ", ".join(cols), first)
            self.counters["lost_assignments"] += lost
            targets[assignment_target(r)] = new.astype(np.int16)
        for name, t in self._targets().items():
            if t.column:
                targets[name] = self._scalar(batch, t.column, first, path).astype(t.dtype)
            else:
                cols = t.columns or []
                targets[name] = np.stack([self._scalar(batch, c, first, path) for c in cols], 1).astype(t.dtype)
        return EventBlock(packed.objects, packed.mask, globals_, weights.astype(np.float32), targets)

    def _integers(self, batch: Any, col: str, path: str, first: int) -> np.ndarray:
        values = self._scalar(batch, col, first, path)
        if (values != np.round(values)).any():
            row = int(np.flatnonzero(values != np.round(values))[0])
            raise HepfmError(f"{path}: column '{col}' holds {values[row]} in row {first + row}, not an integer index")
        return values.astype(np.int64)

    def _process(self, batch: Any, path: str, first: int) -> np.ndarray:
        pa = require("pyarrow", self.name)
        pc = require("pyarrow.compute", self.name)
        p = self.params
        names = list(p.processes or [])
        arr = batch.column(p.process)
        t = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            labels = pc.index_in(arr, value_set=pa.array(names, type=t))
            if labels.null_count:
                row = int(np.flatnonzero(np.asarray(labels.is_null()))[0])
                raise HepfmError(
                    f"{path}: column '{p.process}' holds '{arr[row].as_py()}' in row {first + row}, "
                    f"not one of processes {names}"
                )
            return np.asarray(labels.to_numpy(zero_copy_only=False), np.int32)
        labels = self._integers(batch, p.process, path, first)
        bad = (labels < 0) | (labels >= len(names))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise HepfmError(
                f"{path}: column '{p.process}' holds label {labels[row]} in row {first + row}, "
                f"outside 0..{len(names) - 1} (processes: {', '.join(names)})"
            )
        return labels.astype(np.int32)
