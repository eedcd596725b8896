"""Score SPANet and hepfm jet-parton assignments on the same test events, SPANet's way.

Run with hepfm's venv (h5py, numpy, pyarrow), e.g.

    OMP_NUM_THREADS=1 python spanet/score.py \
        --spanet RUN/spanet/version_0/predict_test.h5 --hepfm spanet/hepfm_pred.parquet

Truth: TARGETS/{t,tbar}/{b,q1,q2} of --test-h5 (rows = --test-index store indices, ascending).
--spanet: spanet.predict output of that same test.h5 (same rows, TARGETS/<top>/<daughter>, or
  SpecialKey.Targets/<top>/<daughter> as SPANet 2.1.1 writes it under Python 3.11).
--hepfm: `hepfm predict RUN --data data/ttbar_allhad_h5.zarr --out X.parquet` (every store event;
rows are picked by event_index = the test indices; columns <head>_<top>_<daughter>).

Definitions (SPANet's evaluator, spanet/dataset/evaluator.py):
  a top is matched when its b, q1, q2 all have a jet (index >= 0); a predicted top is right for a
  true top when b == b and {q1, q2} == {q1, q2}; t <-> tbar is a symmetry (best of both orders).
  event purity  = among events with both tops matched (all six daughters), the fraction where both
                  predicted tops are right (SPANet's "2t" row; hepfm's eff_matchable);
  top purity    = right tops / matched tops, best t<->tbar order per event,
                  "full": over events with both tops matched (SPANet's "2t" row, t_purity),
                  "all":  over every event (SPANet's "*t" row; hepfm's pair_purity).
Jet multiplicity: non-lepton objects (hepfm's n_jet) by default; --multiplicity objects counts every
object of INPUTS/Source/MASK (SPANet's num_vectors, what spanet.test bins on). Errors: binomial.
"""

from __future__ import annotations

import argparse
import re
import sys

import h5py
import numpy as np

DAUGHTERS = ("b", "q1", "q2")


