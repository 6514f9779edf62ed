"""How many torch threads a worker trains with: the cores it really gets, fewer when others keep them busy.

`os.cpu_count()` counts the machine, not what this process may use: a CPU affinity mask (taskset,
Kubernetes' static CPU manager) or a cgroup quota (`docker run --cpus`, a pod's limit) gives it less, and
torch's default of one thread per machine core then oversubscribes. And OpenMP's threads wait on each
other at every parallel region: measured on the 2-core dev VM with `--minutes 1` on a 40-cell target,
2 threads made 124 iterations quiet but 48 while another process kept one core busy, where 1 thread made
87 either way (issue #24). So before each job the worker measures how busy the machine is without it and
trains with the cores that are free (at least one). `NCA_TORCH_THREADS` set: that, always.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
PROC_STAT = Path("/proc/stat")
SAMPLE_SECONDS = 0.3  # how long the machine is watched before a job


def cgroup_cpus(path: Path = CPU_MAX) -> float | None:
    """CPUs the cgroup quota allows (2.5 for 250000/100000); None when unlimited or unreadable."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpus(cpu_max)
    return max(1, min(cores, math.ceil(quota) if quota else cores))


def _machine_jiffies(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in path.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_elsewhere(seconds: float = SAMPLE_SECONDS, path: Path = PROC_STAT) -> float | None:
    """Cores kept busy by other processes over `seconds` (this one's own use taken out); None if unknown."""
    start, own_start, wall_start = _machine_jiffies(path), os.times(), time.monotonic()
    time.sleep(seconds)
    end, own_end, wall = _machine_jiffies(path), os.times(), time.monotonic() - wall_start
    if start is None or end is None or end[1] <= start[1]:
        return None
    machine_cores = os.cpu_count() or 1
    busy = (end[0] - start[0]) / (end[1] - start[1]) * machine_cores
    own = (own_end.user - own_start.user + own_end.system - own_start.system) / wall
    return max(0.0, busy - own)


def threads_for(cores: int, others: float | None) -> int:
    """Threads for a job: the usable cores not kept busy by others (rounded), at least one."""
    if others is None:
        return cores
    return max(1, min(cores, math.floor(cores - others + 0.5)))


def pick_threads(configured: int) -> int:
    """`configured` (NCA_TORCH_THREADS) when set, else what `threads_for` says now."""
    if configured > 0:
        return configured
    cores = usable_cores()
    threads = threads_for(cores, busy_elsewhere() if cores > 1 else None)
    log.info("training with %d torch thread%s (%d usable cores)", threads, "" if threads == 1 else "s", cores)
    return threads
