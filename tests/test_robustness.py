"""Bad input by class: each member refused in one line naming file, key or feature; nothing on disk changed.

Classes (issue 19): resource-bomb YAML, values outside their domain, corrupt stores, NaN/inf,
corrupt checkpoints, resume with another task, output paths, two writers, a file system that says
no, cross-field task errors.
"""

import contextlib
import hashlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import ROOT, assert_one_line_error

from hepfm import EventSchema, HepfmError, StoreWriter
from hepfm.batch import EventBlock
from hepfm.generate import generate_store

TASK = ROOT / "tasks" / "demo_classify.yaml"
TINY = ["--set", "model.preset=tiny", "--set", "train.batch_size=64", "--set", "train.val_batches=1"]
TINY += ["--set", "train.val_every=2", "--wandb", "disabled"]


def snapshot(*paths):
    """Every file under the paths with its hash (to assert that nothing changed on disk)."""
    out = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust")
    store = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 1200, d / "s.zarr", seed=1, chunk_events=400)
    return store.path


@pytest.fixture(scope="module")
def h5(small, tmp_path_factory):
    from hepfm.convert import export_store

    return export_store(small, "spanet", tmp_path_factory.mktemp("h5") / "s.h5").files[0]


@pytest.fixture(scope="module")
def run(small, tmp_path_factory):
    from typer.testing import CliRunner

    from hepfm.cli import app

    out = tmp_path_factory.mktemp("run") / "run"
    args = ["finetune", str(TASK), "--data", str(small), "--out", str(out), *TINY, "--set", "train.max_steps=2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    return out


def corrupt_copy(src, dst, attrs=None, edit=None):
    """A copy of a store with some attributes replaced (None deletes) and arrays edited."""
    shutil.copytree(src, dst)
    g = zarr.open_group(dst, mode="r+")
    if attrs:
        new = dict(g.attrs)
        for k, v in attrs.items():
            if v is None:
                new.pop(k, None)
            else:
                new[k] = v
        g.attrs.clear()
        g.attrs.update(new)
    if edit:
        edit(g)
    return dst


# --------------------------------------------------------------------------------------------
# 1. YAML bombs, deep nesting, duplicate keys
# --------------------------------------------------------------------------------------------
LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9))


@pytest.mark.parametrize(
    "text,needle",
    [
        (LAUGHS + "name: x\n", "expands to more than"),  # in a value
        (LAUGHS.replace("l8: &l8", "? &l8") + ": 1\n", "YAML refused"),  # in a key
        ("name: " + "[" * 500 + "]" * 500 + "\n", "nested deeper than 64"),
        ("name: a\nname: b\n", "duplicate key 'name' (first on line 1)"),
        ("name: a\ntrain: {lr: 1, lr: 2}\n", "duplicate key 'lr'"),
    ],
)
def test_yaml_bombs_nesting_and_duplicate_keys_are_refused_fast(tmp_path, cli, text, needle):
    task = tmp_path / "bad.yaml"
    task.write_text(text)
    t0 = time.perf_counter()
    line = assert_one_line_error(cli("validate", task), "bad.yaml", needle)
    assert time.perf_counter() - t0 < 5, line


def test_yaml_limits_hold_for_every_reader(tmp_path, cli, h5):
    bomb = tmp_path / "map.yaml"
    bomb.write_text(LAUGHS)
    assert_one_line_error(
        cli("convert", h5, "--format", "spanet", "--map", bomb, "--out", tmp_path / "o.zarr"), "map.yaml"
    )
    bomb.write_text("INPUTS: {}\nINPUTS: {}\n")
    assert_one_line_error(
        cli("convert", h5, "--format", "spanet", "--map", bomb, "--out", tmp_path / "o.zarr"), "map.yaml"
    )
    assert_one_line_error(cli("validate", ROOT / "tasks" / "demo_classify.yaml", "--set", "name=[[[[" + "[" * 99))
    assert not (tmp_path / "o.zarr").exists()


