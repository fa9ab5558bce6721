"""Figures of a torch device (CUDA, ROCm, MPS, XPU, NPU) and torch's low-precision CPU matmuls.

Imported only by :func:`hetrix.devices.measure.measure_device`, which has checked that torch is
installed.  Timings synchronise the device (``torch.<type>.synchronize``) around every batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from hetrix.devices.measure import (
    GIGA,
    MICRO,
    DeviceFigures,
    MeasureConfig,
    Timer,
    attempt,
    matmul_gflops,
)

ACCELERATOR_DTYPES = ("float32", "float16", "bfloat16")
CPU_DTYPES = ("bfloat16", "float16")
"""torch's CPU matmuls measured beside NumPy's float32 (oneDNN uses AMX/AVX-512 where present)."""
LATENCY_BYTES = 4


def torch_cpu_matmuls(config: MeasureConfig, timer: Timer, figures: DeviceFigures) -> None:
    """bfloat16 and float16 matmul throughput of torch on the CPU."""
    import torch

    where = f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads"
    for dtype in CPU_DTYPES:
        attempt(figures, f"matmul.{dtype}", functools.partial(
            _matmul, torch, torch.device("cpu"), dtype, config.cpu_matmul_n, timer, figures, where))


def measure_torch(library_device: str, memory_bytes: int | None, config: MeasureConfig,
                  figures: DeviceFigures) -> None:
    """Matmul per dtype, device memory copy, host<->device transfers and kernel launches."""
    import torch

    device = torch.device(library_device)
    timer = Timer(sync=synchronizer(torch, device), repeats=config.repeats,
                  budget_s=config.budget_s, min_batch_s=config.min_batch_s)
    where = f"torch {torch.__version__} {device}"
    if device.type == "cuda":
        where += f", float32 matmul precision {torch.get_float32_matmul_precision()}"
    for dtype in ACCELERATOR_DTYPES:
        attempt(figures, f"matmul.{dtype}", functools.partial(
            _matmul, torch, device, dtype, config.accel_matmul_n, timer, figures, where))
    copy_bytes = _cap(config.accel_copy_bytes, memory_bytes)
    attempt(figures, "memory_bandwidth",
            lambda: _device_copy(torch, device, copy_bytes, timer, figures))
    transfer_bytes = _cap(config.transfer_bytes, memory_bytes)
    for memory in ("pageable", "pinned"):
        attempt(figures, f"transfer.{memory}", functools.partial(
            _transfers, torch, device, transfer_bytes, memory, timer, figures))
    attempt(figures, "launch_latency", lambda: _launches(torch, device, timer, figures))


def synchronizer(torch: Any, device: Any) -> Callable[[], None]:
    """A call that waits for all work queued on ``device``."""
    if device.type == "cpu":
        return lambda: None
    sync = getattr(getattr(torch, device.type, None), "synchronize", None)
    if sync is None:
        raise RuntimeError(f"torch has no synchronize for device type '{device.type}'")
    if device.type == "mps":
        return sync  # type: ignore[no-any-return]
    return lambda: sync(device)


def _cap(nbytes: int, memory_bytes: int | None) -> int:
    """At most an eighth of the device's memory, so a small device is not exhausted."""
    return max(LATENCY_BYTES, min(nbytes, memory_bytes // 8)) if memory_bytes else nbytes


def _matmul(torch: Any, device: Any, dtype_name: str, n_max: int, timer: Timer,
            figures: DeviceFigures, where: str) -> None:
    dtype = getattr(torch, dtype_name)

    def make(n: int) -> Callable[[], Any]:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        out = torch.empty(n, n, dtype=dtype, device=device)
        return lambda: torch.matmul(a, b, out=out)

    gflops, n = matmul_gflops(make, n_max, timer)
    figures.matmul_gflops[dtype_name] = round(gflops, 2)
    figures.method[f"matmul.{dtype_name}"] = (
        f"torch.matmul {n}x{n} {dtype_name} ({where}); {timer.describe()}")


def _device_copy(torch: Any, device: Any, nbytes: int, timer: Timer,
                 figures: DeviceFigures) -> None:
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timer.median(lambda: dst.copy_(src))
    figures.memory_bandwidth_gbs = round(2 * nbytes / seconds / GIGA, 2)
    figures.method["memory_bandwidth"] = (
        f"Tensor.copy_ of {nbytes >> 20} MiB on {device}, read + write bytes; {timer.describe()}")


def _host_buffer(torch: Any, nbytes: int, pinned: bool) -> Any:
    return torch.ones(nbytes, dtype=torch.uint8, pin_memory=pinned)


def _transfers(torch: Any, device: Any, nbytes: int, memory: str, timer: Timer,
               figures: DeviceFigures) -> None:
    """Bandwidth of ``nbytes`` and latency of 4 bytes, both directions, one host memory kind."""
    pinned = memory == "pinned"
    host = _host_buffer(torch, nbytes, pinned)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    h2d = timer.median(lambda: dev.copy_(host, non_blocking=pinned))
    d2h = timer.median(lambda: host.copy_(dev, non_blocking=pinned))
    figures.host_to_device_gbs[memory] = round(nbytes / h2d / GIGA, 3)
    figures.device_to_host_gbs[memory] = round(nbytes / d2h / GIGA, 3)
    small_host = _host_buffer(torch, LATENCY_BYTES, pinned)
    small_dev = torch.empty(LATENCY_BYTES, dtype=torch.uint8, device=device)

    def one_way(dst: Any, src: Any) -> float:
        def copy_and_wait() -> None:
            dst.copy_(src, non_blocking=pinned)
            timer.sync()

        return timer.median(copy_and_wait)

    figures.host_to_device_latency_us[memory] = round(one_way(small_dev, small_host) / MICRO, 2)
    figures.device_to_host_latency_us[memory] = round(one_way(small_host, small_dev) / MICRO, 2)
    figures.method[f"transfer.{memory}"] = (
        f"Tensor.copy_ {memory} host <-> {device}: {nbytes >> 20} MiB for bandwidth, "
        f"{LATENCY_BYTES} bytes + synchronize for latency; {timer.describe()}")


def _launches(torch: Any, device: Any, timer: Timer, figures: DeviceFigures) -> None:
    x = torch.zeros(1, device=device)
    batched = dataclasses.replace(timer, min_batch_s=max(timer.min_batch_s * 5, 1e-3))
    figures.launch_latency_us = round(batched.median(lambda: x.add_(1.0)) / MICRO, 2)

    def launch_and_wait() -> None:
        x.add_(1.0)
        timer.sync()

    figures.launch_sync_latency_us = round(batched.median(launch_and_wait) / MICRO, 2)
    figures.method["launch_latency"] = (
        f"Tensor.add_ on one element of {device}: back to back (launch) and each followed by "
        f"synchronize (launch_sync); {batched.describe()}")
