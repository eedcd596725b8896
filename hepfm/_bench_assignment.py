"""Speed of the assignment head and of the ONNX export, measured on a trained run's events.

    python -m hepfm._bench_assignment RUN --data STORE [--events 2048] [--batch-size 256] [--json OUT]

* decoding: events/s of the scaled head (tuples over the batch's real multiplicity M, exact
  two-resonance search) against the dense form it replaced (tuples over the padded N, the joint
  search over each resonance's top tuples with ``search_budget`` combinations), for scoring
  (forward) and for decoding separately, and how often the dense search's answer differs from the
  exact one;
* ONNX: events/s of ONNX Runtime (graph plus ``decode_assignments``) against torch (``encode``
  plus every head's ``predict``) on the same batches, both on one thread.

Timings are wall-clock on whatever else the machine runs: compare the figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .batch import Batch
from .checkpoint import load_model
from .store import EventLoader, EventStore, SplitSpec
from .tasks import load_task, task_selection

__all__ = ["bench_decoding", "bench_onnx"]


def _batches(run: Path, data: str | os.PathLike, n_events: int, batch_size: int) -> list[Batch]:
    store = EventStore.open(data)
    task = load_task(Path(run) / "task.yaml")
    loader = EventLoader(store, "all", batch_size, shuffle=False, split_spec=SplitSpec(),
                         selection=task_selection(task, store.schema))  # fmt: skip
    out, seen = [], 0
    for batch in loader:
        out.append(batch)
        seen += len(batch)
        if seen >= n_events:
            break
    return out


def _timed(fn, repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


@torch.no_grad()
def bench_decoding(run: str | os.PathLike, data: str | os.PathLike, n_events: int = 2048, batch_size: int = 256,
                   repeats: int = 3) -> dict[str, Any]:  # fmt: skip
    """Scaled against dense assignment scoring and decoding, events/s (best of ``repeats``)."""
    from hepfm_builtin._assignment import _valid_tuples
    from hepfm_builtin._assignment_decode import _decode_joint, tuple_objects

    model = load_model(run, weights="ema")
    key, head = next((k, h) for k, h in model.heads.items() if h.name == "assignment")
    batches = _batches(Path(run), data, n_events, batch_size)
    latents = [model.encode(b) for b in batches]
    n = sum(len(b) for b in batches)
    t_fwd, outs = _timed(lambda: [head(lat, b) for lat, b in zip(latents, batches, strict=True)], repeats)
    t_dec, preds = _timed(lambda: [head.predict(o) for o in outs], repeats)

    def dense_forward():
        res = []
        for lat, b in zip(latents, batches, strict=True):
            mask = lat.mask
            if head.lepton_index is not None:
                mask = mask & (b.objects[..., head.lepton_index] < 0.5)
            lps = []
            for r in head.names:
                score = head.scorers[r](lat.objects).reshape(mask.shape[0], -1)
                valid = _valid_tuples(mask, head.groups[r])
                lps.append(torch.log_softmax(score.masked_fill(~valid, -1e9), -1).masked_fill(~valid, float("-inf")))
            res.append(lps)
        return res

    t_dfwd, dense = _timed(dense_forward, repeats)
    big_n = batches[0].mask.shape[1]
    objs = [tuple_objects(big_n, len(head.groups[r])) for r in head.names]
    t_ddec, dense_picks = _timed(lambda: [_decode_joint(lps, objs, head.params.search_budget) for lps in dense],
                                 repeats)  # fmt: skip
    differ = feasible_n = 0
    for pred, (picks, feasible) in zip(preds, dense_picks, strict=True):
        other = torch.zeros_like(feasible)
        for i, r in enumerate(head.names):
            mine = pred[f"objects/{r}"]
            theirs = objs[i][picks[i]]
            other |= ~(mine.sort(-1).values == theirs.sort(-1).values).all(-1)
        differ += int((other & feasible).sum())
        feasible_n += int(feasible.sum())
    m = [int(o["index"].shape[1]) for o in outs]
    return {
        "head": key,
        "events": n,
        "batch_size": batch_size,
        "padded_n": big_n,
        "batch_multiplicity_m": {"min": min(m), "max": max(m), "mean": float(np.mean(m))},
        "scaled_forward_events_per_s": n / t_fwd,
        "dense_forward_events_per_s": n / t_dfwd,
        "scaled_decode_events_per_s": n / t_dec,
        "dense_decode_events_per_s": n / t_ddec,
        "dense_decoding_differs_from_exact": differ / max(feasible_n, 1),
    }


def bench_onnx(run: str | os.PathLike, data: str | os.PathLike, n_events: int = 2048, batch_size: int = 256,
               repeats: int = 3, workdir: str | os.PathLike | None = None) -> dict[str, Any]:  # fmt: skip
    """ONNX Runtime (graph plus decoding) against torch on the same batches, one thread each."""
    import tempfile

    import onnxruntime as ort

    from ._onnx_export import decode_assignments, export_onnx, onnx_metadata

    torch.set_num_threads(1)
    model = load_model(run, weights="ema")
    batches = _batches(Path(run), data, n_events, batch_size)
    n = sum(len(b) for b in batches)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(run, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = onnx_metadata(path)
        names = [o.name for o in session.get_outputs()]
        feeds = [{"objects": b.objects.numpy(), "mask": b.mask.numpy(), "globals": b.globals.numpy()} for b in batches]

        def run_ort(decode: bool):
            for f in feeds:
                out = dict(zip(names, session.run(names, f), strict=True))
                if decode:
                    decode_assignments(out, meta)

        def run_torch():
            with torch.no_grad():
                for b in batches:
                    lat = model.encode(b)
                    for h in model.heads.values():
                        h.predict(h(lat, b))

        t_ort, _ = _timed(lambda: run_ort(True), repeats)
        t_graph, _ = _timed(lambda: run_ort(False), repeats)
        t_torch, _ = _timed(run_torch, repeats)
    return {
        "events": n,
        "batch_size": batch_size,
        "onnxruntime_events_per_s": n / t_ort,
        "onnxruntime_graph_only_events_per_s": n / t_graph,
        "torch_events_per_s": n / t_torch,
        "threads": 1,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.add_argument("--events", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    result = {
        "decoding": bench_decoding(a.run, a.data, a.events, a.batch_size, a.repeats),
        "onnx": bench_onnx(a.run, a.data, a.events, a.batch_size, a.repeats),
        "load_average": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
