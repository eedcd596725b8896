"""Domains of the numbers a user gives (sizes, counts, seeds), one place for the library and the CLI.

A value outside its domain is refused before it reaches numpy or torch, with the bound in the
message (``--epochs 0: must be between 1 and 100,000``), by the typer option (``min``/``max``)
and again by the library function the option feeds, so Python callers get the same refusal.
"""

from __future__ import annotations

from ._errors import HepfmError

__all__ = [
    "MAX_SEED",
    "MAX_EVENTS",
    "MAX_CHUNK",
    "MAX_BATCH",
    "MAX_WORKERS",
    "MAX_EPOCHS",
    "MAX_SEEDS",
    "MAX_WIDTH",
    "MAX_CLASSES",
    "MAX_DEPTH",
    "in_range",
]

#: Seeds are non-negative 63-bit integers (numpy and torch accept them all).
MAX_SEED = 2**63 - 1
#: Events one command may be asked for.
MAX_EVENTS = 10**10
#: Events per store chunk (a chunk of 18x7 float32 objects is about 0.5 kB per event).
MAX_CHUNK = 2**20
#: Events per inference or training batch.
MAX_BATCH = 2**20
#: Worker processes.
MAX_WORKERS = 1024
#: Training epochs of one probe or fit.
MAX_EPOCHS = 100_000
#: Width of a backbone or head layer (a 16384-wide layer is already a billion-parameter model).
MAX_WIDTH = 16384
#: Classes of a classification head.
MAX_CLASSES = 100_000
#: Blocks of a backbone.
MAX_DEPTH = 256
#: Seeds of one probe or study cell.
MAX_SEEDS = 1000


def in_range(name: str, value: int | float, lo: int | float, hi: int | float) -> int | float:
    """Return ``value`` if ``lo <= value <= hi``; else raise one ``HepfmError`` line with the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise HepfmError(f"{name} {value}: must be between {lo:,} and {hi:,}")
    return value
