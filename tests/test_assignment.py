"""Assignment at SPANet's own game: targets by name, the scaled head against brute force, ttbar_allhad."""

from __future__ import annotations

import itertools
import json

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from hepfm_builtin._assignment import _valid_tuples

from hepfm import plugins
from hepfm.components import HeadDims, Latents
from hepfm.schema import EventSchema
from hepfm.store import EventStore

TASK = ROOT / "tasks" / "ttbar_allhad.yaml"
TOPS = {
    "resonances": {"t": ["b", "q1", "q2"], "tbar": ["b", "q1", "q2"]},
    "symmetric_daughters": {"t": [["q1", "q2"]], "tbar": [["q1", "q2"]]},
    "symmetric_resonances": [["t", "tbar"]],
}
RUN = ["--set", "model.preset=tiny", "--wandb", "disabled", "--set", "train.max_steps=4", "--set",
       "train.batch_size=32", "--set", "train.val_every=2", "--set", "train.val_batches=1"]  # fmt: skip


def write_spanet_allhad(path, n, seed, extras=False):
    """A full-hadronic ttbar file in SPANet's layout (its example: INPUTS/Source, TARGETS/t1|t2/b|q1|q2).

    With ``extras``: a signal label, m_tt and an event number (CLASSIFICATIONS / REGRESSIONS).
    """
    rng = np.random.default_rng(seed)
    nj = rng.integers(6, 11, n)
    m = np.arange(10)[None] < nj[:, None]
    data = {
        "INPUTS/Source/MASK": m,
        "INPUTS/Source/mass": np.where(m, rng.uniform(3, 25, (n, 10)), 0).astype(np.float32),
        "INPUTS/Source/pt": np.where(m, rng.uniform(20, 300, (n, 10)), 0).astype(np.float32),
        "INPUTS/Source/eta": np.where(m, rng.uniform(-2.4, 2.4, (n, 10)), 0).astype(np.float32),
        "INPUTS/Source/phi": np.where(m, rng.uniform(-3, 3, (n, 10)), 0).astype(np.float32),
        "INPUTS/Source/btag": np.where(m, rng.integers(0, 2, (n, 10)), 0).astype(np.float32),
    }
    perm = np.argsort(rng.random((n, 10)) + ~m * 10, axis=1)
    for t, off in (("t1", 0), ("t2", 3)):
        for k, d in enumerate(("b", "q1", "q2")):
            data[f"TARGETS/{t}/{d}"] = np.where(rng.random(n) < 0.85, perm[:, off + k], -1)
    if extras:
        data["CLASSIFICATIONS/EVENT/signal"] = rng.integers(0, 2, n)
        data["CLASSIFICATIONS/EVENT/event_number"] = 1000 + rng.permutation(n)  # not the row order
        data["REGRESSIONS/EVENT/m_tt"] = rng.uniform(300, 900, n).astype(np.float32)
    with h5py.File(path, "w") as f:
        for name, values in data.items():
            f.create_dataset(name, data=values)
    event = {
        "INPUTS": {"SEQUENTIAL": {"Source": {k: "normalize" for k in ("mass", "pt", "eta", "phi", "btag")}}},
        "EVENT": {"t1": ["q1", "q2", "b"], "t2": ["b", "q1", "q2"]},  # another daughter order: found by name
        "PERMUTATIONS": {"EVENT": [["t1", "t2"]], "t1": [["q1", "q2"]], "t2": [["q1", "q2"]]},
    }
    if extras:
        event["CLASSIFICATIONS"] = {"EVENT": ["signal", "event_number"]}
        event["REGRESSIONS"] = {"EVENT": ["m_tt"]}
    path.with_suffix(".yaml").write_text(yaml.safe_dump(event, sort_keys=False))
    return data


