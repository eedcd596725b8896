"""Dimuon processes of the ``pythia`` generator: the trigger requirement, the Upsilon peaks, ``hepfm anomaly``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from conftest import assert_one_line_error  # noqa: E402
from hepfm_builtin._pythia_events import DIMUON_PT_MIN, FEATURES  # noqa: E402
from hepfm_builtin.pythia import PythiaGenerator  # noqa: E402
from scipy import optimize  # noqa: E402

from hepfm import EventSchema  # noqa: E402
from hepfm.physics import four_vectors, leading_leptons, mass  # noqa: E402

UPSILON_1S = 9.4603  # GeV (PDG)
CONFIG = Path(__file__).resolve().parents[1] / "tasks" / "anomaly" / "dimuon_ad.yaml"


@pytest.fixture(scope="module")
def gen():
    return PythiaGenerator(PythiaGenerator.Params(fast=True), EventSchema())


def _mumu(block) -> np.ndarray:
    s = EventSchema()
    ip, im = leading_leptons(s, block.objects, block.mask)
    assert (ip >= 0).all() and (im >= 0).all()
    r = np.arange(len(block))
    p4 = four_vectors(s, block.objects)
    return mass(p4[r, ip] + p4[r, im])


def test_every_event_passes_the_dimuon_trigger_and_is_reproducible(gen):
    a = gen.generate("dimuon_continuum", 120, seed=3)
    assert len(a) == 120
    f = {n: i for i, n in enumerate(FEATURES)}
    muon = a.mask & (a.targets["flavour"] == 13) & (a.objects[..., f["pt"]] > DIMUON_PT_MIN)
    charge = a.objects[..., f["charge"]]
    assert ((muon & (charge > 0)).any(1) & (muon & (charge < 0)).any(1)).all()
    b = gen.generate("dimuon_continuum", 120, seed=3)
    assert np.array_equal(a.objects, b.objects) and np.array_equal(a.mask, b.mask)
    m = _mumu(a)
    assert 4.0 < np.median(m) < 20.0  # the gamma* window (5-20 GeV), smeared


def test_upsilon_1s_peak_at_its_mass(gen):
    block = gen.generate("upsilon_mumu", 300, seed=1)
    m = _mumu(block)
    assert ((m > 9.0) & (m < 10.8)).mean() > 0.95  # three peaks, nothing else
    edges = np.linspace(9.1, 9.85, 31)
    counts, _ = np.histogram(m, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])

    def gauss(x, n, mu, sd):
        return n * np.exp(-0.5 * ((x - mu) / sd) ** 2)

    (n, mu, sd), cov = optimize.curve_fit(
        gauss, centres, counts, p0=[counts.max(), 9.46, 0.1], sigma=np.sqrt(np.maximum(counts, 1))
    )
    assert abs(mu - UPSILON_1S) < 0.1, mu
    assert 0.02 < abs(sd) < 0.3  # the muon resolution, not the natural width (54 keV)
    # the robust estimator agrees: median of the events near the 1S
    near = m[(m > 9.2) & (m < 9.75)]
    assert abs(np.median(near) - UPSILON_1S) < 0.1


def test_generate_list_names_the_dimuon_processes(cli):
    r = cli("generate", "--list")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "dimuon_continuum" in (r.stdout + r.stderr) and "upsilon_mumu" in (r.stdout + r.stderr)


def test_anomaly_command_end_to_end_on_a_small_store(tmp_path, cli):
    store = tmp_path / "dimuon.zarr"
    r = cli(
        "generate",
        "dimuon_continuum=0.9",
        "upsilon_mumu=0.1",
        "--events",
        "600",
        "--fast",
        "--out",
        str(store),
        "--chunk-events",
        "300",
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    out = tmp_path / "ad"
    r = cli(
        "anomaly",
        CONFIG,
        "--store",
        str(store),
        "--out",
        str(out),
        "--set",
        "generative.epochs=2",
        "--set",
        "classifier.folds=2",
        "--set",
        "bins=30",
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    saved = json.loads((out / "metrics.json").read_text())
    res = saved["result"]
    assert res["n_events"] > 300 and res["n_signal_region"] > 40
    assert res["truth_signal_efficiency"] is not None  # upsilon_mumu is the configured signal
    assert (out / "spectrum_fit.png").stat().st_size > 10_000
    bad = cli("anomaly", CONFIG, "--store", str(store), "--set", "signal_region=[12,14]")
    assert_one_line_error(bad, "dimuon_ad.yaml", "signal_region")
