import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_one_line_error, run_python

from hepfm import EventBlock, EventLoader, EventSchema, EventStore, SplitSpec, StoreError, StoreWriter
from hepfm.bench import epoch_peak_rss
from hepfm.store import ArrayWriter, open_arrays, split_segments

TARGETS = {"process": {"dtype": "int32", "shape": []}, "assignment": {"dtype": "int16", "shape": [4]}}


def random_block(rng, n, schema=EventSchema()):
    mask = rng.random((n, schema.max_objects)) < 0.35
    mask[:, 0] = True
    objects = rng.normal(50, 20, (n, schema.max_objects, schema.n_object_features)).astype(np.float32)
    objects[..., :2] = np.abs(objects[..., :2]) + 1
    return EventBlock(
        objects=np.where(mask[..., None], objects, 0).astype(np.float32),
        mask=mask,
        globals=rng.normal(0, 3, (n, schema.n_global_features)).astype(np.float32),
        weights=rng.uniform(0.5, 1.5, n).astype(np.float32),
        targets={
            "process": rng.integers(0, 3, n).astype(np.int32),
            "assignment": rng.integers(-1, 18, (n, 4)).astype(np.int16),
        },
    )


def write(path, blocks, chunk=4096):
    w = StoreWriter(path, EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=chunk)
    for b in blocks:
        w.append(b)
    return w.close()


