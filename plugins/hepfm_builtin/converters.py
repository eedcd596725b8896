"""Built-in converters: ``delphes`` (ROOT), ``parquet`` and ``spanet`` (HDF5, which also exports).

They read foreign files for ``hepfm convert`` (see docs/convert.md and ``hepfm.convert``). Their
readers (uproot and awkward, pyarrow, h5py: the ``ingest`` extra) are imported only when a file is
opened, so this plugin loads, and ``hepfm plugins`` lists it, without them installed.
"""

from __future__ import annotations

from hepfm import hookimpl

from ._conv_delphes import DelphesConverter
from ._conv_parquet import ParquetConverter
from ._conv_spanet import SpanetConverter

__all__ = ["DelphesConverter", "ParquetConverter", "SpanetConverter"]


@hookimpl
def hepfm_register_converters() -> list[type]:
    """The built-in converters."""
    return [DelphesConverter, ParquetConverter, SpanetConverter]
