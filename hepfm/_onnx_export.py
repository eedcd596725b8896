"""ONNX export of a trained run (``hepfm export RUN --format onnx``) and its assignment decoding.

The graph holds the normalisation, the backbone and every deterministic head, with the run's EMA
weights (``weights``) and a dynamic batch axis. Inputs are raw events in the run's schema:

    objects  float32 [B, N, F]   object features (schema order, not normalised; N = the schema's
                                 max_objects, padding anywhere, as in the store)
    mask     bool    [B, N]      real objects
    globals  float32 [B, G]      global features (schema order, not normalised)

Outputs are named ``HEAD/NAME``: ``process/probabilities`` [B, C] (classification),
``HEAD/values`` [B, K] (regression), ``HEAD/probabilities`` [B, N, S] (segmentation) and, for an
assignment head, ``HEAD/index`` [B, N] (object of each tuple-space position, -1 padding) and
``HEAD/logp/RES`` [B, N**k] (log-probability of each flat tuple, -inf invalid; tuple digits are
positions in ``index``, most significant first). Generative heads (a sampling chain) are not
exported.

The conflict-free choice of tuples is a data-dependent search, so it is not in the graph:
``decode_assignments`` (numpy in, numpy out, the same code the torch model uses) turns those
outputs into final object indices, and ``run_onnx`` runs a session and decodes in one call. The
run's metadata (heads, resonances, daughters, schema) is stored in the model's
``metadata_props`` under ``hepfm`` as JSON (``onnx_metadata``). A C++ user ports ``decode``:
for two resonances, visit the first resonance's tuples best first and take for each the best
second tuple sharing no object, stopping when the next first tuple plus the second's unconstrained
best cannot beat the best pair found.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import HepfmError
from ._outputs import acquire_lock, prepare_output, release_lock
from .batch import Batch
from .checkpoint import load_model

__all__ = ["export_onnx", "decode_assignments", "onnx_metadata", "run_onnx", "is_run_folder"]

INPUTS = ("objects", "mask", "globals")


def _require(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise HepfmError(
            f"ONNX export needs '{name}', which is not installed; install it with: pip install 'hepfm[onnx]'"
        ) from None


def is_run_folder(path: str | os.PathLike) -> bool:
    """A trained run folder (it has checkpoints), as opposed to an event store."""
    return (Path(path) / "checkpoints").is_dir()


class _Graph(nn.Module):
    """The model as a function of raw (objects, mask, globals) with flat, named outputs."""

    def __init__(self, model: nn.Module, names: list[tuple[str, str]]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, objects: torch.Tensor, mask: torch.Tensor, globals_: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = Batch(objects, mask, globals_, torch.ones(objects.shape[0], device=objects.device))
        latents = self.model.encode(batch)
        cache: dict[str, dict[str, torch.Tensor]] = {}
        for key, _ in self.names:
            if key not in cache:
                head = self.model.heads[key]
                raw = head(latents, batch)
                cache[key] = raw if head.name == "assignment" else head.predict(raw)
        return tuple(cache[key][name] for key, name in self.names)


def _outputs(model: nn.Module) -> tuple[list[tuple[str, str]], list[str]]:
    """(head key, output name) pairs the graph returns, and the heads left out."""
    names, skipped = [], []
    for key, head in model.heads.items():
        if hasattr(head, "infer"):
            skipped.append(key)
        elif head.name == "assignment":
            names += [(key, "index")] + [(key, f"logp/{res}") for res in head.names]
        elif head.name == "classification":
            names.append((key, "probabilities"))
        elif head.name == "regression":
            names.append((key, "values"))
        elif head.name == "segmentation":
            names.append((key, "probabilities"))
        else:
            skipped.append(key)
    return names, skipped


def _metadata(model: nn.Module, skipped: list[str]) -> dict[str, Any]:
    cfg = model.checkpoint_config
    assignment = {}
    for key, head in model.heads.items():
        if head.name == "assignment" and key not in skipped:
            assignment[key] = {
                "resonances": {r: list(head.params.resonances[r]) for r in head.names},
                "columns": head.columns,
                "n_columns": head.n_columns,
                "search_budget": head.params.search_budget,
            }
    return {
        "hepfm_version": cfg.get("hepfm_version"),
        "schema": cfg["schema"],
        "heads": {k: {"name": h["name"]} for k, h in cfg["heads"].items() if k not in skipped},
        "processes": cfg.get("processes", []),
        "assignment": assignment,
        "weights": getattr(model, "weights", None),
        "not_exported": skipped,
    }


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike,
    weights: str | None = "ema",
    overwrite: bool = False,
    opset: int = 17,
) -> dict[str, Any]:
    """Write a run's model as ONNX at ``out`` (temp file, then renamed); returns the metadata stored.

    Args:
        run: Run folder (its best checkpoint) or checkpoint file.
        out: The ``.onnx`` file.
        weights: ``ema`` (default), ``raw``, or None for those the run selected its best checkpoint on.
        overwrite: Replace an existing ``out``.
        opset: ONNX opset.
    """
    onnx = _require("onnx")
    out = Path(out)
    prepare_output(out, "file", overwrite)
    model = load_model(run, weights=weights)
    names, skipped = _outputs(model)
    if not names:
        raise HepfmError(f"{run}: no head of this run can be exported (generative heads are not: {skipped})")
    graph = _Graph(model, names).eval()
    s = model.schema
    example = (
        torch.randn(2, s.max_objects, s.n_object_features).abs(),
        torch.arange(s.max_objects)[None].expand(2, -1) < torch.tensor([[3], [5]]),
        torch.randn(2, s.n_global_features).abs(),
    )
    out_names = [f"{k}/{n}" for k, n in names]
    dynamic = {name: {0: "batch"} for name in [*INPUTS, *out_names]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    meta = _metadata(model, skipped)
    for op in ("sinh", "cosh"):  # ONNX has them; the TorchScript exporter lacks the mapping
        torch.onnx.register_custom_op_symbolic(f"aten::{op}", lambda g, x, op=op: g.op(op.capitalize(), x), 9)
    lock = acquire_lock(out)  # one writer per output
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on Python ints concern N and sizes, fixed by the schema; the batch axis is dynamic
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, example, str(tmp), input_names=list(INPUTS), output_names=out_names,
                dynamic_axes=dynamic, opset_version=opset, dynamo=False,
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "hepfm", json.dumps(meta)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        release_lock(lock)
    return meta


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The hepfm metadata of an exported model (heads, resonances, schema)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == "hepfm":
            return json.loads(entry.value)
    raise HepfmError(f"{path}: not an ONNX model exported by hepfm (no 'hepfm' metadata)")


def decode_assignments(outputs: dict[str, np.ndarray], metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """Final object indices from an exported graph's assignment outputs (conflict-free, as in torch).

    Args:
        outputs: The session's outputs by name (``HEAD/index``, ``HEAD/logp/RES``).
        metadata: ``onnx_metadata`` of the model.

    Returns:
        Per assignment head: ``HEAD/objects/RES`` [B, k] int64 (object index per daughter, -1
        unassigned), ``HEAD/assignment`` [B, columns] and ``HEAD/probability`` [B, R].
    """
    from hepfm_builtin._assignment_decode import decode

    result: dict[str, np.ndarray] = {}
    for key, spec in metadata.get("assignment", {}).items():
        index = torch.from_numpy(np.asarray(outputs[f"{key}/index"])).long()
        names = list(spec["resonances"])
        lps = [torch.from_numpy(np.asarray(outputs[f"{key}/logp/{r}"], np.float32)) for r in names]
        ks = [len(spec["resonances"][r]) for r in names]
        tuples, values = decode(lps, ks, index.shape[1], spec["search_budget"])
        assignment = np.full((index.shape[0], spec["n_columns"]), -1, np.int64)
        for r, tup in zip(names, tuples, strict=True):
            objects = torch.where(tup >= 0, index.gather(1, tup.clamp_min(0)), torch.full_like(tup, -1)).numpy()
            result[f"{key}/objects/{r}"] = objects
            assignment[:, spec["columns"][r]] = objects
        result[f"{key}/assignment"] = assignment
        result[f"{key}/probability"] = values.exp().numpy()
    return result


def run_onnx(
    path: str | os.PathLike, objects: np.ndarray, mask: np.ndarray, globals_: np.ndarray, session: Any = None
) -> dict[str, np.ndarray]:
    """Run an exported model with ONNX Runtime and decode its assignments: every output by name."""
    ort = _require("onnxruntime")
    session = session or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        "objects": np.ascontiguousarray(objects, np.float32),
        "mask": np.ascontiguousarray(mask, bool),
        "globals": np.ascontiguousarray(globals_, np.float32),
    }
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds), strict=True))
    return {**outputs, **decode_assignments(outputs, onnx_metadata(path))}
