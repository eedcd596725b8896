"""hepfm convert / export: Delphes ROOT, Parquet and SPANet HDF5 files written here, round trips, errors, memory."""

import json
import math
import subprocess
import sys
import textwrap

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
import yaml
from conftest import assert_one_line_error, run_python

from hepfm import EventBlock, EventSchema, EventStore, HepfmError, StoreError, StoreWriter, compute_globals
from hepfm.convert import convert_files, export_spanet, plan_conversion, run_conversion

SCHEMA = EventSchema()
F = {name: i for i, name in enumerate(SCHEMA.object_names)}
ELECTRON_MASS, MUON_MASS = 0.000511, 0.105658


def energy(pt, eta, m):
    return math.sqrt((pt * math.cosh(eta)) ** 2 + m**2)


def expected_event(objects, n_max=18):
    """Objects as (E, pt, eta, phi, btag, is_lepton, charge) tuples -> padded [N, F] and mask, pT-descending."""
    objects = sorted(objects, key=lambda o: -o[1])[:n_max]
    x = np.zeros((n_max, 7), np.float32)
    m = np.zeros(n_max, bool)
    for i, o in enumerate(objects):
        x[i], m[i] = o, True
    return x, m


def assert_one_error_after_plan(result, *needles):
    """A failure after the plan line was logged: exit 1, no traceback, exactly one `error:` line naming what it must."""
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.error_lines if line.startswith("error:")]
    assert len(errors) == 1 and len(result.error_lines) <= 2, result.error_lines
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])


# --------------------------------------------------------------------------------------------
# Delphes
# --------------------------------------------------------------------------------------------
def delphes_events(n, seed):
    """Random Delphes-like events as python lists (the truth the test compares against)."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        nj = 20 if i == 0 else int(rng.integers(0, 8))  # event 0 has more than 18 objects
        ne, nm = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        events.append(
            {
                "jet": [
                    (
                        float(rng.uniform(20, 300)),
                        float(rng.uniform(-2.5, 2.5)),
                        float(rng.uniform(-3.1, 3.1)),
                        float(rng.uniform(2, 30)),
                        int(rng.integers(0, 4)),
                    )
                    for _ in range(nj)
                ],
                "electron": [
                    (
                        float(rng.uniform(10, 200)),
                        float(rng.uniform(-2.5, 2.5)),
                        float(rng.uniform(-3.1, 3.1)),
                        int(rng.choice([-1, 1])),
                    )
                    for _ in range(ne)
                ],
                "muon": [
                    (
                        float(rng.uniform(10, 200)),
                        float(rng.uniform(-2.5, 2.5)),
                        float(rng.uniform(-3.1, 3.1)),
                        int(rng.choice([-1, 1])),
                    )
                    for _ in range(nm)
                ],
                "met": (float(rng.exponential(40)), float(rng.uniform(-3.1, 3.1))),
                "weight": float(rng.uniform(0.5, 2.0)),
            }
        )
    return events


def write_delphes(path, events, sep=".", drop=(), tree="Delphes", chunk=None):
    """A Delphes-like TTree with uproot: jagged branches named like Delphes' split ones (Jet.PT, ...)."""

    def jagged(coll, k, dtype):
        counts = [len(e[coll]) for e in events]
        flat = np.asarray([o[k] for e in events for o in e[coll]], dtype)
        return ak.unflatten(flat, counts)

    def single(values):
        return ak.unflatten(np.asarray(values, np.float32), np.ones(len(events), np.int64))

    branches = {}
    for k, f in enumerate(("PT", "Eta", "Phi", "Mass")):
        branches[f"Jet{sep}{f}"] = jagged("jet", k, np.float32)
    branches[f"Jet{sep}BTag"] = jagged("jet", 4, np.uint32)
    for coll, name in (("electron", "Electron"), ("muon", "Muon")):
        for k, f in enumerate(("PT", "Eta", "Phi")):
            branches[f"{name}{sep}{f}"] = jagged(coll, k, np.float32)
        branches[f"{name}{sep}Charge"] = jagged(coll, 3, np.int32)
    branches[f"MissingET{sep}MET"] = single([e["met"][0] for e in events])
    branches[f"MissingET{sep}Phi"] = single([e["met"][1] for e in events])
    branches[f"Event{sep}Weight"] = single([e["weight"] for e in events])
    for name in drop:
        branches.pop(name)
    write_tree(path, tree, branches)


