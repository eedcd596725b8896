"""ONNX export (ONNX Runtime against torch) and ``hepfm predict`` (row order, formats, no half files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, assert_one_line_error, run_python
from test_assignment import TOPS, write_spanet_allhad

from hepfm import EventStore
from hepfm.batch import Batch
from hepfm.checkpoint import load_model
from hepfm.predict import predict, predict_batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with classification, regression and assignment heads on a converted SPANet file."""
    from typer.testing import CliRunner

    from hepfm.cli import app

    d = tmp_path_factory.mktemp("predict")
    write_spanet_allhad(d / "ex.h5", 400, seed=5, extras=True)
    (d / "map.yaml").write_text(
        "groups: {Source: jet}\nfill: {met: 0, met_phi: 0}\n"
        "process: CLASSIFICATIONS/EVENT/signal\nprocesses: [background, signal]\n"
    )
    runner = CliRunner()
    r = runner.invoke(app, ["convert", str(d / "ex.h5"), "--format", "spanet", "--map", str(d / "map.yaml"),
                            "--out", str(d / "sp.zarr")])  # fmt: skip
    assert r.exit_code == 0, r.output
    task = yaml.safe_load((ROOT / "tasks" / "ttbar_allhad.yaml").read_text())
    task["heads"] = {
        "process": {"name": "classification", "params": {"hidden": 16}},
        "mtt": {"name": "regression", "params": {"targets": ["m_tt"]}},
        "assignment": {"name": "assignment", "params": {**TOPS, "aliases": {"t": ["t1"], "tbar": ["t2"]}}},
    }
    task["metrics"], task["selection"] = [], []
    (d / "task.yaml").write_text(yaml.safe_dump(task))
    args = ["finetune", str(d / "task.yaml"), "--data", str(d / "sp.zarr"), "--out", str(d / "run"), "--wandb",
            "disabled", "--set", "model.preset=tiny", "--set", "train.max_steps=6", "--set", "train.batch_size=32",
            "--set", "train.val_every=3", "--set", "train.val_batches=1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return d / "run", d / "sp.zarr"


def test_onnx_runtime_agrees_with_torch(trained, tmp_path, cli):
    pytest.importorskip("onnxruntime")
    from hepfm._onnx_export import onnx_metadata, run_onnx

    run, data = trained
    r = cli("export", run, "--format", "onnx", "--out", tmp_path / "model.onnx")
    assert r.exit_code == 0, r.stderr + r.stdout
    meta = onnx_metadata(tmp_path / "model.onnx")
    assert meta["weights"] == "ema" and set(meta["heads"]) == {"process", "mtt", "assignment"}
    store = EventStore.open(data)
    model = load_model(run, weights="ema")
    for start, stop in ((0, 37), (100, 300)):  # two batch sizes: the batch axis is dynamic
        arrays = store.read(start, stop)
        got = run_onnx(tmp_path / "model.onnx", arrays["objects"], arrays["mask"], arrays["globals"])
        batch = Batch.from_arrays(arrays)
        with torch.no_grad():
            latents = model.encode(batch)
            ref = {k: h.predict(h(latents, batch)) for k, h in model.heads.items()}
        np.testing.assert_allclose(got["process/probabilities"], ref["process"]["probabilities"], atol=1e-4)
        np.testing.assert_allclose(got["mtt/values"], ref["mtt"]["values"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["assignment/probability"], ref["assignment"]["probability"], atol=1e-4)
        for res in ("t", "tbar"):
            np.testing.assert_array_equal(got[f"assignment/objects/{res}"], ref["assignment"][f"objects/{res}"])
        assert (got["assignment/assignment"] >= 0).all()  # >= 6 jets everywhere: every daughter assigned
    assert_one_line_error(cli("export", run, "--format", "onnx", "--out", tmp_path / "model.onnx"), "--overwrite")


def test_onnx_export_without_onnx_is_one_clear_error(trained, tmp_path):
    run, _ = trained
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from hepfm._onnx_export import export_onnx\nfrom hepfm import HepfmError\n"
        "try:\n    export_onnx(sys.argv[1], sys.argv[2])\nexcept HepfmError as e:\n    print(e)\n"
    )
    out = run_python(code, run, tmp_path / "m.onnx").stdout
    assert "hepfm[onnx]" in out and not (tmp_path / "m.onnx").exists()


def test_predict_rows_follow_the_input_in_every_format(trained, tmp_path, cli):
    import h5py
    import pyarrow.parquet as pq
    import uproot

    run, data = trained
    store = EventStore.open(data)
    n = store.n_events
    r = cli("predict", run, "--data", data, "--out", tmp_path / "p.parquet", "--batch-size", 64)
    assert r.exit_code == 0, r.stderr + r.stdout
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert len(table["event_index"]) == n and table["event_index"] == list(range(n))
    np.testing.assert_array_equal(table["event_number"], store.read(0, n)["targets/event_number"])
    expected = {"process_prob_background", "process_prob_signal", "mtt_m_tt", "assignment_t_b", "assignment_tbar_q2"}
    assert expected <= set(table)
    # the same numbers as the in-memory API on a batch cut elsewhere
    ref = predict_batch(load_model(run), Batch.from_arrays(store.read(50, 120)))
    for name in ("process_prob_signal", "mtt_m_tt", "assignment_t_b", "assignment_tbar_q1"):
        np.testing.assert_allclose(np.asarray(table[name][50:120]), ref[name], rtol=1e-5, atol=1e-5)
    # model.predict: the same columns for a store (any batching), a Batch and awkward event records
    model = load_model(run)
    cols = model.predict(data, batch_size=37)
    assert len(cols["event_index"] if "event_index" in cols else cols["process_prob_signal"]) == n
    from hepfm import store_awkward

    events = model.predict(store_awkward(data, 50, 120))
    for name in ("process_prob_signal", "mtt_m_tt", "assignment_t_b", "assignment_tbar_q1"):
        np.testing.assert_allclose(cols[name], np.asarray(table[name]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(events[name], ref[name], rtol=1e-5, atol=1e-5)
    predict(run, data, tmp_path / "p.h5", batch_size=33)
    predict(run, data, tmp_path / "p.root", batch_size=100)
    with h5py.File(tmp_path / "p.h5") as f:
        np.testing.assert_array_equal(f["assignment_t_b"][:], table["assignment_t_b"])
    tree = uproot.open(tmp_path / "p.root")["predictions"]
    np.testing.assert_array_equal(tree["event_index"].array(library="np"), np.arange(n))
    np.testing.assert_array_equal(tree["assignment_tbar_b"].array(library="np"), table["assignment_tbar_b"])
    assert_one_line_error(cli("predict", run, "--data", data, "--out", tmp_path / "p.csv"), "p.csv", ".parquet")
    assert_one_line_error(cli("predict", run, "--data", data, "--out", tmp_path / "p.h5"), "--overwrite")


def test_killed_predict_leaves_no_file_that_looks_complete(trained, tmp_path):
    run, data = trained
    out = tmp_path / "p.h5"
    partial = tmp_path / ".p.h5.partial"
    cmd = [sys.executable, "-m", "hepfm", "predict", str(run), "--data", str(data), "--out", str(out),
           "--batch-size", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert partial.exists() and not out.exists()  # only the temporary name, never a half OUT
    predict(run, data, out)  # a rerun writes the whole file
    assert out.exists() and not partial.exists()
