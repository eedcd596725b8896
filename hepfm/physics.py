"""Collider kinematics (invariant masses, the event globals) and the physics figures of merit the metrics report.

Numpy, vectorised over events; four-vectors are ``[..., 4]`` arrays ``(px, py, pz, E)`` in GeV
(the layout of the generator's truth targets). The four-vector algebra (coordinates, masses,
boosts) is scikit-hep's ``vector``; ``lorentz(p)`` gives the ``vector`` view of such an array.
Everything here is usable on its own from a notebook: pairing efficiencies,
background rejection, the ttbar spin-correlation observable D and the classical dilepton-ttbar
baselines (m(lb) pairing, W-mass neutrino estimate).
"""

from __future__ import annotations

import numpy as np

from .schema import EventSchema

__all__ = [
    "invariant_mass",
    "compute_globals",
    "effective_entries",
    "M_W",
    "four_vectors",
    "lorentz",
    "mass",
    "boost_to_rest",
    "cos_phi_spin",
    "spin_correlation_d",
    "reweight_spin",
    "pairing_outcome",
    "efficiency",
    "rejection_at",
    "jet_multiplicity",
    "leading_leptons",
    "min_mlb_pairing",
    "w_constrained_neutrinos",
]

M_W = 80.4  # GeV


def lorentz(p: np.ndarray):
    """The ``vector`` (scikit-hep) Lorentz-vector array of [..., 4] (px, py, pz, E) four-vectors."""
    import vector

    p = np.asarray(p, np.float64)
    return vector.array({"px": p[..., 0], "py": p[..., 1], "pz": p[..., 2], "E": p[..., 3]})


def _components(v) -> np.ndarray:
    return np.stack([np.asarray(v.px), np.asarray(v.py), np.asarray(v.pz), np.asarray(v.E)], -1)


def four_vectors(schema: EventSchema, objects: np.ndarray) -> np.ndarray:
    """[..., 4] (px, py, pz, E) from the schema's E, pt, eta, phi object features."""
    import vector

    col = {k: objects[..., schema.index(k)].astype(np.float64) for k in ("E", "pt", "eta", "phi")}
    p = _components(vector.array({"pt": col["pt"], "eta": col["eta"], "phi": col["phi"], "E": col["E"]}))
    return p.reshape((*np.shape(objects)[:-1], 4))


def mass(p: np.ndarray) -> np.ndarray:
    """Invariant mass of [..., 4] four-vectors (0 for space-like rounding)."""
    return np.sqrt(np.clip(np.asarray(lorentz(p).mass2), 0.0, None)).reshape(np.shape(p)[:-1])


