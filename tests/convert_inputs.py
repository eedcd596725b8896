"""Input files written here for the convert tests: Delphes ROOT, Parquet, SPANet HDF5, a store with every target."""

import math

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import uproot
import yaml

from hepfm import EventBlock, EventSchema, StoreWriter

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
