"""User-facing errors: one line, exit code 2, no traceback (the CLI catches them)."""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional


class UserError(Exception):
    """Bad input from the user (file, config value, command line). The message is one line."""


class ConfigError(UserError):
    """A config value is wrong; the message names the key path and what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl+C is SIGINT; schedulers send SIGTERM). The CLI exits with
    128 + the signal's number and names the checkpoint a training run resumes from, if any, or
    ``then``: the command that does the rest of a chain whose training finished."""

    def __init__(self, signum: int, resume_from: "Optional[os.PathLike[str] | str]" = None, *,
                 then: Optional[str] = None) -> None:
        self.signum, self.resume_from, self.then = int(signum), resume_from, then
        super().__init__(signum)


def one_line(value: object, limit: int = 300, *, typed: bool = False, whole: bool = False) -> str:
    """``value`` (an exception, a message, anything printable) as one short line for a message.

    The first non-empty line of ``str(value)`` (every line, joined, with ``whole=True``: for
    composed messages whose detail may follow a line break) with whitespace runs collapsed to one
    space and non-printable characters escaped (``\\x1b``), cut to ``limit`` characters ending
    with "…". An exception with an empty message gives its type name; ``typed=True`` puts an
    exception's type name in front (``ValueError: bad value``).
    """
    text = str(value)
    if whole:
        text = " ".join(text.split())
    else:
        text = next((t for t in (" ".join(line.split()) for line in text.splitlines()) if t), "")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    if len(text) > limit:
        text = text[:max(limit - 1, 0)] + "…"
    if isinstance(value, BaseException):
        name = type(value).__name__
        if not text:
            return name
        if typed:
            return f"{name}: {text}"
    return text


def closest(name: str, choices, cutoff: float = 0.6) -> Optional[str]:
    """The choice closest to ``name`` (a misspelled command, option, key or folder name), or None
    when none is close enough; as git's "did you mean"."""
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(name: str, choices, cutoff: float = 0.6) -> str:
    """`` (did you mean X?)`` for the choice closest to ``name``, else the empty text."""
    match = closest(name, choices, cutoff)
    return f" (did you mean {match}?)" if match else ""


def is_text(name: str) -> bool:
    """Whether ``name`` (a file name read from disk, a command-line argument) is UTF-8 text: Python
    keeps the bytes of other encodings as lone surrogates, which no UTF-8 file can hold."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: "os.PathLike[str] | str") -> str:
    """``path`` for messages and text files: bytes that are not UTF-8 shown as ``\\xNN``, and
    characters that are not printable (a line break that would forge a log line, an escape sequence
    for the terminal) as Python escapes them (``\\n``, ``\\x1b``)."""
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte gave
        text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def shell_word(path: "os.PathLike[str] | str") -> str:
    """``path`` (:func:`printable_path`) as one word of a command a message tells the user to run:
    quoted for the shell when it holds a space or another special character."""
    import shlex

    return shlex.quote(printable_path(path))


_ALLOCATION_WORDS = ("allocate", "out of memory", "overflow")
"""Words of the allocators' refusals: torch's CPU allocator ("can't allocate memory"), CUDA's
``OutOfMemoryError``, a size-calculation overflow; numpy's ``MemoryError`` is its own type."""


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator refusing a tensor too large for the memory (a size that
    bad input asked for), not another error."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or isinstance(exc, RuntimeError) and any(w in text for w in _ALLOCATION_WORDS)


def env_seconds(name: str, default: float, *, error: type = UserError,
                environ: Optional[Mapping[str, str]] = None) -> float:
    """The time limit ``$name`` sets (seconds, a number > 0), else ``default`` when it is unset or
    empty; anything else is one line naming the variable (an ``error``)."""
    env = os.environ if environ is None else environ
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise error(f"{name}={one_line(text, 40)!r} is not a number of seconds > 0")
    return value
