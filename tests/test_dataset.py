"""Datasets of many stores (hepfm/store/_dataset.py), shards on Dask and merging (hepfm/shards.py), remote stores."""

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, assert_one_line_error
from test_convert import PARQUET_MAP, parquet_table

from hepfm import StoreError
from hepfm.generate import generate_store
from hepfm.schema import EventSchema
from hepfm.shards import merge_stores
from hepfm.store import MANIFEST, EventDataset, EventLoader, EventStore, open_data
from hepfm.tasks import load_task

MIX = {"toy_signal": 0.5, "toy_background": 0.5}
GEN = ("toy_signal", "toy_background", "--generator", "synthetic")


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    a = generate_store(MIX, 3000, d / "a.zarr", seed=1, chunk_events=500)
    b = generate_store(MIX, 2100, d / "b.zarr", seed=2, chunk_events=300)
    return a, b


def _ids(arrays):
    """An event's identity: the bytes of its objects and globals (unique for these continuous toys)."""
    return [o.tobytes() + g.tobytes() for o, g in zip(arrays["objects"], arrays["globals"], strict=True)]


def test_two_stores_every_event_once_per_epoch_across_2_ranks_x_2_workers(two_stores):
    a, b = two_stores
    ds = open_data([a.path, b.path])
    assert isinstance(ds, EventDataset) and ds.n_events == 5100
    everything = set(_ids(ds.read(0, ds.n_events)))
    assert len(everything) == 5100
    per_split = {}
    for split in ("train", "val", "test"):
        seen = []
        for rank in range(2):
            loader = EventLoader(ds, split, 64, True, 7, num_workers=2, rank=rank, world_size=2)
            loader.set_epoch(3)
            seen += [i for batch in loader for i in _ids({"objects": batch.objects.numpy(),
                                                          "globals": batch.globals.numpy()})]  # fmt: skip
        assert len(seen) == len(set(seen)) == sum(b - a for a, b in ds.segments(split))
        per_split[split] = set(seen)
    assert set.union(*per_split.values()) == everything  # the splits partition the dataset
    # the split of an event does not depend on the ranks or workers: one process, no workers, same sets
    for split, ids in per_split.items():
        single = [i for batch in EventLoader(ds, split, 100, False) for i in _ids(
            {"objects": batch.objects.numpy(), "globals": batch.globals.numpy()})]  # fmt: skip
        assert set(single) == ids
    # each store keeps its own split: the dataset's val split is the union of the stores' val splits
    val_ab = [i for st in (a, b) for s0, s1 in st.segments("val") for i in _ids(st.read(s0, s1))]
    assert set(val_ab) == per_split["val"]


