"""Physics metrics on constructed events (hand-computed values), evaluate and study end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error, run_python

from hepfm import EventSchema, physics
from hepfm.components import Evaluation
from hepfm.evaluate import score
from hepfm.tasks import Component

SCHEMA = EventSchema()
ROOT_TASKS = __import__("pathlib").Path(__file__).resolve().parents[1] / "tasks"


def obj(e=0.0, pt=0.0, eta=0.0, phi=0.0, btag=0.0, lep=0.0, charge=0.0):
    return [e, pt, eta, phi, btag, lep, charge]


def massless(pt, eta, phi, **kw):
    return obj(pt * np.cosh(eta), pt, eta, phi, **kw)


def p4(px, py, pz, m=0.0):
    return np.array([px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)])


def boost(p, beta):
    """Pure boost of four-vectors p [..., 4] by velocity beta [3] (to a frame moving with -beta)."""
    return physics.boost_to_rest(p, np.broadcast_to(np.append(-np.asarray(beta), 1.0), p.shape))


# --------------------------------------------------------------------------------------------
# physics functions
# --------------------------------------------------------------------------------------------
def test_cos_phi_and_d_from_known_angles():
    # tops at rest: cos phi is the cosine between the lepton directions
    angles = np.array([0.0, np.pi / 3, np.pi / 2, 2 * np.pi / 3, np.pi])
    n = len(angles)
    top = np.tile([0, 0, 0, 172.5], (n, 1)).astype(float)
    lp = np.tile(p4(0, 0, 30.0), (n, 1))
    lm = np.stack([p4(40 * np.sin(a), 0, 40 * np.cos(a)) for a in angles])
    cos = physics.cos_phi_spin(top, top.copy(), lp, lm)
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-12)
    d, err = physics.spin_correlation_d(cos)
    assert d == pytest.approx(-3 * np.mean(np.cos(angles))) and err > 0

    # the same decays, tops back to back in the ttbar frame and the whole event boosted:
    # the frames chain recovers the rest-frame angles
    beta_t = np.array([0.0, 0.0, 0.6])
    m_t = 172.5
    rest = np.array([0.0, 0.0, 0.0, m_t])
    t_tt, tbar_tt = boost(rest, beta_t), boost(rest, -beta_t)
    lab = np.array([0.3, 0.1, -0.2])
    out = []
    for a in angles:
        lp_tt = boost(p4(0, 0, 30.0), beta_t)
        lm_tt = boost(p4(40 * np.sin(a), 0, 40 * np.cos(a)), -beta_t)
        out.append([boost(v, lab) for v in (t_tt, tbar_tt, lp_tt, lm_tt)])
    t, tb, l1, l2 = (np.stack([o[i] for o in out]) for i in range(4))
    np.testing.assert_allclose(physics.cos_phi_spin(t, tb, l1, l2), np.cos(angles), atol=1e-9)


def test_reweighting_injects_d():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, 200_000)  # no spin correlation: D = 0
    d0, _ = physics.spin_correlation_d(cos)
    w = physics.reweight_spin(np.ones_like(cos), cos, -0.5)
    d, err = physics.spin_correlation_d(cos, w)
    assert abs(d0) < 0.02 and d == pytest.approx(-0.5, abs=4 * err)
    with pytest.raises(ValueError):
        physics.reweight_spin(np.ones(3), np.zeros(3), 1.5)


def test_pairing_efficiency_hand_computed():
    truth = np.array([[0, 1], [2, 3], [0, -1], [1, 0]])
    pred = np.array([[0, 1], [3, 2], [0, 1], [1, 0]])
    matchable, correct, right, complete = physics.pairing_outcome(pred, truth, [[0], [1]])
    assert matchable.tolist() == [True, True, False, True]
    assert correct.tolist() == [True, False, False, True]
    assert right.tolist() == [2, 0, 1, 2] and complete.tolist() == [2, 2, 1, 2]
    w = np.ones(4)
    assert physics.efficiency(correct, w, matchable) == pytest.approx(2 / 3)  # over matchable events
    assert physics.efficiency(correct, w) == pytest.approx(2 / 4)  # over all events
    # H -> aa: pairs are sets, and the a's are interchangeable
    truth4 = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    pred4 = np.array([[3, 2, 1, 0], [0, 2, 1, 3], [0, 1, 3, 2]])
    _, ok4, right4, _ = physics.pairing_outcome(pred4, truth4, [[0, 1], [2, 3]], interchangeable=True)
    assert ok4.tolist() == [True, False, True] and right4.tolist() == [2, 0, 2]
    _, strict, _, _ = physics.pairing_outcome(pred4, truth4, [[0, 1], [2, 3]], interchangeable=False)
    assert strict.tolist() == [False, False, True]


def test_rejection_at_fixed_signal_efficiency():
    # 4 signal, 4 background; a cut keeping the best signal event keeps 1 of 4 background events
    is_signal = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    score = np.array([0.95, 0.7, 0.6, 0.5, 0.99, 0.3, 0.2, 0.1])
    assert physics.rejection_at(is_signal, score, np.ones(8), 0.25) == pytest.approx(4.0)
    assert physics.rejection_at(is_signal, score, np.ones(8), 1.0) == pytest.approx(1.0)


def _dilepton_event(b_t, b_tbar, extra_jet):
    """l+, l-, two b-tagged jets (b of t, b of tbar; given as (pt, eta, phi)) and an untagged jet."""
    rows = [
        massless(60, 0.0, 0.0, lep=1, charge=1),
        massless(50, 0.0, np.pi, lep=1, charge=-1),
        massless(*b_t, btag=1),
        massless(*b_tbar, btag=1),
        massless(*extra_jet, btag=0),
    ]
    objects = np.zeros((1, SCHEMA.max_objects, 7), np.float32)
    objects[0, : len(rows)] = rows
    mask = np.zeros((1, SCHEMA.max_objects), bool)
    mask[0, : len(rows)] = True
    return objects, mask


def test_min_mlb_baseline_picks_the_right_pairing():
    # b of t near the l+ (small m(l+ b)), b of tbar near the l-; a hard untagged jet is ignored
    objects, mask = _dilepton_event((45, 0.3, 0.4), (40, -0.2, np.pi - 0.3), (200, 0.0, 1.5))
    assert physics.min_mlb_pairing(SCHEMA, objects, mask).tolist() == [[2, 3]]
    swapped, mask = _dilepton_event((40, -0.2, np.pi - 0.3), (45, 0.3, 0.4), (200, 0.0, 1.5))
    assert physics.min_mlb_pairing(SCHEMA, swapped, mask).tolist() == [[3, 2]]
    mask[0, 3:] = False  # one jet only: no pairing
    assert physics.min_mlb_pairing(SCHEMA, swapped, mask).tolist() == [[-1, -1]]


def test_w_mass_neutrino_estimate_solves_the_constraint():
    lep = np.array([p4(30.0, 10.0, 20.0), p4(-25.0, 5.0, -40.0)])  # l+, l- of one event
    nu_t = np.array([15.0, -20.0])
    met = np.hypot(*(2 * nu_t))
    nus = physics.w_constrained_neutrinos(lep[:1], lep[1:], np.array([met]), np.array([np.arctan2(-40.0, 30.0)]))
    for k in range(2):
        nu = p4(*nus[0, k])
        np.testing.assert_allclose(nus[0, k, :2], nu_t, atol=1e-9)
        assert physics.mass(lep[k] + nu) == pytest.approx(physics.M_W, rel=1e-6)


# --------------------------------------------------------------------------------------------
# metrics on an Evaluation
# --------------------------------------------------------------------------------------------
def _evaluation():
    objects, mask = _dilepton_event((45, 0.3, 0.4), (40, -0.2, np.pi - 0.3), (200, 0.0, 1.5))
    n = 4
    objects, mask = np.repeat(objects, n, 0), np.repeat(mask, n, 0)
    assignment = np.full((n, 12), -1, np.int8)
    assignment[:, 0], assignment[:, 4] = 2, 3
    assignment[3, 4] = -1  # not matchable
    pred = np.full((n, 5), -1)
    pred[:, 0], pred[:, 4] = 2, 3
    pred[1, 0], pred[1, 4] = 3, 2  # wrong
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    globals_ = np.zeros((n, SCHEMA.n_global_features), np.float32)
    return Evaluation(
        schema=SCHEMA,
        objects=objects,
        mask=mask,
        globals=globals_,
        weights=np.ones(n),
        targets={"assignment": assignment, "process": np.array([0, 1, 0, 1])},
        outputs={"assignment": {"assignment": pred}, "process": {"probabilities": probs}},
        heads={"assignment": {"name": "assignment", "params": {}}, "process": {"name": "classification", "params": {}}},
        processes=["bkg", "sig"],
    )


def test_metric_plugins_on_an_evaluation(tmp_path):
    ev = _evaluation()
    specs = [
        Component(name="pairing", params={"groups": [[0], [4]], "baseline": "min_mlb", "multiplicity": [3, 4]}),
        Component(name="roc_auc", params={"signal": ["sig"], "signal_efficiency": 0.5}),
        Component(name="accuracy"),
    ]
    results, files = score(ev, specs, tmp_path)
    p = results["pairing"]
    assert p["eff_matchable"] == pytest.approx(2 / 3) and p["eff_all"] == pytest.approx(2 / 4)
    assert p["baseline_eff_matchable"] == 1.0 and p["baseline_eff_all"] == pytest.approx(3 / 4)
    assert p["matchable_fraction"] == pytest.approx(3 / 4) and p["eff_all_nj<=3"] == pytest.approx(2 / 4)
    assert p["pair_purity"] == pytest.approx(5 / 7) and p["baseline_pair_purity"] == 1.0  # per true resonance
    assert results["roc_auc"]["auc"] == 1.0 and results["accuracy"]["accuracy"] == 1.0
    assert results["roc_auc"]["rejection"] == float("inf") and np.isnan(results["roc_auc"]["rejection_error"])
    assert {f.name for f in files} == {"pairing_efficiency.png", "roc.png"} and all(f.stat().st_size for f in files)

    bad = [Component(name="roc_auc", params={"signal": ["nope"]})]
    with pytest.raises(Exception, match=r"metrics.0.*unknown process 'nope'"):
        score(ev, bad, None, "task.yaml")


# --------------------------------------------------------------------------------------------
# study end to end (synthetic toy events, tiny model)
# --------------------------------------------------------------------------------------------
TINY = ["--set", "model.preset=tiny", "--set", "train.batch_size=128", "--set", "train.val_batches=2"]


def test_study_end_to_end_resumes_and_tabulates(tmp_path, cli, demo_store):
    data = demo_store.path
    task = ROOT_TASKS / "demo_classify.yaml"
    pre = tmp_path / "pre"
    r = cli("finetune", task, "--data", data, "--out", pre, *TINY, "--set", "train.max_steps=6")
    assert r.exit_code == 0, r.stderr

    # evaluate: metrics.json and plots
    r = cli("evaluate", pre, "--max-events", 500)
    assert r.exit_code == 0, r.stderr
    record = json.loads((pre / "eval" / "metrics.json").read_text())
    assert record["n_events"] == 500 and 0 <= record["metrics"]["roc_auc"]["auc"] <= 1
    assert (pre / "eval" / "plots" / "roc_auc" / "roc.png").stat().st_size > 0

    out = tmp_path / "study"
    args = ["study", task, "--pretrained", pre, "--fractions", "1,0.5", "--seeds", 2, "--out", out]
    args += ["--max-events", 300, *TINY, "--set", f"dataset.params.path={data}", "--set", "train.max_steps=4"]
    args += ["--set", "train.backbone_lr_scale=0.1", "--set", "train.backbone_frozen_steps=2"]
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    rows = json.loads((out / "table.json").read_text())
    cells = {(row["figure"], row["mode"], row["fraction"]): row["seeds"] for row in rows}
    for figure in ("roc_auc/auc", "roc_auc/rejection", "accuracy/accuracy"):
        for mode in ("pretrained", "scratch"):
            for fraction in (1.0, 0.5):
                assert cells[(figure, mode, fraction)] == 2, (figure, mode, fraction)
    assert "roc_auc/auc" in (out / "table.md").read_text() and (out / "plots" / "roc_auc__auc.png").exists()
    # the protocol, and per cell the steps, best step, events seen and fine-tune FLOPs
    spec = json.loads((out / "study.json").read_text())
    assert spec["protocol"]["name"] == "converged" and spec["protocol"]["max_steps"] == 4
    assert spec["protocol"]["early_stopping"]["patience"] == 5 and len(spec["cells"]) == 8
    for cell in spec["cells"].values():
        assert cell["steps"] == 4 and cell["best_step"] == 4 and cell["events_seen"] == 4 * 128 and cell["flops"] > 0
    assert cells[("compute/flops", "scratch", 0.5)] == 2 and "compute/events_seen" in (out / "table.md").read_text()
    pre_cell = out / "cells" / "pretrained-f0.5-s1"
    assert json.loads((pre_cell / "run" / "init_report.json").read_text())["loaded"]
    assert not (out / "cells" / "scratch-f0.5-s1" / "run" / "init_report.json").exists()

    # a second run reruns nothing; a cell whose evaluation is missing is only re-evaluated
    ckpt = pre_cell / "run" / "checkpoints" / "last.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    (out / "cells" / "scratch-f1-s0" / "eval" / "metrics.json").unlink()
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("finished, kept") == 7 and ckpt.stat().st_mtime_ns == stamp
    assert (out / "cells" / "scratch-f1-s0" / "eval" / "metrics.json").exists()

    # the table reloads in a fresh process
    code = "import json,sys; print(len(json.load(open(sys.argv[1]))))"
    assert int(run_python(code, out / "table.json").stdout) == len(rows)

    # a study written before a task field or protocol key existed continues (the field's default
    # is what the older code did); another task in the same folder is refused in one line
    older = json.loads((out / "study.json").read_text())
    del older["task"]["model"]["dropout"], older["protocol"]["scratch_backbone_frozen_steps"]
    (out / "study.json").write_text(json.dumps(older))
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("finished, kept") == 8
    other = [a if a != "train.max_steps=4" else "train.max_steps=5" for a in args]
    assert_one_line_error(cli(*other), "study.json", "another task")
    # scratch cells train the whole network at the full learning rate
    assert "backbone_lr_scale: 1.0" in (out / "cells" / "scratch-f1-s0" / "run" / "task.yaml").read_text()
    assert "backbone_lr_scale: 0.1" in (pre_cell / "run" / "task.yaml").read_text()
    assert "backbone_frozen_steps: 0" in (out / "cells" / "scratch-f1-s0" / "run" / "task.yaml").read_text()
    assert "backbone_frozen_steps: 2" in (pre_cell / "run" / "task.yaml").read_text()


def test_event_purity_per_process_and_roc_against_named_backgrounds():
    ev = _evaluation()  # events: bkg right, sig wrong, bkg right, sig not matchable
    spec = {"groups": [[0], [4]], "processes": ["bkg", "sig"], "per_process": True, "multiplicity": [3, 4]}
    p, _ = score(ev, [Component(name="pairing", params=spec)])
    p = p["pairing"]
    assert p["event_purity_bkg"] == 1.0 and p["n_matchable_bkg"] == 2
    assert p["event_purity_sig"] == 0.0 and p["n_matchable_sig"] == 1  # the unmatchable event does not count
    assert p["eff_matchable"] == pytest.approx(2 / 3)  # all processes together
    with pytest.raises(Exception, match="per_process"):
        score(ev, [Component(name="pairing", params={"groups": [[0], [4]], "per_process": True})])

    # a third process that is neither signal nor named background is left out of the ROC
    ev.targets["process"] = np.array([0, 1, 2, 1])
    ev.processes.append("other")
    ev.outputs["process"]["probabilities"] = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.1, 0.9, 0]])
    mixed, _ = score(ev, [Component(name="roc_auc", params={"signal": ["sig"]})])
    only_bkg, _ = score(ev, [Component(name="roc_auc", params={"signal": ["sig"], "background": ["bkg"]})])
    assert mixed["roc_auc"]["auc"] < 1.0 and only_bkg["roc_auc"]["auc"] == 1.0
    # a metric named twice reports under the keys the task gives it
    from hepfm.tasks import MetricSpec

    keyed = [MetricSpec(name="roc_auc", params={"signal": ["sig"]}), MetricSpec(name="roc_auc", key="sig_vs_bkg")]
    keyed[1].params = {"signal": ["sig"], "background": ["bkg"]}
    both, _ = score(ev, keyed)
    assert set(both) == {"roc_auc", "sig_vs_bkg"} and both["sig_vs_bkg"]["auc"] == 1.0
    with pytest.raises(Exception, match="two metrics report under the key 'roc_auc'"):
        score(ev, [MetricSpec(name="roc_auc", params={"signal": ["sig"]}), MetricSpec(name="accuracy", key="roc_auc")])


def test_small_study_cells_validate_often_enough_to_find_their_best():
    from hepfm.study import _cell_val_every
    from hepfm.tasks import load_task

    task = load_task(ROOT_TASKS / "qe_ttbar.yaml", ["train.val_every=100", "train.batch_size=256"])
    # 17k events: the task's cadence; 1.7k (6 steps an epoch): every 5 epochs; 500: every 25 steps
    assert [_cell_val_every(task, n) for n in (17237, 1724, 517, 100)] == [100, 30, 25, 25]
