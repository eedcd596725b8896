"""hepfm convert / export: Delphes ROOT, Parquet and SPANet HDF5 files written here, round trips."""

import math

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import assert_one_line_error
from convert_inputs import (
    PARQUET_MAP,
    SCHEMA,
    F,
    delphes_events,
    delphes_truth,
    energy,
    expected_event,
    make_store,
    parquet_table,
    write_delphes,
    write_spanet,
)

from hepfm import EventStore, compute_globals
from hepfm.convert import convert_files


def test_delphes_round_trip_every_feature(tmp_path, cli):
    events = delphes_events(700, seed=1)
    write_delphes(tmp_path / "ttbar.root", events)
    out = tmp_path / "d.zarr"
    r = cli("convert", tmp_path / "ttbar.root", "--format", "delphes", "--out", out, "--chunk-events", 256)
    assert r.exit_code == 0, r.stderr
    assert "wrote 700 events" in r.stdout and "events/s" in r.stdout
    assert "1 events had more than 18 objects" in r.stderr  # event 0: 20 jets + leptons
    store = EventStore.open(out)
    data = store.read(0, 700)
    objects, mask = delphes_truth(events)
    np.testing.assert_array_equal(data["mask"], mask)
    np.testing.assert_allclose(data["objects"], objects, rtol=1e-5, atol=1e-5)
    assert (np.diff(np.where(mask, data["objects"][..., F["pt"]], -1), axis=1) <= 0).all()  # pT-ordered
    met = np.array([np.float32(e["met"][0]) for e in events])
    met_phi = np.array([np.float32(e["met"][1]) for e in events])
    np.testing.assert_allclose(
        data["globals"], compute_globals(SCHEMA, objects, mask, met, met_phi), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_array_equal(data["weights"], np.ones(700, np.float32))  # weight branch not asked for

    # the same events with Jet_PT-style names, another b-tag bit and the weights, through a mapping
    write_delphes(tmp_path / "flat.root", events, sep="_")
    mapping = tmp_path / "delphes.yaml"
    mapping.write_text("separator: _\nbtag_bit: 1\nweight: Event_Weight\n")
    res = convert_files([tmp_path / "flat.root"], "delphes", tmp_path / "e.zarr", mapping=mapping)
    data = res.store.read(0, 700)
    objects1, _ = delphes_truth(events, btag_bit=1)
    np.testing.assert_allclose(data["objects"], objects1, rtol=1e-5, atol=1e-5)
    assert (objects1[..., F["btag"]] != objects[..., F["btag"]]).any()
    np.testing.assert_array_equal(data["weights"], np.array([e["weight"] for e in events], np.float32))
    assert res.store.provenance["converter"] == "delphes" and res.store.provenance["params"]["btag_bit"] == 1


def test_delphes_two_inputs_labelled_and_interleaved(tmp_path, cli):
    write_delphes(tmp_path / "sig.root", delphes_events(300, seed=2))
    write_delphes(tmp_path / "bkg.root", delphes_events(900, seed=3))
    out = tmp_path / "mix.zarr"
    r = cli(
        "convert", tmp_path / "sig.root", tmp_path / "bkg.root", "--format", "delphes", "--out", out,
        "--process", "ttbar", "--process", "qcd", "--chunk-events", 200,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    store = EventStore.open(out)
    assert store.processes == ["ttbar", "qcd"] and store.n_events == 1200
    labels = store.read(0, 1200, ["targets/process"])["targets/process"]
    assert (labels == 0).sum() == 300
    per_chunk = labels.reshape(6, 200)
    assert ((per_chunk == 0).sum(1) == 50).all()  # every chunk holds both inputs, 1:3


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


def test_parquet_round_trip_every_feature_and_target(tmp_path, cli):
    n = 600
    table, cols, njet, nlep = parquet_table(n, seed=5)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=128)
    (tmp_path / "map.yaml").write_text(PARQUET_MAP)
    out = tmp_path / "p.zarr"
    r = cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--map", tmp_path / "map.yaml", "--out", out)
    assert r.exit_code == 0, r.stderr
    store = EventStore.open(out)
    d = store.read(0, n)
    assert store.processes == ["ttbar", "wjets"]
    assert store.topology == {"resonances": {"t": ["b", "l"]}, "permutations": {}}
    for ev in range(n):
        slots = []  # (slot index, feature tuple) in mapping order: jets 0..3, leptons 4..5
        for i in range(1, 5):
            if njet[ev] >= i:
                pt, eta, m = cols[f"jet{i}_pt"][ev], cols[f"jet{i}_eta"][ev], cols[f"jet{i}_m"][ev]
                slots.append(
                    (i - 1, (energy(pt, eta, m), pt, eta, cols[f"jet{i}_phi"][ev], cols[f"jet{i}_btag"][ev], 0, 0))
                )
        for k in range(nlep[ev]):
            f = [cols[c][ev][k] for c in ("lep_e", "lep_pt", "lep_eta", "lep_phi")]
            slots.append((4 + k, (*f, 0, 1, cols["lep_q"][ev][k])))
        x, m = expected_event([o for _, o in slots])
        np.testing.assert_array_equal(d["mask"][ev], m)
        np.testing.assert_allclose(d["objects"][ev], x, rtol=1e-5, atol=1e-4)
        # the assignment points at the same physical object after pT ordering
        by_slot = dict(slots)
        for k, col in enumerate(("t_b", "t_l")):
            old, new = cols[col][ev], d["targets/assignment/t"][ev, k]
            if old < 0:
                assert new == -1
            else:
                assert d["objects"][ev, new, F["pt"]] == pytest.approx(by_slot[old][1], rel=1e-6)
    assert (d["targets/assignment/t"] >= 0).sum() > n // 2
    np.testing.assert_array_equal(d["targets/process"], (cols["proc"] == "wjets").astype(np.int32))
    np.testing.assert_allclose(d["weights"], cols["w"], rtol=1e-6)
    np.testing.assert_allclose(d["targets/m_tt"], cols["mtt"], rtol=1e-6)
    np.testing.assert_array_equal(d["targets/nu"], np.stack([cols["nu_px"], cols["nu_py"]], 1))
    assert d["targets/nu"].dtype == np.float64
    g = compute_globals(SCHEMA, d["objects"], d["mask"], cols["met"], cols["met_phi"])
    np.testing.assert_allclose(d["globals"], g, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# SPANet
# --------------------------------------------------------------------------------------------


def test_spanet_in_the_wild_derives_features_and_repoints_targets(tmp_path):
    n = 500
    src = write_spanet(tmp_path / "ttbar.h5", n, seed=7)
    mapping = tmp_path / "m.yaml"
    mapping.write_text("process: CLASSIFICATIONS/EVENT/signal\nprocesses: [background, signal]\n")
    res = convert_files([tmp_path / "ttbar.h5"], "spanet", tmp_path / "s.zarr", mapping=mapping, step_events=128)
    store = res.store
    d = store.read(0, n)
    assert store.topology == {
        "resonances": {"t1": ["b", "q1", "q2"], "t2": ["b", "l"]},
        "permutations": {"t1": [["q1", "q2"]]},
    }
    assert store.processes == ["background", "signal"]
    assert set(store.targets) == {"process", "assignment/t1", "assignment/t2", "m_tt", "t1/pt"}
    np.testing.assert_array_equal(d["targets/process"], src["CLASSIFICATIONS/EVENT/signal"])
    np.testing.assert_array_equal(d["targets/m_tt"], src["REGRESSIONS/EVENT/m_tt"])
    np.testing.assert_array_equal(d["targets/t1/pt"], src["REGRESSIONS/t1/PARTICLE/pt"])
    for ev in range(n):
        objs = []
        for j in range(8):
            if src["INPUTS/Jets/MASK"][ev, j]:
                pt, eta = (float(src[f"INPUTS/Jets/{k}"][ev, j]) for k in ("pt", "eta"))
                phi = math.atan2(src["INPUTS/Jets/sin_phi"][ev, j], src["INPUTS/Jets/cos_phi"][ev, j])
                e = energy(pt, eta, float(src["INPUTS/Jets/mass"][ev, j]))
                objs.append((e, pt, eta, phi, src["INPUTS/Jets/btag"][ev, j], 0, 0))
        for j in range(2):
            if src["INPUTS/Leptons/MASK"][ev, j]:
                pt, eta, phi, m, q = (
                    float(src[f"INPUTS/Leptons/{k}"][ev, j]) for k in ("pt", "eta", "phi", "mass", "charge")
                )
                objs.append((energy(pt, eta, m), pt, eta, phi, 0, 1, q))
        x, m = expected_event(objs)
        np.testing.assert_array_equal(d["mask"][ev], m)
        np.testing.assert_allclose(d["objects"][ev], x, rtol=1e-5, atol=1e-5)
        for particle, daughters in (("t1", ("b", "q1", "q2")), ("t2", ("b", "l"))):
            for k, dname in enumerate(daughters):
                old, new = src[f"TARGETS/{particle}/{dname}"][ev], d[f"targets/assignment/{particle}"][ev, k]
                if old < 0:
                    assert new == -1
                    continue
                group, j = ("Jets", old) if old < 8 else ("Leptons", old - 8)
                assert d["objects"][ev, new, F["pt"]] == src[f"INPUTS/{group}/pt"][ev, j]
    met, phi = src["INPUTS/Met/met"], src["INPUTS/Met/phi"]
    np.testing.assert_allclose(d["globals"], compute_globals(SCHEMA, d["objects"], d["mask"], met, phi), rtol=1e-5)


def test_export_spanet_then_convert_back_is_identity(tmp_path, cli):
    a = make_store(tmp_path / "a.zarr", n=5000)
    h5 = tmp_path / "out" / "a.h5"
    r = cli("export", a.path, "--format", "spanet", "--out", h5)
    assert r.exit_code == 0, r.stderr
    assert "wrote 5000 events" in r.stdout
    # SPANet's own layout, readable without hepfm
    event = yaml.safe_load(h5.with_suffix(".yaml").read_text())
    assert event["EVENT"] == {"t1": ["b", "q1", "q2"], "t2": ["b", "q1", "q2"]}
    assert event["PERMUTATIONS"]["EVENT"] == [["t1", "t2"]]
    assert event["REGRESSIONS"] == {"EVENT": ["m_tt"], "t1": [{"PARTICLE": ["pt"]}]}
    assert event["CLASSIFICATIONS"] == {"EVENT": ["process", "n_b"]}
    assert list(event["INPUTS"]["SEQUENTIAL"]["Source"]) == SCHEMA.object_names
    with h5py.File(h5) as f:
        mask = f["INPUTS/Source/MASK"][:]
        assert mask.shape == (5000, 18) and mask.dtype == bool
        np.testing.assert_array_equal(mask, a.read(0, 5000, ["mask"])["mask"])
        t1 = a.read(0, 5000, ["targets/assignment/t1"])["targets/assignment/t1"]
        np.testing.assert_array_equal(f["TARGETS/t1/q2"][:], t1[:, 2])
        assert f["TARGETS/t1/q2"].dtype == np.int64 and f["CLASSIFICATIONS/EVENT/process"].dtype == np.int64
        assert f["INPUTS/Globals/met"].shape == (5000,)
    assert not list(h5.parent.glob("*.partial"))

    r = cli("convert", h5, "--format", "spanet", "--out", tmp_path / "b.zarr", "--chunk-events", 1024)
    assert r.exit_code == 0, r.stderr
    b = EventStore.open(tmp_path / "b.zarr")
    assert b.targets == a.targets and b.topology == a.topology and b.processes == a.processes
    assert b.array_names == a.array_names
    for name in a.array_names:
        x, y = a.read(0, 5000, [name])[name], b.read(0, 5000, [name])[name]
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    # exporting again over it needs --overwrite
    assert_one_line_error(cli("export", a.path, "--format", "spanet", "--out", h5), str(h5), "--overwrite")
    assert cli("export", a.path, "--format", "spanet", "--out", h5, "--overwrite").exit_code == 0
