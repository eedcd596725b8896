"""The anomaly search's background model on the transformer backbone: pretrained vs scratch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from hepfm.anomaly import DIMUON_FEATURES, PAIR_FEATURES, AnomalyConfig, compare_anomaly, pair_features
from hepfm.schema import EventSchema

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tasks" / "anomaly" / "dimuon_ad_backbone.yaml"
FAST = {"model": "backbone", "epochs": 1, "hidden": 16, "batch_size": 128, "steps": 3, "oversample": 1}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny pretraining run (tasks/demo_pretrain.yaml, a few steps) and its store."""
    from hepfm.generate import generate_store
    from hepfm.tasks import load_task
    from hepfm.train import train

    base = tmp_path_factory.mktemp("pretrain")
    store = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, 1000, base / "toy.zarr", seed=5)
    task = load_task(
        ROOT / "tasks" / "demo_pretrain.yaml",
        [f"dataset.params.path={store.path}", "train.max_steps=4", "train.val_every=2", "train.batch_size=64",
         "train.val_batches=1"],
    )  # fmt: skip
    train(task, base / "run", wandb_mode="disabled")
    return base / "run", store


def _events(n: int, seed: int) -> dict:
    """Random opposite-sign muon pairs in the default schema, as ``dimuon_events`` returns them."""
    s = EventSchema()
    rng = np.random.default_rng(seed)
    pairs = np.zeros((n, 2, s.n_object_features), np.float32)
    pt = 10 + rng.exponential(6.0, (n, 2))
    eta = rng.normal(0, 1.0, (n, 2))
    pairs[..., s.index("pt")], pairs[..., s.index("eta")] = pt, eta
    pairs[..., s.index("phi")] = rng.uniform(-np.pi, np.pi, (n, 2))
    pairs[..., s.index("E")] = pt * np.cosh(eta)
    pairs[..., s.index("is_lepton")] = 1
    pairs[..., s.index("charge")] = [1, -1]
    mass, feats = pair_features(s, pairs[:, 0], pairs[:, 1])
    features = np.zeros((n, len(DIMUON_FEATURES)))
    features[:, :4] = feats
    return {"mass": mass, "features": features, "process": np.full(n, "", object), "pairs": pairs}


def _background(gen: dict, store, seed: int = 0):
    from hepfm._anomaly_backbone import BackboneBackground
    from hepfm.anomaly import GenerativeConfig

    return BackboneBackground(GenerativeConfig(**gen), store.schema, store.stats, list(PAIR_FEATURES), seed)


def test_init_loads_the_pretrained_backbone_and_scratch_does_not(pretrained):
    import hepfm

    run, store = pretrained
    reference = hepfm.load_model(run).backbone.state_dict()
    loaded = _background({**FAST, "init": str(run)}, store)
    own = loaded.net.model.backbone.state_dict()
    assert own.keys() == reference.keys() and all(torch.equal(own[k], reference[k]) for k in own)
    scratch = _background({**FAST, "init": str(run), "from_scratch": True}, store).net.model.backbone.state_dict()
    assert scratch.keys() == reference.keys()  # the same architecture ...
    assert not torch.equal(scratch["object_embed.0.weight"], reference["object_embed.0.weight"])  # ... random weights
    plain = _background(FAST, store).net.model.backbone  # no init: the tiny preset
    assert plain.cfg.dim == 64

    # fine-tuned on sideband pairs: the backbone's weights move, samples are features of pairs
    events = _events(600, 1)
    before = own["object_embed.0.weight"].clone()
    loaded.fit(events["pairs"], events["mass"])
    assert not torch.equal(loaded.net.model.backbone.state_dict()["object_embed.0.weight"], before)
    samples = loaded.sample(events["mass"][:50], seed=2)
    assert samples.shape == (50, 4) and np.isfinite(samples).all()
    assert (samples[:, 0] >= 0).all() and (samples[:, 3] >= 0).all() and (samples[:, 3] <= 1 + 1e-6).all()


def test_compare_writes_the_table_of_modes_and_seeds(pretrained, tmp_path):
    run, store = pretrained
    events = {**_events(3000, 2), "schema": store.schema, "stats": store.stats}
    config = AnomalyConfig(
        name="pairs",
        features=list(PAIR_FEATURES),
        fit_range=(8.0, 60.0),
        signal_region=(20.0, 26.0),
        width_bounds=(0.5, 2.0),
        bins=20,
        generative=FAST,
        classifier={"folds": 2, "max_iter": 20},
    )
    r = compare_anomaly(config, run, 2, tmp_path / "cmp", events=events)
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert list(saved["modes"]) == ["bump_hunt", "scratch", "pretrained"]
    for mode, row in saved["modes"].items():
        assert [x["seed"] for x in row["runs"]] == [0, 1], mode
        assert row["min_z"] <= row["median_z"] <= row["max_z"]
    assert saved["modes"]["bump_hunt"]["std_z"] == 0.0  # the spectrum before the cut has no model
    table = r["table"].read_text()
    assert all(mode in table for mode in ("bump_hunt", "scratch", "pretrained"))
    assert (tmp_path / "cmp" / "pretrained_seed1" / "metrics.json").is_file()
    first = json.loads((tmp_path / "cmp" / "scratch_seed0" / "metrics.json").read_text())["config"]["generative"]
    assert first["model"] == "backbone" and first["from_scratch"] and first["init"] == str(run)


def test_pretrained_option_errors_in_one_line(tmp_path, cli):
    missing = tmp_path / "no_such_run"
    r = cli("anomaly", CONFIG, "--pretrained", missing, "--out", tmp_path / "ad")
    assert_one_line_error(r, "--pretrained", "no_such_run")
    r = cli("anomaly", CONFIG, "--compare", "--out", tmp_path / "ad")
    assert_one_line_error(r, "--compare", "--pretrained")
    # the seven-feature config: the backbone generates the pair, so 'met' and the jets are refused
    r = cli("anomaly", ROOT / "tasks" / "anomaly" / "dimuon_ad.yaml", "--pretrained", tmp_path)
    assert_one_line_error(r, "dimuon_ad.yaml", "met")


def test_compare_command_on_pythia_dimuon_events(pretrained, tmp_path, cli):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    run, _ = pretrained
    store = tmp_path / "dimuon.zarr"
    args = ["dimuon_continuum=0.9", "upsilon_mumu=0.1", "--events", 600, "--fast", "--out", store]
    r = cli("generate", *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    out = tmp_path / "cmp"
    fast = [f"generative.{k}={v}" for k, v in FAST.items() if k != "model"]
    sets = [x for s in [*fast, "classifier.folds=2", "bins=30"] for x in ("--set", s)]
    r = cli("anomaly", CONFIG, "--compare", "--pretrained", run, "--seeds", 1, "--store", store, "--out", out, *sets)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "| pretrained |" in r.stdout and "| scratch |" in r.stdout and "| bump_hunt |" in r.stdout
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["seeds"] == 1 and saved["modes"]["pretrained"]["runs"][0]["seed"] == 0
    assert (out / "scratch_seed0" / "spectrum_fit.png").is_file()
