"""The ``pythia`` generator: Pythia 8 events, FastJet anti-kT jets and a parametric detector.

Physics, not a toy: hard processes, parton showers, multi-parton interactions (off with ``fast``),
hadronisation and decays from Pythia 8; reconstruction and detector response as documented in
docs/pythia.md (``_detector.py`` holds the numbers, ``_pythia_events.py`` the reconstruction and
the truth targets, ``_pythia_processes.py`` the process settings).

This module imports without Pythia or FastJet installed; using the generator without them is one
clear error naming the ``generate`` extra.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from hepfm import EventBlock, EventSchema, HepfmError, compute_globals, hookimpl
from hepfm.components import Params

from ._pythia_events import FEATURES, REQUIREMENTS, SEGMENTS, SLOTS, FlatBatch, reconstruct, select, target_specs
from ._pythia_processes import A_MASSES, PROCESS_NAMES, process_table

#: Events per ``nextBatch`` call: big enough for the batched clustering, small enough for memory.
BATCH_EVENTS = 250
#: A process with a requirement gives up when this many batches in a row have no passing event.
MAX_EMPTY_BATCHES = 40
#: Pythia seeds must lie in 1..900,000,000.
_PYTHIA_SEED_MAX = 900_000_000


def _import_backends() -> tuple[Any, Any]:
    try:
        import pythia8mc  # noqa: I001 (Pythia first: the error names the first missing package)
        import fastjet
    except ImportError as exc:
        raise HepfmError(
            f"generator 'pythia' needs Pythia 8 and FastJet ({exc.name} is not installed); "
            f"install them with: pip install 'hepfm[generate]'"
        ) from None
    fastjet._swig.ClusterSequence.set_fastjet_banner_stream(None)
    return pythia8mc, fastjet


#: Truth-pair masses ``hepfm inspect --plots`` draws (validation/NAME.png): per figure, its title, the slot groups
#: (one object group per resonance), the x range in GeV, and a reference value (0: none) with its label.
TRUTH_MASSES: dict[str, dict[str, Any]] = {
    "mass_w_jj": {
        "title": "$m_{jj}$, truth $W \\to q\\bar{q}'$ jets",
        "groups": [["t_q1", "t_q2"], ["tbar_q1", "tbar_q2"]],
        "range": [0, 200],
        "reference": 80.4,
        "reference_label": "$m_W$",
    },
    "mass_top_bjj": {
        "title": "$m_{bjj}$, truth hadronic-top jets",
        "groups": [["t_b", "t_q1", "t_q2"], ["tbar_b", "tbar_q1", "tbar_q2"]],
        "range": [0, 350],
        "reference": 172.5,
        "reference_label": "$m_t$",
    },
    "mass_lb": {
        "title": "$m_{\\ell b}$, truth $b$ and lepton of one top",
        "groups": [["t_b", "t_l"], ["tbar_b", "tbar_l"]],
        "range": [0, 250],
        "reference": 153.0,
        "reference_label": "endpoint ($m_t^2 - m_W^2)^{1/2}$",
    },
    "mass_a_bb": {
        "title": "$m_{bb}$, truth $b$ jets of one $a$ ($H \\to aa$)",
        "groups": [["a1_b1", "a1_b2"], ["a2_b1", "a2_b2"]],
        "range": [0, 120],
        "reference": 0,
        "reference_label": "",
    },
}


def topology() -> dict[str, Any]:
    """Decay topology of the assignment and segmentation targets, with their symmetries."""
    return {
        "assignment": {
            "target": "assignment",
            "slots": list(SLOTS),
            "unmatched": -1,
            "resonances": {
                "t": {"pdg": 6, "decay": "t -> b W+, W+ -> l+ nu | q qbar'", "slots": ["t_b", "t_l", "t_q1", "t_q2"]},
                "tbar": {
                    "pdg": -6,
                    "decay": "tbar -> bbar W-, W- -> l- nubar | q qbar'",
                    "slots": ["tbar_b", "tbar_l", "tbar_q1", "tbar_q2"],
                },
                "H": {"pdg": 25, "decay": "H -> a1 a2", "slots": ["a1_b1", "a1_b2", "a2_b1", "a2_b2"]},
                "a1": {"pdg": 36, "parent": "H", "decay": "a -> b bbar", "slots": ["a1_b1", "a1_b2"]},
                "a2": {"pdg": 36, "parent": "H", "decay": "a -> b bbar", "slots": ["a2_b1", "a2_b2"]},
            },
            "slot_meaning": {
                "b": "the quark from the top decay (b)",
                "l": "the charged lepton (e or mu) of a leptonic W",
                "q1": "the quark of a hadronic W",
                "q2": "the antiquark of a hadronic W",
                "b1": "the b quark of an a decay",
                "b2": "the anti-b quark of an a decay",
            },
            "symmetries": {
                "all": [[["t_q1", "t_q2"]], [["tbar_q1", "tbar_q2"]], [["a1_b1", "a1_b2"]], [["a2_b1", "a2_b2"]]],
                **{f"haa_4b_ma{m}": [[["a1_b1", "a2_b1"], ["a1_b2", "a2_b2"]]] for m in A_MASSES},
                "ttbar_hadronic": [[["t_b", "tbar_b"], ["t_q1", "tbar_q1"], ["t_q2", "tbar_q2"]]],
            },
            "symmetry_note": (
                "each symmetry is a list of slot swaps applied together; an assignment is equally "
                "correct after any declared swap. 'all' applies to every process, the others to the "
                "process named: a1 <-> a2 for haa_4b_ma*, t <-> tbar only for ttbar_hadronic "
                "(jets carry no charge; with a lepton its charge tells t from tbar)"
            ),
            "process_slots": {
                "ttbar_dilepton": [["t_b", "t_l", "tbar_b", "tbar_l"]],
                "ttbar_semileptonic": [
                    ["t_b", "t_l", "tbar_b", "tbar_q1", "tbar_q2"],
                    ["t_b", "t_q1", "t_q2", "tbar_b", "tbar_l"],
                ],
                "ttbar_hadronic": [["t_b", "t_q1", "t_q2", "tbar_b", "tbar_q1", "tbar_q2"]],
                "single_top": [["t_b", "t_l"], ["tbar_b", "tbar_l"]],
                **{f"haa_4b_ma{m}": [["a1_b1", "a1_b2", "a2_b1", "a2_b2"]] for m in A_MASSES},
            },
            "process_slots_note": "the slots a process fills (one list per decay alternative); all >= 0: matchable",
            "truth_masses": TRUTH_MASSES,
        },
        "segmentation": {
            "target": "segment",
            "classes": list(SEGMENTS),
            "none": -1,
            "note": (
                "the top-level resonance an object was matched to (W and Z by charge and order, H for "
                "H -> WW / bb), except H -> a a where it is the a; -1 for none"
            ),
        },
        "truth_vectors": {
            "components": ["px", "py", "pz", "E"],
            "truth_top": ["t", "tbar"],
            "truth_lepton": ["positive charged lepton", "negative charged lepton"],
            "truth_nu": ["neutrino", "antineutrino"],
            "note": (
                "parton level: the top as it decays, the charged lepton and neutrino as produced "
                "in the W (or Z) decay, before QED radiation; masks say which exist"
            ),
        },
        "flavour": {
            "target": "flavour",
            "values": {"5": "b jet", "4": "c jet", "0": "light jet", "11": "electron", "13": "muon", "-1": "padding"},
        },
    }


class PythiaGenerator:
    """Pythia 8 + FastJet + parametric detector (see module docstring and docs/pythia.md)."""

    name: ClassVar[str] = "pythia"
    description: ClassVar[str] = (
        "Pythia 8 pp events at 13 TeV, anti-kT 0.4 jets, Delphes-ATLAS-like detector, truth targets"
    )
    kind: ClassVar[str] = "generator"
    processes: ClassVar[tuple[str, ...]] = PROCESS_NAMES

    class Params(Params):
        fast: bool = Field(False, description="turn multi-parton interactions off (about 4x faster)")
        ecm: float = Field(13000.0, gt=0, description="proton-proton centre-of-mass energy, GeV")
        qcd_pthat_min: float = Field(50.0, gt=0, description="pT-hat minimum of qcd_multijet, GeV")
        qcd_bb_pthat_min: float = Field(20.0, gt=0, description="pT-hat minimum of qcd_bb, GeV")
        vjets_pthat_min: float = Field(20.0, gt=0, description="pT-hat minimum of wjets and zjets, GeV")
        dimuon_pthat_min: float = Field(
            30.0, gt=0, description="pT-hat minimum of dimuon_continuum and upsilon_mumu, GeV"
        )

    def __init__(self, params: Params, schema: EventSchema) -> None:
        extra = [f for f in schema.object_names if f not in FEATURES]
        missing = [f for f in FEATURES if f not in schema.object_names]
        if missing or extra:
            raise HepfmError(
                f"generator 'pythia' fills object features {', '.join(FEATURES)}; "
                f"the schema {'lacks ' + str(missing) if missing else 'has unknown ' + str(extra)}"
            )
        _import_backends()  # fail here, before a store is created, when the extra is not installed
        self.params, self.schema = params, schema
        self._order = [FEATURES.index(f) for f in schema.object_names]
        self._table = process_table(
            params.qcd_pthat_min, params.qcd_bb_pthat_min, params.vjets_pthat_min, params.dimuon_pthat_min
        )
        self._pythias: dict[tuple[str, int], Any] = {}

    def targets(self) -> dict[str, dict[str, Any]]:
        return target_specs(self.schema.max_objects)

    def topology(self) -> dict[str, Any]:
        return topology()

    # -- Pythia instances ------------------------------------------------------------------------
    def settings(self, process: str, part: int = 0) -> list[str]:
        """The full list of Pythia settings of one part of a process."""
        common = [
            "Print:quiet = on",
            "Next:numberCount = 0",
            f"Beams:eCM = {self.params.ecm}",
            "Random:setSeed = on",
            "Random:seed = 1",
            f"PartonLevel:MPI = {'off' if self.params.fast else 'on'}",
        ]
        return common + list(self._table[process].parts[part])

    def _pythia(self, process: str, part: int):
        """One initialised Pythia per (process, part), kept for the generator's lifetime.

        Reseeding a used instance (``rndm.init(seed)``) gives the same events as a fresh instance
        reseeded the same way, so reuse does not break reproducibility (tests/test_pythia.py).
        """
        key = (process, part)
        if key not in self._pythias:
            pythia8mc, _ = _import_backends()
            pythia = pythia8mc.Pythia("", False)
            for line in self.settings(process, part):
                if not pythia.readString(line):
                    raise HepfmError(f"generator 'pythia', process '{process}': Pythia rejected setting '{line}'")
            if not pythia.init():
                raise HepfmError(f"generator 'pythia', process '{process}': Pythia failed to initialise")
            self._pythias[key] = pythia
        return self._pythias[key]

    # -- events ----------------------------------------------------------------------------------
    def generate(self, process: str, n: int, seed: int) -> EventBlock:
        """``n`` reconstructed events of ``process``; the same (process, n, seed) gives the same bytes."""
        if process not in self._table:
            raise HepfmError(f"generator 'pythia' has no process '{process}'; known: {', '.join(self.processes)}")
        _import_backends()
        parts = self._table[process].parts
        states = np.random.SeedSequence(int(seed)).generate_state(len(parts) + 1)
        rng = np.random.default_rng(states[-1])
        shares = [n // len(parts) + (1 if k < n % len(parts) else 0) for k in range(len(parts))]
        pieces = []
        for part, count in enumerate(shares):
            if count == 0:
                continue
            pythia = self._pythia(process, part)
            pythia.rndm.init(int(states[part]) % (_PYTHIA_SEED_MAX - 1) + 1)
            require = REQUIREMENTS[self._table[process].require] if self._table[process].require else None
            done, failures, empty = 0, 0, 0
            while done < count:
                size = BATCH_EVENTS if require else min(BATCH_EVENTS, count - done)
                batch = pythia.nextBatch(size)
                if len(batch) == 0:
                    failures += 1
                    if failures >= 3:
                        raise HepfmError(f"generator 'pythia', process '{process}': Pythia produced no events")
                    continue
                rec = reconstruct(FlatBatch.from_awkward(batch), rng, self.schema.max_objects)
                if require is not None:  # keep generating until `count` events pass
                    keep = np.flatnonzero(require(rec))[: count - done]
                    empty = 0 if keep.size else empty + 1
                    if empty >= MAX_EMPTY_BATCHES:
                        raise HepfmError(
                            f"generator 'pythia', process '{process}': no event of {empty * size} passed "
                            f"requirement '{self._table[process].require}'"
                        )
                    rec = select(rec, keep)
                pieces.append(rec)
                done += len(rec.mask)
        if not pieces:  # n == 0
            big_n, specs = self.schema.max_objects, self.targets()
            return EventBlock(
                np.zeros((0, big_n, len(FEATURES)), np.float32),
                np.zeros((0, big_n), bool),
                np.zeros((0, self.schema.n_global_features), np.float32),
                np.zeros(0, np.float32),
                {k: np.zeros((0, *v["shape"]), v["dtype"]) for k, v in specs.items()},
            )
        objects = np.concatenate([p.objects for p in pieces])[..., self._order]
        mask = np.concatenate([p.mask for p in pieces])
        met = np.concatenate([p.met for p in pieces])
        met_phi = np.concatenate([p.met_phi for p in pieces])
        weights = np.concatenate([p.weights for p in pieces]).astype(np.float32)
        targets = {k: np.concatenate([p.targets[k] for p in pieces]) for k in pieces[0].targets}
        globals_ = compute_globals(self.schema, objects, mask, met, met_phi)
        block = EventBlock(objects.astype(np.float32), mask, globals_, weights, targets)
        if len(parts) > 1:  # interleave the parts (e.g. both lepton charges of semileptonic ttbar)
            block = block.take(rng.permutation(len(block)))
        return block


@hookimpl
def hepfm_register_generators() -> list[type]:
    """The Pythia 8 generator."""
    return [PythiaGenerator]
