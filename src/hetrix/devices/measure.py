"""Measured device figures: matmul throughput per dtype, memory bandwidth, transfers, launches.

Each figure is the median of a few timed batches after a warm-up, with the device synchronised
before and after every batch; a batch repeats a short operation until it lasts ``min_batch_s``
so that timer resolution and launch overhead do not dominate.  Every figure stops early when
its time budget is spent, so the whole CPU measurement takes a few seconds at the default size.

Units: GFLOP/s (``2 n^3`` per ``n x n`` matmul), GB/s (10^9 bytes; a copy counts the bytes read
plus the bytes written, as STREAM does) and microseconds.  A figure that cannot be measured
(an unsupported dtype, no pinned memory) is left out and its reason kept in ``skipped``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hetrix.devices.base import Device

logger = logging.getLogger(__name__)

ENV_MEASURE_SIZE = "HETRIX_MEASURE_SIZE"
"""Environment variable naming the measurement size (``tiny`` or ``default``)."""

GIGA = 1e9
MICRO = 1e-6


@dataclass(frozen=True)
class MeasureConfig:
    """How large and how often to measure."""

    name: str = "default"
    cpu_matmul_n: int = 2048
    """Largest CPU matmul side; a smaller one is used when it would not fit the budget."""
    accel_matmul_n: int = 8192
    cpu_copy_bytes: int = 256 << 20
    """Per array: well above the last-level cache of current server CPUs."""
    accel_copy_bytes: int = 512 << 20
    transfer_bytes: int = 64 << 20
    """Host<->device bandwidth buffer (capped at 1/8 of the device memory)."""
    repeats: int = 5
    budget_s: float = 1.5
    """Time budget of one figure (warm-up excluded); repeats stop early once it is spent."""
    min_batch_s: float = 2e-3
    """A timed batch repeats a short operation until it lasts at least this long."""


SIZES: dict[str, MeasureConfig] = {
    "default": MeasureConfig(),
    "tiny": MeasureConfig(
        name="tiny", cpu_matmul_n=512, accel_matmul_n=1024, cpu_copy_bytes=8 << 20,
        accel_copy_bytes=16 << 20, transfer_bytes=4 << 20, repeats=3, budget_s=0.5,
        min_batch_s=5e-4,
    ),
}
"""Named sizes: ``tiny`` is for tests (figures land in caches, not representative)."""


def measure_config(size: str | None = None) -> MeasureConfig:
    """The named size, else ``$HETRIX_MEASURE_SIZE``, else ``default``; raises on unknown names."""
    name = size or os.environ.get(ENV_MEASURE_SIZE) or "default"
    if name not in SIZES:
        raise ValueError(f"unknown measurement size '{name}'; known: {', '.join(SIZES)}")
    return SIZES[name]


@dataclass
class DeviceFigures:
    """What one microbenchmark run measured on one device."""

    device_id: str
    matmul_gflops: dict[str, float] = field(default_factory=dict)
    """dtype name (``float32``, ``bfloat16``, ``float16``) -> GFLOP/s."""
    memory_bandwidth_gbs: float | None = None
    """Device memory copy bandwidth (read + write), GB/s."""
    host_to_device_gbs: dict[str, float] = field(default_factory=dict)
    """``pinned`` / ``pageable`` host memory -> GB/s (accelerators only)."""
    device_to_host_gbs: dict[str, float] = field(default_factory=dict)
    host_to_device_latency_us: dict[str, float] = field(default_factory=dict)
    """A 4-byte copy and its synchronisation, µs."""
    device_to_host_latency_us: dict[str, float] = field(default_factory=dict)
    launch_latency_us: float | None = None
    """Host cost of launching one tiny kernel, back to back (accelerators only)."""
    launch_sync_latency_us: float | None = None
    """One tiny kernel launched and waited for: the round trip a dependent host step pays."""
    measured_at: str = ""
    """ISO 8601 UTC time of the measurement."""
    size: str = "default"
    duration_s: float = 0.0
    method: dict[str, str] = field(default_factory=dict)
    """figure -> how it was measured (operation, size, library, repeats)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """figure -> why it was not measured."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DeviceFigures:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` on anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("device_id"), str):
            raise ValueError("figures must be an object with a device_id")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown figure fields: {sorted(unknown)}")
        figures = cls(**data)
        figures._check()
        return figures

    def _check(self) -> None:
        for name in ("matmul_gflops", "host_to_device_gbs", "device_to_host_gbs",
                     "host_to_device_latency_us", "device_to_host_latency_us"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and _is_number(v) for k, v in value.items()):
                raise ValueError(f"{name} must map names to numbers")
        for name in ("memory_bandwidth_gbs", "launch_latency_us", "launch_sync_latency_us"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                raise ValueError(f"{name} must be a number or null")
        for name in ("method", "skipped"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be an object")
        if not isinstance(self.measured_at, str) or not isinstance(self.size, str):
            raise ValueError("measured_at and size must be strings")
        if not _is_number(self.duration_s):
            raise ValueError("duration_s must be a number")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- timing ------------------------------------------------------------------------------------


def _no_sync() -> None:
    return None


@dataclass(frozen=True)
class Timer:
    """Medians of synchronised, batched timings within a time budget."""

    sync: Callable[[], None] = _no_sync
    repeats: int = 5
    budget_s: float = 1.5
    min_batch_s: float = 2e-3

    def call(self, run: Callable[[], Any]) -> float:
        """Seconds of one synchronised call."""
        self.sync()
        start = time.perf_counter()
        run()
        self.sync()
        return time.perf_counter() - start

    def once(self, run: Callable[[], Any]) -> float:
        """Seconds of one synchronised call, after one warm-up call."""
        run()
        self.sync()
        return self.call(run)

    def median(self, run: Callable[[], Any], single: float | None = None) -> float:
        """Median seconds per call over up to ``repeats`` batches.

        ``single``, the time of one call that has already been made, saves the warm-up and
        calibration calls.  At least one batch is timed; later ones only while the budget lasts.
        """
        single = max(self.once(run) if single is None else single, 1e-9)
        inner = max(1, min(100_000, math.ceil(self.min_batch_s / single)))
        deadline = time.perf_counter() + self.budget_s
        samples: list[float] = []
        while len(samples) < self.repeats:
            self.sync()
            start = time.perf_counter()
            for _ in range(inner):
                run()
            self.sync()
            samples.append((time.perf_counter() - start) / inner)
            if time.perf_counter() > deadline:
                break
        return statistics.median(samples)

    def describe(self) -> str:
        """How the figures of this timer were taken, for ``DeviceFigures.method``."""
        return (f"median of up to {self.repeats} synchronised batches of >= "
                f"{self.min_batch_s * 1e3:g} ms after a warm-up, budget {self.budget_s:g} s")


def matmul_gflops(make: Callable[[int], Callable[[], Any]], n_max: int,
                  timer: Timer) -> tuple[float, int]:
    """GFLOP/s of the largest ``n x n`` matmul, up to ``n_max``, whose calls fit the budget.

    ``make(n)`` allocates the operands and returns the call to time.  Sizes double from
    ``n_max / 8`` while a call lasts at most half of ``budget / (repeats + 2)``: the growth rule
    assumes calls at least double in time per doubling of ``n`` (8x when compute-bound), so a
    small size whose calls are dominated by overhead (thread wake-ups, launches) never stops
    the growth too early, and a compute-bound size overruns its share at most fourfold.
    """
    per_call = timer.budget_s / (timer.repeats + 2)
    n = max(n_max // 8, 16)
    run = make(n)
    seconds = timer.once(run)  # the first call of all pays library initialisation
    while n * 2 <= n_max and seconds * 2 <= per_call:
        n *= 2
        run = make(n)
        seconds = timer.call(run)
    return 2.0 * n**3 / timer.median(run, single=seconds) / GIGA, n


def attempt(figures: DeviceFigures, figure: str, action: Callable[[], None]) -> None:
    """Run one figure's measurement; a failure lands in ``figures.skipped`` instead of raising."""
    try:
        action()
    except Exception as exc:  # an unsupported dtype or memory kind: skip this figure only
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        figures.skipped[figure] = f"{type(exc).__name__}: {reason}"
        logger.info("%s %s not measured: %s", figures.device_id, figure, reason)


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# -- dispatch ----------------------------------------------------------------------------------