def test_merged_statistics_equal_one_store_of_all_events(two_stores, tmp_path):
    a, b = two_stores
    ds = open_data([a.path, b.path])
    one = merge_stores([a.path, b.path], tmp_path / "merged.zarr")
    assert one.n_events == 5100
    for part in ("objects", "globals"):
        for feature, st in one.attrs["stats"][part].items():
            for key, value in st.items():
                assert ds.attrs["stats"][part][feature][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (
                    part,
                    feature,
                    key,
                )
    np.testing.assert_array_equal(one.read(0, 5100)["objects"], ds.read(0, 5100)["objects"])
    # reads that span the two stores
    np.testing.assert_array_equal(ds.read(2990, 3010)["globals"], one.read(2990, 3010)["globals"])


def test_dataset_paths_globs_folders_and_refusals(two_stores, tmp_path, cli):
    a, b = two_stores
    folder = a.path.parent
    assert open_data(str(folder / "*.zarr")).sources == open_data([a.path, b.path]).sources
    assert open_data(folder).n_events == 5100  # a folder of stores
    assert isinstance(open_data(a.path), EventStore)  # one store is the store itself
    small = EventSchema(max_objects=12)
    narrow = generate_store(MIX, 600, tmp_path / "narrow.zarr", seed=4, chunk_events=300, schema=small)
    task = ROOT / "tasks" / "demo_classify.yaml"
    cases = [
        ([a.path, narrow.path], ("narrow.zarr", "'schema'")),
        ([a.path, a.path], ("a.zarr", "listed twice")),
        ([tmp_path / "nothing*.zarr"], ("nothing*.zarr", "no event store matches")),
        ([tmp_path / "empty"], ("empty", "neither an event store nor a folder")),
    ]
    (tmp_path / "empty").mkdir()
    for data, needles in cases:
        args = [x for d in data for x in ("--data", d)]
        r = cli("finetune", task, *args, "--out", tmp_path / "run", "--set", "model.preset=tiny")
        assert_one_line_error(r, *needles)
        assert not (tmp_path / "run").exists()


def test_stores_of_different_processes_read_as_one_numbering(two_stores, tmp_path):
    """One store per sample: the dataset's processes are their union, labels renumbered into it."""
    a, _ = two_stores
    bkg = generate_store({"toy_background": 1.0}, 600, tmp_path / "bkg.zarr", seed=4, chunk_events=300)
    assert bkg.processes == ["toy_background"] and a.processes.index("toy_background") == 1
    ds = open_data([bkg.path, a.path])  # the first store's processes come first
    assert ds.processes == ["toy_background", "toy_signal"]
    own = a.read(0, a.n_events, ["targets/process"])["targets/process"]
    labels = ds.read(0, ds.n_events, ["targets/process"])["targets/process"]
    assert (labels[:600] == 0).all() and labels.dtype == own.dtype
    names = np.array(a.processes)[own]  # every event keeps its process name
    assert (np.array(ds.processes)[labels[600:]] == names).all() and (labels[600:] != own).any()
    chunks = np.concatenate([c["targets/process"] for c in ds.iter_chunks(["targets/process"])])
    np.testing.assert_array_equal(chunks, labels)
    # the store's own attribute is left as it was
    assert a.processes == ["toy_signal", "toy_background"] and bkg.read(0, 5)["targets/process"].max() == 0


def test_topologies_merge_where_they_agree_and_a_conflict_names_its_key(two_stores):
    """A store written by an older hepfm lacks newer descriptive keys; a real conflict is one line."""
    a, b = (EventStore.open(s.path) for s in two_stores)
    a.topology = {"assignment": {"slots": ["t_b", "tbar_b"]}}
    b.topology = {"assignment": {"slots": ["t_b", "tbar_b"], "truth_masses": {"mass_lb": [0, 250]}}}
    ds = EventDataset([a, b])
    assert ds.topology == {"assignment": {"slots": ["t_b", "tbar_b"], "truth_masses": {"mass_lb": [0, 250]}}}
    assert a.topology == {"assignment": {"slots": ["t_b", "tbar_b"]}}  # the store's own is not touched
    b.topology = {"assignment": {"slots": ["tbar_b", "t_b"]}}
    with pytest.raises(StoreError, match=r"b.zarr: attribute 'topology.assignment.slots' differs from .*a.zarr"):
        EventDataset([a, b])


def test_training_on_a_glob_of_stores_and_embedding_it(two_stores, tmp_path, cli):
    a, _ = two_stores
    glob = str(a.path.parent / "*.zarr")
    sets = ["model.preset=tiny", "train.max_steps=6", "train.val_every=6", "train.batch_size=64",
            "train.val_batches=2"]  # fmt: skip
    r = cli("finetune", ROOT / "tasks" / "demo_classify.yaml", "--data", glob, "--out", tmp_path / "run",
            *[x for s in sets for x in ("--set", s)])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    task = load_task(tmp_path / "run" / "task.yaml")
    assert task.dataset.params["path"] == glob
    r = cli("embed", tmp_path / "run", "--data", glob, "--out", tmp_path / "lat.zarr")
    assert r.exit_code == 0, r.stderr
    import zarr

    assert zarr.open_group(tmp_path / "lat.zarr", mode="r").attrs["n_events"] == 5100


def _serial_and_sharded_equal(serial, folder):
    ds = open_data(folder)
    one = EventStore.open(serial)
    x, y = one.read(0, one.n_events), ds.read(0, ds.n_events)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_dask_generation_with_2_workers_equals_the_serial_run(tmp_path, cli):
    r = cli("generate", *GEN, "-n", 2600, "--chunk-events", 200, "--seed", 9, "--out", tmp_path / "serial.zarr")
    assert r.exit_code == 0, r.stderr
    r = cli("generate", *GEN, "-n", 2600, "--chunk-events", 200, "--seed", 9, "--out", tmp_path / "shards",
            "--executor", "dask", "--workers", 2, "--shard-events", 700)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "shards" / MANIFEST).read_text())
    assert manifest["n_events"] == [800, 800, 800, 200]  # shards of whole chunks: 700 -> 4 chunks of 200
    _serial_and_sharded_equal(tmp_path / "serial.zarr", tmp_path / "shards")
    # a complete folder is not rewritten; merge makes one store of it, identical to the serial one
    r = cli("generate", *GEN, "-n", 2600, "--chunk-events", 200, "--seed", 9, "--out", tmp_path / "shards",
            "--executor", "local")  # fmt: skip
    assert_one_line_error(r, "shards", "already exists")
    r = cli("merge", tmp_path / "shards", "--out", tmp_path / "merged.zarr")
    assert r.exit_code == 0, r.stderr
    _serial_and_sharded_equal(tmp_path / "serial.zarr", tmp_path / "merged.zarr")


