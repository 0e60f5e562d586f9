"""Ctrl+C always ends the ``stmclf`` command, even while its main thread is stuck in C++.

Python runs its SIGINT handler (the KeyboardInterrupt) only when the main thread gets back to the
interpreter: a TorchScript model that loops forever (``--trust-model-file``) or any C++ call that
never returns would leave Ctrl+C without effect. The first Ctrl+C still raises KeyboardInterrupt
(Lightning's graceful stop, a resumable run folder, the CLI's one "interrupted" line); a daemon
thread, woken through ``signal.set_wakeup_fd`` (written by the C-level signal handler, in any
thread, without the GIL), says so in one line when the command is still running ``GRACE_S``
seconds later, and ends the process with exit code 130 and one line on stderr at a second Ctrl+C,
wherever the main thread is (as docker compose and many CLIs do). A slow graceful stop is never cut
short without that second Ctrl+C. The watcher needs the GIL for a moment: TorchScript's
interpreter and torch's operators release it (a C extension that loops while holding it stays out
of reach: Ctrl+\\ (SIGQUIT) or ``kill`` end those).

Installed only by the console entry point (``stmclf.cli.main.run``), never by ``main`` (tests call
it in-process), and only in the main thread of a POSIX process.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from typing import Iterator, Optional

from stmclf.training.mlflow_runs import end_open_runs_now

GRACE_S = 5.0
"""Seconds after the first Ctrl+C before a command that has not ended says how to stop it at once."""
HINT = "stmclf: still stopping after Ctrl+C; press Ctrl+C again to stop at once\n"
STOPPED = "stmclf: interrupted (SIGINT) and stopped at once: Ctrl+C pressed again\n"
TERMINATED = "stmclf: interrupted (SIGTERM) and stopped at once: SIGTERM received again\n"

EXIT_CODE = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM received outside a training's fit: the command stops as after a Ctrl+C (exit 143)."""

    signum = signal.SIGTERM


