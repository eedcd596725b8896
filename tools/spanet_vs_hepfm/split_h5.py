"""Cut SPANet train/test HDF5 files out of hepfm's exported file, using hepfm's own split and selection.

Run with hepfm's venv (it needs hepfm, h5py, numpy), from /work:

    OMP_NUM_THREADS=1 python spanet/split_h5.py

The split (train 0.8 / val 0.1 / test 0.1, seed 7) and the selection (n_jet >= 6) come from the
task file through hepfm.tasks.load_task / task_selection, and are evaluated on the store that hepfm
trains on (data/ttbar_allhad_h5.zarr, the round trip of data/ttbar_allhad.h5), exactly as
hepfm.store.EventLoader does: EventStore.segments(split, task.split) -> chunk-aligned ranges, then
Selection.store_mask. Rows of the HDF5 file are rows of that store (checked below).

Writes OUT/train.h5 (train+val events, ascending store index), OUT/test.h5 (test events, ascending),
OUT/train_index.npy, OUT/test_index.npy (store indices of the rows). --max-train/--max-test keep only
the first N rows of each (smoke tests).
"""

from __future__ import annotations

import argparse
import os
import sys

import h5py
import numpy as np

from hepfm.store import EventLoader, EventStore, split_segments
from hepfm.tasks import load_task, task_selection


def split_indices(store: EventStore, spec, which: str) -> np.ndarray:
    segs = split_segments(store.n_events, store.chunk_events, spec, which)
    assert segs == store.segments(which, spec), "split_segments != EventStore.segments"
    if not segs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in segs])


def write_subset(src: str, dst: str, idx: np.ndarray) -> None:
    """Copy every dataset of src, subset along axis 0 to rows idx (ascending), with all attributes."""
    n_rows = None
    tmp = dst + ".partial"
    with h5py.File(src, "r") as fin, h5py.File(tmp, "w") as fout:
        for k, v in fin.attrs.items():
            fout.attrs[k] = v

        def visit(name, obj):
            nonlocal n_rows
            if isinstance(obj, h5py.Group):
                g = fout.require_group(name)
                for k, v in obj.attrs.items():
                    g.attrs[k] = v
                return
            if n_rows is None:
                n_rows = obj.shape[0]
            if obj.shape[0] != n_rows:
                raise SystemExit(f"{src}:{name} has {obj.shape[0]} rows, expected {n_rows}")
            data = obj[...][idx]
            d = fout.create_dataset(name, data=data, compression=obj.compression, compression_opts=obj.compression_opts)
            for k, v in obj.attrs.items():
                d.attrs[k] = v

        fin.visititems(visit)
    os.replace(tmp, dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="tasks/ttbar_allhad.yaml")
    p.add_argument("--store", default="data/ttbar_allhad_h5.zarr", help="the store hepfm trains on")
    p.add_argument("--h5", default="data/ttbar_allhad.h5", help="the exported SPANet file (same rows)")
    p.add_argument("--out", default="spanet")
    p.add_argument("--max-train", type=int, default=0, help="keep only the first N train+val rows (0: all)")
    p.add_argument("--max-test", type=int, default=0, help="keep only the first N test rows (0: all)")
    a = p.parse_args()

    task = load_task(a.task)
    store = EventStore.open(a.store)
    spec = task.split
    selection = task_selection(task, store.schema)
    keep = selection.store_mask(store) if selection is not None else np.ones(store.n_events, bool)
    print(f"task {task.name}: split {spec}, selection {list(selection.cuts) if selection else []}")
    print(f"store {a.store}: {store.n_events} events, chunk {store.chunk_events}, selection keeps {keep.mean():.4f}")

    idx = {w: split_indices(store, spec, w) for w in ("train", "val", "test")}
    sel = {w: np.sort(i[keep[i]]) for w, i in idx.items()}
    for w in ("train", "val", "test"):
        print(f"  {w}: {len(idx[w])} events, {len(sel[w])} after selection")
    all_idx = np.concatenate(list(idx.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == store.n_events, "splits overlap or miss events"

    # cross-check against hepfm's own loader (what hepfm trains / evaluates on)
    for w in ("train", "val", "test"):
        loader = EventLoader(store, w, batch_size=1024, shuffle=False, split_spec=spec, selection=selection)
        n_loader = loader.n_events
        n_iter = sum(len(b.mask) for b in loader) if w == "test" else n_loader
        ok = n_loader == n_iter == len(sel[w])
        print(
            f"  EventLoader({w}, selection): n_events {n_loader}, iterated {n_iter}; ours {len(sel[w])} "
            f"-> {'OK' if ok else 'MISMATCH'}"
        )
        if not ok:
            sys.exit(1)

    train_idx = np.sort(np.concatenate([sel["train"], sel["val"]]))
    test_idx = sel["test"]
    if a.max_train:
        train_idx = train_idx[: a.max_train]
    if a.max_test:
        test_idx = test_idx[: a.max_test]

    # the HDF5 rows are the store's rows: compare objects and targets on the rows we take
    with h5py.File(a.h5, "r") as f:
        n_h5 = f["INPUTS/Source/MASK"].shape[0]
        assert n_h5 == store.n_events, f"{a.h5} has {n_h5} rows, store {store.n_events}"
        pt_col = store.schema.index("pt")
        mask_h5 = f["INPUTS/Source/MASK"][...]
        pt_h5 = f["INPUTS/Source/pt"][...]
        tgt = {r: np.stack([f[f"TARGETS/{r}/{d}"][...] for d in ("b", "q1", "q2")], 1) for r in f["TARGETS"]}
    chk = np.unique(np.concatenate([train_idx[:2000], test_idx]))
    for a0 in range(0, len(chk), 4096):
        rows = chk[a0 : a0 + 4096]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        data = store.read(lo, hi, ["objects", "mask", "targets/assignment"])
        r = rows - lo
        assert np.array_equal(data["mask"][r], mask_h5[rows]), "mask differs between h5 and store"
        assert np.allclose(data["objects"][r, :, pt_col], pt_h5[rows]), "pt differs between h5 and store"
    print(f"  h5 rows == store rows on {len(chk)} checked events (mask, pt)")

    os.makedirs(a.out, exist_ok=True)
    write_subset(a.h5, os.path.join(a.out, "train.h5"), train_idx)
    write_subset(a.h5, os.path.join(a.out, "test.h5"), test_idx)
    np.save(os.path.join(a.out, "train_index.npy"), train_idx)
    np.save(os.path.join(a.out, "test_index.npy"), test_idx)
    full = {
        w: float(np.mean(np.all([(tgt[r][i] >= 0).all(1) for r in tgt], 0)))
        for w, i in (("train", train_idx), ("test", test_idx))
    }
    print(
        f"wrote {a.out}/train.h5 ({len(train_idx)} events), {a.out}/test.h5 ({len(test_idx)} events), "
        f"test_index.npy; fully matched (6 daughters): train {full['train']:.4f}, test {full['test']:.4f}"
    )


if __name__ == "__main__":
    main()
