"""Event selection: a list of cuts such as ``"n_jet >= 4"``, ANDed, applied by the streaming loader.

Each cut is ``FEATURE OP NUMBER``, parsed by a small hand-written grammar (never ``eval``):
FEATURE is an identifier, OP one of ``>=, <=, >, <, ==, !=`` and NUMBER an int or a float
(sign and exponent allowed). A feature is a global of the store's schema, read by name, or one
derived from the objects: ``n_objects``, ``n_jet``, ``n_lepton``, ``n_bjet`` (when not already
globals) and ``lepton_charge_sum``. Whether an event passes depends on that event only, so the
store is never rewritten: the loader skips the events that fail.
"""

from __future__ import annotations

import operator
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ._errors import HepfmError
from .schema import EventSchema

if TYPE_CHECKING:
    from .store import EventStore

__all__ = ["SelectionError", "Selection"]

OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_OP_LIST = ", ".join(OPS)
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_CUT = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*({_NUMBER})\s*")

# derived feature -> object features it needs
_DERIVED: dict[str, tuple[str, ...]] = {
    "n_objects": (),
    "n_jet": ("is_lepton",),
    "n_lepton": ("is_lepton",),
    "n_bjet": ("is_lepton", "btag"),
    "lepton_charge_sum": ("is_lepton", "charge"),
}

_CACHE_SIZE = 8
_MASK_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()


class SelectionError(HepfmError, ValueError):
    """A cut that does not parse or names a feature the schema does not have.

    A ``ValueError`` (so pydantic validators report it) and a ``HepfmError`` (so the command line
    shows it as one line).

    Args:
        index: Position of the offending cut in the list (0-based).
        message: What is wrong, one line.

    Attributes:
        index: Position of the offending cut in the list (0-based).
    """

    def __init__(self, index: int, message: str) -> None:
        self.index = int(index)
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.index, str(self))


