"""Accelerator discovery through PyTorch's device backends and JAX, imported only when asked.

Nothing here is imported by ``import hetrix``; torch, torch_npu and jax are located with
``importlib.util.find_spec`` and imported inside the functions that list their devices, so a
machine without them lists the CPU alone and no GPU runtime starts before a caller asks.

Kinds: ``cuda`` (NVIDIA), ``rocm`` (AMD, torch's HIP build, driven as torch device ``cuda:N``),
``mps`` (Apple), ``xpu`` (Intel), ``npu`` (Ascend via torch_npu) and ``tpu`` (JAX/XLA); JAX GPUs
appear as ``xla-gpu`` only when torch found no CUDA/ROCm device (else they would be listed twice).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hetrix.devices.base import Device

logger = logging.getLogger(__name__)


@dataclass
class AcceleratorInfo(Device):
    """An accelerator as its library (torch or JAX) describes it."""

    kind: str = "cuda"
    name: str = "unknown accelerator"
    memory_bytes: int | None = None
    backend: str = "torch"
    """The library that drives it: ``torch`` or ``jax``."""
    library_device: str = ""
    """The device's handle in that library, e.g. torch's ``cuda:0`` (also for ROCm)."""
    vendor: str = ""
    compute_capability: str | None = None
    """CUDA ``major.minor``, the ROCm ``gcnArchName``, or None where the library has none."""
    driver_version: str | None = None
    runtime_version: str | None = None
    """CUDA/HIP runtime torch was built with, the SYCL runtime (XPU), macOS (MPS), jaxlib."""
    library_version: str | None = None
    """The version of torch (or torch_npu, jax) that found the device."""
    compute_units: int | None = None
    """Streaming multiprocessors, compute units or execution units, where reported."""
    details: dict[str, Any] = field(default_factory=dict)
    """Further facts the library reports (L2 size, UUID, platform name...)."""


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported, checked without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package or a half-installed module
        return False


def discover_accelerators() -> list[AcceleratorInfo]:
    """Every accelerator torch (and JAX, when installed) can see; [] when neither is installed.

    A failing vendor backend is logged and skipped: discovery never raises.
    """
    found: list[AcceleratorInfo] = []
    if module_available("torch"):
        found += _guarded("torch", _torch_accelerators)
    if module_available("jax"):
        has_gpu = any(d.kind in ("cuda", "rocm") for d in found)
        found += _guarded("jax", lambda: _jax_accelerators(skip_gpus=has_gpu))
    return found


def _guarded(what: str, probe: Callable[[], list[AcceleratorInfo]]) -> list[AcceleratorInfo]:
    try:
        return probe()
    except Exception as exc:  # a broken driver or plugin must not break device listing
        logger.warning("%s accelerator discovery failed: %s", what, exc)
        return []


def _torch_accelerators() -> list[AcceleratorInfo]:
    import torch

    found: list[AcceleratorInfo] = []
    for probe in (_cuda_devices, _mps_devices, _xpu_devices, _npu_devices):
        found += _guarded(f"torch {probe.__name__.split('_')[1]}", functools.partial(probe, torch))
    return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- CUDA and ROCm -----------------------------------------------------------------------------


def _cuda_devices(torch: Any) -> list[AcceleratorInfo]:
    if not torch.cuda.is_available():
        return []
    hip = getattr(torch.version, "hip", None)
    driver = _amdgpu_driver_version() if hip else _nvidia_driver_version()
    return [_cuda_device(torch, index, hip, driver) for index in range(torch.cuda.device_count())]


def _cuda_device(torch: Any, index: int, hip: str | None, driver: str | None) -> AcceleratorInfo:
    props = torch.cuda.get_device_properties(index)
    if hip:
        capability = getattr(props, "gcnArchName", "") or None
    else:
        capability = f"{props.major}.{props.minor}"
    details = {key: _plain(getattr(props, key)) for key in (
        "uuid", "L2_cache_size", "warp_size", "is_integrated", "memory_bus_width",
        "memory_clock_rate", "clock_rate") if hasattr(props, key)}
    return AcceleratorInfo(
        kind="rocm" if hip else "cuda",
        name=str(props.name),
        memory_bytes=int(props.total_memory),
        index=index,
        library_device=f"cuda:{index}",
        vendor="AMD" if hip else "NVIDIA",
        compute_capability=capability,
        driver_version=driver,
        runtime_version=hip or getattr(torch.version, "cuda", None),
        library_version=str(torch.__version__),
        compute_units=int(props.multi_processor_count),
        details=details,
    )


def _nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver (``550.54.15``), else the CUDA driver API version (``12.4``)."""
    version = parse_nvidia_proc_version(_read_text(Path("/proc/driver/nvidia/version")))
    if version:
        return version
    for library in ("libcuda.so.1", "nvcuda.dll", "libcuda.dylib"):
        try:
            number = ctypes.c_int()
            if ctypes.CDLL(library).cuDriverGetVersion(ctypes.byref(number)) == 0:
                return f"CUDA {number.value // 1000}.{number.value % 1000 // 10}"
        except (OSError, AttributeError):
            continue
    return None