def write_tree(path, tree, branches):
    """A TTree (uproot's f[name] = ... would write an RNTuple) with one counter per jagged branch."""
    types = {k: f"var * {v.type.content.content}" for k, v in branches.items()}
    with uproot.recreate(path) as f:
        t = f.mktree(tree, types)
        t.extend(branches)


def delphes_truth(events, btag_bit=0):
    f32 = lambda v: float(np.float32(v))  # noqa: E731  (the file stores float32)
    xs, ms = [], []
    for e in events:
        objs = [
            (energy(f32(pt), f32(eta), f32(m)), f32(pt), f32(eta), f32(phi), (b >> btag_bit) & 1, 0, 0)
            for pt, eta, phi, m, b in e["jet"]
        ]
        for coll, mass in (("electron", ELECTRON_MASS), ("muon", MUON_MASS)):
            objs += [
                (energy(f32(pt), f32(eta), mass), f32(pt), f32(eta), f32(phi), 0, 1, q) for pt, eta, phi, q in e[coll]
            ]
        x, m = expected_event(objs)
        xs.append(x)
        ms.append(m)
    return np.stack(xs), np.stack(ms)


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
PARQUET_MAP = """\
objects:
  jets:                       # per-object columns jet1_pt ... jet4_pt
    kind: jet
    count: 4
    features: {pt: "jet{i}_pt", eta: "jet{i}_eta", phi: "jet{i}_phi", mass: "jet{i}_m", btag: "jet{i}_btag"}
  leptons:                    # list columns
    kind: lepton
    max: 2
    features: {pt: lep_pt, eta: lep_eta, phi: lep_phi, E: lep_e, charge: lep_q}
met: met
met_phi: met_phi
weight: w
process: proc
processes: [ttbar, wjets]
targets:
  m_tt: mtt
  nu: {columns: [nu_px, nu_py], dtype: float64}
assignments:
  t: {b: t_b, l: t_l}
permutations: {}
"""


def parquet_table(n, seed):
    rng = np.random.default_rng(seed)
    cols = {}
    njet = rng.integers(0, 5, n)
    for i in range(1, 5):
        present = njet >= i
        pt = np.where(present, rng.uniform(20, 300, n), 0.0)
        cols[f"jet{i}_pt"] = pt
        cols[f"jet{i}_eta"] = np.where(present, rng.uniform(-2.5, 2.5, n), np.nan)  # padding may be NaN
        cols[f"jet{i}_phi"] = rng.uniform(-3, 3, n)
        cols[f"jet{i}_m"] = rng.uniform(2, 20, n)
        cols[f"jet{i}_btag"] = rng.uniform(0, 1, n)
    nlep = rng.integers(0, 3, n)
    offsets = np.concatenate([[0], np.cumsum(nlep)]).astype(np.int32)
    lists = {}
    for name, lo, hi in (("lep_pt", 10, 200), ("lep_eta", -2.5, 2.5), ("lep_phi", -3, 3), ("lep_e", 200, 400)):
        lists[name] = rng.uniform(lo, hi, offsets[-1])
    lists["lep_q"] = rng.choice([-1.0, 1.0], offsets[-1])
    for name, flat in lists.items():
        cols[name] = pa.ListArray.from_arrays(offsets, flat)
    cols["met"] = rng.exponential(30, n)
    cols["met_phi"] = rng.uniform(-3, 3, n)
    cols["w"] = rng.uniform(0.1, 1, n)
    cols["proc"] = rng.choice(["ttbar", "wjets"], n)
    cols["mtt"] = rng.uniform(300, 900, n)
    cols["nu_px"], cols["nu_py"] = rng.normal(size=n), rng.normal(size=n)
    # t -> b l: a jet slot (0..3) and a lepton slot (4..5), or -1
    cols["t_b"] = np.where(njet > 0, rng.integers(0, 4, n) % np.maximum(njet, 1), -1)
    cols["t_l"] = np.where(nlep > 0, 4 + rng.integers(0, 2, n) % np.maximum(nlep, 1), -1)
    table = pa.table(cols)
    for name, flat in lists.items():  # per-row lists for the checks
        cols[name] = np.split(flat, offsets[1:-1])
    return table, cols, njet, nlep


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
SPANET_YAML = {
    "INPUTS": {
        "SEQUENTIAL": {
            "Jets": {
                "mass": "log_normalize",
                "pt": "log_normalize",
                "eta": "normalize",
                "sin_phi": "none",
                "cos_phi": "none",
                "btag": "none",
            },
            "Leptons": {
                "pt": "log_normalize",
                "eta": "normalize",
                "phi": "normalize",
                "mass": "none",
                "charge": "none",
            },
        },  # fmt: skip
        "GLOBAL": {"Met": {"met": "log_normalize", "phi": "normalize"}},
    },
    "EVENT": {"t1": ["b", "q1", "q2"], "t2": ["b", "l"]},
    "PERMUTATIONS": {"t1": [["q1", "q2"]]},
    "REGRESSIONS": {"EVENT": ["m_tt"], "t1": [{"PARTICLE": ["pt"]}]},
    "CLASSIFICATIONS": {"EVENT": ["signal"]},
}