def test_one_task_file_trains_on_a_generated_and_a_converted_spanet_store(tmp_path, cli):
    pytest.importorskip("pythia8mc")
    from hepfm.generate import generate_store

    gen = generate_store({"ttbar_hadronic": 1.0}, 300, tmp_path / "gen.zarr", seed=3, workers=1, chunk_events=300,
                         params={"fast": True})  # fmt: skip
    write_spanet_allhad(tmp_path / "ex.h5", 400, seed=1)
    (tmp_path / "map.yaml").write_text("groups: {Source: jet}\nfill: {met: 0, met_phi: 0}\n")
    r = cli("convert", tmp_path / "ex.h5", "--format", "spanet", "--map", tmp_path / "map.yaml",
            "--out", tmp_path / "sp.zarr")  # fmt: skip
    assert r.exit_code == 0, r.stderr + r.stdout
    for data, run in ((gen.path, tmp_path / "run_gen"), (tmp_path / "sp.zarr", tmp_path / "run_sp")):
        r = cli("finetune", TASK, "--data", data, "--out", run, *RUN)
        assert r.exit_code == 0, r.stderr + r.stdout
        r = cli("evaluate", run, "--split", "val")
        assert r.exit_code == 0, r.stderr + r.stdout
    bound = {}
    for name in ("run_gen", "run_sp"):
        cfg = json.loads((tmp_path / name / "eval" / "metrics.json").read_text())
        pairing = cfg["metrics"]["pairing"]
        assert {"eff_matchable_nj<=6", "eff_matchable_nj7", "pair_purity_nj>=8"} <= set(pairing)
        assert 0 <= pairing["eff_matchable"] <= 1 and 0 <= pairing["pair_purity"] <= 1
        task = yaml.safe_load((tmp_path / name / "task.yaml").read_text())
        assert task["heads"]["assignment"]["params"].get("columns") is None  # the same task: only --data differs
        from hepfm.checkpoint import find_checkpoint, load_checkpoint

        ckpt = load_checkpoint(find_checkpoint(tmp_path / name, "best"))
        bound[name] = ckpt["config"]["heads"]["assignment"]["params"]
    slots = gen.topology["assignment"]["slots"]
    assert bound["run_gen"]["targets"] == {"t": "assignment", "tbar": "assignment"}
    assert bound["run_gen"]["columns"]["tbar"] == [slots.index(s) for s in ("tbar_b", "tbar_q1", "tbar_q2")]
    assert bound["run_sp"]["targets"] == {"t": "assignment/t1", "tbar": "assignment/t2"}
    assert bound["run_sp"]["columns"] == {"t": [2, 0, 1], "tbar": [0, 1, 2]}  # t1 lists q1, q2, b

    # the generated store exported for SPANet (the side-by-side's input): the tops' slots as TARGETS
    r = cli("export", gen.path, "--format", "spanet", "--out", tmp_path / "gen.h5")
    assert r.exit_code == 0, r.stderr + r.stdout
    event = yaml.safe_load((tmp_path / "gen.yaml").read_text())
    assert event["EVENT"] == {"t": ["b", "q1", "q2"], "tbar": ["b", "q1", "q2"]}
    assert event["PERMUTATIONS"] == {"t": [["q1", "q2"]], "tbar": [["q1", "q2"]], "EVENT": [["t", "tbar"]]}
    truth = gen.read(0, gen.n_events)["targets/assignment"]
    with h5py.File(tmp_path / "gen.h5") as f:
        for res in ("t", "tbar"):
            for d in ("b", "q1", "q2"):
                np.testing.assert_array_equal(f[f"TARGETS/{res}/{d}"][:], truth[:, slots.index(f"{res}_{d}")])
    # and converted back (what hepfm trains on in the side-by-side): the very store, slot target and all
    r = cli("convert", tmp_path / "gen.h5", "--format", "spanet", "--out", tmp_path / "back.zarr")
    assert r.exit_code == 0, r.stderr + r.stdout
    back = EventStore.open(tmp_path / "back.zarr")
    assert back.targets == gen.targets and back.topology == gen.topology and back.array_names == gen.array_names
    for name in gen.array_names:
        x, y = gen.read(0, gen.n_events, [name])[name], back.read(0, gen.n_events, [name])[name]
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def test_a_resonance_the_store_lacks_is_one_line_naming_it(tmp_path, cli):
    from conftest import assert_one_line_error

    write_spanet_allhad(tmp_path / "ex.h5", 100, seed=2)
    (tmp_path / "map.yaml").write_text("groups: {Source: jet}\nfill: {met: 0, met_phi: 0}\n")
    assert cli("convert", tmp_path / "ex.h5", "--format", "spanet", "--map", tmp_path / "map.yaml",
               "--out", tmp_path / "sp.zarr").exit_code == 0  # fmt: skip
    r = cli("finetune", TASK, "--data", tmp_path / "sp.zarr", "--out", tmp_path / "run", *RUN,
            "--set", "heads.assignment.params.aliases={}")  # fmt: skip
    assert_one_line_error(r, "resonance 't'", "t1")


# --------------------------------------------------------------------------------------------
# the scaled head against the dense form and brute force
# --------------------------------------------------------------------------------------------
def _head(params, d=16):
    cls = plugins.heads().get("assignment")
    torch.manual_seed(0)
    return cls(cls.Params.model_validate(params), HeadDims(d, EventSchema())).eval()


