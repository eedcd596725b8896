import numpy as np
import pytest

from hepfm import EventBlock, EventLoader, EventSchema, StoreError, StoreWriter, compute_globals
from hepfm._selection import Selection, SelectionError
from hepfm.generate import generate_store

SCHEMA = EventSchema()
IDX = {name: SCHEMA.index(name) for name in SCHEMA.object_names}


def physics_block(rng, n, first_id=0):
    """Random events whose globals are computed from the objects; weights are unique event ids."""
    n_obj = SCHEMA.max_objects
    count = rng.integers(1, 9, n)
    mask = np.arange(n_obj)[None, :] < count[:, None]
    objects = np.zeros((n, n_obj, SCHEMA.n_object_features), np.float32)
    pt = rng.exponential(40, (n, n_obj)) + 20
    eta = rng.normal(0, 1.5, (n, n_obj))
    lep = mask & (rng.random((n, n_obj)) < 0.25)
    objects[..., IDX["pt"]] = pt
    objects[..., IDX["eta"]] = eta
    objects[..., IDX["phi"]] = rng.uniform(-np.pi, np.pi, (n, n_obj))
    objects[..., IDX["E"]] = pt * np.cosh(eta)
    objects[..., IDX["is_lepton"]] = lep
    objects[..., IDX["btag"]] = np.where(lep, 0.0, rng.random((n, n_obj)))
    objects[..., IDX["charge"]] = np.where(lep, rng.choice([-1.0, 1.0], (n, n_obj)), 0.0)
    objects *= mask[..., None]
    met, met_phi = rng.exponential(30, n), rng.uniform(-np.pi, np.pi, n)
    return EventBlock(
        objects=objects,
        mask=mask,
        globals=compute_globals(SCHEMA, objects, mask, met, met_phi),
        weights=np.arange(first_id, first_id + n, dtype=np.float32),
        targets={"process": rng.integers(0, 2, n).astype(np.int32)},
    )


@pytest.fixture(scope="module")
def id_store(tmp_path_factory):
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("sel") / "ids.zarr"
    w = StoreWriter(
        path, SCHEMA, targets={"process": {"dtype": "int32", "shape": []}}, processes=["a", "b"], chunk_events=500
    )
    for i in range(3):
        w.append(physics_block(rng, 2000, first_id=2000 * i))
    return w.close()


def numpy_features(objects, mask):
    """Derived features, computed independently of hepfm."""
    real = mask.astype(bool)
    lep = real & (objects[..., IDX["is_lepton"]] == 1)
    jet = real & ~lep
    return {
        "n_objects": real.sum(1),
        "n_lepton": lep.sum(1),
        "n_jet": jet.sum(1),
        "n_bjet": (jet & (objects[..., IDX["btag"]] > SCHEMA.btag_threshold)).sum(1),
        "lepton_charge_sum": np.where(lep, objects[..., IDX["charge"]], 0).sum(1),
    }


def ids_of(batches):
    return np.concatenate([b.weights.numpy() for b in batches]).astype(np.int64)


def split_ids(store, split, fraction=1.0):
    if split == "all":
        return np.arange(store.n_events)
    return np.concatenate([np.arange(a, b) for a, b in store.segments(split, fraction=fraction)])


# -- parsing --------------------------------------------------------------------------------------
def test_parse_good_cuts():
    sel = Selection.parse(
        [
            "n_jet >= 4",
            "n_bjet>=2",
            "  met<1e2 ",
            "lepton_charge_sum == 0",
            "ht != -3.5E-1",
            "m_all > +.5",
            "n_lepton <= 2.",
        ]
    )
    assert sel and sel.cuts[1] == "n_bjet>=2"
    assert sel.features == ("n_jet", "n_bjet", "met", "lepton_charge_sum", "ht", "m_all", "n_lepton")
    assert [t[1:] for t in sel.terms] == [
        (">=", 4.0),
        (">=", 2.0),
        ("<", 100.0),
        ("==", 0.0),
        ("!=", -0.35),
        (">", 0.5),
        ("<=", 2.0),
    ]
    assert Selection.parse(["n_jet >= 4"]) == Selection.parse(["n_jet >= 4"])
    empty = Selection.parse([])
    assert not empty and not Selection.parse(None) and empty.features == ()
    sel.check(SCHEMA)


