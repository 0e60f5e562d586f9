"""The MLflow runs a process has open, and runs that a process which is gone left RUNNING.

Every run stmclf creates (a run folder's parent run, each stage's child run) carries owner tags:
``stmclf.host`` (the host name), ``stmclf.pid`` and ``stmclf.process`` (on Linux: the kernel's
boot id, the pid namespace and the process's start time, which tell a dead process from a later
one given the same pid). This process's open runs are kept in :data:`_open` until they end:

- at the end of a command, :func:`end_open_runs` ends those still open (the parent run:
  FINISHED when every stage finished, FAILED after an error, KILLED after a signal);
- when the command is stopped at once (a second Ctrl+C or SIGTERM: ``stmclf.cli.interrupt``),
  :func:`end_open_runs_now` marks them KILLED, waiting at most ``FORCED_END_S`` seconds;
- a process killed outright (SIGKILL, the OOM killer, a power loss) ends nothing: the next stmclf
  command that opens the store runs :func:`reconcile`, which marks KILLED the RUNNING runs whose
  owner is a process of this host that no longer exists (one log line per process). Runs of a
  live process, of another host or pid namespace, or without owner tags are never touched.

Only the standard library is imported here (the CLI's signal handling imports this module);
MLflow's client objects come from the caller.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

HOST_TAG, PID_TAG, PROCESS_TAG = "stmclf.host", "stmclf.pid", "stmclf.process"
ENDED_TAG = "stmclf.ended"
"""Set on a run that :func:`reconcile` ended: why, and which process ended it."""
FORCED_END_S = 2.0
"""Seconds a command stopped at once may spend marking its open runs KILLED before it exits."""

_open: dict[str, Any] = {}
"""Run id → the MlflowClient of the runs this process started and has not ended yet."""


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (clock ticks after boot, ``/proc/<pid>/stat``), ``"Z"``
    for a zombie (dead, not yet reaped), None when unknown (no such process, no ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "Z" if fields[0] == "Z" else fields[19]


def _kernel() -> tuple[str, str]:
    """(boot id, pid namespace) of this process; empty where the system does not say (no Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "", ""
    return boot, namespace


def owner_tags() -> dict[str, str]:
    """The tags that name this process as the owner of a run (see the module doc)."""
    boot, namespace = _kernel()
    start = _process_start(os.getpid()) if boot else None
    process = f"{boot} {namespace} {start}" if boot and start else ""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PROCESS_TAG: process}


def opened(client, run_id: str) -> None:
    """``run_id`` was started by this process: it is ended, whatever stops the command."""
    _open[run_id] = client


def is_open(run_id: str) -> bool:
    """Whether this process started ``run_id`` and has not ended it."""
    return run_id in _open


def forget(run_id: Optional[str]) -> None:
    """``run_id`` was ended by its stage."""
    _open.pop(run_id, None)


def end_open_runs(status: str) -> None:
    """End the runs this process still has open with ``status`` (FINISHED, FAILED, KILLED); a run
    that cannot be ended (a store gone meanwhile) is left to :func:`reconcile`, never an error."""
    for run_id, client in list(_open.items()):
        try:
            client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - the command's own outcome is the one to report
            log.debug("could not end the MLflow run %s", run_id, exc_info=True)
        forget(run_id)


def end_open_runs_now(timeout: float = FORCED_END_S) -> None:
    """For a command stopped at once: mark its open runs KILLED, in a thread given at most
    ``timeout`` seconds (the main thread, stuck, may hold a lock that the store or logging needs:
    the caller exits after ``timeout`` whatever the thread waits for); what is not done by then is
    left to :func:`reconcile`."""
    if not _open:
        return
    worker = threading.Thread(target=end_open_runs, args=("KILLED",), name="stmclf-end-runs", daemon=True)
    worker.start()
    worker.join(timeout)


def _gone(tags: dict[str, str], host: str, kernel: tuple[str, str]) -> bool:
    """Whether the process named by a run's owner ``tags`` is known to be gone: a process of this
    host (and pid namespace) that no longer exists, or that existed before the host restarted. A
    run of another host, another pid namespace, or without owner tags is never taken as gone."""
    if tags.get(HOST_TAG) != host:
        return False
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    recorded = tags.get(PROCESS_TAG, "").split(" ")
    boot, namespace = kernel
    if len(recorded) == 3 and boot:
        if recorded[1] != namespace:
            return False  # another container on this host name: its processes are not ours to see
        if recorded[0] != boot:
            return True  # the host restarted since (a power loss)
        return _process_start(pid) != recorded[2]  # no such process, a zombie, or a later one with its pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def reconcile(client, limit: int = 1000) -> list[str]:
    """Mark KILLED the RUNNING runs of the store of ``client`` whose owner process is gone (see
    :func:`_gone`), with one log line per process; returns their run ids."""
    from mlflow.entities import ViewType

    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments or "'" in host:
        return []
    found = client.search_runs(experiments, filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = "
                                                          f"'{host}'", max_results=limit)
    kernel = _kernel()
    ended: dict[str, list] = {}
    for run in found:
        tags = run.data.tags
        if run.info.run_id in _open or not _gone(tags, host, kernel):
            continue
        client.set_tag(run.info.run_id, ENDED_TAG, f"marked KILLED by stmclf (pid {os.getpid()}): its process "
                                                   f"{tags[PID_TAG]} on {host} had ended without ending it")
        client.set_terminated(run.info.run_id, "KILLED")
        ended.setdefault(tags[PID_TAG], []).append(run.info)
    for pid, infos in ended.items():
        log.warning("MLflow: process %s on %s ended without ending its runs (killed, out of memory, power loss); "
                    "marked KILLED: %s", pid, host, ", ".join(f"'{i.run_name}' ({i.run_id})" for i in infos))
    return [info.run_id for infos in ended.values() for info in infos]
