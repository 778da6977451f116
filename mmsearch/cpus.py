"""How many cores this process may really use, and the thread counts that follow from it.

``os.cpu_count()`` is the machine's; a container or a job scheduler grants fewer, through CPU
affinity (cpusets) or a CFS quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``). Libraries
that size their pools from the machine (torch's intra-op threads, faiss's OpenMP, ONNX Runtime)
then run more threads than there are cores, and every parallel region waits for a descheduled
thread: measured 10x slower on a busy 2-core box. Everything here reads files only and imports
nothing heavy, so the CLI can ask before any model loads.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmsearch.settings import Settings

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# decode threads feeding a GPU encoder (header checks, non-JPEG images, a long video's parts): on
# a 16-core H100 machine, 1080p H.264 indexed at 253x real time with 16 against 216x with 8
GPU_DECODE_WORKERS = 16
_configured: int | None = None  # ``threads`` of the last settings applied (faiss reads it per call)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _upwards(mount: Path, rel: str) -> Iterator[Path]:
    """The process's cgroup folder under ``mount`` and its ancestors: a parent's quota binds too.
    Without a cgroup namespace the path may not exist inside the mount; the mount itself is
    then the container's own cgroup."""
    parts = [p for p in rel.strip().split("/") if p]
    for n in range(len(parts), -1, -1):
        d = mount.joinpath(*parts[:n])
        if d.is_dir():
            yield d


def _v2_limit(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "150000 100000"
    if not text:
        return None
    fields = text.split()
    if len(fields) < 1 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int((quota or "").strip()), int((period or "").strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def _cgroup_folders() -> Iterator[tuple[Path, bool]]:
    """(folder, is_v2) for every cgroup folder whose CPU quota applies to this process."""
    table = _read(PROC_CGROUP) or ""
    seen = False
    for line in table.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            seen = True
            for d in _upwards(CGROUP_ROOT, rel):
                yield d, True
        elif "cpu" in controllers.split(","):
            seen = True
            for name in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                if (CGROUP_ROOT / name).is_dir():
                    for d in _upwards(CGROUP_ROOT / name, rel):
                        yield d, False
                    break
    if not seen:  # no /proc/self/cgroup to read: the usual mounts
        yield CGROUP_ROOT, True
        yield CGROUP_ROOT / "cpu", False


def cgroup_cpu_limit() -> float | None:
    """CPUs the tightest CFS quota on this process's cgroup path allows (``quota / period``);
    None when there is no quota."""
    limits = [limit for folder, v2 in _cgroup_folders()
              if (limit := (_v2_limit(folder) if v2 else _v1_limit(folder))) is not None]
    return min(limits) if limits else None


@functools.cache
def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded down:
    1.5 CPUs of quota keep one thread busy, where two would both be throttled). At least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, int(limit))
    return max(1, n)


def intra_op_threads(settings: Settings | None = None) -> int:
    """Threads for one model forward or one batched faiss search: the ``threads`` setting, else
    every available core. ONNX Runtime takes it as ``SessionOptions.intra_op_num_threads``
    (with ``inter_op_num_threads = 1``); torch through :func:`apply_torch_threads`."""
    if settings is not None and settings.threads:
        return settings.threads
    return _configured or available_cpus()


def decode_workers(settings: Settings, on_gpu: bool) -> int:
    """Decode threads for ingest: the ``decode_workers`` setting, else up to 16 when the encoder
    runs on a GPU (decoding is the bound there), one per 4 cores on the CPU (decoding takes a
    fraction of the encoder's time; more threads would take cores from it)."""
    if settings.decode_workers:
        return settings.decode_workers
    cores = available_cpus()
    return min(GPU_DECODE_WORKERS, cores) if on_gpu else max(1, cores // 4)


def apply(settings: Settings) -> None:
    """Make ``settings.threads`` the process's thread count: faiss reads it per call, and torch is
    set now if it is already loaded (an encoder built later sets it itself). Imports nothing."""
    global _configured
    _configured = settings.threads
    if "torch" in sys.modules:
        apply_torch_threads(settings)


def apply_torch_threads(settings: Settings | None = None) -> None:
    """torch sizes its pool from the machine's cores, not the cgroup quota: set it from ours."""
    import torch

    n = intra_op_threads(settings)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
