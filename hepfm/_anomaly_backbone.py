"""The background model of ``hepfm anomaly`` on hepfm's transformer backbone, and pretrained vs scratch.

``generative.model: backbone``: the background density p(features | m) is learnt as a conditional
diffusion over the **muon pair itself**, the (pT, eta, phi) of mu+ and mu- in the per-object
inputs of the backbone, normalised with the model's normaliser. At every diffusion time the noisy
pair is an event of two objects (flagged as being generated, the time entering the backbone's
conditioning, m(mu mu) in the global ``m_leps``); the backbone encodes it and a small head on its
object and event latents predicts the velocity. The backbone starts from a pretrained run
(``generative.init``) or from random weights, and is fine-tuned with the head on the sideband
events: the generative head of a pretrained backbone, as in EveNet's dimuon analysis. Sampled pairs
at the signal-region masses give the ``PAIR_FEATURES`` the classifier sees.

Why the pair and not a latent of the event as a condition: the latent of an event's clean objects
encodes the very features the model is to generate, so samples conditioned on signal-region
events would copy their signal, and the classifier would find nothing.

``compare_anomaly`` runs the search with a scratch and a pretrained backbone over seeds, next to
the plain bump hunt (the fit before the cut), and writes the table of Z after the cut.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ._errors import HepfmError
from ._files import write_json
from .model.diffusion import ddim_sample

if TYPE_CHECKING:
    from .anomaly import AnomalyConfig, GenerativeConfig
    from .schema import EventSchema, FeatureStats

__all__ = ["BackboneBackground", "compare_anomaly", "check_pretrained", "MODES"]

#: The per-object features generated for each muon (E follows, massless muons).
KINEMATICS = ("pt", "eta", "phi")
#: Rows of the comparison: the plain bump hunt (fit before the cut) and the two backbone searches.
MODES = ("bump_hunt", "scratch", "pretrained")


def check_pretrained(path: str | os.PathLike | None, where: str = "--pretrained") -> None:
    """Refuse, in one line, a pretrained run folder, checkpoint or model folder that is not there."""
    if path is not None and not Path(path).exists():
        raise HepfmError(f"{where} {path}: no such run folder, checkpoint or model folder")


def event_model(
    gen: GenerativeConfig, schema: EventSchema, stats: dict[str, dict[str, FeatureStats]], seed: int
) -> nn.Module:
    """The ``EventModel`` whose normaliser and backbone the background model uses.

    With ``gen.init``: loaded by ``hepfm.load_model`` (its weights, or with ``gen.from_scratch``
    its architecture and normaliser with random weights); without: the preset ``gen.preset``
    normalised with the store's statistics.
    """
    from ._hf_export import load_model
    from .checkpoint import build_model
    from .model import PRESETS

    torch.manual_seed(seed)  # the random weights of a scratch backbone
    if gen.init is None:
        config = {
            "schema": schema.model_dump(mode="json"),
            "stats": {part: {k: v.model_dump() for k, v in s.items()} for part, s in stats.items()},
            "backbone": PRESETS[gen.preset].to_dict(),
            "heads": {},
        }
        return build_model(config, "anomaly background model")
    check_pretrained(gen.init, "generative.init")
    model = load_model(gen.init)
    diff = model.schema.differences(schema)
    if diff:
        raise HepfmError(f"generative.init {gen.init}: its schema does not match the store's: {'; '.join(diff)}")
    if gen.from_scratch:
        model = build_model(model.checkpoint_config, str(gen.init))
    return model


class _PairDenoiser(nn.Module):
    """Velocity of the noisy muon pair [B, 2, 3] from the backbone's latents of it as an event."""

    def __init__(self, model: nn.Module, hidden: int) -> None:
        super().__init__()
        self.model = model  # EventModel: its normaliser and backbone (its heads are not used)
        schema = model.schema
        self.cols = [schema.index(k) for k in KINEMATICS]
        self.e_col = schema.index("E")
        self.kin_index = model.kin_index
        template = torch.zeros(2, schema.n_object_features)  # raw rows of mu+ and mu-
        template[:, schema.index("is_lepton")] = 1.0
        template[:, schema.index("charge")] = torch.tensor([1.0, -1.0])
        self.register_buffer("template", template)
        names = schema.global_names
        self.mass_col = names.index("m_leps") if "m_leps" in names else None
        d = model.config.dim
        self.head = nn.Sequential(nn.Linear(2 * d + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, len(KINEMATICS))

    def events(self, y: torch.Tensor, mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised objects [B, 2, F], raw objects [B, 2, F] and normalised globals [B, G] of pairs.

        ``y`` [B, 2, 3] holds the normalised (pT, eta, phi); E = pT cosh(eta); ``mass`` [B] raw m(mu mu).
        """
        norm = self.model.normaliser
        b = y.shape[0]
        x = torch.zeros(b, 2, self.template.shape[1], dtype=y.dtype)
        x[..., self.cols] = y
        raw = self.template.expand(b, -1, -1).clone()
        raw[..., self.cols] = norm.objects_inverse(x)[..., self.cols]
        pt, eta = raw[..., self.cols[0]], raw[..., self.cols[1]].clamp(-8.0, 8.0)
        raw[..., self.e_col] = pt.clamp_min(0) * torch.cosh(eta)
        mask = torch.ones(b, 2, dtype=torch.bool)
        g = torch.zeros(b, norm.globals_shift.shape[0])
        if self.mass_col is not None:  # m(mu mu) as the backbone's own global, the rest at their mean
            full = torch.zeros_like(g)
            full[:, self.mass_col] = mass
            g[:, self.mass_col] = norm.globals(full)[:, self.mass_col]
        return norm.objects(raw, mask), raw, g

    def forward(self, y_t: torch.Tensor, t: torch.Tensor, mass: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        # y_t [B, 2, 3] noisy normalised kinematics; t [B]; mass [B] raw; lm [B] standardised log m
        x, raw, g = self.events(y_t, mass)
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        objects, event = self.model.backbone(x, mask, g, raw[..., self.kin_index], t, mask)  # [B, 2, D], [B, D]
        h = torch.cat([objects, event[:, None].expand_as(objects), lm[:, None, None].expand(-1, 2, 1)], -1)
        return self.out(self.head(h))  # [B, 2, 3]


class BackboneBackground:
    """p(features | m) of sideband events by a diffusion of the muon pair with hepfm's backbone.

    Args:
        config: ``generative`` settings (``init``, ``from_scratch``, ``preset``, epochs, ...).
        schema: The store's event schema (a pretrained model's must match).
        stats: The store's normalisation statistics (used without ``init``).
        features: The ``PAIR_FEATURES`` that ``sample`` returns, in this order.
        seed: Seeds the scratch weights, the batches and the noise.
    """

    def __init__(
        self,
        config: GenerativeConfig,
        schema: EventSchema,
        stats: dict[str, dict[str, FeatureStats]],
        features: list[str],
        seed: int = 0,
    ) -> None:
        from .anomaly import PAIR_FEATURES

        self.config, self.schema, self.seed = config, schema, seed
        self.columns = [PAIR_FEATURES.index(f) for f in features]
        self.net = _PairDenoiser(event_model(config, schema, stats, seed), config.hidden)

    def _normalised(self, pairs: np.ndarray) -> torch.Tensor:
        """Normalised (pT, eta, phi) [n, 2, 3] of raw pairs [n, 2, F], rotated to phi(mu+) = 0."""
        raw = torch.tensor(pairs, dtype=torch.float32)
        phi = self.schema.index("phi")
        dphi = torch.remainder(raw[..., phi] - raw[:, :1, phi] + torch.pi, 2 * torch.pi) - torch.pi
        raw[..., phi] = dphi
        x = self.net.model.normaliser.objects(raw, torch.ones(raw.shape[:2], dtype=torch.bool))
        return x[..., self.net.cols]

    def fit(self, pairs: np.ndarray, mass: np.ndarray) -> BackboneBackground:
        """Fine-tune the backbone and train the head on sideband pairs [n, 2, F] (raw rows) at masses [n]."""
        from .anomaly import fit_denoiser

        c = self.config
        y = self._normalised(pairs)
        self.mu, self.sd = y.mean(0), y.std(0).clamp_min(1e-3)  # [2, 3] each
        lm = np.log(mass)
        self.m_mu, self.m_sd = lm.mean(), lm.std() + 1e-9
        x = (y - self.mu) / self.sd
        m = torch.tensor(mass, dtype=torch.float32)
        lmt = torch.tensor((lm - self.m_mu) / self.m_sd, dtype=torch.float32)
        self.net.model.eval()  # no feature dropout on the generated pair; the weights still train
        params = [*self.net.model.backbone.parameters(), *self.net.head.parameters(), *self.net.out.parameters()]
        velocity = lambda x_t, t, idx: self._velocity(x_t, t, m[idx], lmt[idx])  # noqa: E731
        fit_denoiser(velocity, params, x, c, self.seed, "backbone background model (sidebands)")
        return self

    def _velocity(self, x_t: torch.Tensor, t: torch.Tensor, m: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        return self.net(x_t * self.sd + self.mu, t, m, lm)  # the backbone sees the pair in its own units

    @torch.no_grad()
    def sample(self, mass: np.ndarray, seed: int = 1, batch: int = 4096) -> np.ndarray:
        """Features [n, len(features)] of pairs sampled at the masses [n]."""
        from .anomaly import pair_features

        if not hasattr(self, "mu"):
            raise HepfmError("BackboneBackground.sample: fit the model first")
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, len(mass), batch):
            mm = torch.tensor(mass[start : start + batch], dtype=torch.float32)
            lm = (torch.log(mm) - float(self.m_mu)) / float(self.m_sd)
            x = ddim_sample(
                lambda x_t, t, mm=mm, lm=lm: self._velocity(x_t, t, mm, lm),
                (len(mm), 2, len(KINEMATICS)),
                self.config.steps,
                gen,
            )
            raw = self.net.events(x * self.sd + self.mu, mm)[1].numpy().astype(np.float64)  # [B, 2, F]
            out.append(pair_features(self.schema, raw[:, 0], raw[:, 1])[1][:, self.columns])
        return np.concatenate(out)


def compare_anomaly(
    config: AnomalyConfig,
    pretrained: str | os.PathLike,
    seeds: int,
    out: str | os.PathLike,
    stores: list[str] | None = None,
    events: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Z after the cut with a scratch and a pretrained backbone over seeds, and the plain bump hunt.

    Both backbone arms share the pretrained run's architecture and normaliser; the scratch arm has
    random weights (seeded). Each search writes its own folder ``OUT/{mode}_seed{k}``; the table
    goes to ``OUT/comparison.md`` and ``OUT/comparison.json``.

    Args:
        config: The search (``generative.model`` is set to ``backbone``; its other settings are kept).
        pretrained: Pretrained run folder, checkpoint or model folder.
        seeds: Seeds 0..seeds-1 of each backbone arm (``config.seed`` + k).
        out: The comparison folder.
        stores: Event stores (default: the config's).
        events: ``hepfm.anomaly.dimuon_events``' arrays instead of stores.
    """
    from .anomaly import read_stores, search_events

    check_pretrained(pretrained)
    if seeds < 1:
        raise HepfmError(f"--seeds {seeds}: need at least 1")
    events = events if events is not None else read_stores(config, stores)
    out = Path(out)
    runs: dict[str, list[dict[str, float | None]]] = {mode: [] for mode in MODES}
    for k in range(seeds):
        for mode in MODES[1:]:
            gen = config.generative.model_copy(
                update={"model": "backbone", "init": str(pretrained), "from_scratch": mode == "scratch"}
            )
            cfg = config.model_copy(update={"generative": gen, "seed": config.seed + k})
            r = search_events(events, cfg, out / f"{mode}_seed{k}")
            runs[mode].append({"seed": cfg.seed, "z": r.z_after, "auc_sr": r.classifier_auc_sr})
            if mode == "pretrained":  # the spectrum before the cut does not depend on the model
                runs["bump_hunt"].append({"seed": cfg.seed, "z": r.z_before, "auc_sr": None})  # no classifier
    table = {
        mode: {
            "median_z": float(np.median([x["z"] for x in rows])),
            "min_z": float(min(x["z"] for x in rows)),
            "max_z": float(max(x["z"] for x in rows)),
            "std_z": float(np.std([x["z"] for x in rows])),
            "runs": rows,
        }
        for mode, rows in runs.items()
    }
    summary = {"config": json.loads(config.model_dump_json()), "pretrained": str(pretrained), "seeds": seeds}
    write_json(out / "comparison.json", {**summary, "modes": table})
    lines = [
        f"# {config.name}: Z after the cut, pretrained vs scratch ({seeds} seeds; pretrained: {pretrained})",
        "",
        "| mode | median Z | min | max | std | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for mode, row in table.items():
        lines.append(
            f"| {mode} | {row['median_z']:.2f} | {row['min_z']:.2f} | {row['max_z']:.2f} | {row['std_z']:.2f} "
            f"| {', '.join(str(x['seed']) for x in row['runs'])} |"
        )
    lines += ["", "bump_hunt: the fit of the spectrum before any cut (no machine learning), the same for every seed."]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    return {**summary, "modes": table, "table": out / "comparison.md"}