def _events(b, n, seed, lo=2, hi=9, prefix=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for e in range(b):
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        slots = torch.arange(k) if prefix else torch.randperm(n, generator=g)[:k]  # real objects anywhere
        mask[e, slots] = True
    objects = torch.randn(b, n, 16, generator=g) * mask[..., None]
    return Latents(objects, torch.zeros(b, 16), mask)


def _dense_logp(head, res, lat):
    """The dense form: scores over the padded N, softmax over the valid N^k tuples."""
    score = head.scorers[res](lat.objects).reshape(lat.mask.shape[0], -1)
    valid = _valid_tuples(lat.mask, head.groups[res])
    return torch.log_softmax(score.masked_fill(~valid, float("-inf")), -1).masked_fill(~valid, float("-inf"))


def _brute_force(head, lat):
    """Best conflict-free pair of tuples in original object indices, by enumeration."""
    n = lat.mask.shape[1]
    lps = [_dense_logp(head, r, lat) for r in head.names]
    out = []
    for e in range(lat.mask.shape[0]):
        real = lat.mask[e].nonzero().flatten().tolist()
        tuples = {}
        for r, lp in zip(head.names, lps, strict=True):
            k = len(head.groups[r])
            tuples[r] = [(t, float(lp[e, sum(i * n ** (k - 1 - a) for a, i in enumerate(t))]))
                         for t in itertools.permutations(real, k)]  # fmt: skip
            tuples[r] = [(t, v) for t, v in tuples[r] if np.isfinite(v)]
        pairs = [(a[1] + b[1], a[0], b[0]) for a in tuples["t"] for b in tuples["tbar"] if not set(a[0]) & set(b[0])]
        out.append(max(pairs)[1:] if pairs else None)
    return out


@torch.no_grad()
def test_scaled_head_matches_the_dense_form_and_brute_force():
    head = _head(TOPS)
    lat = _events(40, 18, seed=1, lo=3, hi=9)
    out = head(lat, None)
    b, m = out["index"].shape
    assert m == int(lat.mask.sum(1).max()) < 18 and out["logp/t"].shape == (b, m**3)  # scored over M, not N

    target = torch.full((b, 6), -1)
    for e in range(b):
        real = lat.mask[e].nonzero().flatten()
        pick = real[torch.randperm(len(real))][:6]
        target[e, : len(pick)] = pick
    batch = type("B", (), {"targets": {"assignment": target}, "mask": lat.mask})()
    scaled = head.loss(out, batch)[0]
    # dense loss: every resonance's and permutation's true-tuple log-probability from the N^3 form
    dense = {r: _dense_logp(head, r, lat) for r in head.names}
    total, count = 0.0, 0
    for e in range(b):
        nlls = []
        for perm in (("t", "tbar"), ("tbar", "t")):
            nll, ok = 0.0, 0
            for res, cols in zip(perm, ([0, 1, 2], [3, 4, 5]), strict=True):
                t = target[e, cols].tolist()
                if min(t) < 0:
                    continue
                flat = t[0] * 18 * 18 + min(t[1:]) * 18 + max(t[1:])
                nll, ok = nll - float(dense[res][e, flat]), ok + 1
            nlls.append((nll, ok))
        total, count = total + min(x[0] for x in nlls), count + nlls[0][1]
    assert float(scaled) == pytest.approx(total / count, rel=1e-5)

    got = head.predict(out)
    for e, best in enumerate(_brute_force(head, lat)):
        t, tb = got["objects/t"][e].tolist(), got["objects/tbar"][e].tolist()
        if best is None:  # fewer than six objects: greedy, never reused, never padding
            used = [i for i in t + tb if i >= 0]
            assert len(used) == len(set(used)) and all(lat.mask[e, i] for i in used)
            continue
        assert (t[0], *sorted(t[1:])) == best[0] and (tb[0], *sorted(tb[1:])) == best[1], e


def test_two_three_daughter_decoding_is_exact_when_the_top_choices_clash():
    from hepfm_builtin._assignment_decode import decode

    torch.manual_seed(3)
    b, m = 64, 7
    # both resonances want the same objects most: the exact answer needs deeper candidates
    base = torch.randn(b, m**3)
    lps = [torch.log_softmax(base + 0.3 * torch.randn(b, m**3), -1) for _ in range(2)]
    objs = torch.cartesian_prod(*[torch.arange(m)] * 3)
    bad = (objs[:, 0] == objs[:, 1]) | (objs[:, 0] == objs[:, 2]) | (objs[:, 1] == objs[:, 2])
    lps = [lp.masked_fill(bad, float("-inf")) for lp in lps]
    tuples, values = decode(lps, [3, 3], m)
    clash = (objs[:, None, :, None] == objs[None, :, None, :]).flatten(2).any(-1)  # [T, T]
    for e in range(b):
        total = lps[0][e][:, None] + lps[1][e][None, :]
        i, j = divmod(int(total.masked_fill(clash, float("-inf")).argmax()), m**3)
        assert tuples[0][e].tolist() == objs[i].tolist() and tuples[1][e].tolist() == objs[j].tolist()
    top_clash = clash[lps[0].argmax(-1), lps[1].argmax(-1)]
    assert top_clash.any()  # the test reaches the deeper search
