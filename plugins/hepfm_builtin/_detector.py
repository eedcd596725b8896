"""Parametric detector response for the ``pythia`` generator (pure numpy, no Pythia needed).

Every number here is documented with its public source in docs/pythia.md. In short: resolutions,
efficiencies and b-tagging rates are those of the ATLAS card shipped with Delphes 3
(``cards/delphes_card_ATLAS.tcl``), isolation follows the same card, jets are anti-kT R = 0.4 on
particles (a particle-level definition, then smeared), and the unclustered energy entering the
missing transverse momentum is smeared with the stochastic term of ATLAS's MET resolution.
"""

from __future__ import annotations

import numpy as np

# --- acceptance and object definitions -----------------------------------------------------------
CALO_ETA_MAX = 4.9  # particles beyond this |eta| are not seen (ATLAS forward calorimeter edge)
JET_R = 0.4
JET_PT_MIN = 20.0
JET_ETA_MAX = 2.5
JET_RAW_PT_MIN = 10.0  # clustering threshold before smearing (well below JET_PT_MIN)
LEPTON_PT_MIN = 10.0
LEPTON_ETA_MAX = 2.5
LEPTON_CANDIDATE_PT_MIN = 5.0  # bare-lepton preselection before dressing and smearing
DRESS_DR = 0.1  # photons within this Delta R are added to the lepton (dressed leptons)
ISO_DR = 0.5  # Delphes ATLAS card, ElectronIsolation / MuonIsolation DeltaRMax
ISO_PT_MIN = 0.5  # ... PTMin
ISO_RATIO_MAX = {11: 0.12, 13: 0.25}  # ... PTRatioMax (electrons, muons)
FLAVOUR_DR = 0.3  # hadron labelling cone (ATLAS truth labelling)
HADRON_PT_MIN = 5.0  # b/c hadrons below this pT do not label a jet
MET_SOFT_K = 0.5  # sigma(Ex), sigma(Ey) of the soft term = K * sqrt(sum pT of unclustered particles), GeV^1/2

NEUTRINOS = (12, 14, 16)


# --- kinematics ----------------------------------------------------------------------------------
def pt_eta_phi(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transverse momentum, pseudorapidity (finite along the beam) and azimuth."""
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    return pt, eta, np.arctan2(py, px)


def delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Difference of azimuths a - b, wrapped to (-pi, pi]."""
    d = np.remainder(a - b + np.pi, 2 * np.pi) - np.pi
    return np.where(d == -np.pi, np.pi, d)


def delta_r(eta1: np.ndarray, phi1: np.ndarray, eta2: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    """Delta R with broadcasting."""
    return np.hypot(eta1 - eta2, delta_phi(phi1, phi2))


# --- hadron flavour ------------------------------------------------------------------------------
def hadron_flavour(pdg: np.ndarray) -> np.ndarray:
    """5 for hadrons with a b quark, 4 for those with a c quark (and no b), else 0.

    Uses the PDG numbering: mesons ``n_q2 n_q3 n_J``, baryons ``n_q1 n_q2 n_q3 n_J`` (diquarks, whose
    ``n_q3`` is 0, and partons are not hadrons).
    """
    a = np.abs(pdg) % 10_000
    is_hadron = (np.abs(pdg) > 100) & (np.abs(pdg) < 10_000_000) & ((a // 10) % 10 != 0)
    digits = np.stack([(a // 1000) % 10, (a // 100) % 10, (a // 10) % 10])
    has_b = (digits == 5).any(0) & is_hadron
    has_c = (digits == 4).any(0) & is_hadron
    return np.where(has_b, 5, np.where(has_c, 4, 0))


# --- resolutions (Delphes ATLAS card) ------------------------------------------------------------
def electron_resolution(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Relative pT resolution of electrons (ElectronMomentumSmearing)."""
    a = np.abs(eta)
    c0 = np.where(a <= 0.5, 0.03, np.where(a <= 1.5, 0.05, 0.15))
    c1 = np.where(a <= 0.5, 1.3e-3, np.where(a <= 1.5, 1.7e-3, 3.1e-3))
    return np.sqrt(c0**2 + (pt * c1) ** 2)


def muon_resolution(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Relative pT resolution of muons (MuonMomentumSmearing)."""
    a = np.abs(eta)
    c0 = np.where(a <= 0.5, 0.01, np.where(a <= 1.5, 0.015, 0.025))
    c1 = np.where(a <= 0.5, 1.0e-4, np.where(a <= 1.5, 1.5e-4, 3.5e-4))
    return np.sqrt(c0**2 + (pt * c1) ** 2)


def jet_energy_resolution(energy: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Absolute jet energy resolution in GeV: the card's hadronic calorimeter formula applied to the jet."""
    a = np.abs(eta)
    central = np.sqrt(energy**2 * 0.0302**2 + energy * 0.5205**2 + 1.59**2)
    endcap = np.sqrt(energy**2 * 0.0500**2 + energy * 0.706**2)
    forward = np.sqrt(energy**2 * 0.09420**2 + energy * 1.00**2)
    return np.where(a <= 1.7, central, np.where(a <= 3.2, endcap, forward))


# --- efficiencies (Delphes ATLAS card) -----------------------------------------------------------
def electron_efficiency(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    a = np.abs(eta)
    eff = np.where(a <= 1.5, 0.95, np.where(a <= 2.5, 0.85, 0.0))
    return np.where(pt > 10.0, eff, 0.0)


def muon_efficiency(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    a = np.abs(eta)
    eff = np.where(a <= 1.5, 0.95, np.where(a <= 2.7, 0.85, 0.0))
    return np.where(pt > 10.0, eff, 0.0)


def btag_efficiency(flavour: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Probability to tag a jet of hadron flavour 5 (b), 4 (c) or 0 (light) (BTagging, ATL-PHYS-PUB-2015-022)."""
    b = 0.80 * np.tanh(0.003 * pt) * (30.0 / (1.0 + 0.086 * pt))
    c = 0.20 * np.tanh(0.02 * pt) * (1.0 / (1.0 + 0.0034 * pt))
    light = 0.002 + 7.3e-6 * pt
    return np.clip(np.where(flavour == 5, b, np.where(flavour == 4, c, light)), 0.0, 1.0)


def smear_factor(rng: np.random.Generator, relative_sigma: np.ndarray) -> np.ndarray:
    """Multiplicative Gaussian response 1 + N(0, sigma), floored at a tiny positive value."""
    return np.maximum(1.0 + rng.standard_normal(np.shape(relative_sigma)) * relative_sigma, 1e-3)
