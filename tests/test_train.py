import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_python

TINY = ["--set", "model.preset=tiny", "--wandb", "disabled"]


def _losses(path):
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "train/total" in record:
            out[record["step"]] = record["train/total"]  # a resumed run overwrites the replayed steps
    return out


def _hepfm(*args):
    return [sys.executable, "-m", "hepfm", *map(str, args)]


def test_sigkill_then_resume_gives_the_same_losses(tmp_path, demo_store):
    args = [
        "pretrain",
        ROOT / "tasks" / "demo_pretrain.yaml",
        "--data",
        demo_store.path,
        *TINY,
        "--set",
        "train.max_steps=40",
        "--set",
        "train.val_every=10",
        "--set",
        "train.log_every=1",
        "--set",
        "train.batch_size=64",
    ]
    env = {**os.environ, "HEPFM_PROGRESS": "0"}
    subprocess.run(_hepfm(*args, "--out", tmp_path / "a"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        _hepfm(*args, "--out", tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and '"step": 26,' in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert all(name.endswith(".safetensors") for name in ckpts), ckpts  # no half-written file left behind
    r = subprocess.run(_hepfm(*args, "--out", tmp_path / "b", "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stderr and "at step 20" in r.stderr
    a, b = _losses(tmp_path / "a" / "metrics.jsonl"), _losses(metrics)
    assert [a[s] for s in range(21, 41)] == [b[s] for s in range(21, 41)]  # exactly, the next 20 steps
    # the EMA (with its warm-up counter) resumes exactly too
    from hepfm.checkpoint import load_checkpoint

    ema_a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.safetensors")["ema"]
    ema_b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors")["ema"]
    assert ema_a.keys() == ema_b.keys() and all(ema_a[k].equal(ema_b[k]) for k in ema_a)

    # a finished run is not overwritten, and --resume needs a run
    r = subprocess.run(_hepfm(*args, "--out", tmp_path / "a"), env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = subprocess.run(_hepfm(*args, "--out", tmp_path / "c", "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def pythia_stores(tmp_path_factory):
    pytest.importorskip("pythia8mc")
    from hepfm.generate import generate_store

    d = tmp_path_factory.mktemp("pythia")
    mix = generate_store(
        {"ttbar_dilepton": 0.4, "ttbar_semileptonic": 0.2, "qcd_multijet": 0.2, "zjets": 0.2},
        1600,
        d / "mix.zarr",
        seed=1,
        workers=2,
        chunk_events=400,
        params={"fast": True},
    )
    tt = generate_store(
        {"ttbar_dilepton": 1.0}, 1200, d / "tt.zarr", seed=2, workers=2, chunk_events=400, params={"fast": True}
    )
    return mix.path, tt.path


def test_pretrain_finetune_embed_probe_end_to_end(tmp_path, cli, pythia_stores):
    mix, tt = pythia_stores
    pre, fine, lat = tmp_path / "pre", tmp_path / "fine", tmp_path / "lat.zarr"
    r = cli(
        "pretrain",
        "--data",
        mix,
        "--out",
        pre,
        *TINY,
        "--set",
        "train.max_steps=16",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.val_every=8",
        "--set",
        "train.val_batches=2",
        "--set",
        "train.log_every=1",
    )
    assert r.exit_code == 0, r.stderr + r.stdout
    stages = {json.loads(line).get("stage") for line in (pre / "metrics.jsonl").read_text().splitlines()}
    assert {"self_supervised", "multitask"} <= stages
    assert (pre / "MODEL_CARD.md").exists() and (pre / "task.yaml").exists()

    r = cli(  # no --set model.preset: the fine-tune takes the tiny architecture of its checkpoint
        "finetune",
        "qe_ttbar",  # a shipped task, by name
        "--init",
        pre,
        "--data",
        tt,
        "--out",
        fine,
        "--wandb",
        "disabled",
        "--set",
        "train.max_steps=10",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.val_every=5",
        "--set",
        "train.val_batches=2",
        "--fraction",
        "0.5",
    )
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "init from" in r.stderr and "loaded" in r.stderr and "skipped" in r.stderr
    assert "model tiny" in r.stderr or "preset: tiny" in (fine / "task.yaml").read_text()
    report = json.loads((fine / "init_report.json").read_text())
    assert any(k.startswith("backbone.") for k in report["loaded"])
    # the recipe's assignment head (the b jet of each top) is where qe_ttbar's pairing head starts
    assert any(k.startswith("heads.assignment.scorers.t.") for k in report["loaded"]), report["loaded"]
    assert any(k.startswith("heads.process") for k in report["skipped"])  # pretraining heads the task lacks
    assert not any(k.startswith("heads.assignment") for k in report["missing"])  # none of it starts fresh

    r = cli("embed", fine, "--data", tt, "--out", lat, "--pca", 8)
    assert r.exit_code == 0, r.stderr + r.stdout
    r = cli("probe", lat, "--target", "n_jet", "--seeds", 3, "--epochs", 10, "--json", tmp_path / "probe.json")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "test r2" in r.stdout

    # latents of selected events only, and a process probe scored as signal vs rest (as roc_auc is)
    sel_lat = tmp_path / "sel.zarr"
    r = cli("embed", pre, "--data", mix, "--out", sel_lat, "--select", "n_jet >= 2", "--select", "n_lepton >= 1")
    assert r.exit_code == 0, r.stderr + r.stdout
    from hepfm import EventStore, Selection
    from hepfm.embed import open_latents

    store = EventStore.open(mix)
    passing = Selection.parse(["n_jet >= 2", "n_lepton >= 1"]).store_mask(store)
    g = open_latents(sel_lat)
    assert g["event_latents"].shape[0] == passing.sum() < len(store)
    assert (g["event_index"][:] == passing.nonzero()[0]).all() and g.attrs["selection"] == [
        "n_jet >= 2",
        "n_lepton >= 1",
    ]
    r = cli("probe", sel_lat, "--target", "process", "--signal", "ttbar_dilepton", "--seeds", 2, "--epochs", 5)
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "test signal_auc" in r.stdout
    assert_one_line_error(cli("probe", sel_lat, "--target", "process", "--signal", "haa"), "--signal haa")

    # physics evaluation of the fine-tune: its task's metrics and plots
    r = cli("evaluate", fine, "--data", tt, "--max-events", 400, "--bootstrap", 8)
    assert r.exit_code == 0, r.stderr + r.stdout
    headline = r.stdout.splitlines()
    assert len(headline) <= 30, r.stdout  # the headline reads at a glance
    assert "eff_matchable" in r.stdout and "±" in r.stdout and "[GeV]" in r.stdout
    assert "eff_matchable_nj3" not in r.stdout  # the rest is behind --all
    record = json.loads((fine / "eval" / "metrics.json").read_text())
    assert {"hepfm_version", "checkpoint_sha256", "weights", "seed", "n_events", "selection", "bootstrap"} <= set(
        record
    )
    assert (fine / "eval" / "summary.md").read_text().count("\n| ") >= 8
    r_all = cli(
        "evaluate", fine, "--data", tt, "--max-events", 400, "--bootstrap", 0, "--all", "--out", tmp_path / "e2"
    )
    assert r_all.exit_code == 0 and "eff_matchable_nj3" in r_all.stdout and len(r_all.stdout.splitlines()) > 40
    m = record["metrics"]
    assert set(m) == {"pairing", "neutrino_residuals", "spin_correlation"}
    p, s = m["pairing"], m["spin_correlation"]
    assert 0 <= p["eff_all"] <= p["eff_matchable"] <= 1 and 0 <= p["baseline_eff_all"] <= p["baseline_eff_matchable"]
    assert abs(s["d_truth"]) < 4 * s["d_truth_error"] + 0.05  # Pythia's ttbar: no spin correlation
    assert abs(s["d_truth_injected"] + 0.5) < 4 * s["d_truth_injected_error"]  # reweighted to D* = -0.5
    assert m["neutrino_residuals"]["baseline_resolution"] > 0 and s["events_reco"] > 0
    plots = {f.name for f in (fine / "eval" / "plots").rglob("*.png")}
    assert {"pairing_efficiency.png", "neutrino_residuals.png", "neutrino_generated_vs_true.png"} <= plots
    assert {"top_mass.png", "cos_phi.png", "cos_phi_response.png"} <= plots

    # every output reloads in a fresh process
    code = """
import json, sys
import zarr
from hepfm.checkpoint import load_model
from hepfm.embed import open_latents
m = load_model(sys.argv[1]); f = load_model(sys.argv[2])
g = open_latents(sys.argv[3])
p = json.load(open(sys.argv[4]))
print(type(m).__name__, sorted(f.heads), g["event_latents"].shape, g["event_latents_pca"].shape,
      round(g.attrs["pca"]["event"]["explained_total"], 3) > 0, p["metric"])
"""
    out = run_python(code, pre, fine, lat, tmp_path / "probe.json").stdout
    assert "EventModel ['assignment', 'neutrinos'] (1200, 64) (1200, 8) True r2" in out


def test_checkpoints_are_safe_and_checked(tmp_path, cli, demo_store):
    from hepfm.checkpoint import load_checkpoint

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(b"\x80\x04\x95pickled payload")
    with pytest.raises(Exception, match="not a readable safetensors checkpoint"):
        load_checkpoint(evil)
    run = tmp_path / "run"
    r = cli(
        "finetune",
        ROOT / "tasks" / "demo_classify.yaml",
        "--data",
        demo_store.path,
        "--out",
        run,
        *TINY,
        "--set",
        "train.max_steps=4",
        "--set",
        "train.val_every=2",
        "--set",
        "train.val_batches=1",
    )
    assert r.exit_code == 0, r.stderr
    # a task that asks for another preset than its checkpoint's: the checkpoint wins, with one note
    r = cli(
        "finetune",
        ROOT / "tasks" / "demo_classify.yaml",
        "--data",
        demo_store.path,
        "--out",
        tmp_path / "r2",
        "--init",
        run,
        "--set",
        "model.preset=small",
        "--set",
        "train.max_steps=2",
        "--wandb",
        "disabled",
    )
    assert r.exit_code == 0, r.stderr
    assert "asks for model {'preset': 'small'}" in r.stderr and "takes the checkpoint's architecture" in r.stderr
    assert "preset: tiny" in (tmp_path / "r2" / "task.yaml").read_text()
    # embedding data of another schema
    import zarr

    other = tmp_path / "other.zarr"
    import shutil

    shutil.copytree(demo_store.path, other)
    g = zarr.open_group(other, mode="r+")
    schema = dict(g.attrs["schema"])
    schema["max_objects"] = 12
    g.attrs["schema"] = schema
    assert_one_line_error(cli("embed", run, "--data", other, "--out", tmp_path / "l.zarr"), "other.zarr", "max_objects")
    assert_one_line_error(
        cli("embed", tmp_path / "nope", "--data", other, "--out", tmp_path / "l.zarr"), "no checkpoint"
    )


def test_bench_train_small_run(tmp_path):
    from hepfm.bench import bench_train

    r = bench_train(presets=("tiny",), steps=3, batch_size=32, directory=tmp_path)
    assert r["tiny"]["events_per_s"] > 0 and r["engine"] == "local"


def _backbone(state):
    return {k: v.float() for k, v in state.items() if k.startswith("backbone.") and v.dtype.is_floating_point}


def _distance(a, b):
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_ema_warm_up_follows_the_trained_weights(tmp_path, cli, demo_store):
    """After 40 steps of a default fine-tune (EMA decay 0.999) the EMA has left the initial backbone."""
    from hepfm.checkpoint import load_checkpoint

    task = ROOT / "tasks" / "demo_classify.yaml"
    common = [*TINY, "--set", "train.batch_size=64", "--set", "train.val_batches=1"]
    r = cli(
        "finetune", task, "--data", demo_store.path, "--out", tmp_path / "pre", *common, "--set", "train.max_steps=4"
    )
    assert r.exit_code == 0, r.stderr
    r = cli(
        "finetune", task, "--data", demo_store.path, "--out", tmp_path / "ft", "--init", tmp_path / "pre",
        *common, "--set", "train.max_steps=40", "--set", "train.val_every=40", "--set", "train.keep_every=20",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "ft" / "init_report.json").read_text())["weights"] == "ema"  # named in the report
    start = _backbone(load_checkpoint(tmp_path / "pre" / "checkpoints" / "best.safetensors")["ema"])
    end = load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.safetensors")
    assert end["trainer"]["ema_updates"] == 40 and end["trainer"]["selected_on"] == "ema"
    raw, ema = _distance(_backbone(end["model"]), start), _distance(_backbone(end["ema"]), start)
    assert raw > 0 and ema >= 0.5 * raw, (ema, raw)

    # intermediate checkpoints for pretraining-length ablations carry the compute up to them
    from hepfm.study import pretraining_compute

    kept = tmp_path / "ft" / "checkpoints" / "step-20.safetensors"
    assert kept.is_file() and (tmp_path / "ft" / "checkpoints" / "step-40.safetensors").is_file()
    assert pretraining_compute(kept)["events_seen"] == 20 * 64 and pretraining_compute(tmp_path / "ft")["steps"] == 40

    # evaluate scores the weights asked for, and says which in metrics.json
    for weights in ("raw", "ema"):
        r = cli("evaluate", tmp_path / "ft", "--weights", weights, "--max-events", 300, "--out", tmp_path / weights)
        assert r.exit_code == 0, r.stderr
        assert json.loads((tmp_path / weights / "metrics.json").read_text())["weights"] == weights
    raw_auc = json.loads((tmp_path / "raw" / "metrics.json").read_text())["metrics"]["roc_auc"]["auc"]
    assert raw_auc != json.loads((tmp_path / "ema" / "metrics.json").read_text())["metrics"]["roc_auc"]["auc"]
    r = cli("evaluate", tmp_path / "ft", "--max-events", 300)  # default: the weights best was selected on
    assert json.loads((tmp_path / "ft" / "eval" / "metrics.json").read_text())["weights"] == "ema"
    r = cli("evaluate", tmp_path / "ft", "--weights", "both")  # a usage error: the option lists its choices
    assert r.exit_code == 2 and "--weights" in r.stderr and "'both'" in r.stderr and "Traceback" not in r.stderr


def test_backbone_frozen_steps_train_the_heads_first(tmp_path, cli, demo_store):
    """train.backbone_frozen_steps: the heads move from the first step, the backbone only after."""
    from hepfm.checkpoint import load_checkpoint

    task = ROOT / "tasks" / "demo_classify.yaml"
    common = [*TINY, "--data", demo_store.path, "--set", "train.batch_size=64", "--set", "train.val_batches=1"]
    r = cli("finetune", task, "--out", tmp_path / "pre", *common, "--set", "train.max_steps=2")
    assert r.exit_code == 0, r.stderr
    start = load_checkpoint(tmp_path / "pre" / "checkpoints" / "best.safetensors")["ema"]
    moved = {}
    for frozen in (3, 0):
        out = tmp_path / f"ft{frozen}"
        args = ["--init", tmp_path / "pre", "--set", "train.max_steps=3"]
        args += ["--set", f"train.backbone_frozen_steps={frozen}"]
        r = cli("finetune", task, "--out", out, *common, *args)
        assert r.exit_code == 0, r.stderr
        end = load_checkpoint(out / "checkpoints" / "last.safetensors")["model"]
        moved[frozen] = _distance(_backbone(end), _backbone(start))
        heads = [k for k in end if k.startswith("heads.") and k in start]
        assert heads and any(not torch.equal(end[k], start[k]) for k in heads)  # the heads trained
    assert moved[3] == 0 and moved[0] > 0, moved

    # early stopping's patience counts only once the backbone trains (no round improves past step 1 here)
    stop = ["--set", "train.val_every=1", "--set", "train.early_stopping={patience: 1, min_delta: 1.0e9}"]
    stop += ["--init", tmp_path / "pre", "--set", "train.backbone_frozen_steps=3", "--set", "train.max_steps=8"]
    r = cli("finetune", task, "--out", tmp_path / "es", *common, *stop)
    assert r.exit_code == 0, r.stderr
    summary = json.loads((tmp_path / "es" / "train_summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] == 4, summary  # frozen for steps 1-3, stalled at 4


def test_early_stopping_stops_a_stalled_run_and_keeps_patience_across_resume(tmp_path, cli, demo_store):
    task = ROOT / "tasks" / "demo_classify.yaml"
    # min_delta so large that only the first validation counts as an improvement
    args = [task, "--data", demo_store.path, *TINY, "--set", "train.batch_size=64", "--set", "train.val_batches=1"]
    args += ["--set", "train.val_every=2", "--set", "train.early_stopping.patience=3"]
    args += ["--set", "train.early_stopping.min_delta=1e9"]
    r = cli("finetune", *args, "--out", tmp_path / "a", "--set", "train.max_steps=100")
    assert r.exit_code == 0, r.stderr
    assert "early stopping at step 8" in r.stderr  # improved at 2, stalled at 4, 6, 8
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["steps"] == 8 and summary["best_step"] == 2 and summary["stopped_early"]
    assert summary["events_seen"] == 8 * 64 and summary["flops"] > 0

    # a run cut by its budget at step 6 (two stalled rounds) resumed with a larger budget stops at 8, not 12
    r = cli("finetune", *args, "--out", tmp_path / "b", "--set", "train.max_steps=6")
    assert r.exit_code == 0 and "early stopping" not in r.stderr, r.stderr
    r = cli("finetune", *args, "--out", tmp_path / "b", "--set", "train.max_steps=100", "--resume")
    assert r.exit_code == 0, r.stderr
    assert "early stopping at step 8" in r.stderr
    assert json.loads((tmp_path / "b" / "train_summary.json").read_text())["events_seen"] == 8 * 64
