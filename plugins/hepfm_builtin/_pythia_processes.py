"""Pythia 8 settings of every process the ``pythia`` generator knows (pp at 13 TeV by default).

A process is one or more Pythia configurations ("parts") that share its events equally; only the
semileptonic ttbar uses two (W+ leptonic / W- hadronic and the charge conjugate), which gives exactly
one leptonic W without a veto hook.
"""

from __future__ import annotations

from dataclasses import dataclass

W_TO_E_MU = ["24:onMode = off", "24:onIfAny = 11 13"]
W_TO_QUARKS = ["24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
Z_TO_E_MU = ["23:onMode = off", "23:onIfAny = 11 13"]
TTBAR = ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on"]
GG_H = ["HiggsSM:gg2H = on", "25:m0 = 125.0"]
A_MASSES = (30, 40, 60)


@dataclass(frozen=True)
class ProcessSpec:
    """A process: its description and the Pythia settings of each part."""

    description: str
    parts: tuple[tuple[str, ...], ...]
    #: name of an event requirement in ``_pythia_events.REQUIREMENTS`` ("" for none): the generator
    #: keeps generating until ``n`` events pass it (e.g. a trigger)
    require: str = ""


def _haa(ma: int) -> ProcessSpec:
    return ProcessSpec(
        f"gg -> H(125) -> a a -> b bbar b bbar with m_a = {ma} GeV (a = Pythia's A0, id 36)",
        (
            (
                *GG_H,
                "25:onMode = off",
                "25:addChannel = 1 1.0 100 36 36",
                f"36:m0 = {ma}",
                "36:mWidth = 0.01",
                "36:doForceWidth = on",
                f"36:mMin = {ma - 1}",
                f"36:mMax = {ma + 1}",
                "36:oneChannel = 1 1.0 100 5 -5",
            ),
        ),
    )


def process_table(
    qcd_pthat_min: float, qcd_bb_pthat_min: float, vjets_pthat_min: float, dimuon_pthat_min: float = 30.0
) -> dict[str, ProcessSpec]:
    """Name -> ProcessSpec, with the configurable phase-space cuts filled in."""
    table = {
        "ttbar_dilepton": ProcessSpec("ttbar, both W -> e/mu nu", ((*TTBAR, *W_TO_E_MU),)),
        "ttbar_semileptonic": ProcessSpec(
            "ttbar, one W -> e/mu nu, the other W -> q q'",
            (
                (*TTBAR, "24:onMode = off", "24:onPosIfAny = 11 13", "24:onNegIfAny = 1 2 3 4 5"),
                (*TTBAR, "24:onMode = off", "24:onPosIfAny = 1 2 3 4 5", "24:onNegIfAny = 11 13"),
            ),
        ),
        "ttbar_hadronic": ProcessSpec("ttbar, both W -> q q'", ((*TTBAR, *W_TO_QUARKS),)),
        "qcd_multijet": ProcessSpec(
            f"QCD 2 -> 2 (HardQCD:all), pT-hat > {qcd_pthat_min:g} GeV",
            (("HardQCD:all = on", f"PhaseSpace:pTHatMin = {qcd_pthat_min}"),),
        ),
        "qcd_bb": ProcessSpec(
            f"QCD b bbar (gg, qqbar -> b bbar), pT-hat > {qcd_bb_pthat_min:g} GeV",
            (("HardQCD:hardbbbar = on", f"PhaseSpace:pTHatMin = {qcd_bb_pthat_min}"),),
        ),
        "wjets": ProcessSpec(
            f"W + jet (qqbar -> W g, q g -> W q), W -> e/mu nu, pT-hat > {vjets_pthat_min:g} GeV",
            (
                (
                    "WeakBosonAndParton:qqbar2Wg = on",
                    "WeakBosonAndParton:qg2Wq = on",
                    f"PhaseSpace:pTHatMin = {vjets_pthat_min}",
                    *W_TO_E_MU,
                ),
            ),
        ),
        "zjets": ProcessSpec(
            f"Z + jet (qqbar -> Z g, q g -> Z q), Z -> e e / mu mu, pT-hat > {vjets_pthat_min:g} GeV",
            (
                (
                    "WeakBosonAndParton:qqbar2gmZg = on",
                    "WeakBosonAndParton:qg2gmZq = on",
                    "WeakZ0:gmZmode = 2",
                    f"PhaseSpace:pTHatMin = {vjets_pthat_min}",
                    *Z_TO_E_MU,
                ),
            ),
        ),
        "diboson": ProcessSpec(
            "WW, WZ and ZZ (ffbar -> V V, Z only), inclusive decays",
            (
                (
                    "WeakDoubleBoson:ffbar2WW = on",
                    "WeakDoubleBoson:ffbar2ZW = on",
                    "WeakDoubleBoson:ffbar2gmZgmZ = on",
                    "WeakZ0:gmZmode = 2",
                ),
            ),
        ),
        "ggh_ww": ProcessSpec(
            "gg -> H(125) -> W W, both W -> e/mu nu",
            ((*GG_H, "25:onMode = off", "25:onIfMatch = 24 -24", *W_TO_E_MU),),
        ),
        "ggh_bb": ProcessSpec("gg -> H(125) -> b bbar", ((*GG_H, "25:onMode = off", "25:onIfMatch = 5 -5"),)),
        "single_top": ProcessSpec(
            "single top, t- and s-channel (Pythia has no tW), W -> e/mu nu",
            (("Top:qq2tq(t:W) = on", "Top:ffbar2tqbar(s:W) = on", *W_TO_E_MU),),
        ),
    }
    for ma in A_MASSES:
        table[f"haa_4b_ma{ma}"] = _haa(ma)
    table.update(dimuon_processes(dimuon_pthat_min))
    table.update(xyh_processes())
    return table


# ------------------------------------------------------------------------------------------------
# dimuon anomaly detection (issue 17): a low-mass dimuon continuum and the Upsilon(1S, 2S, 3S) -> mu mu,
# both behind the ``dimuon_os`` trigger requirement (two opposite-sign muons, see _pythia_events)
# ------------------------------------------------------------------------------------------------
UPSILONS = (553, 100553, 200553)
DIMUON_MASS_RANGE = (5.0, 20.0)  # gamma* mass window of the continuum, GeV


def dimuon_processes(pthat_min: float) -> dict[str, ProcessSpec]:
    """``dimuon_continuum`` (gamma* + jet -> mu mu + jet) and ``upsilon_mumu`` (NRQCD bottomonium)."""
    lo, hi = DIMUON_MASS_RANGE
    forced = [f"{u}:{k}" for u in UPSILONS for k in ("onMode = off", "onIfMatch = 13 -13")]
    states = ",".join(str(u) for u in UPSILONS)
    on3 = "on,on,on"
    return {
        "dimuon_continuum": ProcessSpec(
            f"Drell-Yan gamma* + jet (qqbar -> gamma* g, qg -> gamma* q), gamma* -> mu mu with "
            f"{lo:g} < m < {hi:g} GeV, pT-hat > {pthat_min:g} GeV; dimuon trigger",
            (
                (
                    "WeakBosonAndParton:qqbar2gmZg = on",
                    "WeakBosonAndParton:qg2gmZq = on",
                    "WeakZ0:gmZmode = 1",
                    f"23:mMin = {lo}",
                    f"23:mMax = {hi}",
                    "23:onMode = off",
                    "23:onIfAny = 13",
                    f"PhaseSpace:pTHatMin = {pthat_min}",
                ),
            ),
            require="dimuon_os",
        ),
        "upsilon_mumu": ProcessSpec(
            f"Upsilon(1S, 2S, 3S) -> mu mu (Pythia Bottomonium, colour singlet and octet 3S1), "
            f"pT-hat > {pthat_min:g} GeV; dimuon trigger",
            (
                (
                    f"Bottomonium:states(3S1) = {states}",
                    f"Bottomonium:gg2bbbar(3S1)[3S1(1)]g = {on3}",
                    f"Bottomonium:gg2bbbar(3S1)[3S1(8)]g = {on3}",
                    f"Bottomonium:qg2bbbar(3S1)[3S1(8)]q = {on3}",
                    f"Bottomonium:qqbar2bbbar(3S1)[3S1(8)]g = {on3}",
                    f"PhaseSpace:pTHatMin = {pthat_min}",
                    *forced,
                ),
            ),
            require="dimuon_os",
        ),
    }


# ------------------------------------------------------------------------------------------------
# X -> Y H heavy-resonance search (issue 17): X = Pythia's H2 (id 35) from gluon fusion, forced to
# Y H with Y = Pythia's A3 (id 36) and H = h(125) (id 25), both -> b bbar; on a grid of (m_X, m_Y)
# ------------------------------------------------------------------------------------------------
XYH_GRID: tuple[tuple[int, int], ...] = tuple((mx, my) for mx in (400, 600, 800) for my in (60, 100, 150))


def _xyh(mx: int, my: int) -> ProcessSpec:
    return ProcessSpec(
        f"gg -> X -> Y H, Y -> b bbar, H(125) -> b bbar with m_X = {mx}, m_Y = {my} GeV "
        "(X = Pythia's H2, id 35; Y = A3, id 36)",
        (
            (
                "Higgs:useBSM = on",
                "HiggsBSM:gg2H2 = on",
                f"35:m0 = {mx}",
                "35:mWidth = 1.0",
                "35:doForceWidth = on",
                f"35:mMin = {mx - 10}",
                f"35:mMax = {mx + 10}",
                "35:onMode = off",
                "35:addChannel = 1 1.0 100 36 25",
                f"36:m0 = {my}",
                "36:mWidth = 0.01",
                "36:doForceWidth = on",
                f"36:mMin = {my - 1}",
                f"36:mMax = {my + 1}",
                "36:oneChannel = 1 1.0 100 5 -5",
                "25:m0 = 125.0",
                "25:onMode = off",
                "25:onIfMatch = 5 -5",
            ),
        ),
    )


def xyh_processes() -> dict[str, ProcessSpec]:
    """``xyh_mx{m_X}_my{m_Y}`` for every point of ``XYH_GRID``."""
    return {f"xyh_mx{mx}_my{my}": _xyh(mx, my) for mx, my in XYH_GRID}


# after every block above: the names of all processes
PROCESS_NAMES: tuple[str, ...] = tuple(process_table(50.0, 20.0, 20.0))
