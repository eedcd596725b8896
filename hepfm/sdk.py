"""What a plugin may use: the one public module plugin code imports from (besides ``hepfm`` itself).

Everything here is stable API for plugin authors; private modules (``hepfm._name``) are not, and no
built-in plugin imports them. The contracts each kind of component must meet are
``hepfm.components.CONTRACTS`` and docs/plugins.md.

- Registration: ``hookimpl``.
- Component building blocks: ``Params``, ``Latents``, ``HeadDims``, ``Evaluation``, ``Batch``,
  ``EventBlock``, ``EventSchema``, ``compute_globals``.
- Errors: ``HepfmError`` (one line, no traceback, on the command line), ``MappingError`` (a
  converter parameter that cannot work: the driver names the mapping file, line and key).
- Converter toolkit: ``ObjectGroup``, ``SourceInfo``, ``pack_objects``, ``jagged_to_padded``,
  ``energy_from_mass``, ``remap_indices``, ``require``.
- Model pieces for heads: ``MLP``; diffusion (``alpha_sigma``, ``noise``, ``predict_x0_eps``,
  ``ddim_sample``, ``time_embedding``).
- Statistics: ``binned_significance`` (Asimov significance over score bins), ``GridResult`` and
  ``plot_grid`` (figures per mass point of a parametrised search).
- Limits for ``Params`` fields: ``MAX_WIDTH``, ``MAX_CLASSES``, ``MAX_DEPTH`` (sizes past them are
  refused with the ceiling in the message); ``read_yaml`` (YAML with alias, depth and size limits,
  duplicate keys refused).
- Stores: ``store_topology(store)`` (the decay topology a store carries, or its generator's),
  ``check_target_names`` (targets a store cannot hold together, refused before anything is written).
- Physics: the ``physics`` module (four-vectors, masses, boosts, the spin-correlation angles).
- Plots: the ``plots`` module (``new_figure`` builds a ``Figure`` outside pyplot, ``styled``,
  ``draw_hist``, ``fill``, ``binomial_band``, ``hep_label``, ``feature_label``, ``save_figure``):
  hist + mplhep styling without touching matplotlib's global state.
"""

from __future__ import annotations

from . import _plots as plots
from . import physics
from ._convert_kit import (
    MappingError,
    ObjectGroup,
    SourceInfo,
    energy_from_mass,
    jagged_to_padded,
    pack_objects,
    remap_indices,
    require,
)
from ._errors import HepfmError
from ._limits import MAX_CLASSES, MAX_DEPTH, MAX_WIDTH
from ._yaml import read_yaml
from .batch import Batch, EventBlock
from .components import Evaluation, HeadDims, Latents, Params
from .hookspecs import hookimpl
from .model.backbone import MLP
from .model.diffusion import alpha_sigma, ddim_sample, noise, predict_x0_eps, time_embedding
from .physics import compute_globals
from .report import store_topology
from .schema import EventSchema
from .store import check_target_names
from .xyh import GridResult, binned_significance, plot_grid

__all__ = [
    "hookimpl",
    "Params",
    "Latents",
    "HeadDims",
    "Evaluation",
    "Batch",
    "EventBlock",
    "EventSchema",
    "compute_globals",
    "HepfmError",
    "MappingError",
    "ObjectGroup",
    "SourceInfo",
    "pack_objects",
    "jagged_to_padded",
    "energy_from_mass",
    "remap_indices",
    "require",
    "check_target_names",
    "MLP",
    "alpha_sigma",
    "noise",
    "predict_x0_eps",
    "ddim_sample",
    "time_embedding",
    "physics",
    "plots",
    "store_topology",
    "MAX_WIDTH",
    "MAX_CLASSES",
    "MAX_DEPTH",
    "read_yaml",
    "binned_significance",
    "GridResult",
    "plot_grid",
]