def write_spanet(path, n, seed, lengths=None, extra=None, drop=()):
    """A SPANet file in the wild: unsorted jets with mass and sin/cos(phi), a lepton input, unsorted slots."""
    rng = np.random.default_rng(seed)
    lengths = lengths or {}
    nj, nl = rng.integers(3, 9, n), rng.integers(1, 3, n)
    jm = np.arange(8)[None] < nj[:, None]
    lm = np.arange(2)[None] < nl[:, None]
    phi_j = rng.uniform(-3, 3, (n, 8))
    data = {
        "INPUTS/Jets/MASK": jm,
        "INPUTS/Jets/pt": np.where(jm, rng.uniform(20, 400, (n, 8)), 0).astype(np.float32),
        "INPUTS/Jets/eta": np.where(jm, rng.uniform(-2.5, 2.5, (n, 8)), 0).astype(np.float32),
        "INPUTS/Jets/sin_phi": np.sin(phi_j).astype(np.float32),
        "INPUTS/Jets/cos_phi": np.cos(phi_j).astype(np.float32),
        "INPUTS/Jets/mass": rng.uniform(3, 25, (n, 8)).astype(np.float32),
        "INPUTS/Jets/btag": rng.integers(0, 2, (n, 8)).astype(np.float32),
        "INPUTS/Leptons/MASK": lm,
        "INPUTS/Leptons/pt": np.where(lm, rng.uniform(10, 300, (n, 2)), 0).astype(np.float32),
        "INPUTS/Leptons/eta": rng.uniform(-2.5, 2.5, (n, 2)).astype(np.float32),
        "INPUTS/Leptons/phi": rng.uniform(-3, 3, (n, 2)).astype(np.float32),
        "INPUTS/Leptons/mass": np.full((n, 2), 0.000511, np.float32),
        "INPUTS/Leptons/charge": rng.choice([-1.0, 1.0], (n, 2)).astype(np.float32),
        "INPUTS/Met/met": rng.exponential(40, n).astype(np.float32),
        "INPUTS/Met/phi": rng.uniform(-3, 3, n).astype(np.float32),
        "REGRESSIONS/EVENT/m_tt": rng.uniform(300, 900, n).astype(np.float32),
        "REGRESSIONS/t1/PARTICLE/pt": rng.uniform(0, 300, n).astype(np.float32),
        "CLASSIFICATIONS/EVENT/signal": rng.integers(0, 2, n),
    }
    # t1 -> three distinct jets, t2 -> a jet and a lepton (offset 8), with some -1
    perm = np.argsort(rng.random((n, 8)) + ~jm * 10, axis=1)  # real jets first, in random order
    for k, d in enumerate(("b", "q1", "q2")):
        data[f"TARGETS/t1/{d}"] = np.where(rng.random(n) < 0.8, perm[:, k], -1)
    data["TARGETS/t2/b"] = np.where(nj > 3, perm[:, 3], -1)
    data["TARGETS/t2/l"] = np.where(rng.random(n) < 0.9, 8 + rng.integers(0, 2, n) % nl, -1)
    data.update(extra or {})
    for name in drop:
        data.pop(name)
    with h5py.File(path, "w") as f:
        for name, values in data.items():
            values = values[: lengths.get(name, n)]
            f.create_dataset(name, data=values)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(SPANET_YAML, sort_keys=False))
    return data


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