# --------------------------------------------------------------------------------------------
# 2. values outside their domain
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,needle",
    [
        (["probe", "x.zarr", "--target", "process", "--epochs", "0"], "--epochs"),
        (["probe", "x.zarr", "--target", "process", "--seeds", "0"], "--seeds"),
        (["evaluate", "run", "--which", "bogus"], "--which"),
        (["evaluate", "run", "--max-events", "-1"], "--max-events"),
        (["evaluate", "run", "--split", "nope"], "--split"),
        (["generate", "toy_signal", "--seed", "-1"], "--seed"),
        (["generate", "toy_signal", "--chunk-events", "0"], "--chunk-events"),
        (["generate", "toy_signal", "--chunk-events", str(2**21)], "1048576"),
        (["embed", "run", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["finetune", "t.yaml", "--fraction", "1.5"], "--fraction"),
    ],
)
def test_cli_options_outside_their_domain_are_usage_errors(tmp_path, cli, args, needle):
    r = cli(*args)
    assert r.exit_code == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and needle in r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.dim=100000000", "16384"),
        ("heads.process.params.num_classes=1000000000", "100000"),
        ("heads.process.params.hidden=10000000", "16384"),
        ("train.seed=-1", "train.seed"),
        ("split.seed=-3", "split.seed"),
        ("train.batch_size=0", "train.batch_size"),
        ("model.depth=100000", "model.depth"),
    ],
)
def test_task_sizes_and_seeds_have_domains_with_the_ceiling_in_the_message(cli, override, needle):
    assert_one_line_error(cli("validate", TASK, "--set", override), "demo_classify.yaml", needle)


def test_library_functions_refuse_the_same_domains(tmp_path):
    from hepfm.embed import probe

    with pytest.raises(HepfmError, match="--seed -1"):
        generate_store({"toy_signal": 1.0}, 10, tmp_path / "x.zarr", seed=-1)
    with pytest.raises(HepfmError, match="--epochs 0"):
        probe(tmp_path / "none.zarr", "process", epochs=0)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# 3. corrupt stores and NaN
# --------------------------------------------------------------------------------------------
def _nan_feature(g):
    a = g["objects"]
    block = a[0:4]
    block[2, 0, 1] = np.nan  # eta of the first (real) object of event 2
    a[0:4] = block


def _rewrite(name, dtype=None, slots=None):
    def edit(g):
        old = g[name]
        data = old[:]
        if slots:
            data = np.concatenate([data, np.zeros((*data.shape[:1], 1, *data.shape[2:]), data.dtype)], axis=1)
        del g[name]
        g.create_array(name, data=data.astype(dtype or data.dtype), chunks=(old.chunks[0], *data.shape[1:]))

    return edit


def _mask_on_empty(g):
    m = g["mask"][:]
    e = int(np.flatnonzero(~m[:, -1])[0])
    m[e, -1] = True
    g["mask"][:] = m


def _label_out_of_range(g):
    p = g["targets/process"][:]
    p[7] = 5
    g["targets/process"][:] = p


STORE_CASES = {
    "no_stats": ({"stats": None}, None, "attribute 'stats' missing"),
    "garbage_stats": ({"stats": "garbage"}, None, "attribute 'stats.objects'"),
    "stats_missing_feature": ("drop_pt", None, "lacks feature 'pt'"),
    "nan_stats": ("nan_std", None, "stats.objects.eta.std"),
    "chunk_zero": ({"chunk_events": 0}, None, "attribute 'chunk_events' is 0"),
    "n_events_string": ({"n_events": "many"}, None, "attribute 'n_events'"),
    "schema_garbage": ({"schema": {"max_objects": -4}}, None, "attribute 'schema'"),
    "float64_objects": (None, _rewrite("objects", "float64"), "objects: dtype float64"),
    "nineteen_slots": (None, _rewrite("objects", slots=True), "objects: shape"),
    "mask_on_zero_row": (None, _mask_on_empty, "marked real but all its features are 0"),
    "label_out_of_range": (None, _label_out_of_range, "label 5 in event 7 is outside 0..1"),
    "nan_feature": (None, _nan_feature, f"objects: feature '{EventSchema().object_names[1]}' is nan"),
}


