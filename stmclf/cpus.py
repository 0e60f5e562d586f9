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