def make_store(path, n=5000, seed=0, chunk=1024):
    """A store with every kind of target: process, assignments + topology, scalar/particle/vector/per-object ones."""
    from hepfm.generate import generate_store

    src = generate_store({"toy_signal": 0.5, "toy_background": 0.5}, n, path.with_name("gen.zarr"), seed=seed)
    rng = np.random.default_rng(seed)
    targets = {
        "process": {"dtype": "int32", "shape": []},
        "assignment/t1": {"dtype": "int16", "shape": [3]},
        "assignment/t2": {"dtype": "int16", "shape": [3]},
        "m_tt": {"dtype": "float32", "shape": []},
        "t1/pt": {"dtype": "float64", "shape": []},
        "n_b": {"dtype": "int64", "shape": []},
        "segmentation": {"dtype": "int8", "shape": [18]},
        "invisible": {"dtype": "float32", "shape": [2, 4]},
    }
    topology = {
        "resonances": {"t1": ["b", "q1", "q2"], "t2": ["b", "q1", "q2"]},
        "permutations": {"EVENT": [["t1", "t2"]], "t1": [["q1", "q2"]], "t2": [["q1", "q2"]]},
    }
    w = StoreWriter(path, SCHEMA, targets=targets, processes=src.processes, chunk_events=chunk, topology=topology)
    for arrays in src.iter_chunks():
        b = EventBlock.from_arrays(arrays)
        k = len(b)
        idx = np.argsort(rng.random((k, 18)), axis=1)[:, :6]
        idx = np.where(idx < b.mask.sum(1)[:, None], idx, -1).astype(np.int16)
        b.weights = rng.uniform(0.5, 2, k).astype(np.float32)
        b.targets.update(
            {
                "assignment/t1": idx[:, :3],
                "assignment/t2": idx[:, 3:],
                "m_tt": rng.normal(500, 100, k).astype(np.float32),
                "t1/pt": rng.normal(100, 10, k),
                "n_b": rng.integers(0, 4, k),
                "segmentation": rng.integers(-1, 3, (k, 18)).astype(np.int8),
                "invisible": rng.normal(size=(k, 2, 4)).astype(np.float32),
            }
        )
        w.append(b)
    return w.close()


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


