"""The ``pythia`` generator: reproducibility, physics sanity, store invariants, resume, plots.

Small samples with multi-parton interactions off (``fast``) wherever the check does not depend on
them; every sample is generated once per module.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from conftest import ROOT, assert_one_line_error, run_python  # noqa: E402
from hepfm_builtin._pythia_events import SEGMENTS, SLOT_INDEX, SLOTS  # noqa: E402
from hepfm_builtin.pythia import PythiaGenerator  # noqa: E402

from hepfm import EventSchema, EventStore  # noqa: E402
from hepfm.report import truth_group_masses  # noqa: E402

S = SLOT_INDEX
MIX = ["ttbar_semileptonic=0.5", "zjets", "haa_4b_ma40"]
MIX_ARGS = [*MIX, "--events", 1200, "--chunk-events", 200, "--seed", 5, "--fast"]
ARRAYS = ("objects", "mask", "globals", "weights")


def _gen(fast=True, **kw):
    return PythiaGenerator(PythiaGenerator.Params(fast=fast), EventSchema(**kw))


@pytest.fixture(scope="module")
def gen():
    return _gen()


@pytest.fixture(scope="module")
def samples(gen):
    """A few thousand events of the processes with physics checks (MPI off)."""
    sizes = {
        "zjets": 1500,
        "ttbar_semileptonic": 2000,
        "ttbar_dilepton": 2000,
        "haa_4b_ma30": 1000,
        "haa_4b_ma40": 1000,
        "haa_4b_ma60": 1000,
    }
    return {p: gen.generate(p, n, seed=100 + i) for i, (p, n) in enumerate(sizes.items())}


def _p4(objects):
    e, pt, eta, phi = (objects[..., i].astype(np.float64) for i in range(4))
    return np.stack([e, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], -1)


def _mass(p):
    return np.sqrt(np.clip(p[..., 0] ** 2 - (p[..., 1:] ** 2).sum(-1), 0, None))


def _pair_mass(block, *slots):
    a = block.targets["assignment"][:, [S[s] for s in slots]].astype(np.int64)
    ok = (a >= 0).all(1)
    ev = np.flatnonzero(ok)
    return _mass(_p4(block.objects[ev[:, None], a[ok]]).sum(1))


def _mode(values, lo, hi, width):
    h, edges = np.histogram(values, bins=np.arange(lo, hi + width, width))
    h = np.convolve(h, np.ones(3), mode="same")  # light smoothing against bin-to-bin noise
    k = int(h.argmax())
    return 0.5 * (edges[k] + edges[k + 1])


def _same(a, b):
    assert set(a.targets) == set(b.targets)
    for name in ARRAYS:
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    for name in a.targets:
        assert a.targets[name].tobytes() == b.targets[name].tobytes(), name


# --------------------------------------------------------------------------------------------
# reproducibility
# --------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_reused_instances_match_fresh_ones(gen):
    first = gen.generate("ttbar_semileptonic", 150, seed=7)
    gen.generate("zjets", 90, seed=1)  # advance the cached instances
    gen.generate("ttbar_semileptonic", 60, seed=3)
    again = gen.generate("ttbar_semileptonic", 150, seed=7)
    fresh = _gen().generate("ttbar_semileptonic", 150, seed=7)
    _same(first, again)
    _same(first, fresh)
    other = gen.generate("ttbar_semileptonic", 150, seed=8)
    assert not np.array_equal(first.objects, other.objects)
    assert not np.array_equal(first.globals, other.globals)


def test_full_simulation_with_mpi_is_reproducible():
    g = _gen(fast=False)
    a = g.generate("zjets", 60, seed=11)
    g.generate("ttbar_dilepton", 20, seed=2)
    _same(a, g.generate("zjets", 60, seed=11))
    _same(a, _gen(fast=False).generate("zjets", 60, seed=11))
    # the same seed without MPI is a different simulation
    b = _gen(fast=True).generate("zjets", 60, seed=11)
    assert not np.array_equal(a.objects, b.objects)


# --------------------------------------------------------------------------------------------
# physics sanity
# --------------------------------------------------------------------------------------------
def test_z_to_ll_mass_peaks_at_mz(samples):
    b = samples["zjets"]
    lep = b.mask & (b.objects[..., 5] > 0.5)
    two = np.flatnonzero(lep.sum(1) == 2)
    assert two.size > 300
    first = np.argsort(~lep[two], axis=1, kind="stable")[:, :2]
    pair = b.objects[two[:, None], first]
    assert (pair[:, 0, 6] * pair[:, 1, 6] == -1).mean() > 0.98  # opposite charges
    mll = _mass(_p4(pair).sum(1))
    assert abs(_mode(mll, 50, 130, 1.0) - 91.19) <= 3.0
    seg = b.targets["segment"][lep]  # leptons come from the Z (a few from heavy-flavour decays)
    assert set(np.unique(seg)) <= {-1, SEGMENTS.index("Z1")} and (seg == SEGMENTS.index("Z1")).mean() > 0.95


def test_semileptonic_ttbar_truth_w_jets_peak_near_mw(samples):
    b = samples["ttbar_semileptonic"]
    mjj = np.concatenate([_pair_mass(b, "t_q1", "t_q2"), _pair_mass(b, "tbar_q1", "tbar_q2")])
    assert mjj.size > 400
    assert abs(_mode(mjj, 20, 160, 5.0) - 80.4) <= 10.0
    # exactly one leptonic W per event, on either side, both charges
    a = b.targets["assignment"]
    had_t, had_tbar = a[:, S["t_q1"]] >= 0, a[:, S["tbar_q1"]] >= 0
    lep_t, lep_tbar = a[:, S["t_l"]] >= 0, a[:, S["tbar_l"]] >= 0
    assert not np.any(lep_t & lep_tbar) and not np.any(lep_t & had_t) and not np.any(lep_tbar & had_tbar)
    assert 0.35 < b.targets["truth_lepton_mask"][:, 0].mean() < 0.65
    assert np.all(b.targets["truth_lepton_mask"].sum(1) == 1)


def test_dilepton_ttbar_mlb_endpoint_and_truth_vectors(samples):
    b = samples["ttbar_dilepton"]
    mlb = np.concatenate([_pair_mass(b, "t_b", "t_l"), _pair_mass(b, "tbar_b", "tbar_l")])
    assert mlb.size > 800
    assert (mlb > 170).mean() < 0.03
    assert (mlb > 153).mean() < 0.08
    assert 60 < np.median(mlb) < 120
    a = b.targets["assignment"]
    matchable = (a[:, [S["t_b"], S["t_l"], S["tbar_b"], S["tbar_l"]]] >= 0).all(1)
    assert 0.15 < matchable.mean() < 0.6
    # the leptons assigned to t / tbar carry the right charge; the b slots point at jets
    obj = b.objects
    for slot, charge in (("t_l", 1), ("tbar_l", -1)):
        ev = np.flatnonzero(a[:, S[slot]] >= 0)
        chosen = obj[ev, a[ev, S[slot]]]
        assert np.all(chosen[:, 5] == 1) and np.all(chosen[:, 6] == charge)
    for slot in ("t_b", "tbar_b"):
        ev = np.flatnonzero(a[:, S[slot]] >= 0)
        assert np.all(obj[ev, a[ev, S[slot]], 5] == 0)
    # parton-level truth: top mass, W -> l nu mass, masks
    t = b.targets
    assert t["truth_top_mask"].all() and t["truth_lepton_mask"].all() and t["truth_nu_mask"].all()
    mt = _mass(t["truth_top"][..., [3, 0, 1, 2]].astype(np.float64))
    assert np.median(np.abs(mt - 172.5)) < 2.0
    mw = _mass((t["truth_lepton"] + t["truth_nu"])[..., [3, 0, 1, 2]].astype(np.float64))
    assert np.median(np.abs(mw - 80.4)) < 3.0
    # MET follows the neutrinos (detector-level resolution of tens of GeV)
    met, phi = b.globals[:, 0], b.globals[:, 1]
    nux, nuy = t["truth_nu"][:, :, 0].sum(1), t["truth_nu"][:, :, 1].sum(1)
    assert np.mean(np.hypot(met * np.cos(phi) - nux, met * np.sin(phi) - nuy)) < 30.0
    assert np.corrcoef(met, np.hypot(nux, nuy))[0, 1] > 0.7


@pytest.mark.parametrize("ma", [30, 40, 60])
def test_haa_4b_truth_pairs_peak_near_ma(samples, ma):
    b = samples[f"haa_4b_ma{ma}"]
    mbb = np.concatenate([_pair_mass(b, "a1_b1", "a1_b2"), _pair_mass(b, "a2_b1", "a2_b2")])
    assert mbb.size > 150
    peak = _mode(mbb, 0, 2 * ma, 2.0)
    assert 0.8 * ma <= peak <= 1.05 * ma, peak
    seg = b.targets["segment"]
    assert set(np.unique(seg[seg >= 0])) <= {SEGMENTS.index("a1"), SEGMENTS.index("a2")}
    # b-tagging works on the truth b jets: far more of them are tagged than light jets
    fl, btag = b.targets["flavour"], b.objects[..., 4]
    assert btag[b.mask & (fl == 5)].mean() > 0.45 > 0.05 > btag[b.mask & (fl == 0)].mean()


# --------------------------------------------------------------------------------------------
# layout invariants
# --------------------------------------------------------------------------------------------
def _check_invariants(b, max_objects):
    n = len(b)
    obj, mask = b.objects, b.mask
    assert obj.shape == (n, max_objects, 7) and mask.shape == (n, max_objects)
    assert np.isfinite(obj).all() and np.isfinite(b.globals).all() and np.isfinite(b.weights).all()
    assert (b.weights > 0).all()
    count = mask.sum(1)
    assert np.array_equal(mask, np.arange(max_objects)[None, :] < count[:, None])  # real first, then padding
    assert np.all(obj[~mask] == 0)
    pt = np.where(mask, obj[..., 1], -1.0)
    assert np.all(np.diff(pt, axis=1)[mask[:, 1:]] <= 0)  # pT-descending
    lep, jet = mask & (obj[..., 5] == 1), mask & (obj[..., 5] == 0)
    assert np.all(obj[..., 1][jet] > 20) and np.all(np.abs(obj[..., 2][jet]) < 2.5)
    assert np.all(obj[..., 1][lep] > 10) and np.all(np.abs(obj[..., 2][lep]) < 2.5)
    assert np.all(np.abs(obj[..., 6][lep]) == 1) and np.all(obj[..., 6][jet] == 0)
    assert np.all(obj[..., 4][lep] == 0) and set(np.unique(obj[..., 4][jet])) <= {0.0, 1.0}
    assert np.all(np.abs(obj[..., 3][mask]) <= np.pi)
    e2 = obj[..., 0] ** 2 - (obj[..., 1] * np.cosh(obj[..., 2])) ** 2
    assert np.all(e2[mask] > -1e-3 * obj[..., 0][mask] ** 2)  # E >= |p|: physical four-vectors
    t = b.targets
    a = t["assignment"].astype(np.int64)
    assert a.shape == (n, len(SLOTS)) and a.min() >= -1
    rows = np.nonzero(a >= 0)
    assert np.all(mask[rows[0], a[rows]])  # assignments point at real objects
    for i in range(n):  # one object per slot, no object twice
        real = a[i][a[i] >= 0]
        assert len(set(real.tolist())) == len(real)
    assert np.all(t["segment"][~mask] == -1) and np.all(t["flavour"][~mask] == -1)
    assert set(np.unique(t["flavour"][jet])) <= {0, 4, 5} and set(np.unique(t["flavour"][lep])) <= {11, 13}
    for name in ("truth_top", "truth_lepton", "truth_nu"):
        assert np.all(t[name][~t[f"{name}_mask"]] == 0)


def test_invariants_hold_in_every_event(samples):
    for block in samples.values():
        _check_invariants(block, 18)


def test_object_cap_keeps_the_hardest_objects(gen):
    wide = gen.generate("ttbar_hadronic", 120, seed=21)
    narrow = _gen(max_objects=4).generate("ttbar_hadronic", 120, seed=21)
    _check_invariants(narrow, 4)
    assert (wide.mask.sum(1) > 4).mean() > 0.5  # the cap really bites
    assert np.array_equal(narrow.objects, wide.objects[:, :4])
    a_wide = wide.targets["assignment"]
    assert np.array_equal(narrow.targets["assignment"], np.where(a_wide < 4, a_wide, -1))
    assert np.array_equal(narrow.targets["segment"], wide.targets["segment"][:, :4])


def test_jets_are_the_sums_of_their_visible_constituents():
    import pythia8mc
    from hepfm_builtin import _detector as det
    from hepfm_builtin._pythia_events import FlatBatch, _cluster

    pythia = pythia8mc.Pythia("", False)
    for line in _gen().settings("ttbar_hadronic"):
        pythia.readString(line)
    assert pythia.init()
    fb = FlatBatch.from_awkward(pythia.nextBatch(40))
    evt = np.repeat(np.arange(len(fb)), fb.counts)
    _, eta, _ = det.pt_eta_phi(fb.px, fb.py, fb.pz)
    use = (fb.status > 0) & ~np.isin(np.abs(fb.pid), det.NEUTRINOS) & (np.abs(eta) < det.CALO_ETA_MAX)
    p4, jet_evt, const_jet, const_global = _cluster(fb, use, evt)
    assert len(p4) > 4 * len(fb)
    summed = np.zeros_like(p4)
    np.add.at(summed, const_jet, np.stack([fb.px, fb.py, fb.pz, fb.e], 1)[const_global])
    assert np.allclose(summed, p4, atol=1e-6)
    assert use[const_global].all() and np.array_equal(evt[const_global], jet_evt[const_jet])
    assert len(np.unique(const_global)) == len(const_global)  # a particle is in one jet at most


def test_topology_describes_the_targets(gen):
    topo = gen.topology()
    slots = topo["assignment"]["slots"]
    assert slots == list(SLOTS) and gen.targets()["assignment"]["shape"] == [len(slots)]
    for sym in (s for group in topo["assignment"]["symmetries"].values() for s in group):
        assert all(name in slots for swap in sym for name in swap)
    for process, alternatives in topo["assignment"]["process_slots"].items():
        assert process in gen.processes and all(s in slots for alt in alternatives for s in alt)
    assert topo["segmentation"]["classes"] == list(SEGMENTS)
    assert "process" not in gen.targets()


# --------------------------------------------------------------------------------------------
# the CLI: stores, workers, resume, plots, errors
# --------------------------------------------------------------------------------------------
def _arrays(path):
    g = zarr.open_group(path, mode="r")
    names = [*ARRAYS, *(f"targets/{k}" for k in g.attrs["targets"])]
    return {name: g[name][:] for name in names}


@pytest.fixture(scope="module")
def mix_store(tmp_path_factory):
    from typer.testing import CliRunner

    from hepfm.cli import app

    path = tmp_path_factory.mktemp("pythia") / "mix.zarr"
    r = CliRunner().invoke(app, ["generate", *map(str, MIX_ARGS), "--workers", "2", "--out", str(path)])
    assert r.exit_code == 0, r.stdout + r.stderr
    return path


def test_store_is_identical_for_one_and_two_workers(mix_store, tmp_path, cli):
    r = cli("generate", *MIX_ARGS, "--workers", 1, "--out", tmp_path / "one.zarr")
    assert r.exit_code == 0, r.stderr
    a, b = _arrays(mix_store), _arrays(tmp_path / "one.zarr")
    assert a.keys() == b.keys()
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    store = EventStore.open(mix_store)
    assert store.processes == ["ttbar_semileptonic", "zjets", "haa_4b_ma40"]
    assert np.bincount(a["targets/process"]).tolist() == [600, 300, 300]
    assert store.provenance["params"]["fast"] is True


def test_killed_run_resumes_to_the_same_store(mix_store, tmp_path, cli):
    out = tmp_path / "cut.zarr"
    code = "import sys; from hepfm.cli import main; sys.argv = ['hepfm', *sys.argv[1:]]; main()"
    args = ["generate", *map(str, MIX_ARGS), "--workers", "1", "--out", str(out)]
    env = {**os.environ, "HEPFM_PROGRESS": "0", "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True)
    written, deadline = 0, time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                written = int(zarr.open_group(out, mode="r").attrs.get("n_events", 0))
            except Exception:
                written = 0
            if written >= 200:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    attrs = dict(zarr.open_group(out, mode="r").attrs)
    assert 200 <= attrs["n_events"] < 1200 and not attrs.get("complete"), attrs.get("n_events")
    r = cli("generate", *MIX_ARGS, "--workers", 2, "--out", out)
    assert r.exit_code == 0, r.stderr
    a, b = _arrays(mix_store), _arrays(out)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert_one_line_error(cli("generate", *MIX_ARGS, "--out", out), "complete store already exists")


def test_mix_store_invariants_and_truth_plots(mix_store, tmp_path, cli):
    from hepfm.batch import EventBlock

    store = EventStore.open(mix_store)
    data = store.read(0, store.n_events)
    _check_invariants(EventBlock.from_arrays(data), 18)
    slots = list(SLOTS)
    m, events = truth_group_masses(store, data, slots, ("t_q1", "t_q2"))
    assert m.size and np.all(data["targets/process"][events] == 0)
    r = cli("inspect", mix_store, "--plots", tmp_path / "plots")
    assert r.exit_code == 0, r.stderr
    validation = sorted(p.name for p in (tmp_path / "plots" / "validation").glob("*.png"))
    assert validation == [
        "mass_a_bb.png",
        "mass_lb.png",
        "mass_ll.png",
        "mass_top_bjj.png",
        "mass_w_jj.png",
        "met.png",
        "multiplicity.png",
    ]
    assert all((tmp_path / "plots" / "validation" / f).read_bytes()[:4] == b"\x89PNG" for f in validation)
    assert (tmp_path / "plots" / "objects_pt.png").exists()


def test_store_records_the_generator_topology(mix_store, gen):
    assert EventStore.open(mix_store).topology == gen.topology()


def test_truth_mass_figures_come_from_the_topology(mix_store):
    from hepfm.report import _truth_masses

    store = EventStore.open(mix_store)
    target, slots, figures = _truth_masses(store)
    assert target == "assignment" and slots == list(SLOTS)
    assert set(figures) == {"mass_w_jj", "mass_top_bjj", "mass_lb", "mass_a_bb"}
    assert all(s in slots for spec in figures.values() for g in spec["groups"] for s in g)
    # a store written before its generator declared them takes them from the generator
    store.topology = {**store.topology, "assignment": {**store.topology["assignment"]}}
    del store.topology["assignment"]["truth_masses"]
    assert _truth_masses(store)[2] == figures


def test_fast_needs_a_generator_with_a_fast_mode(tmp_path, cli):
    r = cli("generate", "toy_signal", "-n", 10, "--fast", "--out", tmp_path / "t.zarr")
    assert_one_line_error(r, "--fast", "synthetic")
    assert not (tmp_path / "t.zarr").exists()


def test_bad_params_and_processes_are_one_line_errors(tmp_path, cli):
    r = cli("generate", "zjets", "-n", 10, "--param", "qcd_pthat_min=-1", "--out", tmp_path / "a.zarr")
    assert_one_line_error(r, "pythia", "qcd_pthat_min")
    r = cli("generate", "zjets", "ttbar_dileptonic", "-n", 10, "--out", tmp_path / "b.zarr")
    assert_one_line_error(r, "unknown process 'ttbar_dileptonic'", "ttbar_dilepton")


def test_without_pythia_the_module_imports_and_use_is_one_clear_error(tmp_path):
    block = "import sys; sys.modules['pythia8mc'] = None; sys.modules['fastjet'] = None\n"
    code = block + (
        "import hepfm_builtin.pythia as m\n"
        "from hepfm import EventSchema, HepfmError, plugins\n"
        "assert 'pythia' in plugins.generators()\n"
        "try:\n"
        "    m.PythiaGenerator(m.PythiaGenerator.Params(), EventSchema())\n"
        "except HepfmError as e:\n"
        "    print(e)\n"
    )
    out = run_python(code, env={"PYTHONPATH": str(ROOT / "plugins")}).stdout.strip()
    assert "pip install 'hepfm[generate]'" in out and "\n" not in out
    cli_code = block + "from hepfm.cli import main; sys.argv = ['hepfm', *sys.argv[1:]]; main()"
    r = run_python(cli_code, "generate", "zjets", "-n", 5, "--out", tmp_path / "x.zarr", check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0]
    assert "pip install" in errors[0] and "pythia8mc" in errors[0]
    assert not (tmp_path / "x.zarr").exists()
