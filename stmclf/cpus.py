"""The CPU cores this process may run on (its affinity mask: ``taskset``, a container's cpuset),
which is what worker pools, thread counts and CPU training processes should be sized by."""
from __future__ import annotations

import os


def available_cpus() -> int:
    """Cores in this process's affinity mask (``os.cpu_count()`` where there is none), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class ProcessMap:
    """``fn(*job)`` for every job, in order, computed by a pool of ``workers`` processes started
    with ``context``; iterate it for the results. When the pool cannot start (the fork server
    cannot be spawned, no file descriptors or semaphores left, ``RLIMIT_NPROC`` reached: an
    ``OSError``/``RuntimeError``) or breaks (a worker killed, by the OOM killer or a signal:
    ``BrokenProcessPool``), one warning line says why (``"<label>: worker processes unavailable
    (<why>); <instead> in this process"``) and the jobs not yet done are computed in this
    process; ``processes`` then becomes 1. What ``fn`` itself raises, in a worker or here, goes
    to the caller as it is, except an ``OSError``/``MemoryError`` met here after the pool failed:
    a :class:`~stmclf.errors.UserError` naming both failures."""

    def __init__(self, fn, jobs, *, workers: int, context, label: str, instead: str, chunksize: int = 1,
                 log=None) -> None:
        import logging

        self.fn, self.jobs, self.workers, self.context = fn, list(jobs), max(1, int(workers)), context
        self.label, self.instead, self.chunksize = label, instead, max(1, int(chunksize))
        self.log = log or logging.getLogger("stmclf")
        self.processes = self.workers

    def __iter__(self):
        from concurrent.futures import BrokenExecutor, ProcessPoolExecutor

        if not self.jobs:
            return
        done, why, pool = 0, None, None
        try:
            try:
                pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self.context)
                results = pool.map(self.fn, *zip(*self.jobs), chunksize=self.chunksize)  # submits every job
            except (OSError, RuntimeError) as exc:  # BrokenExecutor is a RuntimeError
                why = exc
            else:
                try:
                    for result in results:
                        yield result
                        done += 1
                except BrokenExecutor as exc:
                    why = exc
        finally:
            if pool is not None:
                _close_pool(pool, broken=why is not None)
        if why is None:
            return
        self._fall_back(why)
        for job in self.jobs[done:]:
            try:
                result = self.fn(*job)
            except (OSError, MemoryError) as exc:
                from stmclf.errors import UserError, one_line

                raise UserError(f"{self.label}: worker processes unavailable ({one_line(why, typed=True)}), "
                                f"and {self.instead} in this process failed too: {one_line(exc, typed=True)}") from None
            yield result

    def _fall_back(self, why: BaseException) -> None:
        from stmclf.errors import one_line

        self.processes = 1
        self.log.warning("%s: worker processes unavailable (%s); %s in this process", self.label,
                         one_line(why, typed=True), self.instead)


def _close_pool(pool, broken: bool) -> None:
    """Shut ``pool`` down; a broken or half-started one without waiting, its workers ended (a
    worker started before the pool failed would otherwise wait for work forever, and Python's exit
    for it)."""
    if not broken:
        pool.shutdown(cancel_futures=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.kill()
            process.join(5)
        except (OSError, ValueError, AssertionError):  # already gone or closed
            pass