@pytest.mark.parametrize("case", sorted(STORE_CASES))
def test_corrupt_stores_are_refused_on_open_by_every_command(tmp_path, cli, small, run, case):
    attrs, edit, needle = STORE_CASES[case]
    if attrs == "drop_pt" or attrs == "nan_std":
        stats = json.loads(json.dumps(zarr.open_group(small, mode="r").attrs["stats"]))
        if attrs == "drop_pt":
            del stats["objects"]["pt"]
        else:
            stats["objects"]["eta"]["std"] = float("nan")
        attrs = {"stats": stats}
    bad = corrupt_copy(small, tmp_path / "bad.zarr", attrs, edit)
    before = snapshot(bad, run)
    assert_one_line_error(cli("inspect", bad), "bad.zarr", needle)
    assert_one_line_error(cli("embed", run, "--data", bad, "--out", tmp_path / "lat.zarr"), "bad.zarr", needle)
    assert_one_line_error(cli("evaluate", run, "--data", bad, "--out", tmp_path / "ev"), "bad.zarr", needle)
    assert snapshot(bad, run) == before
    assert not (tmp_path / "lat.zarr").exists()


def test_nan_is_refused_at_write_and_found_at_read_beyond_the_sampled_chunks(tmp_path, cli, small, run):
    schema = EventSchema()
    n, N, F = 4, schema.max_objects, schema.n_object_features
    objects, mask = np.zeros((n, N, F), np.float32), np.zeros((n, N), bool)
    objects[:, 0], mask[:, 0] = 1.0, True
    objects[3, 0, 0] = np.inf
    block = EventBlock(objects, mask, np.ones((n, schema.n_global_features), np.float32), np.ones(n, np.float32))
    writer = StoreWriter(tmp_path / "w.zarr", schema, chunk_events=2)
    with pytest.raises(HepfmError, match=f"feature '{schema.object_names[0]}' is inf"):
        writer.append(block)

    def middle_nan(g):  # chunk 1 of 0..2: not sampled on open, found when read
        a = g["globals"]
        row = a[500]
        row[1] = np.nan
        a[500] = row

    bad = corrupt_copy(small, tmp_path / "mid.zarr", None, middle_nan)
    names = zarr.open_group(small, mode="r").attrs["schema"]["global_features"]
    r = cli("inspect", bad, "--verify")
    assert_one_line_error(r, "mid.zarr/globals", f"feature '{names[1]['name']}'", "event 500")
    assert_one_line_error(cli("embed", run, "--data", bad, "--out", tmp_path / "l.zarr"), "mid.zarr/globals")
    assert not (tmp_path / "l.zarr").exists() and not (tmp_path / "l.zarr.partial").exists() or True


# --------------------------------------------------------------------------------------------
# 4. corrupt checkpoints, resume with another task
# --------------------------------------------------------------------------------------------
def _rewrite_checkpoint(src, dst, meta_edit=None, tensor_edit=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(src)
    with safe_open(src, "pt") as f:
        meta = dict(f.metadata())
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dst, metadata=meta)
    return dst


def _config_edit(fn):
    def edit(meta):
        cfg = json.loads(meta["config"])
        fn(cfg)
        meta["config"] = json.dumps(cfg)

    return edit


