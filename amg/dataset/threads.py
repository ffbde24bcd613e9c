"""CPU thread settings for a run: the CPUs this process may really use, OpenMP's wait policy,
and torch's intra-op thread count for a block of work.

On a machine shared with other work, two things slow a torch process far more than the loss of
the cores themselves: a thread count taken from the host's core count rather than from the CPUs
the process is allowed (affinity mask, cgroup CPU quota of a container), and OpenMP worker
threads that spin while they wait, burning the core another process needs (libgomp spins about
300,000 iterations before it sleeps unless ``OMP_WAIT_POLICY=PASSIVE``).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["TorchThreads", "available_cpus", "cgroup_cpu_limit", "prefer_passive_openmp"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (``1.5`` = 150 ms per 100 ms), or None.

    Reads cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) of the process's
    own cgroup (from ``/proc/self/cgroup``), else cgroup v1 ``cpu/cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (quota -1: none).

    Args:
        root: the cgroup mount point (a parameter for tests).

    Returns:
        quota / period as a float, or None when no quota is set or no file is readable.
    """
    own = ""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    except OSError:
        pass
    for folder in ([root / own] if own else []) + [root]:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            return None
        try:
            return int(quota) / int(period) if int(period) > 0 else None
        except ValueError:
            return None
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """How many CPUs this process may use: its affinity mask, capped by the cgroup quota.

    ``os.cpu_count()`` (and so the thread count torch picks on some hosts) counts the host's
    cores even inside a container limited to fewer, or under ``taskset``.

    Args:
        root: the cgroup mount point (a parameter for tests).

    Returns:
        ``min(len(os.sched_getaffinity(0)), ceil(quota))``, at least 1 (``os.cpu_count()``
        where the platform has no affinity call).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def prefer_passive_openmp(environ: dict[str, str] | None = None) -> bool:
    """Make OpenMP threads sleep, not spin, while they wait: ``OMP_WAIT_POLICY=PASSIVE``.

    OpenMP reads the variable once, when torch's OpenMP runtime loads (``import torch``), so
    this call must come before that; it changes nothing when the variable is already set (the
    user's choice wins) or torch is already imported.

    Args:
        environ: the environment to change (default ``os.environ``).

    Returns:
        True when the variable was set by this call.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "torch" in sys.modules:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


class TorchThreads:
    """Set torch's intra-op thread count for a block, then restore it.

    Use as a context manager (``with TorchThreads(2): ...``), or call :meth:`__enter__` once
    for the life of a worker (the Ray engine's actors).

    Args:
        threads: intra-op threads (``torch.set_num_threads``); ``None``: :func:`available_cpus`.
    """

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.before: int | None = None

    def __enter__(self) -> None:
        import torch
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads if self.threads is not None else available_cpus())

    def __exit__(self, *exc: Any) -> None:
        if self.before is not None:
            import torch
            torch.set_num_threads(self.before)