def measure_device(device: Device, config: MeasureConfig | None = None) -> DeviceFigures:
    """Run the microbenchmark on ``device`` (CPU, torch or JAX accelerator); never raises for
    a single figure, whose failure is recorded in ``skipped``."""
    config = config or measure_config()
    figures = DeviceFigures(device_id=device.id, measured_at=now_iso(), size=config.name)
    start = time.perf_counter()
    library_device = getattr(device, "library_device", "") or device.id
    if device.kind == "cpu":
        from hetrix.devices.cpu import CpuInfo

        measure_cpu(device if isinstance(device, CpuInfo) else None, config, figures)
    elif getattr(device, "backend", "") == "jax":
        from hetrix.devices.measure_jax import measure_jax

        measure_jax(library_device, device.memory_bytes, config, figures)
    else:
        from hetrix.devices.measure_torch import measure_torch

        measure_torch(library_device, device.memory_bytes, config, figures)
    figures.duration_s = round(time.perf_counter() - start, 3)
    return figures


# -- CPU ---------------------------------------------------------------------------------------


def measure_cpu(cpu: Any, config: MeasureConfig, figures: DeviceFigures) -> None:
    """float32 matmul through NumPy's BLAS, bfloat16/float16 through torch (oneDNN, AMX where
    present) when torch is installed, and the copy bandwidth of two large NumPy arrays."""
    timer = Timer(repeats=config.repeats, budget_s=config.budget_s,
                  min_batch_s=config.min_batch_s)
    blas = f"{cpu.blas.name} {cpu.blas.version}".strip() if cpu is not None else "BLAS"
    attempt(figures, "matmul.float32",
            lambda: _numpy_matmul(figures, config, timer, blas))
    from hetrix.devices.accelerators import module_available

    if module_available("torch"):
        from hetrix.devices.measure_torch import torch_cpu_matmuls

        torch_cpu_matmuls(config, timer, figures)
    else:
        figures.skipped["matmul.bfloat16"] = "torch is not installed"
    attempt(figures, "memory_bandwidth", lambda: _numpy_copy(figures, config, timer))


def _numpy_matmul(figures: DeviceFigures, config: MeasureConfig, timer: Timer,
                  blas: str) -> None:
    def make(n: int) -> Callable[[], Any]:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), dtype=np.float32)
        return lambda: np.matmul(a, b, out=out)

    gflops, n = matmul_gflops(make, config.cpu_matmul_n, timer)
    figures.matmul_gflops["float32"] = round(gflops, 2)
    figures.method["matmul.float32"] = f"numpy.matmul {n}x{n} float32 ({blas}); {timer.describe()}"


def _numpy_copy(figures: DeviceFigures, config: MeasureConfig, timer: Timer) -> None:
    src = np.ones(config.cpu_copy_bytes, dtype=np.uint8)
    dst = np.zeros_like(src)  # pages are touched by the warm-up copy before any timing
    seconds = timer.median(lambda: np.copyto(dst, src))
    figures.memory_bandwidth_gbs = round(2 * src.nbytes / seconds / GIGA, 2)
    figures.method["memory_bandwidth"] = (
        f"numpy.copyto of {src.nbytes >> 20} MiB, read + write bytes; {timer.describe()}")