@pytest.mark.parametrize(
    "bad",
    [
        "n_jet >> 4",
        "n_jet >= ",
        "__import__('os')",
        "n_jet >= 4 and x",
        "4 <= n_jet",
        "n_jet = 4",
        "n_jet >= 4\nn_bjet >= 2",
        "2jets > 1",
        "n_jet >= nan",
        "",
    ],
)
def test_bad_syntax_raises_with_index(bad):
    with pytest.raises(SelectionError) as e:
        Selection.parse(["n_jet >= 4", "n_bjet >= 1", bad])
    err = e.value
    assert isinstance(err, ValueError) and err.index == 2
    msg = str(err)
    assert "\n" not in msg and "bad syntax in cut" in msg and "expected FEATURE OP NUMBER" in msg
    assert ">=, <=, >, <, ==, !=" in msg


def test_not_a_list_of_strings():
    with pytest.raises(SelectionError, match="list of cut strings") as e:
        Selection.parse("n_jet >= 4")
    assert e.value.index == 0
    with pytest.raises(SelectionError, match="not a string") as e:
        Selection.parse(["n_jet >= 4", 4])
    assert e.value.index == 1


def test_unknown_feature_lists_known(id_store):
    sel = Selection.parse(["n_jet >= 4", "n_jt >= 4"])
    with pytest.raises(SelectionError) as e:
        sel.check(SCHEMA)
    assert e.value.index == 1
    msg = str(e.value)
    assert msg.startswith("unknown feature 'n_jt' in cut 'n_jt >= 4'; known: met, met_phi, n_lepton")
    assert "n_objects" in msg and "lepton_charge_sum" in msg and "\n" not in msg
    with pytest.raises(SelectionError, match="ids.zarr: unknown feature 'n_jt'"):
        EventLoader(id_store, selection=sel)


def test_known_features_follow_the_schema():
    known = Selection.known_features(SCHEMA)
    assert known == [*SCHEMA.global_names, "n_objects", "lepton_charge_sum"]
    objects = tuple(f for f in SCHEMA.object_features if f.name != "charge")
    schema = EventSchema(object_features=objects, global_features=SCHEMA.global_features[:2])
    assert Selection.known_features(schema) == ["met", "met_phi", "n_objects", "n_jet", "n_lepton", "n_bjet"]
    bare = EventSchema(object_features=SCHEMA.object_features[:4], global_features=())
    assert Selection.known_features(bare) == ["n_objects"]


# -- the mask -------------------------------------------------------------------------------------
def test_mask_matches_numpy_on_generated_store(tmp_path):
    store = generate_store(
        {"toy_signal": 0.5, "toy_background": 0.5}, 3000, tmp_path / "toy.zarr", seed=4, chunk_events=512
    )
    d = store.read(0, store.n_events, ["objects", "mask", "globals"])
    f = numpy_features(d["objects"], d["mask"])
    assert np.array_equal(d["globals"][:, SCHEMA.global_names.index("n_jet")], f["n_jet"])  # toy globals agree
    cases = {
        ("n_jet >= 4", "n_bjet >= 2"): (f["n_jet"] >= 4) & (f["n_bjet"] >= 2),
        ("n_lepton == 2", "lepton_charge_sum == 0", "n_jet >= 2"): (f["n_lepton"] == 2)
        & (f["lepton_charge_sum"] == 0)
        & (f["n_jet"] >= 2),
        ("n_objects > 5", "met < 40.5"): (f["n_objects"] > 5)
        & (d["globals"][:, SCHEMA.global_names.index("met")] < 40.5),
        ("lepton_charge_sum != 0",): f["lepton_charge_sum"] != 0,
    }
    for cuts, expected in cases.items():
        assert 0 < expected.sum() < store.n_events, cuts  # a real test of the cut
        sel = Selection.parse(list(cuts))
        got = sel.store_mask(store)
        assert got.dtype == bool and np.array_equal(got, expected), cuts
        assert sel.store_mask(store) is got  # cached: evaluated once per (store, cuts)
        assert np.array_equal(sel.mask(d["objects"], d["mask"], d["globals"], store.schema), expected)


def test_derived_features_when_not_globals():
    rng = np.random.default_rng(3)
    block = physics_block(rng, 500)
    schema = EventSchema(global_features=SCHEMA.global_features[:2])  # no n_jet / n_bjet / n_lepton globals
    f = numpy_features(block.objects, block.mask)
    sel = Selection.parse(["n_jet >= 3", "n_bjet >= 1", "n_lepton < 2", "met > 10"])
    expected = (f["n_jet"] >= 3) & (f["n_bjet"] >= 1) & (f["n_lepton"] < 2) & (block.globals[:, 0] > 10)
    assert 0 < expected.sum() < 500
    assert np.array_equal(sel.mask(block.objects, block.mask, block.globals[:, :2], schema), expected)


