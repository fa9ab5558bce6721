"""Host memory: keep freed buffers for reuse instead of returning them to the OS.

Each intermediate of a run is a fresh numpy array.  With glibc's default settings, arrays above
a size threshold are mmap-ed on allocation and unmapped on free, so every run page-faults all of
its large intermediates again — costly on some kernels and VMs (here about 2 µs per 4 KiB page,
more than the arithmetic of many nodes).  Raising the mmap and trim thresholds makes glibc keep
freed memory in the heap, where the next run's allocations of the same sizes find it: the effect
of ONNX Runtime's CPU memory arena, for every kernel, without changing one.

This is process-wide (it configures the C allocator), so it is applied once, when a session with
``SessionOptions.enable_cpu_mem_arena`` (the default, as in ORT) is created, and only on glibc.
What loading a model leaves behind is handed back once the session is built
(:func:`collects_load_garbage`), so that retained memory is the runs' working set, not the load's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import math
import mmap
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None

_F = TypeVar("_F", bound=Callable[..., Any])


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, looked up once (``find_library`` runs ``ldconfig``: about 1 ms)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def retain_freed_memory() -> bool:
    """Configure glibc to reuse freed buffers; True when in effect (idempotent)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = _libc()
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and libc.mallopt(
            _M_TRIM_THRESHOLD, _TRIM_THRESHOLD
        )
    except (OSError, AttributeError) as exc:
        logger.debug("mallopt unavailable: %s", exc)
        return False
    _applied = bool(ok)
    logger.debug("glibc keeps freed memory for reuse: %s", _applied)
    return _applied


_MADV_DONTNEED = 4

RECYCLE_MIN_BYTES = _MMAP_THRESHOLD
"""Buffers from this size up are worth keeping between runs (:func:`recycled_empty`): glibc
maps them afresh on allocation and unmaps them when freed, whatever the thresholds above."""


