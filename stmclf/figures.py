"""Writing matplotlib figures (one place for the layout, folder and resolution of every PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

__all__ = ["save_figure"]


def save_figure(fig: Any, out: Union[str, Path]) -> Path:
    """Lay ``fig`` out tightly, write it as a 100-dpi PNG at ``out`` (folders created), close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
