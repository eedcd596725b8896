"""Built-in datasets: ``zarr`` (an existing event store) and ``synthetic`` (a fast toy generator).

The ``synthetic`` generator is a parametrised toy, not physics: it draws object multiplicities,
kinematics and b-tag scores from simple distributions that differ between a signal-like and a
background-like process, then computes the globals exactly as real data would. It exists for
demos, tests and I/O benchmarks that must run in seconds; physics studies use the ``pythia``
generator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from hepfm import EventBlock, EventSchema, HepfmError, compute_globals, hookimpl
from hepfm.components import Params


class ZarrDataset:
    """An event store written by ``hepfm generate`` or ``hepfm convert``."""

    name: ClassVar[str] = "zarr"
    description: ClassVar[str] = "hepfm Zarr event stores (params: path: a store, URL, glob, shard folder or a list)"
    kind: ClassVar[str] = "store"

    class Params(Params):
        path: str | list[str] = Field(
            description="a *.zarr event store, a URL, a glob, a folder of shard stores, or a list of them"
        )

    def __init__(self, params: Params, schema: EventSchema | None = None) -> None:
        self.params = params
        self.schema = schema

    @classmethod
    def sources(cls, params: Params) -> str | list[str]:
        """Where its events are: ``path``."""
        return params.path

    def open(self):
        """Open the store or stores (checks completeness and, when given, the schema)."""
        from hepfm import open_data

        return open_data(self.params.path, schema=self.schema)


# process -> (lepton multiplicity probabilities 0/1/2, mean extra jets, min jets, b fraction,
#             jet pT scale, lepton pT scale, neutrino pT scale) : a toy, tuned only to look plausible
_PROFILES: dict[str, tuple[tuple[float, float, float], float, int, float, float, float, float]] = {
    "toy_signal": ((0.1, 0.5, 0.4), 1.5, 2, 0.45, 60.0, 45.0, 60.0),
    "toy_background": ((0.7, 0.25, 0.05), 2.0, 2, 0.08, 35.0, 25.0, 20.0),
}


class SyntheticGenerator:
    """Toy events in milliseconds (see module docstring); for tests, demos and benchmarks."""

    name: ClassVar[str] = "synthetic"
    description: ClassVar[str] = "fast toy generator (not physics): toy_signal, toy_background"
    kind: ClassVar[str] = "generator"
    processes: ClassVar[tuple[str, ...]] = tuple(_PROFILES)

    class Params(Params):
        eta_max: float = Field(2.5, gt=0, description="objects are generated within |eta| < eta_max")
        met_resolution: float = Field(10.0, ge=0, description="Gaussian smearing of each MET component, GeV")

    def __init__(self, params: Params, schema: EventSchema) -> None:
        need = {"E", "pt", "eta", "phi", "btag", "is_lepton", "charge"}
        missing = need - set(schema.object_names)
        if missing:
            raise HepfmError(f"generator 'synthetic' needs object features {sorted(missing)} in the schema")
        self.params, self.schema = params, schema

    def targets(self) -> dict[str, dict[str, Any]]:
        return {}

    def generate(self, process: str, n: int, seed: int) -> EventBlock:
        lep_p, mean_jets, min_jets, b_frac, jet_pt, lep_pt, nu_pt = _PROFILES[process]
        rng = np.random.default_rng(seed)
        s, big_n = self.schema, self.schema.max_objects
        n_lep = rng.choice(3, size=n, p=lep_p)
        n_jet = np.minimum(rng.poisson(mean_jets, n) + min_jets, big_n - n_lep)
        n_b = rng.binomial(n_jet, b_frac)
        slot = np.arange(big_n)[None, :]
        is_lep = slot < n_lep[:, None]
        is_jet = (slot >= n_lep[:, None]) & (slot < (n_lep + n_jet)[:, None])
        is_b = is_jet & (slot < (n_lep + n_b)[:, None])
        mask = is_lep | is_jet

        pt = np.where(is_lep, 10.0 + rng.exponential(lep_pt, (n, big_n)), 20.0 + rng.exponential(jet_pt, (n, big_n)))
        eta = np.clip(rng.normal(0.0, 1.2, (n, big_n)), -self.params.eta_max + 1e-3, self.params.eta_max - 1e-3)
        phi = rng.uniform(-np.pi, np.pi, (n, big_n))
        mass = np.where(is_lep, 0.0, pt * rng.uniform(0.05, 0.2, (n, big_n)))
        energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
        btag = np.where(is_b, rng.beta(5.0, 1.5, (n, big_n)), np.where(is_jet, rng.beta(1.0, 8.0, (n, big_n)), 0.0))
        charge = np.where(is_lep, rng.choice([-1.0, 1.0], (n, big_n)), 0.0)

        columns = {"E": energy, "pt": pt, "eta": eta, "phi": phi, "btag": btag, "is_lepton": is_lep, "charge": charge}
        objects = np.zeros((n, big_n, s.n_object_features), np.float32)
        for name, values in columns.items():
            objects[..., s.index(name)] = np.where(mask, values, 0.0)
        order = np.argsort(np.where(mask, -pt, np.inf), axis=1, kind="stable")  # pT-descending, padding last
        objects = np.take_along_axis(objects, order[..., None], axis=1)
        mask = np.take_along_axis(mask, order, axis=1)

        # MET: invisible momentum (toy neutrinos) minus nothing else, plus resolution smearing
        nu = rng.exponential(nu_pt, n)
        nu_phi = rng.uniform(-np.pi, np.pi, n)
        mx = nu * np.cos(nu_phi) + rng.normal(0, self.params.met_resolution, n)
        my = nu * np.sin(nu_phi) + rng.normal(0, self.params.met_resolution, n)
        met, met_phi = np.hypot(mx, my), np.arctan2(my, mx)
        globals_ = compute_globals(s, objects, mask, met, met_phi)
        return EventBlock(objects, mask, globals_, np.ones(n, np.float32), {})


@hookimpl
def hepfm_register_datasets() -> list[type]:
    """Built-in datasets."""
    return [ZarrDataset]


@hookimpl
def hepfm_register_generators() -> list[type]:
    """The toy generator."""
    return [SyntheticGenerator]
