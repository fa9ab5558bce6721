"""Figures of a JAX/XLA device (TPU, or a GPU only JAX sees), measured with jitted functions.

Each timed call blocks on its result (``block_until_ready``); host<->device copies use
``jax.device_put`` and ``numpy.asarray`` of a fresh array (JAX caches an array's host copy, so the
same array converted twice would not cross the bus again).  JAX has no pinned/pageable choice: its
transfer figures are keyed ``pageable``.  Not exercised by the test suite (no JAX there).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from hetrix.devices.measure import (
    GIGA,
    MICRO,
    DeviceFigures,
    MeasureConfig,
    Timer,
    attempt,
    matmul_gflops,
)

DTYPES = ("float32", "bfloat16", "float16")


def measure_jax(library_device: str, memory_bytes: int | None, config: MeasureConfig,
                figures: DeviceFigures) -> None:
    """Matmul per dtype, on-device copy, transfers and dispatch latency of one JAX device."""
    import jax

    device = _find(jax, library_device)
    timer = Timer(repeats=config.repeats, budget_s=config.budget_s,
                  min_batch_s=config.min_batch_s)
    where = f"jax {jax.__version__} {library_device}"
    for dtype in DTYPES:
        attempt(figures, f"matmul.{dtype}", functools.partial(
            _matmul, jax, device, dtype, config.accel_matmul_n, timer, figures, where))
    cap = memory_bytes // 8 if memory_bytes else None
    copy_bytes = min(config.accel_copy_bytes, cap or config.accel_copy_bytes)
    attempt(figures, "memory_bandwidth", lambda: _copy(jax, device, copy_bytes, timer, figures))
    nbytes = min(config.transfer_bytes, cap or config.transfer_bytes)
    attempt(figures, "transfer.pageable", lambda: _transfers(jax, device, nbytes, timer, figures))
    attempt(figures, "launch_latency", lambda: _launches(jax, device, timer, figures))


def _find(jax: Any, library_device: str) -> Any:
    for device in jax.devices():
        if f"{str(device.platform).lower()}:{device.id}" == library_device:
            return device
    raise RuntimeError(f"JAX has no device {library_device}")


def _matmul(jax: Any, device: Any, dtype: str, n_max: int, timer: Timer,
            figures: DeviceFigures, where: str) -> None:
    import jax.numpy as jnp

    product = jax.jit(jnp.matmul)

    def make(n: int) -> Callable[[], Any]:
        key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
        a = jax.device_put(jax.random.normal(key_a, (n, n), dtype=dtype), device)
        b = jax.device_put(jax.random.normal(key_b, (n, n), dtype=dtype), device)
        return lambda: product(a, b).block_until_ready()

    gflops, n = matmul_gflops(make, n_max, timer)
    figures.matmul_gflops[dtype] = round(gflops, 2)
    figures.method[f"matmul.{dtype}"] = (
        f"jit(jnp.matmul) {n}x{n} {dtype} ({where}); {timer.describe()}")


def _copy(jax: Any, device: Any, nbytes: int, timer: Timer, figures: DeviceFigures) -> None:
    x = jax.device_put(np.ones(nbytes, dtype=np.uint8), device)
    double = jax.jit(lambda v: v * 2)  # one read and one write of every byte
    seconds = timer.median(lambda: double(x).block_until_ready())
    figures.memory_bandwidth_gbs = round(2 * nbytes / seconds / GIGA, 2)
    figures.method["memory_bandwidth"] = (
        f"jit(x * 2) over {nbytes >> 20} MiB uint8, read + write bytes; {timer.describe()}")


def _transfers(jax: Any, device: Any, nbytes: int, timer: Timer,
               figures: DeviceFigures) -> None:
    host = np.ones(nbytes, dtype=np.uint8)
    small = np.ones(4, dtype=np.uint8)
    fresh = jax.jit(lambda v: v)  # a new Array each call, so asarray really copies it back
    on_device = jax.device_put(host, device)
    small_on_device = jax.device_put(small, device)

    def put(array: np.ndarray) -> float:
        return timer.median(lambda: jax.device_put(array, device).block_until_ready())

    def get(array: Any) -> float:
        return timer.median(lambda: np.asarray(fresh(array)))

    figures.host_to_device_gbs["pageable"] = round(nbytes / put(host) / GIGA, 3)
    figures.device_to_host_gbs["pageable"] = round(nbytes / get(on_device) / GIGA, 3)
    figures.host_to_device_latency_us["pageable"] = round(put(small) / MICRO, 2)
    figures.device_to_host_latency_us["pageable"] = round(get(small_on_device) / MICRO, 2)
    figures.method["transfer.pageable"] = (
        f"jax.device_put / numpy.asarray of {nbytes >> 20} MiB and 4 bytes (device to host "
        f"includes an on-device identity); {timer.describe()}")


def _launches(jax: Any, device: Any, timer: Timer, figures: DeviceFigures) -> None:
    x = jax.device_put(np.zeros(1, dtype=np.float32), device)
    step = jax.jit(lambda v: v + 1)
    last: list[Any] = [step(x)]

    def launch() -> None:
        last[0] = step(x)

    batched = dataclasses.replace(timer, sync=lambda: last[0].block_until_ready(),
                                  min_batch_s=max(timer.min_batch_s * 5, 1e-3))
    figures.launch_latency_us = round(batched.median(launch) / MICRO, 2)
    figures.launch_sync_latency_us = round(
        batched.median(lambda: step(x).block_until_ready()) / MICRO, 2)
    figures.method["launch_latency"] = (
        f"jit(x + 1) on one element: dispatched back to back (launch) and each waited for "
        f"(launch_sync); {batched.describe()}")