def test_killed_dask_client_resumes_without_duplicates(tmp_path):
    """SIGKILL the whole process group (client, scheduler, workers) once some shards are complete; rerun."""
    args = [*GEN, "-n", 40_000, "--chunk-events", 500, "--seed", 11, "--param", "met_resolution=5"]
    generate_store(MIX, 40_000, tmp_path / "serial.zarr", seed=11, chunk_events=500, generator="synthetic",
                   params={"met_resolution": 5})  # fmt: skip
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "hepfm", "generate", *map(str, args), "--out", str(out), "--executor", "dask",
           "--workers", "2", "--shard-events", "1000"]  # fmt: skip
    env = {**os.environ, "HEPFM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [p for p in out.glob("shard-*.zarr") if json.loads((p / "zarr.json").read_text())["attributes"].get(
            "complete")] if out.exists() else []  # fmt: skip
        if len(done) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists(), "the run finished before the kill; the test proves nothing"
    assert len(done) >= 3
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, *(f"shard-{k:05d}.zarr" for k in range(40))]
    _serial_and_sharded_equal(tmp_path / "serial.zarr", out)


def test_sharded_conversion_one_shard_per_input(tmp_path, cli):
    (tmp_path / "map.yaml").write_text(PARQUET_MAP)
    for k, n in enumerate((300, 200)):
        table, *_ = parquet_table(n, seed=k)
        pq.write_table(table, tmp_path / f"in{k}.parquet", row_group_size=64)
        r = cli("convert", tmp_path / f"in{k}.parquet", "--format", "parquet", "--map", tmp_path / "map.yaml",
                "--out", tmp_path / f"one{k}.zarr")  # fmt: skip
        assert r.exit_code == 0, r.stderr
    r = cli("convert", tmp_path / "in0.parquet", tmp_path / "in1.parquet", "--format", "parquet", "--map",
            tmp_path / "map.yaml", "--out", tmp_path / "shards", "--executor", "dask", "--workers", 2)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    for k in (0, 1):
        x = EventStore.open(tmp_path / f"one{k}.zarr").read(0, (300, 200)[k])
        y = EventStore.open(tmp_path / "shards" / f"shard-{k:05d}.zarr").read(0, (300, 200)[k])
        for name in x:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    assert open_data(tmp_path / "shards").n_events == 500


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_store_served_over_http_is_inspected_and_trained_on(http_root, cli):
    root, url = http_root
    local = generate_store(MIX, 2000, root / "web.zarr", seed=5, chunk_events=250)
    r = cli("inspect", f"{url}/web.zarr", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n_events"] == 2000 and summary["bytes_on_disk"] is None
    remote = EventStore.open(f"{url}/web.zarr")
    np.testing.assert_array_equal(remote.read(0, 2000)["objects"], local.read(0, 2000)["objects"])
    sets = ["model.preset=tiny", "train.max_steps=4", "train.val_every=4", "train.batch_size=64",
            "train.val_batches=2", "train.num_workers=1"]  # fmt: skip
    r = cli("finetune", ROOT / "tasks" / "demo_classify.yaml", "--data", f"{url}/web.zarr", "--out",
            root / "run", *[x for s in sets for x in ("--set", s)])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert (root / "run" / "checkpoints" / "best.safetensors").is_file()
    # a missing store, and a scheme whose package is not installed: one line each
    assert_one_line_error(cli("inspect", f"{url}/missing.zarr"), "missing.zarr", "no readable Zarr v3 event store")
    assert_one_line_error(cli("inspect", "s3://bucket/events.zarr"), "s3://bucket/events.zarr", "s3fs")


def test_shard_folders_and_exports_follow_the_output_policy(tmp_path, cli, two_stores):
    """A second writer of a shard folder is refused; an export never replaces another kind of output."""
    out = tmp_path / "shards"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(tmp_path / ".shards.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = cli("generate", *GEN, "-n", 400, "--chunk-events", 100, "--out", out, "--executor", "local")
        assert_one_line_error(r, "shards", "another hepfm process is writing it")
    finally:
        holder.kill()
        holder.wait()
    assert cli("generate", *GEN, "-n", 400, "--chunk-events", 100, "--out", out, "--executor", "local").exit_code == 0
    # predict, ONNX and model-folder exports refuse to replace an event store or a user's folder
    a, _ = two_stores
    from hepfm._hf_export import export_model_folder
    from hepfm._outputs import prepare_output

    with pytest.raises(Exception, match="is a hepfm event store, not a hepfm model folder"):
        export_model_folder(tmp_path / "no-run", a.path, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="a folder that hepfm did not write"):
        prepare_output(tmp_path / "mine", "model-folder", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert prepare_output(out, "shards", overwrite=True) == "overwrite"
