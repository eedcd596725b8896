"""Event schema: what an event is (objects, mask, globals, targets) and how features are normalised.

The default is EveNet's: up to 18 reconstructed objects with 7 features each (E, pT, eta, phi,
b-tag, is-lepton, charge), padded entries masked, and 10 event-level globals. Names, counts and
normalisations are configurable; a store records the schema it was written with and readers
compare it with the one they expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SCHEMA_VERSION",
    "Feature",
    "EventSchema",
    "EventBlock",
    "Batch",
    "FeatureStats",
    "Normaliser",
    "compute_globals",
    "invariant_mass",
]

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


@dataclass
class EventBlock:
    """A block of events as numpy arrays, the unit generators and converters hand to the writer.

    Attributes:
        objects: float32 [n, N, F] raw (unnormalised) object features; zeros where masked.
        mask: bool [n, N], True for a real object.
        globals: float32 [n, G].
        weights: float32 [n] per-event weights.
        targets: name -> array with leading dimension n (process labels, assignments, ...).
    """

    objects: np.ndarray
    mask: np.ndarray
    globals: np.ndarray
    weights: np.ndarray
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EventBlock:
        """Build from the flat dict ``EventStore.read`` returns (``targets/<name>`` keys)."""
        targets = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("targets/")}
        return cls(arrays["objects"], arrays["mask"], arrays["globals"], arrays["weights"], targets)

    def take(self, index: np.ndarray | slice) -> EventBlock:
        """Events selected by an index array or slice (a new block)."""
        return EventBlock(
            objects=self.objects[index],
            mask=self.mask[index],
            globals=self.globals[index],
            weights=self.weights[index],
            targets={k: v[index] for k, v in self.targets.items()},
        )

    @staticmethod
    def concatenate(blocks: list[EventBlock]) -> EventBlock:
        """Join blocks along the event axis (targets must agree in names)."""
        return EventBlock(
            objects=np.concatenate([b.objects for b in blocks]),
            mask=np.concatenate([b.mask for b in blocks]),
            globals=np.concatenate([b.globals for b in blocks]),
            weights=np.concatenate([b.weights for b in blocks]),
            targets={k: np.concatenate([b.targets[k] for b in blocks]) for k in blocks[0].targets},
        )


@dataclass
class Batch:
    """A batch of events as tensors: what models and heads consume.

    Attributes:
        objects: [B, N, F] raw object features (the model normalises them itself).
        mask: [B, N] bool.
        globals: [B, G] raw globals.
        weights: [B].
        targets: name -> tensor with leading dimension B.
    """

    objects: torch.Tensor
    mask: torch.Tensor
    globals: torch.Tensor
    weights: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    def apply(self, fn) -> Batch:
        """A batch with ``fn`` applied to every tensor."""
        return Batch(
            fn(self.objects),
            fn(self.mask),
            fn(self.globals),
            fn(self.weights),
            {k: fn(v) for k, v in self.targets.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on another device."""
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """The same batch in pinned host memory (faster copies to a GPU)."""
        return self.apply(lambda t: t.pin_memory())

    @classmethod
    def from_awkward(cls, events, schema: EventSchema, max_objects: int | None = None) -> Batch:
        """A batch from awkward event records (e.g. built from uproot branches).

        The records need ``objects`` (jagged, one field per object feature), the globals or
        ``met``/``met_phi`` to compute them, and optionally ``weight`` (see ``hepfm._awkward``).

        Example:
            >>> batch = Batch.from_awkward(events, model.schema)  # doctest: +SKIP
        """
        from ._awkward import batch_from_awkward

        return batch_from_awkward(cls, events, schema, max_objects)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray | torch.Tensor]) -> Batch:
        """Build from the flat dict the loader yields (``targets/<name>`` keys for targets)."""

        def tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
            return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))

        targets = {k.split("/", 1)[1]: tensor(v) for k, v in arrays.items() if k.startswith("targets/")}
        return cls(
            tensor(arrays["objects"]),
            tensor(arrays["mask"]),
            tensor(arrays["globals"]),
            tensor(arrays["weights"]),
            targets,
        )


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