def test_round_trip_200k_in_fresh_process(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [random_block(rng, n) for n in [5000, 17_000, 3, 40_000, 60_000, 77_997]]  # ragged, 200k total
    assert sum(len(b) for b in blocks) == 200_000
    store = write(tmp_path / "rt.zarr", blocks)
    assert store.n_events == 200_000
    ref = EventBlock.concatenate(blocks)
    np.savez(
        tmp_path / "ref.npz",
        objects=ref.objects,
        mask=ref.mask,
        globals=ref.globals,
        weights=ref.weights,
        process=ref.targets["process"],
        assignment=ref.targets["assignment"],
    )
    code = """
import sys, numpy as np
from hepfm import EventStore
s = EventStore.open(sys.argv[1]); r = np.load(sys.argv[2])
d = s.read(0, s.n_events)
for k, name in [("objects","objects"),("mask","mask"),("globals","globals"),("weights","weights"),
                ("targets/process","process"),("targets/assignment","assignment")]:
    assert d[k].dtype == r[name].dtype, (k, d[k].dtype, r[name].dtype)
    assert np.array_equal(d[k], r[name]), k
print("equal", s.n_events)
"""
    assert "equal 200000" in run_python(code, tmp_path / "rt.zarr", tmp_path / "ref.npz").stdout

    # statistics equal numpy's over the masked values
    stats = store.stats
    for i, name in enumerate(store.schema.object_names):
        values = ref.objects[..., i][ref.mask].astype(np.float64)
        s = stats["objects"][name]
        assert s.count == values.size
        assert s.mean == pytest.approx(values.mean(), rel=1e-5, abs=1e-5)
        assert s.std == pytest.approx(values.std(), rel=1e-5, abs=1e-5)
        assert s.min == pytest.approx(values.min()) and s.max == pytest.approx(values.max())
        lv = np.log1p(np.clip(values, 0, None))
        assert s.log_mean == pytest.approx(lv.mean(), rel=1e-5, abs=1e-5)
        assert s.log_std == pytest.approx(lv.std(), rel=1e-5, abs=1e-5)
    for i, name in enumerate(store.schema.global_names):
        values = ref.globals[:, i].astype(np.float64)
        assert stats["globals"][name].mean == pytest.approx(values.mean(), rel=1e-5, abs=1e-5)
        assert stats["globals"][name].std == pytest.approx(values.std(), rel=1e-5, abs=1e-5)


def test_chunks_are_aligned_and_zstd(tmp_path):
    rng = np.random.default_rng(1)
    store = write(tmp_path / "c.zarr", [random_block(rng, 1000) for _ in range(9)], chunk=2048)
    arr = zarr.open_group(store.path, mode="r")["objects"]
    assert arr.chunks == (2048, 18, 7)
    assert any("zstd" in type(c).__name__.lower() for c in arr.compressors)
    assert arr.nchunks_initialized == 5


def test_array_writer_is_complete_only_after_close_and_replaces_atomically(tmp_path):
    fmt = {"format": "hepfm-test-arrays", "version": 1}
    out = tmp_path / "a.zarr"

    def fill(value):
        w = ArrayWriter(out, fmt, 10, 4)
        w.create("x", (3,), "float32")[:] = np.full((10, 3), value, np.float32)
        w.create("targets/y", (), "int8")[:] = np.arange(10, dtype=np.int8)
        return w

    w = fill(1.0)
    assert w.tmp == tmp_path / "a.zarr.partial" and not out.exists()
    with pytest.raises(StoreError, match="not a complete hepfm thing"):  # a write killed before close
        open_arrays(w.tmp, fmt, "thing")
    assert w.close({"note": "first"}) == out and not w.tmp.exists()
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert list(attrs) == ["hepfm", "note", "complete"]  # the format tag first, complete last
    g = open_arrays(out, fmt, "thing")
    assert g["x"].chunks == (4, 3) and any("zstd" in type(c).__name__.lower() for c in g["x"].compressors)
    assert (g["targets/y"][:] == np.arange(10)).all()

    w = fill(2.0)  # an overwrite: the old output stays readable until the new one is complete
    assert open_arrays(out, fmt, "thing")["x"][0, 0] == 1.0
    w.close({"note": "second"})
    assert open_arrays(out, fmt, "thing")["x"][0, 0] == 2.0 and not (tmp_path / "a.zarr.replaced").exists()
    with pytest.raises(StoreError, match="not a complete hepfm other"):
        open_arrays(out, {"format": "other", "version": 1}, "other")
    with pytest.raises(StoreError, match="no such thing"):
        open_arrays(tmp_path / "missing.zarr", fmt, "thing")


def test_interrupted_write_resumes_to_identical_store(tmp_path):
    rng = np.random.default_rng(2)
    blocks = [random_block(rng, 1500) for _ in range(8)]
    full = write(tmp_path / "full.zarr", blocks, chunk=1024)

    w = StoreWriter(
        tmp_path / "part.zarr", EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=1024
    )
    for b in blocks[:5]:
        w.append(b)
    del w  # "crash": never closed
    with pytest.raises(StoreError, match="'complete' is missing"):
        EventStore.open(tmp_path / "part.zarr")
    # simulate a chunk written after the last checkpoint of n_events
    g = zarr.open_group(tmp_path / "part.zarr", mode="r+")
    done = g.attrs["n_events"]
    assert done == 7168  # whole chunks only
    g["objects"].append(np.ones((1024, 18, 7), np.float32), axis=0)

    w = StoreWriter(
        tmp_path / "part.zarr", EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=1024
    )
    assert w.n_events == done
    rest = EventBlock.concatenate(blocks).take(slice(done, None))
    w.append(rest)
    resumed = w.close()
    a, b = full.read(0, full.n_events), resumed.read(0, resumed.n_events)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for part in ("objects", "globals"):
        for name, st in full.stats[part].items():
            assert resumed.stats[part][name].model_dump() == pytest.approx(st.model_dump(), rel=1e-9)


def test_writer_refuses_bad_blocks_and_keeps_what_was_written(tmp_path):
    rng = np.random.default_rng(3)
    w = StoreWriter(tmp_path / "bad.zarr", EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=500)
    w.append(random_block(rng, 1000))
    bad = random_block(rng, 10)
    bad.objects[4, 0, 2] = np.nan
    with pytest.raises(StoreError) as e:
        w.append(bad)
    msg = str(e.value)
    assert "bad.zarr" in msg and "'objects'" in msg and "'eta'" in msg and "\n" not in msg
    inf = random_block(rng, 10)
    inf.globals[3, 5] = np.inf
    with pytest.raises(StoreError, match="'globals' feature 'ht'"):
        w.append(inf)
    short = random_block(rng, 10)
    short.objects = short.objects[..., :6]
    with pytest.raises(StoreError, match="6 features per object, schema has 7"):
        w.append(short)
    w.append(random_block(rng, 10))
    assert w.close().n_events == 1010


def test_reader_refuses_bad_stores(tmp_path):
    rng = np.random.default_rng(4)
    store = write(tmp_path / "ok.zarr", [random_block(rng, 3000)], chunk=1000)
    other = EventSchema(object_features=EventSchema().object_features[:6])
    with pytest.raises(StoreError, match="'schema' does not match"):
        EventStore.open(store.path, schema=other)
    with pytest.raises(StoreError, match="no such event store"):
        EventStore.open(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match="zarr.json missing"):
        EventStore.open(tmp_path / "empty.zarr")
    with pytest.raises(StoreError, match="nothing was written"):
        StoreWriter(tmp_path / "zero.zarr", EventSchema()).close()
    clashing = {"t": {"dtype": "int16", "shape": [3]}, "t/b": {"dtype": "int16", "shape": []}}
    with pytest.raises(StoreError, match="target 't' and target 't/b' cannot both be stored"):
        StoreWriter(tmp_path / "clash.zarr", EventSchema(), targets=clashing)
    assert not list(tmp_path.glob("*clash.zarr*"))  # refused before anything is written


def test_splits_are_disjoint_deterministic_and_cover():
    spec = SplitSpec(train=0.7, val=0.2, test=0.1, seed=5)
    n = 100_003
    seen = np.zeros(n, int)
    sizes = {}
    for which in ("train", "val", "test"):
        segs = split_segments(n, 4096, spec, which)
        assert segs == split_segments(n, 4096, spec, which)
        for a, b in segs:
            assert a // 4096 == (b - 1) // 4096  # inside one chunk
            seen[a:b] += 1
        sizes[which] = sum(b - a for a, b in segs)
    assert (seen == 1).all()
    assert sizes == {"train": 70_002, "val": 20_001, "test": 10_000}
    small = split_segments(n, 4096, spec, "train", fraction=0.1)
    big = split_segments(n, 4096, spec, "train", fraction=0.3)
    assert sum(b - a for a, b in small) == 7000
    small_idx = np.concatenate([np.arange(a, b) for a, b in small])
    big_idx = np.concatenate([np.arange(a, b) for a, b in big])
    assert np.isin(small_idx, big_idx).all()  # nested subsets
    assert split_segments(n, 4096, SplitSpec(seed=6), "train") != split_segments(n, 4096, SplitSpec(seed=5), "train")


def _event_ids(loader):
    # weights double as unique ids in this store
    return np.concatenate([b.weights.numpy() for b in loader]).astype(np.int64)


@pytest.fixture(scope="module")
def id_store(tmp_path_factory):
    rng = np.random.default_rng(5)
    n = 50_000
    block = random_block(rng, n)
    block.weights = np.arange(n, dtype=np.float32)
    return write(tmp_path_factory.mktemp("ids") / "ids.zarr", [block], chunk=1000)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_epoch_yields_every_event_once(id_store, workers):
    loader = EventLoader(id_store, split="all", batch_size=333, num_workers=workers, seed=1)
    ids = _event_ids(loader)
    assert np.array_equal(np.sort(ids), np.arange(id_store.n_events))
    assert not np.array_equal(ids, np.arange(id_store.n_events))  # shuffled
    loader.set_epoch(1)
    ids2 = _event_ids(loader)
    assert np.array_equal(np.sort(ids2), np.sort(ids)) and not np.array_equal(ids, ids2)


def test_loader_split_and_batch_contents(id_store):
    loader = EventLoader(id_store, split="val", batch_size=256, shuffle=False)
    batches = list(loader)
    assert all(len(b) == 256 for b in batches[:-1])
    b = batches[0]
    assert b.objects.shape[1:] == (18, 7) and b.mask.dtype.is_floating_point is False
    assert set(b.targets) == {"process", "assignment"} and b.targets["assignment"].shape[1:] == (4,)
    ids = _event_ids(batches)
    expected = np.concatenate([np.arange(a, c) for a, c in sorted(id_store.segments("val"))])
    assert np.array_equal(np.sort(ids), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_rank_shards_are_disjoint_and_cover(id_store, workers):
    shards = []
    for rank in range(2):
        loader = EventLoader(
            id_store, split="train", batch_size=100, rank=rank, world_size=2, num_workers=workers, seed=9
        )
        loader.set_epoch(3)
        shards.append(set(_event_ids(loader).tolist()))
    assert not shards[0] & shards[1]
    train = {i for a, b in id_store.segments("train") for i in range(a, b)}
    assert shards[0] | shards[1] == train
    assert abs(len(shards[0]) - len(shards[1])) <= 1000  # about balanced


def test_truncated_chunk_is_reported(tmp_path, cli):
    rng = np.random.default_rng(6)
    store = write(tmp_path / "t.zarr", [random_block(rng, 3000)], chunk=1000)
    chunk = next(p for p in sorted((store.path / "objects").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(StoreError, match="corrupt or truncated"):
        for _ in EventLoader(store.path, split="all", batch_size=500):
            pass
    assert_one_line_error(cli("inspect", store.path, "--verify"), "t.zarr/objects", "corrupt or truncated")
    chunk.unlink()
    assert_one_line_error(cli("inspect", store.path), "t.zarr/objects", "chunks missing")


def test_normaliser_from_store(demo_store):
    norm = demo_store.normaliser()
    batch = next(iter(EventLoader(demo_store, batch_size=4096)))
    x = norm.objects(batch.objects, batch.mask)
    real = x[batch.mask]
    pt = real[:, demo_store.schema.index("pt")]
    assert abs(float(pt.mean())) < 0.1 and abs(float(pt.std()) - 1) < 0.1
    phi = real[:, demo_store.schema.index("phi")]
    assert float(phi.abs().max()) <= 1.0 + 1e-5
    assert (x[~batch.mask] == 0).all()
    back = norm.objects_inverse(x)[batch.mask]
    assert np.allclose(back.numpy(), batch.objects[batch.mask].numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_two_million_event_epoch_peak_rss(tmp_path):
    # random (fast) events; the loader's memory must not grow with the store
    n, chunk = 2_000_000, 8192
    rng = np.random.default_rng(7)
    base = random_block(rng, chunk)
    w = StoreWriter(
        tmp_path / "big.zarr", EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=chunk
    )
    for i in range(n // chunk + 1):
        block = base.take(rng.permutation(chunk))
        w.append(block if i < n // chunk else block.take(slice(0, n % chunk)))
    store = w.close()
    assert store.n_events == n
    raw_bytes = n * (18 * 7 * 4 + 18 + 10 * 4 + 4 + 4 + 8)
    for workers in (0, 2):
        r = epoch_peak_rss(store.path, 1024, workers)
        assert r["events"] == n
        print(json.dumps({"workers": workers, **r}))
        assert r["peak_rss_main"] < 1.5 * 2**30, r
        assert r["peak_rss_worker"] < 1.5 * 2**30, r
        # far below what loading the store whole would take (imports alone are about 240 MB)
        assert max(r["peak_rss_main"], r["peak_rss_worker"]) < 0.6 * raw_bytes, r


def test_resume_refuses_other_settings(tmp_path):
    rng = np.random.default_rng(8)
    w = StoreWriter(tmp_path / "p.zarr", EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=100)
    w.append(random_block(rng, 250))
    with pytest.raises(StoreError, match="'chunk_events' differs"):
        StoreWriter(tmp_path / "p.zarr", EventSchema(), targets=TARGETS, processes=["a", "b", "c"], chunk_events=50)
    done = write(tmp_path / "done.zarr", [random_block(rng, 10)])
    before = sorted(p.name for p in done.path.rglob("*"))
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(done.path, EventSchema(), targets=TARGETS, processes=["a", "b", "c"])
    assert sorted(p.name for p in done.path.rglob("*")) == before
    shutil.rmtree(done.path)
    assert not os.path.exists(done.path)
    assert Path(tmp_path / "p.zarr").exists()