def boost_to_rest(p: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """``p`` [..., 4] seen in the rest frame of ``frame`` [..., 4] (a pure boost, no rotation)."""
    frame = np.asarray(frame, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = _components(lorentz(p).boostCM_of_p4(lorentz(np.broadcast_to(frame, np.shape(p)))))
    return out.reshape(np.shape(p))  # vector makes a single four-vector a length-1 array


def cos_phi_spin(top: np.ndarray, antitop: np.ndarray, lep_plus: np.ndarray, lep_minus: np.ndarray) -> np.ndarray:
    """cos(phi) between the leptons, each in its parent top's rest frame (reached via the ttbar frame).

    Args:
        top: [n, 4] the t four-vector.
        antitop: [n, 4] the tbar four-vector.
        lep_plus: [n, 4] the l+ (from t).
        lep_minus: [n, 4] the l- (from tbar).

    Returns:
        [n] cos(phi) = l+_hat . l-_hat (PHYSICS-REFERENCE: ttbar spin correlation).
    """
    tt = top + antitop
    t_star, tbar_star = boost_to_rest(top, tt), boost_to_rest(antitop, tt)
    lp = boost_to_rest(boost_to_rest(lep_plus, tt), t_star)[:, :3]
    lm = boost_to_rest(boost_to_rest(lep_minus, tt), tbar_star)[:, :3]
    norm = np.linalg.norm(lp, axis=-1) * np.linalg.norm(lm, axis=-1)
    return np.clip((lp * lm).sum(-1) / np.where(norm > 0, norm, 1.0), -1.0, 1.0)


def effective_entries(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2: the number of unweighted events with the same statistical power."""
    w = np.asarray(weights, np.float64)
    return float(w.sum() ** 2 / np.sum(w**2))


def spin_correlation_d(cos_phi: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """D = -3 <cos phi> (weighted) and its statistical uncertainty (effective-entries error of the mean)."""
    w = np.ones_like(cos_phi) if weights is None else np.asarray(weights, np.float64)
    if len(cos_phi) == 0 or w.sum() <= 0:
        return float("nan"), float("nan")
    mean = float(np.sum(w * cos_phi) / np.sum(w))
    var = float(np.sum(w * (cos_phi - mean) ** 2) / np.sum(w))
    return -3.0 * mean, 3.0 * float(np.sqrt(var / max(effective_entries(w), 1.0)))


def reweight_spin(weights: np.ndarray, cos_phi_truth: np.ndarray, d: float) -> np.ndarray:
    """Weights that inject D = ``d`` into a sample generated without spin correlation: w (1 - d cos phi_truth)."""
    if not -1.0 <= d <= 1.0:
        raise ValueError(f"D = {d}: must be in [-1, 1] for non-negative weights")
    return weights * (1.0 - d * cos_phi_truth)


def pairing_outcome(
    predicted: np.ndarray,
    truth: np.ndarray,
    groups: list[list[int]],
    interchangeable: bool = False,
    daughter_groups: list[list[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compare predicted and true object assignments, resonance by resonance.

    Args:
        predicted: [n, C] predicted object index per assignment column (-1: none).
        truth: [n, C] true object index per assignment column (-1: unmatched).
        groups: The columns of each resonance (its daughters); daughters inside a resonance are
            compared as a set (their order never matters to a physics pairing).
        interchangeable: Resonances are indistinguishable (H -> a a): compare the set of pairs.
        daughter_groups: Per resonance, a group id per daughter: only daughters of one group are
            compared as a set (t -> b q q': [0, 1, 1], the b must be the b). Default: one group.

    Returns:
        matchable [n] (every daughter of every resonance has a reconstructed object), correct [n]
        (every resonance right), right [n] and complete [n] counts of resonances predicted right
        and of fully matched true resonances.
    """

    def canonical(x: np.ndarray, i: int) -> np.ndarray:
        ids = daughter_groups[i] if daughter_groups is not None else [0] * len(groups[i])
        x = x[:, groups[i]].copy()
        for g in set(ids):
            pos = [a for a, gg in enumerate(ids) if gg == g]
            x[:, pos] = np.sort(x[:, pos], axis=1)
        return x

    pred = [canonical(predicted, i) for i in range(len(groups))]
    true = [canonical(truth, i) for i in range(len(groups))]
    complete_r = np.stack([(t >= 0).all(1) for t in true], 1)  # [n, R]
    right_r = np.zeros_like(complete_r)
    for i, p in enumerate(pred):
        candidates = range(len(groups)) if interchangeable else [i]
        hit = np.zeros(len(p), bool)
        for j in candidates:
            if len(groups[j]) == len(groups[i]):
                hit |= complete_r[:, j] & (p == true[j]).all(1)
        right_r[:, i] = hit
    matchable = complete_r.all(1)
    correct = matchable & right_r.all(1)
    return matchable, correct, right_r.sum(1), complete_r.sum(1)


def efficiency(passed: np.ndarray, weights: np.ndarray, select: np.ndarray | None = None) -> float:
    """Weighted fraction of ``select`` ed events that pass (nan when none is selected)."""
    w = weights if select is None else weights * select
    total = float(np.sum(w))
    return float(np.sum(w * passed) / total) if total > 0 else float("nan")


def rejection_at(is_signal: np.ndarray, score: np.ndarray, weights: np.ndarray, signal_efficiency: float) -> float:
    """Background rejection 1/eps_B at a signal efficiency (interpolated ROC; inf when no background passes)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_signal, score, sample_weight=weights)
    eps_b = float(np.interp(signal_efficiency, tpr, fpr))
    return 1.0 / eps_b if eps_b > 0 else float("inf")


def jet_multiplicity(schema: EventSchema, objects: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[n] number of jets (objects that are not leptons)."""
    return (mask & (objects[..., schema.index("is_lepton")] < 0.5)).sum(1)


def leading_leptons(schema: EventSchema, objects: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index [n] of the leading positive and of the leading negative lepton (-1 where none).

    Objects are pT-ordered, so the first of each charge is the leading one.
    """
    lep = mask & (objects[..., schema.index("is_lepton")] > 0.5)
    charge = objects[..., schema.index("charge")]
    out = []
    for sign in (1.0, -1.0):
        sel = lep & (charge * sign > 0)
        out.append(np.where(sel.any(1), sel.argmax(1), -1))
    return out[0], out[1]


def min_mlb_pairing(schema: EventSchema, objects: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Classical dilepton-ttbar pairing: [n, 2] jet indices (b of t, b of tbar), -1 where impossible.

    Takes the two jets with the highest b-tag score (the higher pT first among equal scores) and
    pairs them with the l+ (t side) and l- (tbar side) so that m(l+ b) + m(l- b) is smallest.
    """
    n = len(objects)
    out = np.full((n, 2), -1, np.int64)
    jets = mask & (objects[..., schema.index("is_lepton")] < 0.5)
    lp, lm = leading_leptons(schema, objects, mask)
    # b score first, then pT order (lower index): one sort key
    key = np.where(jets, objects[..., schema.index("btag")].astype(np.float64), -np.inf)
    key = key - 1e-6 * np.arange(objects.shape[1])[None, :]
    top2 = np.argsort(-key, axis=1)[:, :2]
    ok = (jets.sum(1) >= 2) & (lp >= 0) & (lm >= 0)
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return out
    p = four_vectors(schema, objects[rows])  # [m, N, 4]
    r = np.arange(rows.size)
    b1, b2 = p[r, top2[rows, 0]], p[r, top2[rows, 1]]
    pl, ml = p[r, lp[rows]], p[r, lm[rows]]
    straight = mass(pl + b1) + mass(ml + b2)
    swapped = mass(pl + b2) + mass(ml + b1)
    first = np.where(straight <= swapped, top2[rows, 0], top2[rows, 1])
    second = np.where(straight <= swapped, top2[rows, 1], top2[rows, 0])
    out[rows, 0], out[rows, 1] = first, second
    return out


def w_constrained_neutrinos(
    lep_plus: np.ndarray, lep_minus: np.ndarray, met: np.ndarray, met_phi: np.ndarray, m_w: float = M_W
) -> np.ndarray:
    """A simple analytic estimate of the two neutrinos of dilepton ttbar: [n, 2, 3] (px, py, pz).

    Each neutrino takes half of the missing transverse momentum; its pz solves the W-mass
    constraint m(l nu) = m_W with its lepton (the smaller-|pz| root; the real part when there is
    no real root). Index 0 is the neutrino (with l+), 1 the antineutrino (with l-).
    """
    nu_t = 0.5 * np.stack([met * np.cos(met_phi), met * np.sin(met_phi)], -1)  # [n, 2]
    out = np.zeros((len(met), 2, 3))
    for k, lep in enumerate((lep_plus, lep_minus)):
        pl_t2 = np.maximum(lep[:, 0] ** 2 + lep[:, 1] ** 2, 1e-9)
        e_l = np.maximum(lep[:, 3], 1e-9)
        mu = 0.5 * m_w**2 + lep[:, 0] * nu_t[:, 0] + lep[:, 1] * nu_t[:, 1]
        a = mu * lep[:, 2] / pl_t2
        disc = a**2 - (e_l**2 * (nu_t**2).sum(-1) - mu**2) / pl_t2
        root = np.sqrt(np.clip(disc, 0.0, None))
        pz = np.where(np.abs(a - root) < np.abs(a + root), a - root, a + root)
        out[:, k, :2], out[:, k, 2] = nu_t, pz
    return out


def invariant_mass(e: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Invariant mass of the selected objects of each event.

    Args:
        e: [n, N] object energies.
        pt: [n, N] transverse momenta.
        eta: [n, N] pseudorapidities.
        phi: [n, N] azimuths.
        sel: [n, N] bool, which objects enter the sum.

    Returns:
        [n] masses (0 where fewer than one object is selected).
    """
    w = sel.astype(np.float64)
    px = (pt * np.cos(phi) * w).sum(1)
    py = (pt * np.sin(phi) * w).sum(1)
    pz = (pt * np.sinh(eta) * w).sum(1)
    en = (e * w).sum(1)
    return np.sqrt(np.clip(en**2 - px**2 - py**2 - pz**2, 0.0, None))


def compute_globals(
    schema: EventSchema, objects: np.ndarray, mask: np.ndarray, met: np.ndarray, met_phi: np.ndarray
) -> np.ndarray:
    """EveNet's ten globals from reconstructed objects and the missing transverse momentum.

    Args:
        schema: Must contain object features E, pt, eta, phi, btag, is_lepton.
        objects: [n, N, F] raw features.
        mask: [n, N] bool.
        met: [n] missing transverse momentum magnitude.
        met_phi: [n] its azimuth.

    Returns:
        float32 [n, 10] in the order of ``EVENET_GLOBAL_FEATURES``.
    """
    col = {name: objects[..., schema.index(name)].astype(np.float64) for name in ("E", "pt", "eta", "phi")}
    lep = mask & (objects[..., schema.index("is_lepton")] > 0.5)
    jet = mask & ~lep
    bjet = jet & (objects[..., schema.index("btag")] > schema.btag_threshold)
    kin = (col["E"], col["pt"], col["eta"], col["phi"])
    out = np.stack(
        [
            met,
            met_phi,
            lep.sum(1),
            bjet.sum(1),
            jet.sum(1),
            (col["pt"] * jet).sum(1),
            (col["pt"] * lep).sum(1),
            invariant_mass(*kin, mask),
            invariant_mass(*kin, lep),
            invariant_mass(*kin, bjet),
        ],
        axis=1,
    )
    return out.astype(np.float32)