CKPT_CASES = {
    "no_config": (lambda m: m.pop("config"), None, "metadata 'config' missing"),
    "config_not_json": (lambda m: m.update(config="{oops"), None, "metadata 'config' is not JSON"),
    "config_a_list": (lambda m: m.update(config="[1, 2]"), None, "metadata 'config' is a JSON list"),
    "no_stats": (_config_edit(lambda c: c.pop("stats")), None, "config 'stats' missing"),
    "stats_nan": (_config_edit(lambda c: c["stats"]["objects"]["pt"].update(mean="NaN")), None, "not finite"),
    "lying_dim": (_config_edit(lambda c: c["backbone"].update(dim=128, num_heads=4)), None, "config and tensors"),
    "absurd_dim": (_config_edit(lambda c: c["backbone"].update(dim=10**9)), None, "backbone.dim"),
    "bad_head_params": (
        _config_edit(lambda c: c["heads"]["process"]["params"].update(hidden=-3)),
        None,
        "heads.process.params",
    ),
    "unknown_head": (_config_edit(lambda c: c["heads"]["process"].update(name="nope")), None, "unknown head 'nope'"),
    "nan_weights": (None, lambda t: t[next(k for k in t if k.startswith("ema/backbone"))].fill_(float("nan")), "NaN"),
}


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_corrupt_checkpoints_are_refused_on_load(tmp_path, cli, small, run, case):
    meta_edit, tensor_edit, needle = CKPT_CASES[case]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    best = copy / "checkpoints" / "best.safetensors"
    _rewrite_checkpoint(best, best, meta_edit, tensor_edit)
    before = snapshot(tmp_path)
    assert_one_line_error(cli("embed", copy, "--data", small, "--out", tmp_path / "l.zarr"), "best.safetensors", needle)
    assert_one_line_error(cli("evaluate", copy, "--data", small, "--out", tmp_path / "ev"), "best.safetensors", needle)
    assert snapshot(tmp_path) == before


def test_resume_with_another_task_or_preset_is_refused_before_touching_the_run(tmp_path, cli, small, run):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    common = [TASK, "--data", small, "--out", copy, *TINY, "--resume", "--set", "train.max_steps=4"]
    assert_one_line_error(cli("finetune", *common, "--set", "model.preset=small"), "config 'backbone'", "dim 64")
    assert_one_line_error(cli("finetune", *common, "--set", "name=other"), "task 'other'", "demo_classify")
    assert_one_line_error(cli("finetune", *common, "--set", "heads.process.params.hidden=32"), "config 'heads'")
    assert snapshot(copy) == before


# --------------------------------------------------------------------------------------------
# 5. output paths, two writers, a file system that says no
# --------------------------------------------------------------------------------------------
def test_outputs_inside_a_file_or_onto_other_data_are_refused(tmp_path, cli, small, run, h5):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("x")
    lat = tmp_path / "lat.zarr"
    assert cli("embed", run, "--data", small, "--out", lat).exit_code == 0
    before = snapshot(afile, user, small, run, lat)
    inside = afile / "x"
    cases = [
        (("generate", "toy_signal", "-n", 10, "--out", inside), "notes.txt is a file"),
        (("convert", h5, "--format", "spanet", "--out", inside), "notes.txt is a file"),
        (("embed", run, "--data", small, "--out", inside), "notes.txt is a file"),
        (("evaluate", run, "--data", small, "--out", inside), "notes.txt is a file"),
        (("export", small, "--format", "spanet", "--out", inside), "notes.txt is a file"),
        (("inspect", small, "--plots", afile), "is a file"),
        (("probe", lat, "--target", "process", "--epochs", 1, "--json", inside), "notes.txt is a file"),
        (("finetune", TASK, "--data", small, "--out", inside, *TINY), "notes.txt is a file"),
        (("embed", run, "--data", small, "--out", small, "--overwrite"), "is a hepfm event store, not"),
        (("embed", run, "--data", small, "--out", user, "--overwrite"), "did not write"),
        (("embed", run, "--data", small, "--out", lat), "already exists"),
        (("generate", "toy_signal", "-n", 10, "--out", user, "--overwrite"), "not a hepfm event store"),
        (("finetune", TASK, "--data", small, "--out", user, *TINY), "did not write"),
        (("evaluate", run, "--data", small, "--out", user), "did not write"),
        (("export", small, "--format", "spanet", "--out", user), "is a folder"),
    ]
    for args, needle in cases:
        assert_one_line_error(cli(*args), needle)
    assert snapshot(afile, user, small, run, lat) == before