class _Guard:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.read_fd, self.write_fd = os.pipe()  # not inherited by exec'd children (PEP 446)
        os.set_blocking(self.write_fd, False)  # set_wakeup_fd requires it
        self.handled = 0  # SIGINTs seen by the Python-level handler (main thread)
        self.seen = 0  # SIGINTs seen by the watcher thread
        self.stopped = False  # the command ended (gracefully) after a Ctrl+C: no deadline any more
        self.exiting = threading.Lock()
        self.terms = 0  # SIGTERMs seen by the watcher thread
        self.previous_handler = signal.getsignal(signal.SIGINT)
        self.previous_term = signal.getsignal(signal.SIGTERM)
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.terminate)
        self.thread = threading.Thread(target=self.watch, name="stmclf-interrupt", daemon=True)
        self.thread.start()

    def handle(self, signum, frame) -> None:
        """The Python-level handler: the first Ctrl+C is Python's KeyboardInterrupt, the next one ends
        the process (the main thread is back in Python: no need to wait for the watcher)."""
        self.handled += 1
        if self.handled > 1:
            self.exit_now()
        signal.default_int_handler(signum, frame)

    def terminate(self, signum, frame) -> None:
        """SIGTERM (a scheduler, ``kill``) stops the command as Ctrl+C does: a :class:`Terminated`
        (a KeyboardInterrupt), so that the stage's MLflow run ends KILLED and the run folder is left
        as after a Ctrl+C, not cut off mid-write. (During ``trainer.fit`` Lightning's own handler
        stops the training at the end of the batch: ``training/fit.py: lightning_handles_sigterm``.)"""
        raise Terminated()

    def watch(self) -> None:
        deadline: Optional[float] = None
        poller = select.poll()  # not select.select: no limit on the fd's number
        poller.register(self.read_fd, select.POLLIN)
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0) * 1000
            try:
                data = os.read(self.read_fd, 512) if poller.poll(timeout) else None
            except OSError:  # the pipe was closed under us: the command is over
                return
            if data is None:  # the grace period is over
                deadline = None
                if not self.stopped:  # (after the command's own line, only the interpreter's exit is left)
                    with contextlib.suppress(OSError):
                        os.write(2, HINT.encode())
                continue
            if not data:  # the write end closed: the command is over
                return
            for signum in data:  # one byte per signal caught (SIGCHLD of loader workers, SIGTERM, ...)
                if signum == signal.SIGTERM:
                    self.terms += 1
                    if self.terms > 1:  # a main thread stuck in C++ cannot raise: the second ends it
                        self.exit_now(signal.SIGTERM)
                    continue
                if signum != signal.SIGINT:
                    continue
                self.seen += 1
                if self.seen == 1:
                    deadline = time.monotonic() + self.grace
                else:
                    self.exit_now()

    def exit_now(self, signum: int = signal.SIGINT) -> None:
        """One line on stderr (and at the end of the run's ``stmclf.log``), the command's open MLflow
        runs marked KILLED (in another thread, for at most ``FORCED_END_S`` seconds: what is left is
        reconciled by the next command), exit code 128 + the signal (130 for Ctrl+C): no lock that the
        stuck main thread may hold is taken here (no logging, no flush of Python's buffered streams)."""
        self.exiting.acquire()  # the first of the main thread and the watcher ends the process
        line = (TERMINATED if signum == signal.SIGTERM else STOPPED).encode()
        with contextlib.suppress(OSError):
            if os.isatty(1):
                os.write(1, b"\x1b[?25h")  # a progress bar may have hidden the terminal's cursor
        with contextlib.suppress(OSError):
            os.write(2, line)
        for path in _run_logs():
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
        end_open_runs_now()  # the command's MLflow runs KILLED, given at most FORCED_END_S seconds
        os._exit(128 + signum)

    def _restore_handlers(self) -> None:
        if signal.getsignal(signal.SIGINT) == self.handle:
            signal.signal(signal.SIGINT, self.previous_handler)
        if signal.getsignal(signal.SIGTERM) == self.terminate:
            signal.signal(signal.SIGTERM, self.previous_term)

    def close(self) -> None:
        self._restore_handlers()
        signal.set_wakeup_fd(self.previous_fd)
        os.close(self.write_fd)  # the watcher reads the end of the pipe and returns
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            os.close(self.read_fd)

    def after_fork(self) -> None:
        """A forked child (a DataLoader worker) gets Python's own Ctrl+C back and no share of the pipe:
        its SIGINT must not count as a second Ctrl+C of this process."""
        signal.set_wakeup_fd(-1)
        self._restore_handlers()
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _run_logs() -> list[str]:
    """The log files of the command's run folder (``stmclf.log``), read without taking logging's locks."""
    handlers = list(logging.getLogger("stmclf").handlers)
    return [h.baseFilename for h in handlers if isinstance(h, logging.FileHandler)]


_active: Optional[_Guard] = None
_fork_hook = False


def _after_fork_in_child() -> None:
    global _active
    if _active is not None:
        _active.after_fork()
        _active = None


@contextlib.contextmanager
def interrupt_guard(grace: float = GRACE_S) -> Iterator[None]:
    """Within: the first Ctrl+C raises KeyboardInterrupt as usual; ``grace`` seconds later a command
    still running says how to stop it at once (:data:`HINT`); the next Ctrl+C ends the process with
    exit code 130 wherever its main thread is. On leaving, the previous handler and wakeup fd come
    back, unless a Ctrl+C was seen: the command has stopped (and printed its line) then, no hint is
    due (the interpreter's exit may take seconds: torch's thread pools, the loader workers), and a
    second Ctrl+C still ends the process at once."""
    global _active, _fork_hook
    if os.name != "posix" or threading.current_thread() is not threading.main_thread() or _active is not None:
        yield
        return
    if not _fork_hook:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True
    guard = _active = _Guard(grace)
    try:
        yield
    finally:
        if guard.handled or guard.seen:
            guard.stopped = True
        else:
            _active = None
            guard.close()
