"""Delphes ROOT trees -> events: jets, electrons and muons as objects, MissingET, the ten globals.

Branch names are ``<collection><separator><field>``, by default Delphes' own (``Jet.PT``,
``Electron.Charge``, ``MissingET.MET``); ``rename`` maps any of them to another name. Reading is
done with uproot, ``step`` events at a time, branch by branch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from hepfm import EventBlock, EventSchema, HepfmError, compute_globals
from hepfm.components import Params
from hepfm.sdk import ObjectGroup, SourceInfo, energy_from_mass, jagged_to_padded, pack_objects, require

ELECTRON_MASS = 0.000511  # GeV
MUON_MASS = 0.105658  # GeV
NEEDED = ("E", "pt", "eta", "phi", "btag", "is_lepton", "charge")

# collection role -> Delphes field names read from it
_FIELDS = {
    "jet": ("PT", "Eta", "Phi", "Mass", "BTag"),
    "electron": ("PT", "Eta", "Phi", "Charge"),
    "muon": ("PT", "Eta", "Phi", "Charge"),
    "missing_et": ("MET", "Phi"),
}


class DelphesConverter:
    """Delphes ROOT files (``Delphes`` tree) -> objects (jets, electrons, muons) and globals.

    Jets: E from pT, eta and mass; b-tag from one bit of ``BTag``; charge 0. Electrons and muons:
    E from pT, eta and the lepton mass; ``is_lepton`` 1, their charge, b-tag 0. Objects are merged,
    pT-ordered, and cut at the schema's ``max_objects``. Globals are computed from the objects and
    MissingET. No selection is applied beyond what the Delphes card did.
    """

    name: ClassVar[str] = "delphes"
    description: ClassVar[str] = "Delphes ROOT trees: Jet, Electron, Muon, MissingET (needs hepfm[ingest])"
    kind: ClassVar[str] = "converter"

    class Params(Params):
        tree: str = Field("Delphes", description="name of the TTree")
        jet: str = Field("Jet", description="jet collection (branch prefix)")
        electron: str | None = Field("Electron", description="electron collection; null to skip electrons")
        muon: str | None = Field("Muon", description="muon collection; null to skip muons")
        missing_et: str = Field("MissingET", description="missing-transverse-momentum collection")
        separator: str = Field(".", description="between collection and field: Jet.PT ('.') or Jet_PT ('_')")
        btag_bit: int = Field(0, ge=0, le=31, description="bit of Jet.BTag that marks a b-tag (Delphes bitNumber)")
        weight: str | None = Field(None, description="per-event weight branch, e.g. Event.Weight (first entry)")
        rename: dict[str, str] = Field(
            default_factory=dict, description="Delphes branch name -> name in your file, e.g. {Jet.PT: jet_pt}"
        )

    def __init__(self, params: Params, schema: EventSchema) -> None:
        missing = [f for f in NEEDED if f not in schema.object_names]
        if missing:
            raise HepfmError(f"converter 'delphes' needs object features {missing} in the schema")
        self.params, self.schema = params, schema
        self.counters: Counter = Counter()

    # -- names ----------------------------------------------------------------------------------
    def branches(self) -> dict[tuple[str, str], str]:
        """(role, Delphes field) -> branch name in the file."""
        p = self.params
        collections = {"jet": p.jet, "electron": p.electron, "muon": p.muon, "missing_et": p.missing_et}
        out = {}
        for role, fields in _FIELDS.items():
            collection = collections[role]
            if collection is None:
                continue
            for f in fields:
                name = f"{collection}{p.separator}{f}"
                out[(role, f)] = p.rename.get(name, name)
        if p.weight is not None:
            out[("event", "Weight")] = p.rename.get(p.weight, p.weight)
        return out

    def _open(self, path: str) -> tuple[Any, Any, dict[tuple[str, str], Any]]:
        uproot = require("uproot", self.name)
        try:
            f = uproot.open(path, array_cache=None)  # uproot's default keeps up to 100 MB of arrays read
        except Exception as exc:
            raise HepfmError(f"{path}: not a readable ROOT file ({type(exc).__name__}: {exc})") from None
        try:
            tree = f[self.params.tree]
        except Exception:
            trees = [k.split(";")[0] for k, v in f.classnames().items() if v in ("TTree", "ROOT::RNTuple")]
            f.close()
            raise HepfmError(
                f"{path}: no tree '{self.params.tree}' (trees: {', '.join(trees) or 'none'}); set 'tree' in --map"
            ) from None
        if not isinstance(tree, uproot.behaviors.TTree.TTree):
            f.close()
            raise HepfmError(f"{path}: '{self.params.tree}' is a {type(tree).__name__}, not a TTree as Delphes writes")
        found = {}
        for key, name in self.branches().items():
            try:
                found[key] = tree[name]
            except Exception:
                f.close()
                raise HepfmError(
                    f"{path}: tree '{self.params.tree}' has no branch '{name}' "
                    f"(set 'separator' or 'rename' in --map if your branches are named differently)"
                ) from None
        return f, tree, found

    # -- protocol -------------------------------------------------------------------------------
    def describe(self, path: str) -> SourceInfo:
        f, tree, _ = self._open(path)
        try:
            return SourceInfo(int(tree.num_entries))
        finally:
            f.close()

    def read(self, paths: list[str], step: int = 8192) -> Iterator[EventBlock]:
        for path in paths:
            f, tree, branches = self._open(path)
            try:
                n = int(tree.num_entries)
                for start in range(0, n, step):
                    stop = min(n, start + step)
                    arrays = {
                        key: b.array(entry_start=start, entry_stop=stop, library="ak") for key, b in branches.items()
                    }
                    yield self._block(arrays, path, start)
            finally:
                f.close()

    # -- one step -------------------------------------------------------------------------------
    def _jagged(self, arrays: dict, role: str, fields: tuple[str, ...], path: str, first: int) -> tuple:
        """Counts and flat float64 values of a collection's fields (same counts for every field)."""
        ak = require("awkward", self.name)
        names = self.branches()
        counts, flats = None, {}
        for f in fields:
            arr = arrays[(role, f)]
            if arr.ndim != 2:
                raise HepfmError(f"{path}: branch '{names[(role, f)]}' is not a per-object (variable-length) branch")
            c = np.asarray(ak.num(arr, axis=1), np.int64)
            if counts is None:
                counts, ref = c, f
            elif not np.array_equal(c, counts):
                ev = int(np.flatnonzero(c != counts)[0])
                raise HepfmError(
                    f"{path}: branch '{names[(role, f)]}' has {c[ev]} entries in event {first + ev}, "
                    f"but '{names[(role, ref)]}' has {counts[ev]} (mismatched lengths)"
                )
            flats[f] = np.asarray(ak.to_numpy(ak.flatten(arr, axis=1)))
        return counts, flats

    def _block(self, arrays: dict, path: str, first: int) -> EventBlock:
        p, s = self.params, self.schema
        names = self.branches()
        groups = []
        counts, v = self._jagged(arrays, "jet", _FIELDS["jet"], path, first)
        width = int(counts.max(initial=0))
        pad = {k: jagged_to_padded(counts, x, width) for k, x in v.items()}
        btag = jagged_to_padded(counts, (v["BTag"].astype(np.int64) >> p.btag_bit) & 1, width)
        mask = np.arange(width)[None, :] < counts[:, None]
        feats = {
            "pt": pad["PT"],
            "eta": pad["Eta"],
            "phi": pad["Phi"],
            "E": energy_from_mass(pad["PT"], pad["Eta"], pad["Mass"]),
            "btag": btag,
            "is_lepton": np.zeros_like(pad["PT"]),
            "charge": np.zeros_like(pad["PT"]),
        }
        src = {"pt": "PT", "eta": "Eta", "phi": "Phi", "E": "Mass", "btag": "BTag"}
        groups.append(ObjectGroup(feats, mask, {k: names[("jet", f)] for k, f in src.items()}))
        for role, lepton_mass in (("electron", ELECTRON_MASS), ("muon", MUON_MASS)):
            if (role, "PT") not in names:
                continue
            counts, v = self._jagged(arrays, role, _FIELDS[role], path, first)
            width = int(counts.max(initial=0))
            pad = {k: jagged_to_padded(counts, x, width) for k, x in v.items()}
            mask = np.arange(width)[None, :] < counts[:, None]
            feats = {
                "pt": pad["PT"],
                "eta": pad["Eta"],
                "phi": pad["Phi"],
                "E": energy_from_mass(pad["PT"], pad["Eta"], lepton_mass),
                "btag": np.zeros_like(pad["PT"]),
                "is_lepton": np.ones_like(pad["PT"]),
                "charge": pad["Charge"],
            }
            src = {"pt": "PT", "eta": "Eta", "phi": "Phi", "charge": "Charge"}
            groups.append(ObjectGroup(feats, mask, {k: names[(role, f)] for k, f in src.items()}))
        packed = pack_objects(s, groups, path, first)
        self.counters["truncated"] += packed.truncated

        counts, v = self._jagged(arrays, "missing_et", _FIELDS["missing_et"], path, first)
        if (counts < 1).any():
            ev = int(np.flatnonzero(counts < 1)[0])
            raise HepfmError(f"{path}: branch '{names[('missing_et', 'MET')]}' is empty in event {first + ev}")
        starts = np.cumsum(counts) - counts
        met, met_phi = v["MET"][starts], v["Phi"][starts]
        for key, values in ((("missing_et", "MET"), met), (("missing_et", "Phi"), met_phi)):
            if not np.isfinite(values).all():
                ev = int(np.flatnonzero(~np.isfinite(values))[0])
                raise HepfmError(f"{path}: branch '{names[key]}' is NaN or inf in event {first + ev}")
        weights = np.ones(len(met), np.float32)
        if ("event", "Weight") in arrays:
            weights = self._weights(arrays[("event", "Weight")], names[("event", "Weight")], path, first)
        globals_ = compute_globals(s, packed.objects, packed.mask, met, met_phi)
        return EventBlock(packed.objects, packed.mask, globals_, weights, {})

    def _weights(self, arr: Any, name: str, path: str, first: int) -> np.ndarray:
        ak = require("awkward", self.name)
        if arr.ndim == 2:
            counts = np.asarray(ak.num(arr, axis=1))
            if (counts < 1).any():
                ev = int(np.flatnonzero(counts < 1)[0])
                raise HepfmError(f"{path}: branch '{name}' is empty in event {first + ev}")
            arr = ak.firsts(arr, axis=1)
        w = np.asarray(ak.to_numpy(arr), np.float64)
        if w.ndim != 1 or not np.isfinite(w).all():
            raise HepfmError(f"{path}: branch '{name}' is not one finite weight per event")
        return w.astype(np.float32)
