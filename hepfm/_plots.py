"""Matplotlib without a display, and atomic PNG writes (temp file + rename)."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, file: Path, title: str | None = None) -> Path:
    """Write ``fig`` to ``file`` (PNG) atomically and close it."""
    plt = pyplot()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, file)
    return file