@dataclass(frozen=True)
class Selection:
    """Cuts on event features, ANDed; an empty selection passes every event.

    Build with ``Selection.parse(["n_jet >= 4", "n_bjet >= 2"])``.

    Attributes:
        cuts: The cut strings as given.
        terms: Parsed cuts, ``(feature, op, value)`` each.
    """

    cuts: tuple[str, ...] = ()
    terms: tuple[tuple[str, str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.cuts, str):
            raise SelectionError(
                0, f"a selection is a list of cut strings, e.g. [{self.cuts!r}], not the string {self.cuts!r}"
            )
        cuts = tuple(self.cuts)
        terms = []
        for i, cut in enumerate(cuts):
            if not isinstance(cut, str):
                raise SelectionError(i, f"cut {i} is {cut!r}, not a string like 'n_jet >= 4'")
            m = _CUT.fullmatch(cut)
            if m is None:
                raise SelectionError(
                    i, f"bad syntax in cut {cut!r}: expected FEATURE OP NUMBER with OP one of {_OP_LIST}"
                )
            terms.append((m.group(1), m.group(2), float(m.group(3))))
        object.__setattr__(self, "cuts", cuts)
        object.__setattr__(self, "terms", tuple(terms))

    @classmethod
    def parse(cls, cuts: Sequence[str] | None) -> Selection:
        """Parse cut strings of the form ``FEATURE OP NUMBER``.

        Args:
            cuts: Cut strings; ``None`` or an empty list gives the empty selection.

        Returns:
            The selection (features are checked against a schema later, by ``check``).

        Raises:
            SelectionError: A cut is not a string or does not match the grammar (``index`` says which).
        """
        return cls(() if cuts is None else cuts)

    def __bool__(self) -> bool:
        return bool(self.cuts)

    def __str__(self) -> str:
        return " and ".join(self.cuts) if self.cuts else "(no selection)"

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the features the cuts use, each once, in order of first use."""
        return tuple(dict.fromkeys(t[0] for t in self.terms))

    @staticmethod
    def known_features(schema: EventSchema) -> list[str]:
        """Features a selection may use with this schema.

        Every global of the schema, then those derived from the objects: ``n_objects`` (real
        objects), ``n_jet``, ``n_lepton`` (need ``is_lepton``), ``n_bjet`` (needs ``is_lepton``
        and ``btag``; b-tag score above ``schema.btag_threshold``) and ``lepton_charge_sum``
        (needs ``is_lepton`` and ``charge``). A derived name that is also a global is the global.

        Args:
            schema: The event schema of the store.

        Returns:
            Feature names.
        """
        names = list(schema.global_names)
        objects = set(schema.object_names)
        for name, needs in _DERIVED.items():
            if name not in names and all(n in objects for n in needs):
                names.append(name)
        return names

    def check(self, schema: EventSchema) -> None:
        """Raise ``SelectionError`` for the first cut whose feature the schema does not provide."""
        known = self.known_features(schema)
        for i, (feature, _, _) in enumerate(self.terms):
            if feature not in known:
                raise SelectionError(
                    i, f"unknown feature '{feature}' in cut {self.cuts[i]!r}; known: {', '.join(known)}"
                )

    def _values(
        self, feature: str, objects: np.ndarray | None, mask: np.ndarray | None, globals: np.ndarray | None, schema
    ) -> np.ndarray:
        if feature in schema.global_names:
            return globals[:, schema.global_names.index(feature)]
        real = np.asarray(mask, dtype=bool)
        if feature == "n_objects":
            return real.sum(1)
        lep = real & (objects[..., schema.index("is_lepton")] > 0.5)
        if feature == "n_lepton":
            return lep.sum(1)
        if feature == "n_jet":
            return (real & ~lep).sum(1)
        if feature == "n_bjet":
            return (real & ~lep & (objects[..., schema.index("btag")] > schema.btag_threshold)).sum(1)
        if feature == "lepton_charge_sum":
            return (objects[..., schema.index("charge")].astype(np.float64) * lep).sum(1)
        raise SelectionError(self.features.index(feature), f"unknown feature '{feature}'")  # check() runs first

    def mask(
        self, objects: np.ndarray | None, mask: np.ndarray | None, globals: np.ndarray | None, schema: EventSchema
    ) -> np.ndarray:
        """Which events pass every cut.

        Args:
            objects: float [n, N, F] raw object features (may be ``None`` when no cut derives from objects).
            mask: bool [n, N], True for a real object (may be ``None`` likewise).
            globals: float [n, G] raw globals (may be ``None`` when no cut uses a global).
            schema: Schema of the arrays.

        Returns:
            bool [n].

        Raises:
            SelectionError: A cut names a feature this schema does not provide.
        """
        self.check(schema)
        n = next(len(a) for a in (objects, mask, globals) if a is not None)
        keep = np.ones(n, dtype=bool)
        values: dict[str, np.ndarray] = {}
        for feature, op, number in self.terms:
            if feature not in values:
                values[feature] = self._values(feature, objects, mask, globals, schema)
            keep &= OPS[op](values[feature], number)
        return keep

    def _arrays_needed(self, schema: EventSchema) -> list[str]:
        names = []
        if any(f in schema.global_names for f in self.features):
            names.append("globals")
        if any(f not in schema.global_names for f in self.features):
            names += ["objects", "mask"]
        return names

    def store_mask(self, store: EventStore) -> np.ndarray:
        """Which of the store's events pass, read chunk by chunk; cached per (store, cuts).

        Args:
            store: An open ``EventStore`` or ``EventDataset``.

        Returns:
            Read-only bool [store.n_events].

        Raises:
            SelectionError: A cut names a feature the store's schema does not provide (the
                message names the store).
        """
        try:
            self.check(store.schema)
        except SelectionError as exc:
            raise SelectionError(exc.index, f"{store.path}: {exc}") from None
        key = (tuple(store.sources), store.n_events, self.cuts)
        cached = _MASK_CACHE.get(key)
        if cached is not None:
            _MASK_CACHE.move_to_end(key)
            return cached
        if not self:
            out = np.ones(store.n_events, dtype=bool)
        else:
            names = self._arrays_needed(store.schema)
            out = np.empty(store.n_events, dtype=bool)
            start = 0
            for chunk in store.iter_chunks(names):
                part = self.mask(chunk.get("objects"), chunk.get("mask"), chunk.get("globals"), store.schema)
                out[start : start + len(part)] = part
                start += len(part)
        out.setflags(write=False)
        _MASK_CACHE[key] = out
        while len(_MASK_CACHE) > _CACHE_SIZE:
            _MASK_CACHE.popitem(last=False)
        return out