def test_interrupted_conversion_is_never_complete_and_resumes(tmp_path, monkeypatch):
    a = make_store(tmp_path / "a.zarr", n=6000, chunk=500)
    export_spanet(a, tmp_path / "a.h5")
    plan = plan_conversion([tmp_path / "a.h5"], "spanet", tmp_path / "b.zarr", chunk_events=500, step_events=700)
    original = plan.converter.read

    def dies_midway(self, paths, step=8192):
        for i, block in enumerate(original(self, paths, step)):
            if i == 5:
                raise KeyboardInterrupt
            yield block

    monkeypatch.setattr(plan.converter, "read", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_conversion(plan)
    with pytest.raises(StoreError, match="'complete' is missing, the write stopped after 3500 events"):
        EventStore.open(tmp_path / "b.zarr")
    monkeypatch.setattr(plan.converter, "read", original)
    plan = plan_conversion([tmp_path / "a.h5"], "spanet", tmp_path / "b.zarr", chunk_events=500, step_events=700)
    assert plan.action == "resume"
    result = run_conversion(plan)
    assert result.n_events == 2500
    b = result.store
    for name in a.array_names:
        assert np.array_equal(a.read(0, 6000, [name])[name], b.read(0, 6000, [name])[name]), name


# --------------------------------------------------------------------------------------------
# bad input: one line naming file and field; never a complete store
# --------------------------------------------------------------------------------------------
def test_bad_inputs_give_one_line(tmp_path, cli):
    ev = delphes_events(50, seed=1)
    write_delphes(tmp_path / "nobtag.root", ev, drop=("Jet.BTag",))
    out = tmp_path / "o.zarr"
    assert_one_line_error(
        cli("convert", tmp_path / "nobtag.root", "--format", "delphes", "--out", out), "nobtag.root", "'Jet.BTag'"
    )
    write_delphes(tmp_path / "tree.root", ev, tree="events")
    assert_one_line_error(
        cli("convert", tmp_path / "tree.root", "--format", "delphes", "--out", out), "tree.root", "'Delphes'", "events"
    )
    assert_one_line_error(cli("convert", tmp_path / "x.root", "--format", "delphes", "--out", out), "x.root")
    assert_one_line_error(
        cli("convert", tmp_path / "tree.root", "--format", "nope", "--out", out), "nope", "delphes, parquet, spanet"
    )
    assert_one_line_error(
        cli(
            "convert", tmp_path / "nobtag.root", "--format", "delphes", "--out", out, "--process", "a", "--process", "b"
        ),
        "--process",
    )

    # parquet: a missing column, a mapping key that cannot work, a broken YAML
    table, _, _, _ = parquet_table(40, seed=2)
    pq.write_table(table.drop_columns(["lep_q"]), tmp_path / "t.parquet")
    (tmp_path / "map.yaml").write_text(PARQUET_MAP)
    assert_one_line_error(cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--out", out), "--map")
    assert_one_line_error(
        cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--map", tmp_path / "map.yaml", "--out", out),
        "t.parquet",
        "'lep_q'",
        "objects.leptons.features.charge",
    )
    (tmp_path / "bad.yaml").write_text(PARQUET_MAP.replace("lep_q}", "lep_q, colour: c}"))
    assert_one_line_error(
        cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--map", tmp_path / "bad.yaml", "--out", out),
        "bad.yaml:9",
        "objects.leptons.features.colour",
    )
    (tmp_path / "bad.yaml").write_text(PARQUET_MAP.replace("kind: lepton\n", "kind: lepton\n    count: two\n"))
    assert_one_line_error(
        cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--map", tmp_path / "bad.yaml", "--out", out),
        "bad.yaml:8",
        "objects.leptons.count",
    )
    (tmp_path / "bad.yaml").write_text(PARQUET_MAP.replace("met_phi: met_phi\n", ""))
    assert_one_line_error(
        cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--map", tmp_path / "bad.yaml", "--out", out),
        "bad.yaml",
        "met_phi",
    )
    (tmp_path / "bad.yaml").write_text(PARQUET_MAP.replace("permutations: {}", "permutations: {t: [[b, x]]}"))
    assert_one_line_error(
        cli("convert", tmp_path / "t.parquet", "--format", "parquet", "--map", tmp_path / "bad.yaml", "--out", out),
        "bad.yaml",
        "unknown daughter of 't' 'x'",
    )

    # spanet: mismatched lengths, an unknown target, a feature that cannot be derived
    write_spanet(tmp_path / "short.h5", 60, seed=1, lengths={"INPUTS/Jets/eta": 59})
    assert_one_line_error(
        cli("convert", tmp_path / "short.h5", "--format", "spanet", "--out", out),
        "short.h5",
        "'INPUTS/Jets/eta' has 59 events",
    )
    write_spanet(tmp_path / "extra.h5", 60, seed=1, extra={"TARGETS/h/b1": np.zeros(60, int)})
    assert_one_line_error(
        cli("convert", tmp_path / "extra.h5", "--format", "spanet", "--out", out),
        "extra.h5",
        "unknown target 'TARGETS/h'",
    )
    write_spanet(tmp_path / "nocharge.h5", 60, seed=1, drop=("INPUTS/Leptons/charge",))
    assert_one_line_error(
        cli("convert", tmp_path / "nocharge.h5", "--format", "spanet", "--out", out), "nocharge.h5", "'charge'"
    )
    (tmp_path / "fill.yaml").write_text(
        f"event_info: {tmp_path / 'nocharge.yaml'}\nfill: {{charge: 0}}\nprocess: CLASSIFICATIONS/EVENT/signal\n"
        "processes: [b, s]\n"
    )
    r = cli("convert", tmp_path / "nocharge.h5", "--format", "spanet", "--map", tmp_path / "fill.yaml", "--out", out)
    assert r.exit_code == 0, r.stderr  # an explicit fill is allowed


def test_errors_found_while_streaming_leave_the_store_incomplete(tmp_path, cli):
    # Delphes: Jet.Eta with fewer entries than Jet.PT in one event
    ev = delphes_events(300, seed=4)
    write_delphes(tmp_path / "ok.root", ev)
    with uproot.open(tmp_path / "ok.root") as f:
        branches = {k: f["Delphes"][k].array() for k in f["Delphes"].keys() if not k.startswith("n")}
    eta = branches["Jet.Eta"].tolist()
    eta[250] = eta[250][:-1] if eta[250] else [0.0, 1.0]
    branches["Jet.Eta"] = ak.values_astype(ak.Array(eta), np.float32)
    write_tree(tmp_path / "bad.root", "Delphes", branches)
    out = tmp_path / "o.zarr"
    r = cli("convert", tmp_path / "bad.root", "--format", "delphes", "--out", out, "--chunk-events", 64)
    assert_one_error_after_plan(r, "bad.root", "'Jet.Eta'", "event 250", "mismatched")
    with pytest.raises(StoreError, match="complete"):
        EventStore.open(out)

    # Parquet: list columns of different lengths in one row; a NaN in a real object
    table, cols, _, nlep = parquet_table(100, seed=3)
    row = int(np.flatnonzero(nlep > 0)[-1])
    lep_eta = table.column("lep_eta").to_pylist()
    lep_eta[row] = lep_eta[row] + [0.5]
    pq.write_table(
        table.set_column(table.schema.get_field_index("lep_eta"), "lep_eta", pa.array(lep_eta)), tmp_path / "l.parquet"
    )
    (tmp_path / "map.yaml").write_text(PARQUET_MAP)
    r = cli(
        "convert",
        tmp_path / "l.parquet",
        "--format",
        "parquet",
        "--map",
        tmp_path / "map.yaml",
        "--out",
        tmp_path / "l.zarr",
    )
    assert_one_error_after_plan(r, "l.parquet", "'lep_eta'", f"row {row}", "mismatched")
    pt = np.array(cols["jet2_pt"])
    bad_row = int(np.flatnonzero(pt > 0)[-1])
    pt_col = table.column("jet2_eta").to_numpy().copy()
    pt_col[bad_row] = np.inf
    pq.write_table(
        table.set_column(table.schema.get_field_index("jet2_eta"), "jet2_eta", pa.array(pt_col)), tmp_path / "n.parquet"
    )
    with pytest.raises(HepfmError, match=f"n.parquet: field 'jet{{i}}_eta' is inf .* event {bad_row}"):
        convert_files([tmp_path / "n.parquet"], "parquet", tmp_path / "n.zarr", mapping=tmp_path / "map.yaml")
    with pytest.raises(StoreError, match="complete"):
        EventStore.open(tmp_path / "n.zarr")

    # SPANet: an assignment index that points at a padding slot
    src = write_spanet(tmp_path / "pad.h5", 80, seed=2)
    b = src["TARGETS/t1/b"].copy()
    ev = int(np.flatnonzero(~src["INPUTS/Jets/MASK"][:, 7])[0])
    b[ev] = 7
    write_spanet(tmp_path / "pad.h5", 80, seed=2, extra={"TARGETS/t1/b": b})
    (tmp_path / "m.yaml").write_text("process: CLASSIFICATIONS/EVENT/signal\nprocesses: [b, s]\n")
    r = cli(
        "convert", tmp_path / "pad.h5", "--format", "spanet", "--map", tmp_path / "m.yaml", "--out", tmp_path / "p.zarr"
    )
    assert_one_error_after_plan(r, "pad.h5", "TARGETS/t1", f"event {ev}", "padding")


def test_converters_load_without_the_ingest_extra(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("uproot", "awkward", "h5py", "pyarrow"):
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Block())
        from typer.testing import CliRunner
        from hepfm.cli import app
        r = CliRunner().invoke(app, ["plugins", "--json"])
        assert r.exit_code == 0 and '"spanet"' in r.stdout, r.stdout
        r = CliRunner().invoke(app, ["convert", sys.argv[1], "--format", "delphes", "--out", sys.argv[2]])
        print(r.exit_code, r.stderr.strip())
        """
    )
    (tmp_path / "x.root").write_bytes(b"not really")
    out = run_python(code, tmp_path / "x.root", tmp_path / "o.zarr").stdout.strip()
    assert out.startswith("1 error:") and "pip install 'hepfm[ingest]'" in out and "uproot" in out
    assert len(out.splitlines()) == 1


# --------------------------------------------------------------------------------------------
# memory: independent of the input size
# --------------------------------------------------------------------------------------------
_PEAK = """
import os, sys, json
os.environ["HEPFM_PROGRESS"] = "0"
from hepfm.convert import convert_files
args = json.loads(sys.argv[1])
convert_files(args["inputs"], args["format"], args["out"], mapping=args.get("mapping"))
with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss is inherited over exec)
    print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) * 1024)
