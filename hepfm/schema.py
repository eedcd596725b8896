"""Event schema: what an event is (objects, mask, globals, targets) and how features are normalised.

The default is EveNet's: up to 18 reconstructed objects with 7 features each (E, pT, eta, phi,
b-tag, is-lepton, charge), padded entries masked, and 10 event-level globals. Names, counts and
normalisations are configurable; a store records the schema it was written with and readers
compare it with the one they expect.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["SCHEMA_VERSION", "Feature", "EventSchema", "FeatureStats"]

SCHEMA_VERSION = 1
Norm = Literal["log_standardise", "standardise", "uniform", "none"]


class Feature(BaseModel):
    """One per-object or per-event feature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    unit: str = ""
    norm: Norm = "standardise"
    description: str = ""


def _f(name: str, unit: str, norm: Norm, description: str) -> Feature:
    return Feature(name=name, unit=unit, norm=norm, description=description)


EVENET_OBJECT_FEATURES = (
    _f("E", "GeV", "log_standardise", "energy"),
    _f("pt", "GeV", "log_standardise", "transverse momentum"),
    _f("eta", "", "standardise", "pseudorapidity"),
    _f("phi", "rad", "uniform", "azimuth in (-pi, pi]"),
    _f("btag", "", "none", "b-tag score (or 0/1 flag); 0 for leptons"),
    _f("is_lepton", "", "none", "1 for an isolated electron or muon, 0 for a jet"),
    _f("charge", "e", "none", "electric charge (leptons), 0 for jets"),
)

EVENET_GLOBAL_FEATURES = (
    _f("met", "GeV", "log_standardise", "missing transverse momentum"),
    _f("met_phi", "rad", "uniform", "azimuth of the missing transverse momentum"),
    _f("n_lepton", "", "standardise", "number of leptons"),
    _f("n_bjet", "", "standardise", "number of b-tagged jets"),
    _f("n_jet", "", "standardise", "number of jets"),
    _f("ht", "GeV", "log_standardise", "scalar sum of jet pT"),
    _f("ht_lep", "GeV", "log_standardise", "scalar sum of lepton pT"),
    _f("m_all", "GeV", "log_standardise", "invariant mass of all visible objects"),
    _f("m_leps", "GeV", "log_standardise", "invariant mass of the leptons"),
    _f("m_bjets", "GeV", "log_standardise", "invariant mass of the b-tagged jets"),
)


class EventSchema(BaseModel):
    """Shape and meaning of the arrays an event store holds.

    Attributes:
        version: Layout version; a store of another version is refused.
        max_objects: Objects kept per event (pT-ordered, padded and masked beyond).
        object_features: Per-object features, in array order.
        global_features: Per-event features, in array order.
        btag_threshold: Score above which a jet counts as b-tagged in the globals.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = SCHEMA_VERSION
    max_objects: int = Field(18, ge=1, le=512)
    object_features: tuple[Feature, ...] = EVENET_OBJECT_FEATURES
    global_features: tuple[Feature, ...] = EVENET_GLOBAL_FEATURES
    btag_threshold: float = 0.5

    @field_validator("object_features", "global_features")
    @classmethod
    def _unique_names(cls, features: tuple[Feature, ...]) -> tuple[Feature, ...]:
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")
        return features

    @property
    def object_names(self) -> list[str]:
        return [f.name for f in self.object_features]

    @property
    def global_names(self) -> list[str]:
        return [f.name for f in self.global_features]

    @property
    def n_object_features(self) -> int:
        return len(self.object_features)

    @property
    def n_global_features(self) -> int:
        return len(self.global_features)

    def index(self, name: str) -> int:
        """Position of an object feature by name."""
        return self.object_names.index(name)

    def differences(self, other: EventSchema) -> list[str]:
        """Differences that make ``self`` (what a store has) incompatible with ``other`` (what is expected)."""
        out = []
        if self.version != other.version:
            out.append(f"version: has {self.version}, expected {other.version}")
        if self.max_objects != other.max_objects:
            out.append(f"max_objects: has {self.max_objects}, expected {other.max_objects}")
        if self.object_names != other.object_names:
            out.append(f"object_features: has {self.object_names}, expected {other.object_names}")
        if self.global_names != other.global_names:
            out.append(f"global_features: has {self.global_names}, expected {other.global_names}")
        return out


class FeatureStats(BaseModel):
    """Normalisation statistics of one feature, computed streaming over the real (unmasked) entries.

    ``log_mean``/``log_std`` are of ``log1p(max(x, 0))`` and are used by ``log_standardise``.
    """

    model_config = ConfigDict(extra="forbid")

    count: int
    mean: float
    std: float
    min: float
    max: float
    log_mean: float
    log_std: float
