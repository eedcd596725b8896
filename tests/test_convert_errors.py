"""hepfm convert: interrupted runs, bad inputs (one line each), optional extras, peak memory."""

import json
import subprocess
import sys
import textwrap

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from conftest import assert_one_line_error, run_python
from convert_inputs import (
    PARQUET_MAP,
    assert_one_error_after_plan,
    delphes_events,
    make_store,
    parquet_table,
    write_delphes,
    write_spanet,
    write_tree,
)

from hepfm import EventStore, HepfmError, StoreError
from hepfm.convert import convert_files, export_spanet, plan_conversion, run_conversion


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
    write_spanet(tmp_path / "clash.h5", 60, seed=1, extra={"HEPFM/targets/assignment/t1/x": np.zeros(60)})
    assert_one_line_error(
        cli("convert", tmp_path / "clash.h5", "--format", "spanet", "--out", out),
        "clash.h5",
        "target 'assignment/t1' and target 'assignment/t1/x' cannot both be stored",
    )
    assert not out.exists()
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
