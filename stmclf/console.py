"""``data_console()``: the one Rich console every table a command prints (on stdout) goes through.

In a terminal it is the terminal's width. Piped or redirected (``stmclf export ... | tee``, ``> f``,
CI), Rich would assume 80 columns and wrap or cut the tables ("validati… set", a path folded over two
lines); there the console is wide enough that no row wraps or is cut: each table is as wide as its
longest row, and a text line is never broken.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, TextIO

if TYPE_CHECKING:
    from rich.console import Console

PIPED_WIDTH = 1_000_000
"""The width of a console that is no terminal: more than any row (a table is as wide as its
content, a line of text is never padded to the console's width)."""


def data_console(file: Optional[TextIO] = None, width: Optional[int] = None) -> "Console":
    """The Rich console of a command's tables and text on ``file`` (default: stdout at the time of
    each print); ``width``: a fixed width (tests)."""
    from rich.console import Console

    console = Console(file=file, width=width, soft_wrap=False)
    if width is None and not console.is_terminal:
        console = Console(file=file, width=PIPED_WIDTH, soft_wrap=False)
    return console
