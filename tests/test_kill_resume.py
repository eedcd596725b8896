"""SIGKILL at several points of each long command, then the same command again: the result of an uninterrupted run.

generate and convert: the stores are byte-identical; embed: the arrays are equal; finetune: the
losses of the resumed steps are identical (pretrain: tests/test_train.py kills and resumes it the
same way).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import ROOT

from hepfm import HepfmError
from hepfm.embed import open_latents

ENV = {**os.environ, "HEPFM_PROGRESS": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs use one thread, as the killed subprocesses do: the losses compare bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hepfm(*args):
    return [sys.executable, "-m", "hepfm", *map(str, args)]


def files(root):
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_when(cmd, ready, timeout=120):
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; return True if it was killed before finishing."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if ready():
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
    finally:
        finished = proc.poll() is not None
        proc.kill()
        proc.wait()
    return not finished


def n_written(store):
    return json.loads((Path(store) / "zarr.json").read_text())["attributes"]["n_events"]


# a SIGKILL at a point polling cannot catch: every event on disk, before `complete` is written
KILL_BEFORE_COMPLETE = """
import os, signal, sys
from hepfm import store
store.StoreWriter.close = lambda self: os.kill(os.getpid(), signal.SIGKILL)
from hepfm.cli import app
sys.argv = ["hepfm", *sys.argv[1:]]
app()
"""


def test_generate_killed_anywhere_resumes_to_identical_bytes(tmp_path, cli):
    args = ["generate", "toy_signal=0.3", "toy_background", "-n", 40_000, "--chunk-events", 1000, "--seed", 5]
    assert cli(*args, "--out", tmp_path / "ref.zarr").exit_code == 0
    ref = files(tmp_path / "ref.zarr")
    out = tmp_path / "k.zarr"  # killed mid-run by a poll of its record
    killed = kill_when(hepfm(*args, "--out", out), lambda: n_written(out) >= 10_000)
    assert not zarr.open_group(out, mode="r").attrs.get("complete")
    r = cli(*args, "--out", out)
    assert r.exit_code == 0 and files(out) == ref, r.stderr
    out = tmp_path / "all.zarr"  # killed with every event on disk, before `complete`
    r = subprocess.run([sys.executable, "-c", KILL_BEFORE_COMPLETE, *map(str, args), "--out", str(out)], env=ENV)
    assert r.returncode == -signal.SIGKILL and n_written(out) == 40_000
    assert not zarr.open_group(out, mode="r").attrs.get("complete")
    r = cli(*args, "--out", out)
    assert r.exit_code == 0 and files(out) == ref, r.stderr
    assert killed  # the polled kill landed mid-run


def test_convert_killed_mid_run_resumes_to_identical_bytes(tmp_path, cli):
    from hepfm.convert import export_store
    from hepfm.generate import generate_store

    src = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 30_000, tmp_path / "src.zarr", chunk_events=1000)
    export_store(src, "spanet", tmp_path / "x.h5")
    args = ["convert", tmp_path / "x.h5", "--format", "spanet", "--chunk-events", 500]
    assert cli(*args, "--out", tmp_path / "ref.zarr").exit_code == 0
    ref = files(tmp_path / "ref.zarr")
    out = tmp_path / "k.zarr"
    assert kill_when(hepfm(*args, "--out", out), lambda: n_written(out) >= 500)
    assert not zarr.open_group(out, mode="r").attrs.get("complete")
    r = cli(*args, "--out", out)
    assert r.exit_code == 0 and files(out) == ref, r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from typer.testing import CliRunner

    from hepfm.cli import app
    from hepfm.generate import generate_store

    d = tmp_path_factory.mktemp("killrun")
    store = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 4000, d / "s.zarr", chunk_events=500).path
    args = ["finetune", ROOT / "tasks" / "demo_classify.yaml", "--data", store, "--wandb", "disabled"]
    for s in ("model.preset=tiny", "train.batch_size=32", "train.val_batches=1", "train.val_every=5"):
        args += ["--set", s]
    args += ["--set", "train.log_every=1", "--set", "train.max_steps=20"]
    r = CliRunner().invoke(app, [*map(str, args), "--out", str(d / "ref")])
    assert r.exit_code == 0, r.stderr
    return store, args, d / "ref"


def _losses(run):
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/total" in record:
            out[record["step"]] = record["train/total"]
    return out


def test_finetune_killed_then_resumed_gives_identical_losses(tmp_path, cli, trained):
    store, args, ref = trained
    out = tmp_path / "b"
    metrics = out / "metrics.jsonl"
    assert kill_when(hepfm(*args, "--out", out), lambda: metrics.exists() and '"step": 12,' in metrics.read_text())
    r = cli(*args, "--out", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert "resumed" in r.stderr and "at step 10" in r.stderr
    a, b = _losses(ref), _losses(out)
    assert [a[s] for s in range(11, 21)] == [b[s] for s in range(11, 21)]


def test_embed_killed_mid_run_then_rerun_gives_equal_latents(tmp_path, cli, trained):
    store, _, ref_run = trained
    ref = tmp_path / "ref.zarr"
    cmd = ["embed", ref_run, "--data", store, "--batch-size", 64]
    assert cli(*cmd, "--out", ref).exit_code == 0
    out = tmp_path / "l.zarr"
    partial = tmp_path / "l.zarr.partial"
    assert kill_when(hepfm(*cmd, "--out", out), lambda: (partial / "event_latents" / "c").exists())
    assert not out.exists()  # only the .partial, never a store that looks finished
    with pytest.raises(HepfmError, match="not a complete hepfm latents store"):
        open_latents(partial)  # written by the store's ArrayWriter: no `complete` before close
    r = cli(*cmd, "--out", out)
    assert r.exit_code == 0, r.stderr
    a, b = zarr.open_group(ref, mode="r"), zarr.open_group(out, mode="r")
    for name in ("event_latents", "object_latents", "mask", "split", "event_index"):
        assert np.array_equal(a[name][:], b[name][:]), name
    assert not partial.exists()
    assert list(json.loads((out / "zarr.json").read_text())["attributes"])[-1] == "complete"  # written last