def _stat_vectors(stats: dict[str, FeatureStats], features: tuple[Feature, ...]) -> dict[str, torch.Tensor]:
    shift, scale, kinds = [], [], []
    for f in features:
        s = stats[f.name]
        if f.norm == "log_standardise":
            shift.append(s.log_mean)
            scale.append(s.log_std if s.log_std > 0 else 1.0)
        elif f.norm == "standardise":
            shift.append(s.mean)
            scale.append(s.std if s.std > 0 else 1.0)
        elif f.norm == "uniform":
            shift.append(0.5 * (s.max + s.min))
            half = 0.5 * (s.max - s.min)
            scale.append(half if half > 0 else 1.0)
        else:
            shift.append(0.0)
            scale.append(1.0)
        kinds.append(f.norm == "log_standardise")
    return {
        "shift": torch.tensor(shift, dtype=torch.float32),
        "scale": torch.tensor(scale, dtype=torch.float32),
        "log": torch.tensor(kinds, dtype=torch.bool),
    }


class Normaliser(torch.nn.Module):
    """Per-feature normalisation as buffers, so a checkpoint carries the statistics it was trained with.

    ``log_standardise``: (log1p(x) - mu) / sigma; ``standardise``: (x - mu) / sigma;
    ``uniform``: mapped from [min, max] onto [-1, 1]; ``none``: unchanged. Masked objects become 0.
    """

    def __init__(self, schema: EventSchema, stats: dict[str, dict[str, FeatureStats]]) -> None:
        super().__init__()
        for part, features in (("objects", schema.object_features), ("globals", schema.global_features)):
            missing = [f.name for f in features if f.name not in stats.get(part, {})]
            if missing:
                raise ValueError(f"normalisation statistics lack {part} features {missing}")
            for key, value in _stat_vectors(stats[part], features).items():
                self.register_buffer(f"{part}_{key}", value)

    @staticmethod
    def _normalise(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, log: torch.Tensor) -> torch.Tensor:
        x = torch.where(log, torch.log1p(x.clamp_min(0)), x)
        return (x - shift) / scale

    @staticmethod
    def _invert(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, log: torch.Tensor) -> torch.Tensor:
        x = x * scale + shift
        return torch.where(log, torch.expm1(x.clamp(max=30.0)), x)

    def objects(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalise [B, N, F] object features; masked rows are zeroed."""
        y = self._normalise(x, self.objects_shift, self.objects_scale, self.objects_log)
        return y * mask.unsqueeze(-1).to(y.dtype)

    def globals(self, g: torch.Tensor) -> torch.Tensor:
        """Normalise [B, G] globals."""
        return self._normalise(g, self.globals_shift, self.globals_scale, self.globals_log)

    def objects_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Physical object features from normalised ones (for generative heads)."""
        return self._invert(y, self.objects_shift, self.objects_scale, self.objects_log)


def invariant_mass(e: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Invariant mass of the selected objects of each event.

    Args:
        e: [n, N] object energies.
        pt: [n, N] transverse momenta.
        eta: [n, N] pseudorapidities.
        phi: [n, N] azimuths.
        sel: [n, N] bool, which objects enter the sum.

    Returns:
        [n] masses (0 where fewer than one object is selected).
    """
    w = sel.astype(np.float64)
    px = (pt * np.cos(phi) * w).sum(1)
    py = (pt * np.sin(phi) * w).sum(1)
    pz = (pt * np.sinh(eta) * w).sum(1)
    en = (e * w).sum(1)
    return np.sqrt(np.clip(en**2 - px**2 - py**2 - pz**2, 0.0, None))


def compute_globals(
    schema: EventSchema, objects: np.ndarray, mask: np.ndarray, met: np.ndarray, met_phi: np.ndarray
) -> np.ndarray:
    """EveNet's ten globals from reconstructed objects and the missing transverse momentum.

    Args:
        schema: Must contain object features E, pt, eta, phi, btag, is_lepton.
        objects: [n, N, F] raw features.
        mask: [n, N] bool.
        met: [n] missing transverse momentum magnitude.
        met_phi: [n] its azimuth.

    Returns:
        float32 [n, 10] in the order of ``EVENET_GLOBAL_FEATURES``.
    """
    col = {name: objects[..., schema.index(name)].astype(np.float64) for name in ("E", "pt", "eta", "phi")}
    lep = mask & (objects[..., schema.index("is_lepton")] > 0.5)
    jet = mask & ~lep
    bjet = jet & (objects[..., schema.index("btag")] > schema.btag_threshold)
    kin = (col["E"], col["pt"], col["eta"], col["phi"])
    out = np.stack(
        [
            met,
            met_phi,
            lep.sum(1),
            bjet.sum(1),
            jet.sum(1),
            (col["pt"] * jet).sum(1),
            (col["pt"] * lep).sum(1),
            invariant_mass(*kin, mask),
            invariant_mass(*kin, lep),
            invariant_mass(*kin, bjet),
        ],
        axis=1,
    )
    return out.astype(np.float32)