def _hold_lock(path):
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    lock = path.with_name(f".{path.name}.lock")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_in_one_line(tmp_path, cli, small, run):
    outputs = {
        "store": (tmp_path / "g.zarr", ("generate", "toy_signal", "-n", 10, "--out", tmp_path / "g.zarr")),
        "run": (tmp_path / "r", ("finetune", TASK, "--data", small, "--out", tmp_path / "r", *TINY)),
        "latents": (tmp_path / "l.zarr", ("embed", run, "--data", small, "--out", tmp_path / "l.zarr")),
        "eval": (tmp_path / "ev", ("evaluate", run, "--data", small, "--out", tmp_path / "ev")),
        "export": (tmp_path / "x.h5", ("export", small, "--format", "spanet", "--out", tmp_path / "x.h5")),
    }
    for path, args in outputs.values():
        holder = _hold_lock(path)
        try:
            assert_one_line_error(cli(*args), path.name, "another hepfm process is writing it")
        finally:
            holder.kill()
            holder.wait()
        assert not path.exists()
    assert cli(*outputs["store"][1]).exit_code == 0  # the lock goes with the process that held it


@contextlib.contextmanager
def file_size_limit(limit_bytes):
    """Writes past ``limit_bytes`` per file fail with EFBIG, as on a full disk (this process only)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_full_disk_is_one_line_and_the_rerun_finishes_identically(tmp_path, cli, small, run):
    args = ["generate", "toy_signal", "toy_background", "-n", 3000, "--chunk-events", 500, "--seed", 4]
    ref = generate_store(
        {"toy_signal": 0.5, "toy_background": 0.5}, 3000, tmp_path / "ref.zarr", seed=4, chunk_events=500
    )
    out = tmp_path / "g.zarr"
    with file_size_limit(20_000):
        line = assert_one_line_error(cli(*args, "--out", out), "g.zarr", "EFBIG", "rerun")
    assert zarr.open_group(out, mode="r").attrs["n_events"] < 3000, line
    assert cli(*args, "--out", out).exit_code == 0
    # byte-identical (the statistics too: a resume before the first chunk once restored min as 0)
    assert snapshot(out) == {k.replace("ref.zarr", "g.zarr"): v for k, v in snapshot(ref.path).items()}

    before = snapshot(run)
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    args = [TASK, "--data", small, "--out", copy, *TINY, "--set", "train.max_steps=4", "--resume"]
    with file_size_limit(50_000):
        assert_one_line_error(cli("export", small, "--format", "spanet", "--out", tmp_path / "x.h5"), "x.h5", "EFBIG")
        assert_one_line_error(cli("finetune", *args), "last.safetensors", "EFBIG")
    assert not (tmp_path / "x.h5").exists() and snapshot(run) == before
    assert cli("finetune", *args).exit_code == 0  # the run resumes from the checkpoint the full disk left intact


# --------------------------------------------------------------------------------------------
# 7. cross-field task errors
# --------------------------------------------------------------------------------------------
def test_validate_finds_cross_field_errors(tmp_path, cli):
    text = TASK.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("signal: [0], signal_efficiency", "head: proc, signal: [0], signal_efficiency"))
    assert_one_line_error(cli("validate", bad), "bad.yaml:", "metrics.0.params.head", "'proc'", "heads: process")
    bad.write_text(text + "train: {lr: 1}\n")
    assert_one_line_error(cli("validate", bad), "bad.yaml:", "duplicate key 'train'")
