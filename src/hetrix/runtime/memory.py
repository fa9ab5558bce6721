"""Host memory: keep freed buffers for reuse instead of returning them to the OS.

Each intermediate of a run is a fresh numpy array.  With glibc's default settings, arrays above
a size threshold are mmap-ed on allocation and unmapped on free, so every run page-faults all of
its large intermediates again — costly on some kernels and VMs (here about 2 µs per 4 KiB page,
more than the arithmetic of many nodes).  Raising the mmap and trim thresholds makes glibc keep
freed memory in the heap, where the next run's allocations of the same sizes find it: the effect
of ONNX Runtime's CPU memory arena, for every kernel, without changing one.

This is process-wide (it configures the C allocator), so it is applied once, when a session with
``SessionOptions.enable_cpu_mem_arena`` (the default, as in ORT) is created, and only on glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Configure glibc to reuse freed buffers; True when in effect (idempotent)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and libc.mallopt(
            _M_TRIM_THRESHOLD, _TRIM_THRESHOLD
        )
    except (OSError, AttributeError) as exc:
        logger.debug("mallopt unavailable: %s", exc)
        return False
    _applied = bool(ok)
    logger.debug("glibc keeps freed memory for reuse: %s", _applied)
    return _applied


def release_free_memory() -> None:
    """Return the heap's free memory to the OS (glibc's malloc_trim), e.g. after loading a model,
    whose parsing buffers are freed once the plan holds the weights."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError) as exc:
        logger.debug("malloc_trim unavailable: %s", exc)
