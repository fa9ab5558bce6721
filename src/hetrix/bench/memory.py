"""Peak memory of one runtime, measured in a fresh ``spawn`` process so runtimes do not mix.

The child imports the runtime, records its resident set size (RSS) as the baseline, then loads
the model and runs it while a thread samples the RSS with psutil; on Linux the kernel's own
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after the baseline) catches
peaks between samples.  Growth = peak RSS - baseline; load growth = RSS after load - baseline.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.002
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class MemoryStats:
    """RSS figures of one runtime in MiB: before loading, growth after load, peak growth."""

    baseline_mb: float
    load_growth_mb: float
    peak_growth_mb: float
    method: str


class _Sampler:
    """A thread that records the largest RSS seen every ``SAMPLE_INTERVAL_S``."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _high_water_mark() -> int | None:
    """The kernel's peak RSS of this process in bytes (``VmHWM``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def measure_in_child(
    runtime_name: str, path: str, feeds: Mapping[str, np.ndarray], threads: int,
    providers: Sequence[str] | None, runs: int,
) -> MemoryStats:
    """Load and run the model ``runs`` times in this process, recording RSS (the child's job)."""
    import psutil

    from hetrix.bench.runtimes import RUNTIMES, blas_thread_limit

    runtime = RUNTIMES[runtime_name]
    runtime.version()  # import the runtime before the baseline
    gc.collect()
    process = psutil.Process()
    baseline = process.memory_info().rss
    hwm_ok = _reset_high_water_mark()
    with blas_thread_limit(threads, warn=False), _Sampler() as sampler:
        run = runtime.load(path, feeds, threads, providers)
        after_load = process.memory_info().rss
        for _ in range(max(1, runs)):
            run(feeds)
    peak = sampler.peak
    hwm = _high_water_mark() if hwm_ok else None
    method = "psutil sampling"
    if hwm is not None:
        peak, method = max(peak, hwm), "psutil sampling + VmHWM"
    return MemoryStats(baseline / MB, (after_load - baseline) / MB, (peak - baseline) / MB, method)


@contextlib.contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """Set the BLAS/OpenMP thread variables that a spawned child inherits, then restore them."""
    saved = {k: os.environ.get(k) for k in _THREAD_ENV}
    if threads:
        os.environ.update({k: str(threads) for k in _THREAD_ENV})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def measure_memory(
    runtime_name: str, path: str, feeds: Mapping[str, np.ndarray], threads: int = 0,
    providers: Sequence[str] | None = None, runs: int = 3,
) -> MemoryStats:
    """Peak RSS growth of ``runtime_name`` loading and running ``path``, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    with _thread_env(threads), context.Pool(1) as pool:
        return pool.apply(measure_in_child,
                          (runtime_name, path, dict(feeds), threads, providers, runs))
