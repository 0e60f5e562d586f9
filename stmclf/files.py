"""Files written whole or not at all: a kill, a full disk or a file size limit in the middle of a
write leaves the previous file as it was (checkpoints, ``results.json``, ``export_summary.json``,
the report). The temporary file is ``.<name>.<random>.tmp`` beside the target, locked (``flock``)
while it is written; :func:`remove_orphan_temp_files` deletes those
a killed process left behind."""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from stmclf.errors import UserError

__all__ = ["PARTIAL_SUFFIX", "TEMP_SUFFIX", "atomic_write", "atomic_write_text", "remove_orphan_temp_files"]

log = logging.getLogger("stmclf")

TEMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
"""``.<name>.partial``: a file a library writes by its path (an ONNX export), renamed when whole."""


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind ``exc`` (torch reports a failed write as a RuntimeError whose context
    is the OSError), or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _write_error(target: Path, error: OSError, existed: bool, action: str) -> UserError:
    reason = error.strerror or str(error)
    kept = f"; the previous {target.name} is unchanged" if existed else ""
    return UserError(f"{target}: cannot {action}: {reason}{kept}")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], action: str = "write the file", *,
                 private: bool = False) -> None:
    """``write(handle)`` into a temporary file in the same directory, fsync, then rename over
    ``path``: ``path`` is either its previous whole content or the new one, never a part of it
    (a kill, a full disk or a file size limit in the middle). A failure of the environment is a
    one-line :class:`~stmclf.errors.UserError` ("<path>: cannot <action>: <reason>"). ``private``:
    readable by the owner alone (a checkpoint); else the mode the file had, or a new file's usual one."""
    target = Path(path)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc, existed, action) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # "being written": not an orphan
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if not private:  # mkstemp's mode is 0600
            os.chmod(tmp, target.stat().st_mode & 0o7777 if existed else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = _os_error(exc) if isinstance(exc, Exception) else None
        if error is not None:
            raise _write_error(target, error, existed, action) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write` of a text file (``results.json``, ``export_summary.json``, the report)."""
    data = text.encode(encoding)
    atomic_write(path, lambda handle: handle.write(data))


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def remove_orphan_temp_files(directory: Path, min_age_s: float = 1.0,
                             suffixes: tuple[str, ...] = (TEMP_SUFFIX,)) -> list[Path]:
    """Delete the temporary files that interrupted saves left in ``directory`` (``.<name>.<random>.tmp``,
    and with ``suffixes`` other hidden ``.<name><suffix>`` files such as an export's ``.partial``);
    a file that another process is still writing (locked, or younger than ``min_age_s``) is left
    alone. Returns the removed files."""
    removed: list[Path] = []
    try:
        candidates = sorted({p for suffix in suffixes for p in Path(directory).glob(f".*{suffix}")})
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        try:
            if not path.is_file() or now - path.stat().st_mtime < min_age_s:
                continue
            with open(path, "rb") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a save in progress
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("Removed %d unfinished file(s) left by an interrupted save in %s: %s", len(removed),
                 directory, ", ".join(p.name for p in removed))
    return removed
