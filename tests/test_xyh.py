"""X -> Y H: truth-matched masses of the Pythia process, the mass-parametrised classifier on a toy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from hepfm.xyh import ParametrisedClassifier, evaluate_grid

GRID = [(mx, my) for mx in (400.0, 600.0, 800.0) for my in (60.0, 100.0, 150.0)]
HELD_OUT = (600.0, 100.0)
NEIGHBOURS = [(400.0, 100.0), (800.0, 100.0), (600.0, 60.0), (600.0, 150.0)]


def _toy(n_per_point: int, n_background: int, points, seed: int):
    """Background uniform in a box; each point's signal a blob whose position moves with (m_X, m_Y)."""
    rng = np.random.default_rng(seed)
    xb = rng.uniform(-4, 4, (n_background, 3))
    xs, ps = [], []
    for mx, my in points:
        centre = [(mx - 600.0) / 100.0, (my - 100.0) / 30.0, 0.0]
        xs.append(rng.normal(centre, [0.6, 0.6, 1.0], (n_per_point, 3)))
        ps.append(np.tile([mx, my], (n_per_point, 1)))
    x = np.concatenate([xb, *xs])
    p = np.concatenate([np.zeros((n_background, 2)), *ps])
    sig = np.r_[np.zeros(n_background, bool), np.ones(n_per_point * len(points), bool)]
    return x, p, sig


def test_parametrised_classifier_interpolates_to_an_untrained_mass_point():
    trained = [p for p in GRID if p != HELD_OUT]
    x, p, s = _toy(400, 6000, trained, seed=1)
    clf = ParametrisedClassifier(hidden=64, epochs=25, seed=0).fit(x, p, s)
    xt, pt, st = _toy(400, 6000, GRID, seed=2)  # test events, with signal at the held-out point too
    res = evaluate_grid(clf, xt, pt, st, GRID)
    auc = dict(zip(res.points, res.auc, strict=True))
    neighbours = np.mean([auc[q] for q in NEIGHBOURS])
    assert neighbours > 0.9
    assert abs(auc[HELD_OUT] - neighbours) < 0.05, (auc[HELD_OUT], neighbours)
    # the mass inputs matter: the held-out signal scored as if it were a far point separates worse
    from sklearn.metrics import roc_auc_score

    sig = xt[st & (pt[:, 0] == HELD_OUT[0]) & (pt[:, 1] == HELD_OUT[1])]
    bkg = xt[~st]
    far = (400.0, 60.0)
    scores = np.r_[clf.score(bkg, far), clf.score(sig, far)]
    wrong = roc_auc_score(np.r_[np.zeros(len(bkg)), np.ones(len(sig))], scores)
    assert wrong < auc[HELD_OUT] - 0.05, (wrong, auc[HELD_OUT])
    assert res.median_z > 0 and len(res.z_binned) == len(GRID)


def test_xyh_events_reconstruct_the_masses_with_truth_matched_jets():
    pytest.importorskip("pythia8mc")
    from hepfm_builtin._pythia_events import SEGMENT_INDEX, SLOT_INDEX
    from hepfm_builtin.pythia import PythiaGenerator

    from hepfm import EventSchema
    from hepfm.physics import four_vectors, mass

    gen = PythiaGenerator(PythiaGenerator.Params(fast=True), EventSchema())
    b = gen.generate("xyh_mx600_my100", 150, seed=4)
    p4 = four_vectors(EventSchema(), b.objects)
    r = np.arange(len(b))
    y_slots = b.targets["assignment"][:, [SLOT_INDEX["a1_b1"], SLOT_INDEX["a1_b2"]]].astype(np.int64)
    has_y = (y_slots >= 0).all(1)
    h_jets = b.targets["segment"] == SEGMENT_INDEX["H"]
    has_h = h_jets.sum(1) == 2
    assert has_y.mean() > 0.4 and has_h.mean() > 0.4
    y4 = p4[r, y_slots[:, 0]] + p4[r, y_slots[:, 1]]
    h4 = (p4 * h_jets[..., None]).sum(1)
    m_y, m_h, m_4b = mass(y4[has_y]), mass(h4[has_h]), mass((y4 + h4)[has_y & has_h])
    # b jets lose some energy (neutrinos of semileptonic b decays, out of cone): within 15%
    assert abs(np.median(m_y) / 100.0 - 1) < 0.15, np.median(m_y)
    assert abs(np.median(m_h) / 125.0 - 1) < 0.15, np.median(m_h)
    assert abs(np.median(m_4b) / 600.0 - 1) < 0.15, np.median(m_4b)


def test_xyh_command_end_to_end(tmp_path, cli):
    pytest.importorskip("pythia8mc")
    store = tmp_path / "xyh.zarr"
    r = cli(
        "generate",
        "xyh_mx400_my60=0.25",
        "xyh_mx600_my100=0.25",
        "ttbar_hadronic=0.5",
        "--events",
        "240",
        "--fast",
        "--out",
        str(store),
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    out = tmp_path / "xyh"
    r = cli(
        "xyh",
        str(ROOT / "tasks" / "xyh" / "xyh_grid.yaml"),
        "--store",
        str(store),
        "--out",
        str(out),
        "--set",
        "epochs=3",
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    saved = json.loads((out / "metrics.json").read_text())
    assert {(p["m_x"], p["m_y"]) for p in saved["points"]} == {(400.0, 60.0), (600.0, 100.0)}
    assert all(0.0 <= p["auc"] <= 1.0 for p in saved["points"])
    assert (out / "grid.png").stat().st_size > 5_000


def test_xyh_task_trains_the_parametrised_head_and_reports_the_grid(tmp_path, cli):
    """tasks/xyh.yaml end to end on a tiny store: finetune (tiny model), evaluate, mass_grid metric."""
    pytest.importorskip("pythia8mc")
    store = tmp_path / "xyh.zarr"
    r = cli(
        "generate",
        "xyh_mx400_my60=0.3",
        "xyh_mx800_my150=0.3",
        "ttbar_hadronic=0.4",
        "--events",
        "300",
        "--fast",
        "--out",
        store,
        "--seed",
        "2",
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    run = tmp_path / "run"
    sets = [
        "model.preset=tiny",
        "init=null",
        "selection=[]",
        "train.max_steps=8",
        "train.batch_size=64",
        "train.val_batches=1",
        "heads.signal.params.points=[[400,60],[800,150]]",
        f"dataset.params.path={store}",
    ]
    r = cli("finetune", ROOT / "tasks" / "xyh.yaml", "--out", run, *[a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.stdout + r.stderr
    r = cli("evaluate", run, "--split", "all")
    assert r.exit_code == 0, r.stdout + r.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    grid = metrics["metrics"]["mass_grid"]
    assert set(grid) >= {"median_z", "median_auc", "auc_400_60", "auc_800_150", "z_400_60"}
    assert 0.0 <= grid["median_auc"] <= 1.0 and grid["median_z"] >= 0.0
    assert (run / "eval" / "plots").is_dir()