def parse_nvidia_proc_version(text: str) -> str | None:
    """The kernel module version in the text of ``/proc/driver/nvidia/version``."""
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def _amdgpu_driver_version() -> str | None:
    return _read_text(Path("/sys/module/amdgpu/version")).strip() or None


# -- MPS, XPU, NPU -----------------------------------------------------------------------------


def _mps_devices(torch: Any) -> list[AcceleratorInfo]:
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        return []
    memory = None
    recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
    if recommended is not None:
        memory = int(recommended())
    chip = _apple_chip() or "Apple"
    return [AcceleratorInfo(
        kind="mps", name=f"{chip} GPU", memory_bytes=memory, library_device="mps",
        vendor="Apple", runtime_version=f"macOS {platform.mac_ver()[0]}".strip(),
        library_version=str(torch.__version__),
        details={"memory_is": "recommended_max_memory"} if memory else {},
    )]


def _apple_chip() -> str:
    from hetrix.devices.cpu import detect_cpu

    name = detect_cpu().name
    return name if name.startswith("Apple") else ""


def _xpu_devices(torch: Any) -> list[AcceleratorInfo]:
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        return []
    found = []
    for index in range(xpu.device_count()):
        props = xpu.get_device_properties(index)
        found.append(AcceleratorInfo(
            kind="xpu", name=str(props.name), memory_bytes=int(props.total_memory), index=index,
            library_device=f"xpu:{index}", vendor=str(getattr(props, "vendor", "Intel")),
            driver_version=_str_or_none(getattr(props, "driver_version", None)),
            runtime_version=_str_or_none(getattr(props, "version", None)),
            library_version=str(torch.__version__),
            compute_units=getattr(props, "max_compute_units", None),
            details={key: _plain(getattr(props, key)) for key in (
                "platform_name", "gpu_eu_count", "has_fp16", "has_fp64",
                "has_bfloat16_conversions", "is_integrated_gpu") if hasattr(props, key)},
        ))
    return found


def _npu_devices(torch: Any) -> list[AcceleratorInfo]:
    if not module_available("torch_npu"):
        return []
    import torch_npu  # noqa: F401  (registers torch.npu)

    npu = torch.npu
    if not npu.is_available():
        return []
    found = []
    for index in range(npu.device_count()):
        props = npu.get_device_properties(index)
        found.append(AcceleratorInfo(
            kind="npu", name=str(getattr(props, "name", npu.get_device_name(index))),
            memory_bytes=_int_or_none(getattr(props, "total_memory", None)), index=index,
            library_device=f"npu:{index}", vendor="Huawei",
            runtime_version=_str_or_none(getattr(getattr(torch_npu, "version", None), "cann",
                                                 None)),
            library_version=_version("torch_npu") or str(torch.__version__),
        ))
    return found


# -- JAX ---------------------------------------------------------------------------------------


def _jax_accelerators(skip_gpus: bool) -> list[AcceleratorInfo]:
    import jax

    found: list[AcceleratorInfo] = []
    for device in jax.devices():
        platform_name = str(device.platform).lower()
        if platform_name == "cpu" or (skip_gpus and platform_name == "gpu"):
            continue
        kind = "tpu" if platform_name == "tpu" else f"xla-{platform_name}"
        index = sum(d.kind == kind for d in found)
        found.append(AcceleratorInfo(
            kind=kind, name=str(getattr(device, "device_kind", platform_name)),
            memory_bytes=_jax_memory(device), index=index, backend="jax",
            library_device=f"{platform_name}:{device.id}",
            vendor="Google" if kind == "tpu" else "",
            runtime_version=_version("jaxlib"), library_version=_version("jax"),
            details={"jax_id": int(device.id)},
        ))
    return found


def _jax_memory(device: Any) -> int | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # not every PJRT plugin implements memory_stats
        return None
    return _int_or_none(stats.get("bytes_limit"))


# -- small helpers -----------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _str_or_none(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
