"""The network: backbone (global embedding, PET body, object encoder), diffusion utilities, EventModel."""

from .backbone import PRESETS, Backbone, BackboneConfig, config_from_spec, pair_features
from .model import KINEMATICS, EventModel, ModelContext

__all__ = [
    "PRESETS",
    "Backbone",
    "BackboneConfig",
    "config_from_spec",
    "pair_features",
    "EventModel",
    "ModelContext",
    "KINEMATICS",
]
