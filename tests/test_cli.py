import json

import numpy as np
import pytest
import zarr
from conftest import assert_one_line_error, run_python

from hepfm import EventStore
from hepfm.generate import job_counts, parse_processes


def test_generate_then_inspect_end_to_end(tmp_path, cli):
    out = tmp_path / "demo.zarr"
    r = cli(
        "generate",
        "toy_signal=0.25",
        "toy_background",
        "--events",
        9000,
        "--out",
        out,
        "--seed",
        4,
        "--chunk-events",
        2000,
    )
    assert r.exit_code == 0, r.stderr
    assert f"wrote 9000 events to {out}" in r.stdout
    # reload in a fresh process
    code = "import sys; from hepfm import EventStore; s = EventStore.open(sys.argv[1]); print(s.n_events, s.processes)"
    assert run_python(code, out).stdout.strip() == "9000 ['toy_signal', 'toy_background']"

    r = cli("inspect", out, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n_events"] == 9000 and summary["complete"]
    assert summary["processes"] == {"toy_signal": 2250, "toy_background": 6750}
    assert summary["splits"] == {"train": 7200, "val": 900, "test": 900}
    assert summary["stats"]["objects"]["pt"]["min"] >= 10.0
    assert summary["targets"] == {"process": {"dtype": "int32", "shape": []}}
    assert summary["provenance"]["seed"] == 4 and summary["provenance"]["generator"] == "synthetic"

    r = cli("inspect", out, "--plots", tmp_path / "plots")
    assert r.exit_code == 0, r.stderr
    assert "toy_signal" in r.stdout and "bytes/event" in r.stdout
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "objects_pt.png" in pngs and "globals_met.png" in pngs and len(pngs) == 17
    assert (tmp_path / "plots" / "objects_pt.png").read_bytes()[:4] == b"\x89PNG"


def _arrays(path):
    g = zarr.open_group(path, mode="r")
    return {name: g[name][:] for name in ("objects", "mask", "globals", "weights", "targets/process")}


def test_generate_is_deterministic_across_workers_and_seeds(tmp_path, cli):
    args = ["toy_signal=0.5", "toy_background=0.5", "--events", 7000, "--chunk-events", 1000]
    assert cli("generate", *args, "--out", tmp_path / "a.zarr", "--workers", 1).exit_code == 0
    assert cli("generate", *args, "--out", tmp_path / "b.zarr", "--workers", 2).exit_code == 0
    assert cli("generate", *args, "--out", tmp_path / "c.zarr", "--seed", 1).exit_code == 0
    a, b, c = (_arrays(tmp_path / f"{x}.zarr") for x in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["objects"], c["objects"])
    labels = a["targets/process"]
    assert np.bincount(labels).tolist() == [3500, 3500]
    assert 0.3 < labels[:1000].mean() < 0.7  # mixed inside every chunk, not process by process


def test_generate_resumes_an_interrupted_store(tmp_path, cli):
    args = ["toy_signal", "toy_background", "--events", 6000, "--chunk-events", 1000, "--seed", 2]
    assert cli("generate", *args, "--out", tmp_path / "full.zarr").exit_code == 0
    assert cli("generate", *args, "--out", tmp_path / "cut.zarr").exit_code == 0
    g = zarr.open_group(tmp_path / "cut.zarr", mode="r+")
    del g.attrs["complete"]
    g.attrs["n_events"] = 3000  # as if stopped after three chunks
    assert_one_line_error(cli("inspect", tmp_path / "cut.zarr"), "cut.zarr", "'complete' is missing", "3000")
    r = cli("generate", *args, "--out", tmp_path / "cut.zarr")
    assert r.exit_code == 0, r.stderr
    a, b = _arrays(tmp_path / "full.zarr"), _arrays(tmp_path / "cut.zarr")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert EventStore.open(tmp_path / "cut.zarr").n_events == 6000


def test_parse_processes_and_job_counts():
    assert parse_processes(["a=0.2", "b", "c"]) == pytest.approx({"a": 0.2, "b": 0.4, "c": 0.4})
    counts = [job_counts([1 / 3, 1 / 3, 1 / 3], 1000, j) for j in range(3)]
    assert all(c.sum() == 1000 for c in counts)
    assert np.sum(counts, axis=0).tolist() == [1000, 1000, 1000]  # remainders rotate


@pytest.fixture
def complete_store(tmp_path, cli):
    out = tmp_path / "done.zarr"
    assert cli("generate", "toy_signal", "--events", 500, "--out", out).exit_code == 0
    return out


BAD_GENERATE = {
    "unknown_process": (["ttbar_quantum"], ["unknown process 'ttbar_quantum'", "toy_signal"]),
    "fraction_not_number": (["toy_signal=lots"], ["toy_signal=lots", "not a number"]),
    "fractions_do_not_sum": (["toy_signal=0.5", "toy_background=0.2"], ["sum to 0.7"]),
    "unknown_generator": (["toy_signal", "--generator", "madgraph"], ["unknown generator 'madgraph'", "synthetic"]),
    "bad_generator_param": (["toy_signal", "--param", "eta_max=-1"], ["generator 'synthetic' params", "eta_max"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GENERATE))
def test_generate_bad_input_one_line(tmp_path, cli, case):
    args, needles = BAD_GENERATE[case]
    result = cli("generate", *args, "--out", tmp_path / "x.zarr")
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "x.zarr").exists()


def test_generate_negative_events_is_a_usage_error(tmp_path, cli):
    r = cli("generate", "toy_signal", "--events", "-5", "--out", tmp_path / "x.zarr")
    assert r.exit_code == 2 and "--events" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_generate_refuses_to_replace_a_complete_store(complete_store, cli):
    before = _arrays(complete_store)
    assert_one_line_error(
        cli("generate", "toy_background", "--events", 100, "--out", complete_store),
        "done.zarr",
        "already exists",
        "--overwrite",
    )
    after = _arrays(complete_store)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing written is lost
    assert cli("generate", "toy_background", "--events", 100, "--out", complete_store, "--overwrite").exit_code == 0
    assert EventStore.open(complete_store).processes == ["toy_background"]


def test_inspect_bad_stores_one_line(tmp_path, complete_store, cli):
    assert_one_line_error(cli("inspect", tmp_path / "missing.zarr"), "missing.zarr", "no such event store")
    (tmp_path / "empty.zarr").mkdir()
    assert_one_line_error(cli("inspect", tmp_path / "empty.zarr"), "empty.zarr", "zarr.json missing")
    g = zarr.open_group(complete_store, mode="r+")
    g.attrs["hepfm"] = {"format": "hepfm-event-store", "version": 99}
    assert_one_line_error(cli("inspect", complete_store), "done.zarr", "'hepfm.version' is 99")
    g.attrs["hepfm"] = {"format": "hepfm-event-store", "version": 1}
    (complete_store / "zarr.json").write_text("{ not json")
    assert_one_line_error(cli("inspect", complete_store), "done.zarr/zarr.json", "unreadable")
    zero = tmp_path / "zero.zarr"
    zarr.open_group(zero, mode="w").attrs.update(
        {
            "hepfm": {"format": "hepfm-event-store", "version": 1},
            "complete": True,
            "n_events": 0,
            "schema": {},
            "chunk_events": 1,
        }
    )
    assert_one_line_error(cli("inspect", zero), "zero.zarr")


def test_plugins_lists_builtins_with_package(cli):
    r = cli("plugins", "--json")
    assert r.exit_code == 0
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    assert ("head", "classification") in rows and ("generator", "synthetic") in rows and ("metric", "roc_auc") in rows
    assert rows[("dataset", "zarr")]["package"].startswith("hepfm ")
    assert rows[("dataset", "zarr")]["plugin"] == "builtin_datasets"


def test_bench_loader_small(cli, tmp_path):
    r = cli("bench", "loader", "--events", 20000, "--rss-events", 0, "--workers", "0", "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.stderr
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["write_events_per_s"] > 0 and figures["loader_events_per_s"]["0"] > 0
    assert 10 < figures["bytes_per_event"] < 600
    assert_one_line_error(cli("bench", "gpu"), "unknown benchmark 'gpu'")
    assert_one_line_error(cli("bench", "model", "--batch-size", 0), "--batch-size 0")


def test_generator_boolean_params_are_switches(tmp_path, cli):
    from pydantic import BaseModel

    from hepfm import plugins
    from hepfm.generate import generator_switches

    class Gen:
        class Params(BaseModel):
            keep_taus: bool = False
            pthat_min: float = 20.0

    assert generator_switches(Gen) == {"--keep-taus": "keep_taus"}  # no parameter name is known to the core
    assert generator_switches(plugins.generators().get("pythia")) == {"--fast": "fast"}
    assert generator_switches(plugins.generators().get("synthetic")) == {}
    # a switch that no generator has is a usage error, as an unknown option always was
    r = cli("generate", "toy_signal", "--evnets", "5", "--out", tmp_path / "x.zarr")
    assert r.exit_code == 2 and "--evnets" in r.stderr and "--events" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.zarr").exists()
