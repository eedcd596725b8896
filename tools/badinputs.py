"""A corpus of bad inputs and faults tried through the ``hepfm`` CLI, counted by outcome.

    PYTHONPATH=.:plugins OMP_NUM_THREADS=1 python tools/badinputs.py [--workdir DIR] [--json OUT]

Each case runs one command (in-process with typer's runner, or in a subprocess where a real
process is needed: a lock holder, a file-size limit, a read-only or full file system) and is
counted as

* ``refused``: non-zero exit, no traceback, one error line (or a usage error), nothing that
  existed before changed on disk;
* ``traceback``: an exception escaped;
* ``accepted``: exit 0 on input that must be refused;
* ``changed``: refused, but a file that existed before was changed or removed;
* ``hang``: ran past the per-case limit (60 s).

The corpus covers: YAML bombs and malformed YAML, values outside their domain (CLI options and
task keys), corrupt stores, NaN/inf, corrupt checkpoints, resume with another task, output paths
(inside a file, onto other data), two writers, a full or read-only file system (tmpfs, when this
process may mount one; else a file-size limit), and cross-field task errors.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tasks" / "demo_classify.yaml"
TINY = ["--set", "model.preset=tiny", "--set", "train.batch_size=64", "--set", "train.val_batches=1"]
TINY += ["--set", "train.val_every=2", "--set", "train.max_steps=2", "--wandb", "disabled"]
ENV = {**os.environ, "HEPFM_PROGRESS": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


class Hang(Exception):
    pass


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def classify(code: int | None, text: str, changed: bool) -> str:
    if code is None:
        return "hang"
    if "Traceback" in text:
        return "traceback"
    if code == 0:
        return "accepted"
    if changed:
        return "changed"
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if len(errors) == 1 or "Invalid value" in text or "Usage:" in text or "Missing" in text:
        return "refused"
    return "traceback"


def run_inprocess(args: list) -> tuple[int | None, str]:
    from typer.testing import CliRunner

    from hepfm import plugins
    from hepfm.cli import app

    plugins.reset()

    def alarm(*_):
        raise Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
        text = r.stdout + r.stderr
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            if isinstance(r.exception, Hang):
                return None, text
            import traceback

            text += "\nTraceback\n" + "".join(traceback.format_exception(r.exception))[-400:]
        return r.exit_code, text
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_subprocess(args: list, preexec=None, timeout: int = 60) -> tuple[int | None, str]:
    try:
        r = subprocess.run(
            [sys.executable, "-m", "hepfm", *map(str, args)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return r.returncode, r.stdout + r.stderr


# --------------------------------------------------------------------------------------------
# fixtures: a store, a run, latents, an exported file
# --------------------------------------------------------------------------------------------
def build_fixtures(w: Path) -> dict[str, Path]:
    from hepfm.convert import export_store
    from hepfm.generate import generate_store

    store = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 1200, w / "s.zarr", seed=1, chunk_events=400)
    code, text = run_inprocess(["finetune", TASK, "--data", store.path, "--out", w / "run", *TINY])
    assert code == 0, text
    code, text = run_inprocess(["embed", w / "run", "--data", store.path, "--out", w / "lat.zarr"])
    assert code == 0, text
    h5 = export_store(store, "spanet", w / "s.h5").files[0]
    return {"store": store.path, "run": w / "run", "lat": w / "lat.zarr", "h5": h5}


def corrupt_store(src: Path, dst: Path, attrs: dict | None = None, edit=None) -> Path:
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


def _set(name, index, value):
    def edit(g):
        a = g[name]
        block = a[index[0] : index[0] + 1]
        block[(0, *index[1:])] = value
        a[index[0] : index[0] + 1] = block

    return edit


def _rewrite(name, dtype=None, slots=False):
    def edit(g):
        old = g[name]
        data = old[:]
        if slots:
            data = np.concatenate([data, np.zeros((data.shape[0], 1, *data.shape[2:]), data.dtype)], axis=1)
        del g[name]
        g.create_array(name, data=data.astype(dtype or data.dtype), chunks=(old.chunks[0], *data.shape[1:]))

    return edit


def _mask_on_empty(g):
    m = g["mask"][:]
    e = int(np.flatnonzero(~m[:, -1])[0])
    m[e, -1] = True
    g["mask"][:] = m


def _delete_chunk(g):
    path = Path(g.store.root) / "objects" / "c" / "1" / "0" / "0"
    path.unlink()


def store_cases(src: Path) -> dict[str, tuple]:
    stats = dict(zarr.open_group(src, mode="r").attrs["stats"])
    drop = json.loads(json.dumps(stats))
    del drop["objects"]["pt"]
    nan_std = json.loads(json.dumps(stats))
    nan_std["objects"]["eta"]["std"] = "NaN"
    neg_std = json.loads(json.dumps(stats))
    neg_std["globals"][next(iter(neg_std["globals"]))]["std"] = -1.0
    return {
        "no_stats": ({"stats": None}, None),
        "garbage_stats": ({"stats": "garbage"}, None),
        "stats_list": ({"stats": [1, 2]}, None),
        "stats_missing_feature": ({"stats": drop}, None),
        "stats_nan": ({"stats": nan_std}, None),
        "stats_negative_std": ({"stats": neg_std}, None),
        "chunk_zero": ({"chunk_events": 0}, None),
        "chunk_negative": ({"chunk_events": -5}, None),
        "chunk_huge": ({"chunk_events": 10**12}, None),
        "n_events_string": ({"n_events": "many"}, None),
        "n_events_too_many": ({"n_events": 5000}, None),
        "no_schema": ({"schema": None}, None),
        "schema_garbage": ({"schema": {"max_objects": -4}}, None),
        "processes_not_list": ({"processes": "ab"}, None),
        "targets_garbage": ({"targets": {"process": "int"}}, None),
        "not_complete": ({"complete": None}, None),
        "version_2": ({"hepfm": {"format": "hepfm-event-store", "version": 2}}, None),
        "float64_objects": (None, _rewrite("objects", "float64")),
        "int_weights": (None, _rewrite("weights", "int32")),
        "nineteen_slots": (None, _rewrite("objects", slots=True)),
        "mask_on_zero_row": (None, _mask_on_empty),
        "label_out_of_range": (None, _set("targets/process", (7,), 5)),
        "label_negative": (None, _set("targets/process", (3,), -2)),
        "nan_feature": (None, _set("objects", (2, 0, 1), np.nan)),
        "inf_global": (None, _set("globals", (5, 0), np.inf)),
        "nan_weight": (None, _set("weights", (9,), np.nan)),
        "nan_in_middle_chunk": (None, _set("globals", (500, 1), np.nan)),
        "deleted_chunk": (None, _delete_chunk),
    }


def rewrite_checkpoint(path: Path, meta_edit=None, tensor_edit=None) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, path, metadata=meta)


def _cfg(fn):
    def edit(meta):
        cfg = json.loads(meta["config"])
        fn(cfg)
        meta["config"] = json.dumps(cfg)

    return edit


def _nan_tensor(t):
    t[next(k for k in t if k.startswith("ema/backbone"))].fill_(float("nan"))
    t[next(k for k in t if k.startswith("model/backbone"))].fill_(float("nan"))


CKPT_CASES = {
    "no_config": (lambda m: m.pop("config"), None),
    "config_not_json": (lambda m: m.update(config="{oops"), None),
    "config_list": (lambda m: m.update(config="[1, 2]"), None),
    "config_string": (lambda m: m.update(config='"hello"'), None),
    "no_format": (lambda m: m.pop("format"), None),
    "no_stats": (_cfg(lambda c: c.pop("stats")), None),
    "stats_missing_feature": (_cfg(lambda c: c["stats"]["objects"].pop("pt")), None),
    "stats_nan": (_cfg(lambda c: c["stats"]["objects"]["pt"].update(mean="NaN")), None),
    "no_backbone": (_cfg(lambda c: c.pop("backbone")), None),
    "lying_dim": (_cfg(lambda c: c["backbone"].update(dim=128, num_heads=4)), None),
    "lying_depth": (_cfg(lambda c: c["backbone"].update(depth=7)), None),
    "absurd_dim": (_cfg(lambda c: c["backbone"].update(dim=10**9)), None),
    "unknown_backbone_key": (_cfg(lambda c: c["backbone"].update(colour=1)), None),
    "bad_head_params": (_cfg(lambda c: c["heads"]["process"]["params"].update(hidden=-3)), None),
    "unknown_head": (_cfg(lambda c: c["heads"]["process"].update(name="nope")), None),
    "heads_list": (_cfg(lambda c: c.update(heads=[1])), None),
    "schema_garbage": (_cfg(lambda c: c.update(schema={"max_objects": "x"})), None),
    "nan_weights": (None, _nan_tensor),
    "optimizer_not_json": (lambda m: m.update(optimizer="{"), None),
    "trainer_not_json": (lambda m: m.update(trainer="]"), None),
}

LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9))


def yaml_cases() -> dict[str, str]:
    base = TASK.read_text()
    return {
        "billion_laughs_value": LAUGHS + "name: x\n",
        "billion_laughs_key": LAUGHS.replace("l8: &l8", "? &l8") + ": 1\n",
        "nested_100": "name: " + "[" * 100 + "]" * 100 + "\n",
        "nested_5000": "name: " + "[" * 5000 + "]" * 5000 + "\n",
        "nested_mappings_200": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n",
        "duplicate_top": base + "name: again\n",
        "duplicate_nested": base.replace("  lr: 1.0e-3\n", "  lr: 1.0e-3\n  lr: 2.0e-3\n"),
        "binary_garbage": "\x00\x01\x02\xff",
        "not_mapping": "- a\n- b\n",
        "empty": "",
        "syntax_error": "name: [1, 2\n",
        "python_object": "name: !!python/object/apply:os.system ['true']\n",
        "huge_file": "name: x\n" + "# " + "x" * (17 * 2**20) + "\n",
        "tabs": "name:\tx\n\ttrain: 1\n",
        "mapping_key": "? [a, b]\n: 1\n",
    }


# --------------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------------
def cases(w: Path, fx: dict[str, Path]):
    """Yield (class, name, runner, args, watched folder)."""
    store, run, lat, h5 = fx["store"], fx["run"], fx["lat"], fx["h5"]
    c = w / "cases"
    ip = "inprocess"

    for name, text in yaml_cases().items():
        d = c / f"yaml_{name}"
        d.mkdir(parents=True)
        (d / "task.yaml").write_text(text, errors="surrogateescape")
        yield "yaml", f"{name} (validate)", ip, ["validate", d / "task.yaml"], d
        if name in ("billion_laughs_value", "duplicate_top", "nested_5000"):
            yield "yaml", f"{name} (finetune)", ip, ["finetune", d / "task.yaml", "--out", d / "r"], d
            yield (
                "yaml",
                f"{name} (convert --map)",
                ip,
                ["convert", h5, "--format", "spanet", "--map", d / "task.yaml", "--out", d / "o.zarr"],
                d,
            )
    yield "yaml", "set_bomb", ip, ["validate", TASK, "--set", "name=" + "[" * 5000], c

    domain = [
        ["probe", lat, "--target", "process", "--epochs", 0],
        ["probe", lat, "--target", "process", "--epochs", -3],
        ["probe", lat, "--target", "process", "--seeds", 0],
        ["probe", lat, "--target", "process", "--seeds", 10**6],
        ["evaluate", run, "--which", "bogus"],
        ["evaluate", run, "--max-events", -1],
        ["evaluate", run, "--max-events", 0],
        ["evaluate", run, "--split", "nope"],
        ["evaluate", run, "--weights", "best"],
        ["evaluate", run, "--batch-size", 0],
        ["evaluate", run, "--seed", -1],
        ["generate", "toy_signal", "--seed", -1],
        ["generate", "toy_signal", "--events", 0],
        ["generate", "toy_signal", "--events", -5],
        ["generate", "toy_signal", "--events", 10**12],
        ["generate", "toy_signal", "--chunk-events", 0],
        ["generate", "toy_signal", "--chunk-events", 2**30],
        ["generate", "toy_signal", "--workers", 0],
        ["generate", "toy_signal", "--workers", 100000],
        ["generate", "toy_signal=-1", "toy_background"],
        ["generate", "toy_signal=abc"],
        ["embed", run, "--data", store, "--out", c / "l.zarr", "--batch-size", 0],
        ["embed", run, "--data", store, "--out", c / "l.zarr", "--pca", 0],
        ["embed", run, "--data", store, "--out", c / "l.zarr", "--pca", 100000],
        ["finetune", TASK, "--fraction", 0, "--data", store, "--out", c / "r0", *TINY],
        ["finetune", TASK, "--fraction", 1.5],
        ["finetune", TASK, "--fraction", -0.1],
        ["study", TASK, "--pretrained", run, "--seeds", 0],
        ["study", TASK, "--pretrained", run, "--fractions", "0,-1"],
        ["study", TASK, "--pretrained", run, "--max-steps", 0],
        ["bench", "loader", "--events", 0],
        ["bench", "bogus"],
    ]
    for args in domain:
        yield "domain", " ".join(map(str, args[:1] + args[-2:])), ip, args, c
    overrides = [
        "model.dim=100000000",
        "model.depth=100000",
        "model.num_heads=0",
        "model.k_neighbours=100000",
        "heads.process.params.num_classes=1000000000",
        "heads.process.params.hidden=10000000",
        "heads.process.params.hidden=0",
        "train.seed=-1",
        "split.seed=-3",
        "train.batch_size=0",
        "train.batch_size=100000000",
        "train.lr=-1",
        "train.epochs=0",
        "train.max_steps=0",
        "train.val_every=0",
        "train.ema_decay=1.5",
        "train.warmup=2",
        "split.train=2",
    ]
    for o in overrides:
        yield "domain", f"validate --set {o}", ip, ["validate", TASK, "--set", o], c
        if o in ("model.dim=100000000", "heads.process.params.num_classes=1000000000", "train.seed=-1"):
            yield (
                "domain",
                f"finetune --set {o}",
                ip,
                ["finetune", TASK, "--data", store, "--out", c / "rx", *TINY, "--set", o],
                c,
            )

    for name, (attrs, edit) in store_cases(store).items():
        d = c / f"store_{name}"
        d.mkdir(parents=True)
        bad = corrupt_store(store, d / "bad.zarr", attrs, edit)
        yield "store", f"{name} (inspect)", ip, ["inspect", bad, "--verify"], d
        yield "store", f"{name} (embed)", ip, ["embed", run, "--data", bad, "--out", d / "l.zarr"], d
        yield "store", f"{name} (evaluate)", ip, ["evaluate", run, "--data", bad, "--out", d / "ev"], d
        yield "store", f"{name} (finetune)", ip, ["finetune", TASK, "--data", bad, "--out", d / "r", *TINY], d

    for name, (meta_edit, tensor_edit) in CKPT_CASES.items():
        d = c / f"ckpt_{name}"
        shutil.copytree(run, d / "run")
        rewrite_checkpoint(d / "run" / "checkpoints" / "best.safetensors", meta_edit, tensor_edit)
        rewrite_checkpoint(d / "run" / "checkpoints" / "last.safetensors", meta_edit, tensor_edit)
        yield "checkpoint", f"{name} (embed)", ip, ["embed", d / "run", "--data", store, "--out", d / "l.zarr"], d
        yield "checkpoint", f"{name} (evaluate)", ip, ["evaluate", d / "run", "--data", store, "--out", d / "ev"], d
        yield (
            "checkpoint",
            f"{name} (finetune --init)",
            ip,
            ["finetune", TASK, "--init", d / "run", "--data", store, "--out", d / "r", *TINY],
            d,
        )
        yield (
            "checkpoint",
            f"{name} (resume)",
            ip,
            ["finetune", TASK, "--data", store, "--out", d / "run", *TINY, "--set", "train.max_steps=4", "--resume"],
            d,
        )

    for name, extra in {
        "preset_small": ["--set", "model.preset=small"],
        "other_name": ["--set", "name=other"],
        "other_hidden": ["--set", "heads.process.params.hidden=32"],
        "other_task_file": [],
    }.items():
        d = c / f"resume_{name}"
        shutil.copytree(run, d / "run")
        task = ROOT / "tasks" / "demo_pretrain.yaml" if name == "other_task_file" else TASK
        yield "resume", name, ip, ["finetune", task, "--data", store, "--out", d / "run", *TINY, *extra, "--resume"], d

    d = c / "outputs"
    d.mkdir()
    afile = d / "notes.txt"
    afile.write_text("mine\n")
    user = d / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("x")
    shutil.copytree(lat, d / "lat.zarr")
    shutil.copytree(store, d / "s.zarr")
    inside = afile / "x"
    outputs = [
        ["generate", "toy_signal", "-n", 10, "--out", inside],
        ["convert", h5, "--format", "spanet", "--out", inside],
        ["embed", run, "--data", store, "--out", inside],
        ["evaluate", run, "--data", store, "--out", inside],
        ["export", store, "--format", "spanet", "--out", inside],
        ["inspect", store, "--plots", afile],
        ["inspect", store, "--plots", inside],
        ["probe", lat, "--target", "process", "--epochs", 1, "--json", inside],
        ["finetune", TASK, "--data", store, "--out", inside, *TINY],
        ["pretrain", TASK, "--data", store, "--out", inside, *TINY],
        ["embed", run, "--data", store, "--out", d / "s.zarr", "--overwrite"],
        ["embed", run, "--data", store, "--out", user, "--overwrite"],
        ["embed", run, "--data", store, "--out", afile, "--overwrite"],
        ["embed", run, "--data", store, "--out", d / "lat.zarr"],
        ["generate", "toy_signal", "-n", 10, "--out", user, "--overwrite"],
        ["generate", "toy_signal", "-n", 10, "--out", d / "lat.zarr", "--overwrite"],
        ["generate", "toy_signal", "-n", 10, "--out", afile],
        ["convert", h5, "--format", "spanet", "--out", user, "--overwrite"],
        ["finetune", TASK, "--data", store, "--out", user, *TINY],
        ["finetune", TASK, "--data", store, "--out", afile, *TINY],
        ["evaluate", run, "--data", store, "--out", user],
        ["evaluate", run, "--data", store, "--out", afile],
        ["export", store, "--format", "spanet", "--out", user],
        ["export", store, "--format", "spanet", "--out", afile],
    ]
    for args in outputs:
        yield "outputs", " ".join(str(a).replace(str(d), "") for a in args[:1] + args[-2:]), ip, args, d

    writers = {
        "generate": ["generate", "toy_signal", "-n", 10],
        "convert": ["convert", h5, "--format", "spanet"],
        "finetune": ["finetune", TASK, "--data", store, *TINY],
        "embed": ["embed", run, "--data", store],
        "evaluate": ["evaluate", run, "--data", store],
        "export": ["export", store, "--format", "spanet"],
    }
    for name, args in writers.items():
        d = c / f"lock_{name}"
        d.mkdir()
        yield "two writers", name, "locked", [*args, "--out", d / "out"], d

    for name, args in writers.items():
        for fs in ("full", "readonly"):
            yield "file system", f"{name} ({fs})", fs, args, c / f"fs_{name}_{fs}"

    d = c / "cross"
    d.mkdir()
    base = TASK.read_text()
    (d / "head.yaml").write_text(
        base.replace("signal: [0], signal_efficiency", "head: proc, signal: [0], signal_efficiency")
    )
    stage = "  seed: 7\n  stages: [{name: a, fraction: 1.0, heads: [nope]}]\n"
    (d / "stage.yaml").write_text(base.replace("  seed: 7\n", stage))
    (d / "dup.yaml").write_text(base.replace("heads:\n", "heads:\n  process: {name: classification}\n", 1))
    for f in ("head.yaml", "stage.yaml", "dup.yaml"):
        yield "cross-field", f, ip, ["validate", d / f], d


def run_locked(args: list, watched: Path) -> tuple[int | None, str]:
    out = Path(args[-1])
    lock = out.with_name(f".{out.name}.lock")
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('ok', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    try:
        return run_inprocess(args)
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def small_fs(path: Path, readonly: bool):
    """An 8 kB tmpfs at ``path`` (read-only if asked); yields False when this process may not mount."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        yield False
        return
    try:
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run_fs(kind: str, args: list, where: Path) -> tuple[int | None, str]:
    with small_fs(where, kind == "readonly") as mounted:
        out = where / "out"
        if mounted:
            return run_subprocess([*args, "--out", out])
        if kind == "readonly":
            return 1, "error: skipped (cannot mount a read-only file system here)"

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

        return run_subprocess([*args, "--out", out], preexec=limit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", default=None, help="run only the classes whose name contains this")
    ns = p.parse_args()
    w = ns.workdir or Path(tempfile.mkdtemp(prefix="hepfm-badinputs-"))
    w.mkdir(parents=True, exist_ok=True)
    os.environ.update({"HEPFM_PROGRESS": "0", "WANDB_MODE": "disabled"})
    t0 = time.time()
    fx = build_fixtures(w)
    results = []
    for cls, name, runner, args, watched in cases(w, fx):
        if ns.only and ns.only not in cls:
            continue
        watched = Path(watched)
        before = snapshot(watched) if watched.exists() else {}
        fixtures_before = {k: snapshot(v) if v.is_dir() else {} for k, v in fx.items()}
        if runner == "inprocess":
            code, text = run_inprocess(args)
        elif runner == "locked":
            code, text = run_locked(args, watched)
        else:
            code, text = run_fs(runner, args, watched)
        after = snapshot(watched) if watched.exists() else {}
        changed = any(after.get(k) != v for k, v in before.items())
        changed |= any((snapshot(v) if v.is_dir() else {}) != fixtures_before[k] for k, v in fx.items())
        outcome = classify(code, text, changed)
        last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
        results.append({"class": cls, "case": name, "outcome": outcome, "exit": code, "last": last[0][:300]})
        print(f"{outcome:9s} {cls:12s} {name}  |  {last[0][:160]}", flush=True)
    counts = Counter(r["outcome"] for r in results)
    by_class: dict[str, Counter] = {}
    for r in results:
        by_class.setdefault(r["class"], Counter())[r["outcome"]] += 1
    print(
        f"\n{len(results)} tried in {time.time() - t0:.0f} s: " + ", ".join(f"{k} {v}" for k, v in counts.most_common())
    )
    for cls, cnt in by_class.items():
        print(f"  {cls:12s} " + ", ".join(f"{k} {v}" for k, v in cnt.most_common()))
    if ns.json:
        ns.json.write_text(json.dumps({"counts": counts, "by_class": by_class, "results": results}, indent=1))


if __name__ == "__main__":
    main()