def read_truth(path: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        tops = sorted(f["TARGETS"].keys())
        truth = {r: np.stack([f[f"TARGETS/{r}/{d}"][...] for d in DAUGHTERS], 1).astype(np.int64) for r in tops}
        mask = f["INPUTS/Source/MASK"][...].astype(bool)
        lep = f["INPUTS/Source/is_lepton"][...] > 0.5 if "is_lepton" in f["INPUTS/Source"] else np.zeros_like(mask)
    return truth, mask.sum(1), (mask & ~lep).sum(1)


def read_spanet(path: str, tops: list[str], n: int) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        # SPANet 2.1.1's predict.py names groups with f"{SpecialKey.Targets}", which Python >= 3.11
        # formats as "SpecialKey.Targets" (3.10 and older: "TARGETS"); accept both.
        group = next((g for g in ("TARGETS", "SpecialKey.Targets") if g in f), None)
        if group is None:
            sys.exit(f"{path}: no TARGETS group (has {list(f)})")
        missing = [r for r in tops if r not in f[group]]
        if missing:
            sys.exit(f"{path}: no {group}/{missing[0]} (has {list(f[group])})")
        pred = {r: np.stack([f[f"{group}/{r}/{d}"][...] for d in DAUGHTERS], 1).astype(np.int64) for r in tops}
    if len(next(iter(pred.values()))) != n:
        sys.exit(f"{path}: {len(next(iter(pred.values())))} rows, test file has {n}")
    return pred


def read_hepfm(path: str, tops: list[str], index: np.ndarray, head: str | None) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    cols = table.column_names
    if head is None:
        heads = {m.group(1) for c in cols if (m := re.fullmatch(rf"(.+)_{tops[0]}_b", c))}
        if len(heads) != 1:
            sys.exit(f"{path}: cannot tell the assignment head from columns {heads or cols[:20]}; pass --hepfm-head")
        head = heads.pop()
    need = ["event_index"] + [f"{head}_{r}_{d}" for r in tops for d in DAUGHTERS]
    miss = [c for c in need if c not in cols]
    if miss:
        sys.exit(f"{path}: missing columns {miss}")
    ev = table.column("event_index").to_numpy()
    pos = {int(e): i for i, e in enumerate(ev)}
    absent = [int(i) for i in index if int(i) not in pos]
    if absent:
        sys.exit(f"{path}: {len(absent)} test events missing (first event_index {absent[0]})")
    rows = np.array([pos[int(i)] for i in index])
    return {
        r: np.stack([table.column(f"{head}_{r}_{d}").to_numpy()[rows] for d in DAUGHTERS], 1).astype(np.int64)
        for r in tops
    }


def top_right(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[n] bool: b equal and {q1, q2} equal as sets."""
    return (pred[:, 0] == true[:, 0]) & (np.sort(pred[:, 1:], 1) == np.sort(true[:, 1:], 1)).all(1)


def per_event(pred: dict, truth: dict, tops: list[str]):
    """Matched [n, 2], best number of right matched tops [n] (best t<->tbar order)."""
    assert len(tops) == 2, tops
    a, b = tops
    m = np.stack([(truth[a] >= 0).all(1), (truth[b] >= 0).all(1)], 1)
    straight = top_right(pred[a], truth[a]) & m[:, 0], top_right(pred[b], truth[b]) & m[:, 1]
    swapped = top_right(pred[a], truth[b]) & m[:, 1], top_right(pred[b], truth[a]) & m[:, 0]
    best = np.maximum(straight[0].astype(int) + straight[1], swapped[0].astype(int) + swapped[1])
    return m, best


def frac(k: float, n: float) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    return p, float(np.sqrt(p * (1 - p) / n))


def score(pred, truth, tops, mult, bins):
    m, best = per_event(pred, truth, tops)
    full = m.all(1)
    rows = []
    for name, sel in bins:
        s = sel(mult)
        n, nf = int(s.sum()), int((s & full).sum())
        ev = frac(int(((best == 2) & s & full).sum()), nf)
        tp_full = frac(int((best * (s & full)).sum()), 2 * nf)
        tp_all = frac(int((best * s).sum()), int((m.sum(1) * s).sum()))
        rows.append((name, n, nf, ev, tp_full, tp_all))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test-h5", default="spanet/test.h5")
    p.add_argument("--test-index", default="spanet/test_index.npy")
    p.add_argument("--spanet", help="spanet.predict output h5 on --test-h5")
    p.add_argument("--hepfm", help="hepfm predict output (.parquet) on data/ttbar_allhad_h5.zarr")
    p.add_argument("--hepfm-head", default=None, help="assignment head key (default: found from the columns)")
    p.add_argument("--multiplicity", choices=("jets", "objects"), default="jets")
    p.add_argument(
        "--truth-store",
        default=None,
        help="optional: check test.h5 truth against this store's targets/assignment (hepfm venv)",
    )
    a = p.parse_args()

    truth, n_obj, n_jet = read_truth(a.test_h5)
    tops = list(truth)
    index = np.load(a.test_index)
    n = len(n_obj)
    if len(index) != n:
        sys.exit(f"{a.test_index}: {len(index)} indices, {a.test_h5} has {n} rows")
    mult = n_jet if a.multiplicity == "jets" else n_obj
    lo = int(mult.min())
    bins = [
        ("all", lambda x: np.ones(len(x), bool)),
        (f"<={max(lo, 6)}", lambda x: x <= max(lo, 6)),
        ("7", lambda x: x == 7),
        (">=8", lambda x: x >= 8),
    ]
    print(
        f"test events: {n}; tops {tops}; multiplicity = {a.multiplicity} "
        f"(n_obj != n_jet in {int((n_obj != n_jet).sum())} events; min {lo})"
    )
    if a.truth_store:
        from hepfm.store import EventStore

        s = EventStore.open(a.truth_store)
        zattrs = __import__("json").load(open(f"{a.truth_store}/zarr.json"))["attributes"]
        slots = zattrs["topology"]["assignment"]["slots"]
        cols = [slots.index(f"{r}_{d}") for r in tops for d in DAUGHTERS]
        t = np.concatenate([s.read(int(i), int(i) + 1, ["targets/assignment"])["targets/assignment"] for i in index])
        ok = np.array_equal(t[:, cols].astype(np.int64), np.concatenate([truth[r] for r in tops], 1))
        print(f"truth of {a.test_h5} == {a.truth_store} targets/assignment slots {[slots[c] for c in cols]}: {ok}")

    models = []
    if a.spanet:
        models.append(("SPANet", read_spanet(a.spanet, tops, n)))
    if a.hepfm:
        models.append(("hepfm", read_hepfm(a.hepfm, tops, index, a.hepfm_head)))
    if not models:
        sys.exit("give --spanet and/or --hepfm")

    hdr = (
        f"{'model':8} {'n_jet':6} {'events':>7} {'full':>6} {'full%':>6}  {'event purity':>15}  "
        f"{'top purity (full)':>17}  {'top purity (all)':>16}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, pred in models:
        for b, nn, nf, ev, tpf, tpa in score(pred, truth, tops, mult, bins):
            print(
                f"{name:8} {b:6} {nn:7d} {nf:6d} {100 * nf / max(nn, 1):5.1f}%  {ev[0]:7.4f} ± {ev[1]:.4f}  "
                f"{tpf[0]:8.4f} ± {tpf[1]:.4f}  {tpa[0]:7.4f} ± {tpa[1]:.4f}"
            )
        print("-" * len(hdr))
    print(
        "event purity: both tops right among events with all six daughters matched ('full'); top purity "
        "(full): right tops / 2 per full event; top purity (all): right matched tops / matched tops, all events"
    )


if __name__ == "__main__":
    main()