# -- the loader -----------------------------------------------------------------------------------
CUTS = ["n_jet >= 3", "n_bjet >= 1", "lepton_charge_sum == 0"]


def expected_ids(store, split, fraction=1.0):
    d = store.read(0, store.n_events, ["objects", "mask"])
    f = numpy_features(d["objects"], d["mask"])
    passing = (f["n_jet"] >= 3) & (f["n_bjet"] >= 1) & (f["lepton_charge_sum"] == 0)
    ids = split_ids(store, split, fraction)
    return np.sort(ids[passing[ids]])


@pytest.mark.parametrize("workers", [0, 2])
def test_selected_loader_yields_each_passing_event_once(id_store, workers):
    expected = expected_ids(id_store, "train")
    assert 0.2 < len(expected) / len(split_ids(id_store, "train")) < 0.8
    loader = EventLoader(
        id_store, "train", batch_size=128, num_workers=workers, seed=2, selection=Selection.parse(CUTS)
    )
    assert loader.n_events == len(expected)
    assert loader.selected_fraction == pytest.approx(len(expected) / len(split_ids(id_store, "train")))
    seen = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        assert sum(len(b) < 128 for b in batches) <= max(1, workers)  # full batches but each worker's last
        ids = ids_of(batches)
        assert len(ids) == len(set(ids.tolist())) and np.array_equal(np.sort(ids), expected)
        seen.append(ids)
    assert not np.array_equal(seen[0], seen[1])  # reshuffled, same events


@pytest.mark.parametrize("workers", [0, 2])
def test_selected_ranks_are_disjoint_and_cover(id_store, workers):
    expected = expected_ids(id_store, "train")
    shards = []
    for rank in range(2):
        loader = EventLoader(
            id_store,
            "train",
            batch_size=100,
            num_workers=workers,
            rank=rank,
            world_size=2,
            seed=5,
            selection=CUTS,
            drop_last=rank == 1,
        )
        loader.set_epoch(3)
        batches = list(loader)
        assert len(batches) == len(loader)
        ids = ids_of(batches)
        if rank == 0:
            assert len(ids) == loader.n_events
        else:
            assert all(len(b) == 100 for b in batches)
            # drop_last: the events of every worker's short batch are skipped this epoch; rerun without it
            loader = EventLoader(
                id_store, "train", batch_size=100, num_workers=workers, rank=1, world_size=2, seed=5, selection=CUTS
            )
            loader.set_epoch(3)
            ids = ids_of(loader)
        shards.append(ids)
    union = np.concatenate(shards)
    assert len(union) == len(set(union.tolist()))
    assert np.array_equal(np.sort(union), expected)


@pytest.mark.parametrize("split", ["val", "test", "all"])
def test_every_split_is_selected_alike(id_store, split):
    loader = EventLoader(id_store, split, batch_size=64, shuffle=False, selection=CUTS)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert np.array_equal(np.sort(ids_of(batches)), expected_ids(id_store, split))


def test_fraction_applies_before_selection(id_store):
    loader = EventLoader(id_store, "train", batch_size=64, fraction=0.3, selection=CUTS)
    assert np.array_equal(np.sort(ids_of(loader)), expected_ids(id_store, "train", 0.3))
    smaller = EventLoader(id_store, "train", batch_size=64, fraction=0.1, selection=CUTS)
    assert set(ids_of(smaller).tolist()) <= set(ids_of(loader).tolist())


def test_no_selection_is_unchanged(id_store):
    def batches(selection):
        loader = EventLoader(id_store, "train", batch_size=300, seed=3, selection=selection)
        loader.set_epoch(2)
        return len(loader), loader.n_events, loader.selected_fraction, [b.weights.numpy() for b in loader]

    ref = batches(None)
    for empty in (Selection.parse([]), []):
        got = batches(empty)
        assert got[:3] == ref[:3] and all(np.array_equal(a, b) for a, b in zip(got[3], ref[3], strict=True))
    assert ref[2] == 1.0


def test_selection_leaving_no_events_raises(id_store):
    with pytest.raises(StoreError) as e:
        EventLoader(id_store, "val", selection=["n_jet >= 3", "n_objects > 100"])
    msg = str(e.value)
    assert "ids.zarr" in msg and "the selection ['n_jet >= 3', 'n_objects > 100'] leaves no events" in msg
    assert "in the 'val' split" in msg and "\n" not in msg