"""


def peak_rss(**args):
    out = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def write_big_parquet(path, n):
    writer = None
    for i, start in enumerate(range(0, n, 50_000)):
        table, _, _, _ = parquet_table(min(50_000, n - start), seed=i)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=16_384)
    writer.close()


def write_big_delphes(path, n):
    with uproot.recreate(path) as f:
        tree = None
        for i, start in enumerate(range(0, n, 50_000)):
            rng = np.random.default_rng(i)
            k = min(50_000, n - start)
            branches = {}
            for coll, mean in (("Jet", 6), ("Electron", 0.7), ("Muon", 0.7)):
                counts = rng.poisson(mean, k)
                size = int(counts.sum())
                columns = {"PT": rng.uniform(20, 300, size), "Eta": rng.uniform(-2.5, 2.5, size)}
                columns["Phi"] = rng.uniform(-3, 3, size)
                if coll == "Jet":
                    columns["Mass"] = rng.uniform(2, 30, size)
                    columns["BTag"] = rng.integers(0, 2, size).astype(np.uint32)
                else:
                    columns["Charge"] = rng.choice([-1, 1], size).astype(np.int32)
                for name, values in columns.items():
                    values = values.astype(np.float32) if values.dtype == np.float64 else values
                    branches[f"{coll}.{name}"] = ak.unflatten(values, counts)
            for name, values in (("MET", rng.exponential(40, k)), ("Phi", rng.uniform(-3, 3, k))):
                branches[f"MissingET.{name}"] = ak.unflatten(values.astype(np.float32), np.ones(k, np.int64))
            if tree is None:
                tree = f.mktree("Delphes", {k: f"var * {v.type.content.content}" for k, v in branches.items()})
            tree.extend(branches)


def test_twice_the_input_uses_about_the_same_peak_memory(tmp_path):
    n = 60_000  # loading a whole input instead of streaming it adds 170-250 MiB between the two sizes
    write_spanet(tmp_path / "small.h5", n, seed=1)
    write_spanet(tmp_path / "big.h5", 2 * n, seed=2)
    write_big_parquet(tmp_path / "small.parquet", n)
    write_big_parquet(tmp_path / "big.parquet", 2 * n)
    write_big_delphes(tmp_path / "small.root", n)
    write_big_delphes(tmp_path / "big.root", 2 * n)
    (tmp_path / "map.yaml").write_text(PARQUET_MAP)
    (tmp_path / "spanet.yaml").write_text("process: CLASSIFICATIONS/EVENT/signal\nprocesses: [b, s]\n")
    mib = 2**20
    for fmt, suffix, mapping in (
        ("delphes", "root", None),
        ("parquet", "parquet", "map.yaml"),
        ("spanet", "h5", "spanet.yaml"),
    ):
        peaks = []
        for size in ("small", "big"):
            args = {
                "inputs": [str(tmp_path / f"{size}.{suffix}")],
                "format": fmt,
                "out": str(tmp_path / f"{fmt}_{size}.zarr"),
            }
            peaks.append(peak_rss(**args, mapping=str(tmp_path / mapping) if mapping else None))
        assert EventStore.open(tmp_path / f"{fmt}_big.zarr").n_events == 2 * n
        assert peaks[1] - peaks[0] < 20 * mib, (fmt, peaks[0] / mib, peaks[1] / mib)
