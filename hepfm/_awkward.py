"""Awkward Arrays in and out: events of a store or latents as jagged records, and batches from them.

An event record has ``objects`` (a variable-length list of records, one field per object feature
of the schema: ``E``, ``pt``, ``eta``, ``phi``, ...), one field per global feature (``met``,
``n_jet``, ...), ``weight`` and, where the store has them, the targets (``process``, ...). Objects
are lists without padding; ``Batch.from_awkward`` pads them back (hardest ``pt`` first when more
than the schema's ``max_objects``) and computes missing EveNet globals from the objects and ``met``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._errors import HepfmError

__all__ = ["events_to_awkward", "store_awkward", "latents_awkward", "batch_from_awkward"]


def _ak():
    try:
        import awkward as ak
    except ImportError:  # pragma: no cover - awkward ships with the ingest extra
        raise HepfmError("awkward is not installed: pip install 'hepfm[ingest]' (or awkward)") from None
    return ak


def events_to_awkward(
    schema,
    objects: np.ndarray,
    mask: np.ndarray,
    globals_: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
):
    """Padded arrays ([E, N, F] objects and [E, N] mask) as awkward event records (see module docstring)."""
    ak = _ak()
    counts = mask.sum(1)
    flat = objects[mask]  # real objects, event by event, in slot order
    fields: dict[str, Any] = {
        "objects": ak.unflatten(
            ak.zip({name: flat[:, i] for i, name in enumerate(schema.object_names)}, depth_limit=1), counts
        )
    }
    if globals_ is not None:
        fields.update({name: globals_[:, i] for i, name in enumerate(schema.global_names)})
    if weights is not None:
        fields["weight"] = weights
    for name, value in (extra or {}).items():
        fields[name] = value if value.ndim == 1 else ak.from_numpy(value)
    return ak.zip(fields, depth_limit=1)


def store_awkward(store, start: int = 0, stop: int | None = None):
    """Events ``start:stop`` of an ``EventStore`` (or the path of one) as awkward event records.

    Example:
        >>> events = hepfm.store_awkward("data/ttbar.zarr", 0, 1000)  # doctest: +SKIP
        >>> events.objects.pt[events.n_jet >= 4]  # doctest: +SKIP
    """
    from .store import EventStore

    if isinstance(store, str | os.PathLike):
        store = EventStore.open(store)
    stop = store.n_events if stop is None else min(stop, store.n_events)
    if not 0 <= start <= stop:
        raise HepfmError(f"{store.path}: events {start}:{stop} are outside 0:{store.n_events}")
    data = store.read(start, stop)
    targets = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("targets/")}
    return events_to_awkward(store.schema, data["objects"], data["mask"], data["globals"], data["weights"], targets)


def latents_awkward(path: str | os.PathLike):
    """A latents store (``hepfm embed``) as records: ``event_latent``, jagged ``object_latents``, carried targets."""
    from .embed import open_latents

    ak = _ak()
    g = open_latents(path)
    fields: dict[str, Any] = {}
    names = set(g.array_keys())
    if "event_latents" in names:
        fields["event_latent"] = ak.from_numpy(g["event_latents"][:])
    mask = g["mask"][:].astype(bool) if "mask" in names else None
    for key in sorted(names - {"event_latents", "mask"}):
        value = g[key][:]
        if key.startswith("object_") and mask is not None:  # per object: a list per event, no padding
            fields[key] = ak.unflatten(ak.from_numpy(value[mask]), mask.sum(1))
        else:
            fields[key] = value if value.ndim == 1 else ak.from_numpy(value)
    if not fields:
        raise HepfmError(f"{path}: holds no latents")
    return ak.zip(fields, depth_limit=1)


def batch_from_awkward(cls, events, schema, max_objects: int | None = None):
    """Build a ``Batch`` from awkward event records (see the module docstring)."""
    import torch

    ak = _ak()
    fields = set(ak.fields(events))
    if "objects" not in fields:
        raise HepfmError(f"Batch.from_awkward: events need an 'objects' field (they have {sorted(fields)})")
    objects = events["objects"]
    have = set(ak.fields(objects))
    missing = [n for n in schema.object_names if n not in have]
    if missing:
        raise HepfmError(f"Batch.from_awkward: objects lack the schema's features {missing} (they have {sorted(have)})")
    n_max = max_objects or schema.max_objects
    if "pt" in have:  # keep the hardest objects when there are more than the model's slots
        objects = objects[ak.argsort(objects["pt"], axis=1, ascending=False)]
    objects = objects[:, :n_max]
    counts = ak.to_numpy(ak.num(objects, axis=1))
    n = len(counts)
    mask = np.arange(n_max)[None, :] < counts[:, None]
    padded = np.zeros((n, n_max, len(schema.object_names)), np.float32)
    for i, name in enumerate(schema.object_names):
        padded[..., i][mask] = ak.to_numpy(ak.flatten(objects[name])).astype(np.float32)
    if all(g in fields for g in schema.global_names):
        glob = np.stack([ak.to_numpy(events[g]).astype(np.float32) for g in schema.global_names], 1)
    elif {"met", "met_phi"} <= fields:
        from .physics import compute_globals

        glob = compute_globals(schema, padded, mask, ak.to_numpy(events["met"]), ak.to_numpy(events["met_phi"]))
        if glob.shape[1] != len(schema.global_names):
            raise HepfmError("Batch.from_awkward: give every global feature of this schema as a field")
    else:
        raise HepfmError(
            f"Batch.from_awkward: events need the globals {schema.global_names} or 'met' and 'met_phi' to compute them"
        )
    weights = ak.to_numpy(events["weight"]).astype(np.float32) if "weight" in fields else np.ones(n, np.float32)
    return cls(torch.from_numpy(padded), torch.from_numpy(mask), torch.from_numpy(glob), torch.from_numpy(weights))