def recycled_empty(spare: list[np.ndarray], shape: tuple[int, ...],
                   dtype: np.dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, except that from :data:`RECYCLE_MIN_BYTES` up it is the array
    this call handed out last time (kept in ``spare``, the caller's list) when nothing else
    holds it any more.

    For a kernel's large output.  glibc's mmap threshold cannot go above 32 MiB, so a larger
    buffer is a fresh mapping each run, and every page of it faults in again.  Measured on this
    VM: MobileNetV2's 38 MiB activation at batch 8 cost 60-170 ms of kernel time a run in the
    runs after load (the host had taken the freed pages back), and 4 ms a run later on; kept,
    nothing.  Only the last array is kept, the one the call would allocate anyway.  Safe with
    concurrent runs (``list.pop`` hands an array to one caller only), and an array still
    referenced (a view handed on, a graph output the caller keeps) is never reused.
    """
    if math.prod(shape) * dtype.itemsize < RECYCLE_MIN_BYTES:  # on every conv: kept cheap
        return np.empty(shape, dtype)
    try:
        kept = spare.pop()
    except IndexError:
        kept = None
    # the references to a free array: ``kept`` here and getrefcount's argument
    if kept is None or sys.getrefcount(kept) > 2 or kept.shape != shape or kept.dtype != dtype:
        kept = np.empty(shape, dtype)
    if not spare:
        spare.append(kept)
    return kept


def mapped_empty(nbytes: int) -> np.ndarray:
    """A byte array of ``nbytes`` in pages mapped for it alone (page-aligned), off the heap.

    For a buffer made during a run that lives as long as the session (a weight packed when a
    node first meets a shape): on the heap, under glibc's raised mmap threshold, it would sit
    between the run's activations, and the holes they leave when freed are too small for the
    next run's (GPT-2 at batch 8: 45 MiB more after five runs with its 48 packed weights made
    on the first run; mapped apart, none)."""
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), np.uint8)[:nbytes]


def release_pages(array: np.ndarray) -> int:
    """Hand the memory pages that lie wholly inside ``array``'s data back to the OS; returns the
    bytes released (0 where that is not possible: not Linux, or an array that does not own
    contiguous memory).

    The array stays a valid object, but its values are gone: the released pages read as zeros
    (or as the file's bytes for a file mapping).  For a weight the plan gives to one node alone
    (``NodeContext.owned_inputs``) once that node holds an exact copy in another layout.  The
    partial pages at both ends are kept: the allocator's bookkeeping may share them, and the
    allocator never relies on the contents of the pages in between, so freeing the array later
    is safe.
    """
    if platform.system() != "Linux" or not (array.flags.owndata and array.flags.c_contiguous):
        return 0
    page = mmap.PAGESIZE
    start = array.ctypes.data
    first = -(-start // page) * page
    last = (start + array.nbytes) // page * page
    if last <= first:
        return 0
    try:
        failed = _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                                 _MADV_DONTNEED)
    except (OSError, AttributeError) as exc:
        logger.debug("madvise unavailable: %s", exc)
        return 0
    return 0 if failed else last - first


def release_free_memory() -> None:
    """Return the heap's free memory to the OS (glibc's malloc_trim), e.g. after loading a model,
    whose parsing buffers are freed once the plan holds the weights."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError) as exc:
        logger.debug("malloc_trim unavailable: %s", exc)


def collects_load_garbage(load: _F) -> _F:
    """Decorate a model-loading function: afterwards, free what loading left behind.

    Loading leaves memory that is no longer used but not yet free: the onnx-ir graph and the
    tensors the graph passes replaced (folded constants, weights before batch-norm folding) sit
    in reference cycles that only a full garbage collection frees, and freed buffers stay in
    the C heap, kept there by :func:`retain_freed_memory` (up to half the load growth on
    Inception and DenseNet).  So the call ends with a collection and a heap trim, run even when
    loading fails.  Objects that existed before the call are frozen out of the collection
    (``gc.freeze``), so it scans only what loading created: milliseconds, where a full collection
    in a process that imported PyTorch takes over 100 ms.  A caller who froze objects already
    keeps them frozen.
    """

    @functools.wraps(load)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        froze = gc.get_freeze_count() == 0
        if froze:
            gc.freeze()
        try:
            return load(*args, **kwargs)
        finally:
            gc.collect()
            if froze:
                gc.unfreeze()
            release_free_memory()

    return wrapper  # type: ignore[return-value]


# -- writing a result into a dead input's memory -------------------------------------------------


def _base_references(view: np.ndarray) -> int:
    """References to ``view``'s base array counted from here (this frame's one local and the
    argument), or -1 where the base is not an array that owns its memory."""
    base = view.base
    if type(base) is not np.ndarray or base.base is not None:
        return -1
    return sys.getrefcount(base)


_SOLE_VIEW_REFERENCES = _base_references(np.empty((1, 1)).T)
"""What :func:`_base_references` counts for a base array that one view alone refers to,
measured on this interpreter once (the counts a call adds differ between Python versions)."""

_holding_runs = 0
_holding_lock = threading.Lock()


@contextlib.contextmanager
def intermediates_held() -> Iterator[None]:
    """While a run keeps its intermediates for the caller (``record``), no kernel writes into
    an input's memory (:func:`sole_view` says no), in any run: the plan's static reasoning
    (:attr:`NodeContext.reusable_inputs`) does not see those references.  (A shape watch keeps
    values computed from shapes alone, which no data-dependent value shares memory with.)"""
    global _holding_runs
    with _holding_lock:
        _holding_runs += 1
    try:
        yield
    finally:
        with _holding_lock:
            _holding_runs -= 1


def sole_view(array: np.ndarray) -> bool:
    """Whether ``array``, an input the plan lets its node overwrite, may be written now: a
    writeable view of a buffer (an array that owns its memory) that no other array views, and
    no run is holding its intermediates.  For a kernel that writes its result into its input's
    memory: a convolution adding its residual in place."""
    return (
        _holding_runs == 0
        and array.flags.writeable
        and _base_references(array) == _SOLE_VIEW_REFERENCES
    )
