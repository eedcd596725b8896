"""From Pythia event records to reconstructed objects, missing momentum and truth targets.

Works on a batch of events flattened to numpy (``FlatBatch``): the selection, smearing, efficiencies,
b-tagging and MET are vectorised over the batch; jets are clustered for the whole batch in one
FastJet call; only lepton isolation, jet flavour labelling and the walk through each event's decay
tree loop over events. All randomness comes from the ``numpy`` generator passed in, in a fixed order,
so the same events and seed give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _detector as det

#: Object features in the order this module fills them (the generator maps them to the schema).
FEATURES = ("E", "pt", "eta", "phi", "btag", "is_lepton", "charge")

#: Assignment slots: the reconstructed object of each resonance daughter (-1 where unmatched).
SLOTS = (
    "t_b",
    "t_l",
    "t_q1",
    "t_q2",
    "tbar_b",
    "tbar_l",
    "tbar_q1",
    "tbar_q2",
    "a1_b1",
    "a1_b2",
    "a2_b1",
    "a2_b2",
)
SLOT_INDEX = {name: i for i, name in enumerate(SLOTS)}

#: Segmentation classes: the (top-level) resonance an object comes from; H -> a a objects get a1/a2.
SEGMENTS = ("t", "tbar", "W+", "W-", "Z1", "Z2", "H", "a1", "a2")
SEGMENT_INDEX = {name: i for i, name in enumerate(SEGMENTS)}

RESONANCES = (6, 23, 24, 25, 36)
QUARKS = (1, 2, 3, 4, 5)
MATCH_DR = 0.4  # quark-jet matching cone


@dataclass
class FlatBatch:
    """Events of one ``nextBatch`` call as flat numpy columns (indices are event-local)."""

    counts: np.ndarray
    pid: np.ndarray
    status: np.ndarray
    mother1: np.ndarray
    daughter1: np.ndarray
    daughter2: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    weights: np.ndarray
    starts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def from_awkward(cls, batch) -> FlatBatch:
        """From the awkward record ``pythia8mc.Pythia.nextBatch`` returns."""
        import awkward as ak

        prt = batch["prt"]
        col = {k: np.asarray(ak.to_numpy(ak.flatten(prt[k]))) for k in ("id", "status", "mother1")}
        col.update({k: np.asarray(ak.to_numpy(ak.flatten(prt[k]))) for k in ("daughter1", "daughter2")})
        p = prt["p"]
        mom = {k: np.asarray(ak.to_numpy(ak.flatten(p[k])), dtype=np.float64) for k in ("px", "py", "pz", "e")}
        w = ak.fill_none(ak.firsts(batch["info"]["weights"]), 1.0)
        return cls(
            counts=np.asarray(ak.to_numpy(ak.num(prt)), dtype=np.int64),
            pid=col["id"].astype(np.int64),
            status=col["status"].astype(np.int64),
            mother1=col["mother1"].astype(np.int64),
            daughter1=col["daughter1"].astype(np.int64),
            daughter2=col["daughter2"].astype(np.int64),
            weights=np.asarray(ak.to_numpy(w), dtype=np.float64),
            **mom,
        )


@dataclass
class Reconstructed:
    """Per-event arrays of one batch (objects in ``FEATURES`` order)."""

    objects: np.ndarray  # float32 [n, N, 7]
    mask: np.ndarray  # bool [n, N]
    met: np.ndarray  # [n]
    met_phi: np.ndarray  # [n]
    weights: np.ndarray  # [n]
    targets: dict[str, np.ndarray]


def target_specs(max_objects: int) -> dict[str, dict]:
    """Names, dtypes and shapes of the truth targets."""
    return {
        "assignment": {"dtype": "int8", "shape": [len(SLOTS)]},
        "segment": {"dtype": "int8", "shape": [max_objects]},
        "flavour": {"dtype": "int8", "shape": [max_objects]},
        "truth_top": {"dtype": "float32", "shape": [2, 4]},
        "truth_top_mask": {"dtype": "bool", "shape": [2]},
        "truth_lepton": {"dtype": "float32", "shape": [2, 4]},
        "truth_lepton_mask": {"dtype": "bool", "shape": [2]},
        "truth_nu": {"dtype": "float32", "shape": [2, 4]},
        "truth_nu_mask": {"dtype": "bool", "shape": [2]},
    }


# --------------------------------------------------------------------------------------------
# decay-tree walking (event-local indices)
# --------------------------------------------------------------------------------------------
def _daughters(d1: np.ndarray, d2: np.ndarray, i: int) -> tuple[int, ...]:
    a, b = int(d1[i]), int(d2[i])
    if a <= 0:
        return ()
    if b <= 0 or b == a:
        return (a,)
    if b > a:
        return tuple(range(a, b + 1))
    return (a, b)


def _last_copy(pid: np.ndarray, d1: np.ndarray, d2: np.ndarray, i: int) -> int:
    """Follow the chain of copies (recoils, radiation) of particle i to its last copy."""
    for _ in range(500):
        nxt = next((j for j in _daughters(d1, d2, i) if pid[j] == pid[i]), None)
        if nxt is None or nxt <= i:
            return i
        i = nxt
    return i


def _first_copy(pid: np.ndarray, m1: np.ndarray, i: int) -> int:
    for _ in range(500):
        m = int(m1[i])
        if m <= 0 or pid[m] != pid[i]:
            return i
        i = m
    return i


@dataclass
class Leaf:
    """A decay product that is not itself a resonance (a quark, lepton or neutrino)."""

    first: int
    last: int
    pid: int
    segment: int
    slot: int  # -1 when the daughter has no assignment slot


@dataclass
class EventTruth:
    leaves: list[Leaf]
    tops: dict[int, int]  # 0 (t) / 1 (tbar) -> last-copy index
    leptons: dict[int, int]  # 0 (positive) / 1 (negative) -> first-copy index of a charged lepton
    neutrinos: dict[int, int]  # 0 (nu) / 1 (nubar) -> index


def event_truth(
    pid: np.ndarray, m1: np.ndarray, d1: np.ndarray, d2: np.ndarray, cands: np.ndarray | None = None
) -> EventTruth:
    """The resonance decay tree of one event: top-level resonances, their daughters and roles.

    ``cands`` (optional) are the event-local indices of all W, Z, H, A0 and top entries.
    """
    if cands is None:
        cands = np.flatnonzero(np.isin(np.abs(pid), RESONANCES))
    firsts = [int(i) for i in cands if m1[i] < 0 or pid[m1[i]] != pid[i]]
    parent: dict[int, int] = {}
    for r in firsts:
        m = int(m1[r])
        if m > 0 and abs(pid[m]) in RESONANCES:
            parent[r] = _first_copy(pid, m1, m)
    truth = EventTruth([], {}, {}, {})
    n_z = 0
    for r in (r for r in firsts if r not in parent):
        a = abs(int(pid[r]))
        if a == 6:
            side = "t" if pid[r] > 0 else "tbar"
            truth.tops.setdefault(0 if pid[r] > 0 else 1, _last_copy(pid, d1, d2, r))
            _collect(pid, d1, d2, r, truth, SEGMENT_INDEX[side], side, "top")
        elif a == 24:
            _collect(pid, d1, d2, r, truth, SEGMENT_INDEX["W+" if pid[r] > 0 else "W-"], "", "plain")
        elif a == 23:
            n_z += 1
            _collect(pid, d1, d2, r, truth, SEGMENT_INDEX[f"Z{min(n_z, 2)}"], "", "plain")
        elif a == 25:
            _collect(pid, d1, d2, r, truth, SEGMENT_INDEX["H"], "", "higgs")
        else:  # a lone A0
            _collect(pid, d1, d2, r, truth, SEGMENT_INDEX["a1"], "a1", "a")
    return truth


def _collect(pid, d1, d2, r: int, truth: EventTruth, segment: int, side: str, mode: str) -> None:
    """Walk the decay of resonance r (first copy), recording leaves with their segment and slot."""
    n_a = 0
    for d in _daughters(d1, d2, _last_copy(pid, d1, d2, r)):
        p = int(pid[d])
        a = abs(p)
        if a in RESONANCES and p != pid[r]:
            if mode == "top" and a == 24:
                _collect(pid, d1, d2, d, truth, segment, side, "topW")
            elif mode == "higgs" and a == 36:
                n_a += 1
                name = f"a{min(n_a, 2)}"
                _collect(pid, d1, d2, d, truth, SEGMENT_INDEX[name], name, "a")
            else:
                _collect(pid, d1, d2, d, truth, segment, side, "plain")
            continue
        slot = -1
        if mode == "top" and a in QUARKS:
            slot = SLOT_INDEX[f"{side}_b"]
        elif mode == "topW" and a in (11, 13):
            slot = SLOT_INDEX[f"{side}_l"]
        elif mode == "topW" and a in QUARKS:
            slot = SLOT_INDEX[f"{side}_q1" if p > 0 else f"{side}_q2"]
        elif mode == "a" and a == 5:
            slot = SLOT_INDEX[f"{side}_b1" if p > 0 else f"{side}_b2"]
        last = _last_copy(pid, d1, d2, d) if a in (11, 13, 15) else d
        truth.leaves.append(Leaf(d, last, p, segment, slot))
        if a in (11, 13, 15):
            truth.leptons.setdefault(0 if p < 0 else 1, d)
        elif a in det.NEUTRINOS:
            truth.neutrinos.setdefault(0 if p > 0 else 1, d)


def _greedy_match(dr: np.ndarray, max_dr: float) -> list[tuple[int, int]]:
    """One-to-one pairs (row, column) in order of increasing Delta R, each below max_dr."""
    dr = np.array(dr, dtype=np.float64)
    pairs = []
    while dr.size:
        k = int(np.argmin(dr))
        i, j = divmod(k, dr.shape[1])
        if not dr[i, j] < max_dr:
            break
        pairs.append((i, j))
        dr[i, :] = np.inf
        dr[:, j] = np.inf
    return pairs


# --------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------
def _cluster(fb: FlatBatch, use: np.ndarray, evt: np.ndarray):
    """anti-kT R=0.4 on the chosen particles of every event; jets and their constituents (global indices)."""
    import awkward as ak
    import fastjet

    n = len(fb)
    idx = np.flatnonzero(use)
    counts = np.bincount(evt[idx], minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    arr = ak.zip(
        {
            k: ak.unflatten(getattr(fb, a)[idx], counts)
            for k, a in (("px", "px"), ("py", "py"), ("pz", "pz"), ("E", "e"))
        }
    )
    cs = fastjet.ClusterSequence(arr, fastjet.JetDefinition(fastjet.antikt_algorithm, det.JET_R))
    jets = cs.inclusive_jets(min_pt=det.JET_RAW_PT_MIN)
    consts = cs.constituent_index(min_pt=det.JET_RAW_PT_MIN)
    n_jets = np.asarray(ak.to_numpy(ak.num(jets)), dtype=np.int64)
    p4 = np.stack([np.asarray(ak.to_numpy(ak.flatten(jets[k])), dtype=np.float64) for k in ("px", "py", "pz", "E")], 1)
    jet_evt = np.repeat(np.arange(n), n_jets)
    n_const = np.asarray(ak.to_numpy(ak.flatten(ak.num(consts, axis=2))), dtype=np.int64)
    local = np.asarray(ak.to_numpy(ak.flatten(consts, axis=None)), dtype=np.int64)
    const_jet = np.repeat(np.arange(len(jet_evt)), n_const)
    const_global = idx[starts[jet_evt[const_jet]] + local]
    return p4.reshape(-1, 4), jet_evt, const_jet, const_global


def reconstruct(fb: FlatBatch, rng: np.random.Generator, max_objects: int) -> Reconstructed:
    """Detector-level objects, MET and truth targets for every event of a batch."""
    n = len(fb)
    evt = np.repeat(np.arange(n), fb.counts)
    pt, eta, phi = det.pt_eta_phi(fb.px, fb.py, fb.pz)
    apid = np.abs(fb.pid)
    visible = (fb.status > 0) & ~np.isin(apid, det.NEUTRINOS) & (np.abs(eta) < det.CALO_ETA_MAX)
    p4_all = np.stack([fb.px, fb.py, fb.pz, fb.e], 1)

    # ---- leptons: dressing, isolation, smearing, efficiency ---------------------------------
    is_lep = visible & np.isin(apid, (11, 13))
    cand = np.flatnonzero(is_lep & (pt > det.LEPTON_CANDIDATE_PT_MIN) & (np.abs(eta) < det.LEPTON_ETA_MAX + 0.2))
    photon = visible & (fb.pid == 22)
    iso_pool = visible & ~is_lep & (pt > det.ISO_PT_MIN)
    dressed = p4_all[cand].copy()
    iso_sum = np.zeros(len(cand))
    member_of: list[np.ndarray] = [np.zeros(0, np.int64)] * len(cand)
    cand_evt = evt[cand]
    bounds = np.searchsorted(cand_evt, np.arange(n + 1))
    for i in np.unique(cand_evt):
        lo, hi = bounds[i], bounds[i + 1]
        c = cand[lo:hi]
        s, e = fb.starts[i], fb.starts[i] + fb.counts[i]
        ph = s + np.flatnonzero(photon[s:e])
        if ph.size:
            dr = det.delta_r(eta[c][:, None], phi[c][:, None], eta[ph][None, :], phi[ph][None, :])
            near = dr.argmin(0)
            close = dr[near, np.arange(ph.size)] < det.DRESS_DR
            for k in range(len(c)):
                mem = ph[close & (near == k)]
                if mem.size:
                    member_of[lo + k] = mem
                    dressed[lo + k] += p4_all[mem].sum(0)
        pool = s + np.flatnonzero(iso_pool[s:e])
        _, deta, dphi = det.pt_eta_phi(*dressed[lo:hi, :3].T)
        dr = det.delta_r(deta[:, None], dphi[:, None], eta[pool][None, :], phi[pool][None, :])
        for k in range(len(c)):
            inside = dr[k] < det.ISO_DR
            if member_of[lo + k].size:
                inside &= ~np.isin(pool, member_of[lo + k])
            iso_sum[lo + k] = pt[pool][inside].sum()
    lpt0, leta, lphi = det.pt_eta_phi(*dressed[:, :3].T)
    lmu = apid[cand] == 13
    rel = np.where(lmu, det.muon_resolution(lpt0, leta), det.electron_resolution(lpt0, leta))
    lf = det.smear_factor(rng, rel)
    lep_p4 = dressed * lf[:, None]
    lpt = lpt0 * lf
    eff = np.where(lmu, det.muon_efficiency(lpt, leta), det.electron_efficiency(lpt, leta))
    passed = rng.random(len(cand)) < eff
    iso_max = np.where(lmu, det.ISO_RATIO_MAX[13], det.ISO_RATIO_MAX[11])
    lep_sel = passed & (iso_sum < iso_max * lpt) & (lpt > det.LEPTON_PT_MIN) & (np.abs(leta) < det.LEPTON_ETA_MAX)
    removed = np.zeros(len(fb.pid), bool)
    removed[cand[lep_sel]] = True
    for k in np.flatnonzero(lep_sel):
        removed[member_of[k]] = True

    # ---- jets ----------------------------------------------------------------------------
    jet_p4, jet_evt, const_jet, const_global = _cluster(fb, visible & ~removed, evt)
    jpt0, jeta, jphi = det.pt_eta_phi(*jet_p4[:, :3].T)
    jf = det.smear_factor(rng, det.jet_energy_resolution(jet_p4[:, 3], jeta) / np.maximum(jet_p4[:, 3], 1e-9))
    jet_sm = jet_p4 * jf[:, None]
    jpt = jpt0 * jf
    jet_sel = (jpt > det.JET_PT_MIN) & (np.abs(jeta) < det.JET_ETA_MAX)
    in_jet = np.zeros(len(fb.pid), bool)
    in_jet[const_global[jet_sel[const_jet]]] = True

    # jet flavour: b (c) hadron with pT > 5 GeV within Delta R 0.3
    hflav = det.hadron_flavour(fb.pid)
    heavy = np.flatnonzero((hflav > 0) & (pt > det.HADRON_PT_MIN))
    sj = np.flatnonzero(jet_sel)
    jflav = np.zeros(len(sj), np.int64)
    if heavy.size and sj.size:
        hb = np.searchsorted(evt[heavy], np.arange(n + 1))
        jb = np.searchsorted(jet_evt[sj], np.arange(n + 1))
        for i in np.flatnonzero((np.diff(hb) > 0) & (np.diff(jb) > 0)):
            h = heavy[hb[i] : hb[i + 1]]
            j = sj[jb[i] : jb[i + 1]]
            close = det.delta_r(jeta[j][:, None], jphi[j][:, None], eta[h][None, :], phi[h][None, :]) < det.FLAVOUR_DR
            has_b = (close & (hflav[h] == 5)[None, :]).any(1)
            has_c = (close & (hflav[h] == 4)[None, :]).any(1)
            jflav[jb[i] : jb[i + 1]] = np.where(has_b, 5, np.where(has_c, 4, 0))
    btag = (rng.random(len(sj)) < det.btag_efficiency(jflav, jpt[sj])).astype(np.float64)

    # ---- missing transverse momentum ------------------------------------------------------
    soft = visible & ~in_jet & ~removed
    ux = np.bincount(evt[soft], weights=fb.px[soft], minlength=n)
    uy = np.bincount(evt[soft], weights=fb.py[soft], minlength=n)
    sigma = det.MET_SOFT_K * np.sqrt(np.bincount(evt[soft], weights=pt[soft], minlength=n))
    ux = ux + rng.standard_normal(n) * sigma
    uy = uy + rng.standard_normal(n) * sigma
    sl = np.flatnonzero(lep_sel)
    ox = np.bincount(jet_evt[sj], weights=jet_sm[sj, 0], minlength=n)
    ox += np.bincount(cand_evt[sl], weights=lep_p4[sl, 0], minlength=n)
    oy = np.bincount(jet_evt[sj], weights=jet_sm[sj, 1], minlength=n)
    oy += np.bincount(cand_evt[sl], weights=lep_p4[sl, 1], minlength=n)
    metx, mety = -(ox + ux), -(oy + uy)

    # ---- objects: pT-ordered, at most max_objects -----------------------------------------
    o_evt = np.concatenate([jet_evt[sj], cand_evt[sl]])
    o_p4 = np.concatenate([jet_sm[sj], lep_p4[sl]])
    o_pt = np.concatenate([jpt[sj], lpt[sl]])
    o_eta = np.concatenate([jeta[sj], leta[sl]])
    o_phi = np.concatenate([jphi[sj], lphi[sl]])
    o_btag = np.concatenate([btag, np.zeros(len(sl))])
    o_lep = np.concatenate([np.zeros(len(sj)), np.ones(len(sl))])
    o_charge = np.concatenate([np.zeros(len(sj)), -np.sign(fb.pid[cand[sl]])])
    o_flav = np.concatenate([jflav, apid[cand[sl]]])
    o_src = np.concatenate([np.full(len(sj), -1), cand[sl]])  # leptons: global index of the bare lepton
    order = np.lexsort((-o_pt, o_evt))
    first = np.searchsorted(o_evt[order], np.arange(n))
    rank = np.arange(len(order)) - first[o_evt[order]]
    keep = order[rank < max_objects]
    k_rank = rank[rank < max_objects]
    k_evt = o_evt[keep]
    big_n = max_objects
    objects = np.zeros((n, big_n, len(FEATURES)), np.float32)
    columns = (o_p4[:, 3], o_pt, o_eta, o_phi, o_btag, o_lep, o_charge)
    for f, values in enumerate(columns):
        objects[k_evt, k_rank, f] = values[keep]
    mask = np.zeros((n, big_n), bool)
    mask[k_evt, k_rank] = True
    flavour = np.full((n, big_n), -1, np.int8)
    flavour[k_evt, k_rank] = o_flav[keep]

    # ---- truth ----------------------------------------------------------------------------
    targets = {
        "assignment": np.full((n, len(SLOTS)), -1, np.int8),
        "segment": np.full((n, big_n), -1, np.int8),
        "flavour": flavour,
        "truth_top": np.zeros((n, 2, 4), np.float32),
        "truth_top_mask": np.zeros((n, 2), bool),
        "truth_lepton": np.zeros((n, 2, 4), np.float32),
        "truth_lepton_mask": np.zeros((n, 2), bool),
        "truth_nu": np.zeros((n, 2, 4), np.float32),
        "truth_nu_mask": np.zeros((n, 2), bool),
    }
    res = np.flatnonzero(np.isin(apid, RESONANCES))
    rb = np.searchsorted(evt[res], np.arange(n + 1))
    # truth matching runs on all reconstructed objects, so it does not depend on the cap; objects
    # beyond the cap then simply leave their slot unmatched
    ob = np.searchsorted(o_evt[order], np.arange(n + 1))
    for i in np.flatnonzero(np.diff(rb) > 0):
        s, e = fb.starts[i], fb.starts[i] + fb.counts[i]
        tr = event_truth(fb.pid[s:e], fb.mother1[s:e], fb.daughter1[s:e], fb.daughter2[s:e], res[rb[i] : rb[i + 1]] - s)
        for slot, j in tr.tops.items():
            targets["truth_top"][i, slot] = p4_all[s + j]
            targets["truth_top_mask"][i, slot] = True
        for slot, j in tr.leptons.items():
            targets["truth_lepton"][i, slot] = p4_all[s + j]
            targets["truth_lepton_mask"][i, slot] = True
        for slot, j in tr.neutrinos.items():
            targets["truth_nu"][i, slot] = p4_all[s + j]
            targets["truth_nu_mask"][i, slot] = True
        ki = order[ob[i] : ob[i + 1]]
        ranks = rank[ob[i] : ob[i + 1]]
        is_jet = o_lep[ki] == 0
        quarks = [leaf for leaf in tr.leaves if abs(leaf.pid) in QUARKS]
        if quarks and is_jet.any():
            q = np.array([s + leaf.first for leaf in quarks])
            jj = ki[is_jet]
            dr = det.delta_r(eta[q][:, None], phi[q][:, None], o_eta[jj][None, :], o_phi[jj][None, :])
            for a, b in _greedy_match(dr, MATCH_DR):
                _record(targets, i, quarks[a], int(ranks[is_jet][b]))
        src = {int(o_src[k]) - s: int(r) for k, r in zip(ki[~is_jet], ranks[~is_jet], strict=True)}
        for leaf in tr.leaves:
            if abs(leaf.pid) in (11, 13) and leaf.last in src:
                _record(targets, i, leaf, src[leaf.last])
    return Reconstructed(objects, mask, np.hypot(metx, mety), np.arctan2(mety, metx), fb.weights, targets)


def _record(targets: dict[str, np.ndarray], i: int, leaf: Leaf, rank: int) -> None:
    if rank >= targets["segment"].shape[1]:  # matched to an object beyond the cap
        return
    targets["segment"][i, rank] = leaf.segment
    if leaf.slot >= 0:
        targets["assignment"][i, leaf.slot] = rank


# --------------------------------------------------------------------------------------------
# event requirements (a process's ``require``): the generator keeps only the events that pass
# --------------------------------------------------------------------------------------------
DIMUON_PT_MIN = 10.0  # both muons, GeV (the detector's lepton threshold)
DIMUON_ETA_MAX = 2.4


def dimuon_os(rec: Reconstructed) -> np.ndarray:
    """A dimuon trigger: two opposite-sign reconstructed muons with pT > 10 GeV and |eta| < 2.4."""
    f = {name: i for i, name in enumerate(FEATURES)}
    o = rec.objects
    mu = (
        rec.mask
        & (rec.targets["flavour"] == 13)
        & (o[..., f["pt"]] > DIMUON_PT_MIN)
        & (np.abs(o[..., f["eta"]]) < DIMUON_ETA_MAX)
    )
    charge = o[..., f["charge"]]
    return (mu & (charge > 0)).any(1) & (mu & (charge < 0)).any(1)


#: name -> function(Reconstructed) -> bool [n]: which events of a batch pass
REQUIREMENTS = {"dimuon_os": dimuon_os}


def select(rec: Reconstructed, keep: np.ndarray) -> Reconstructed:
    """The events ``keep`` (bool or indices) of a reconstructed batch."""
    return Reconstructed(
        rec.objects[keep],
        rec.mask[keep],
        rec.met[keep],
        rec.met_phi[keep],
        rec.weights[keep],
        {k: v[keep] for k, v in rec.targets.items()},
    )
