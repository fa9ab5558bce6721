"""CPU discovery without any GPU runtime: model, cores, ISA features, memory, NumPy's BLAS.

Features are read where the operating system publishes them cheaply: ``/proc/cpuinfo`` flags
(x86) or Features (ARM) on Linux, ``sysctl hw.optional`` on macOS, and NumPy's own runtime
dispatch table elsewhere.  Names follow the Linux flag spelling (``avx2``, ``avx512_vnni``,
``amx_tile``) with ARM features named ``neon``, ``dotprod``, ``i8mm``, ``bf16``, ``sve``...
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hetrix.devices.base import Device

logger = logging.getLogger(__name__)

X86_FEATURES: tuple[str, ...] = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
)
"""The x86 features Hetrix reports, in this order (Linux /proc/cpuinfo spelling)."""

ARM_FEATURES: tuple[str, ...] = (
    "neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2", "sme",
)
"""The ARM features Hetrix reports, in this order."""

_ARM_LINUX_FLAGS = {
    "asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
    "sve": "sve", "sve2": "sve2", "sme": "sme",
}
_MACOS_SYSCTL = {
    "hw.optional.sse4_2": "sse4_2", "hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2",
    "hw.optional.fma": "fma", "hw.optional.f16c": "f16c", "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512dq": "avx512dq", "hw.optional.avx512cd": "avx512cd",
    "hw.optional.avx512bw": "avx512bw", "hw.optional.avx512vl": "avx512vl",
    "hw.optional.avx512vnni": "avx512_vnni", "hw.optional.neon": "neon",
    "hw.optional.neon_fp16": "fp16", "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme",
}
_NUMPY_FEATURES = {
    "SSE42": "sse4_2", "AVX": "avx", "F16C": "f16c", "FMA3": "fma", "AVX2": "avx2",
    "AVX512F": "avx512f", "AVX512DQ": "avx512dq", "AVX512CD": "avx512cd",
    "AVX512BW": "avx512bw", "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16", "ASIMD": "neon", "NEON": "neon",
    "ASIMDHP": "fp16", "ASIMDDP": "dotprod", "SVE": "sve",
}
_ARM_IMPLEMENTERS = {
    "0x41": "Arm", "0x42": "Broadcom", "0x43": "Cavium", "0x48": "HiSilicon", "0x4e": "NVIDIA",
    "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere",
}


@dataclass
class BlasInfo:
    """The BLAS NumPy was built against (it runs every MatMul/Gemm/Conv kernel's inner product)."""

    name: str = "unknown"
    version: str = ""
    config: str = ""
    """Build configuration, e.g. OpenBLAS's ``DYNAMIC_ARCH ... Haswell MAX_THREADS=64``."""


@dataclass
class CpuInfo(Device):
    """The host CPU as Hetrix sees it."""

    kind: str = "cpu"
    name: str = "unknown CPU"
    memory_bytes: int | None = None
    arch: str = ""
    """``platform.machine()``: ``x86_64``, ``aarch64``, ``arm64``..."""
    vendor: str = ""
    logical_cores: int = 1
    physical_cores: int | None = None
    usable_cores: int = 1
    """Cores this process may run on (its affinity mask), at most ``logical_cores``."""
    available_memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    """A cgroup (container) memory limit below the machine's RAM, if one applies."""
    features: tuple[str, ...] = ()
    feature_source: str = ""
    """Where the features came from: ``/proc/cpuinfo``, ``sysctl``, ``numpy`` or empty."""
    blas: BlasInfo = field(default_factory=BlasInfo)
    numpy_simd: tuple[str, ...] = ()
    """SIMD targets NumPy's own loops were built for and found at run time."""

    def has(self, feature: str) -> bool:
        """Whether the CPU reports ``feature`` (case-insensitive, e.g. ``"avx512_bf16"``)."""
        return feature.lower() in self.features


@dataclass
class _CpuFacts:
    """What one platform-specific probe found."""

    name: str = ""
    vendor: str = ""
    features: tuple[str, ...] = ()
    source: str = ""


def detect_cpu() -> CpuInfo:
    """Describe the host CPU; never raises, leaves unknown facts at their defaults."""
    arch = platform.machine()
    facts = _probe_features(arch)
    logical, physical = _core_counts()
    total, available = _memory()
    blas, simd = numpy_build_info()
    return CpuInfo(
        name=facts.name or platform.processor() or f"{arch or 'unknown'} CPU",
        memory_bytes=total,
        arch=arch,
        vendor=facts.vendor,
        logical_cores=logical,
        physical_cores=physical,
        usable_cores=min(_usable_cores(logical), logical),
        available_memory_bytes=available,
        memory_limit_bytes=_cgroup_memory_limit(total),
        features=facts.features,
        feature_source=facts.source,
        blas=blas,
        numpy_simd=simd,
    )


# -- features ----------------------------------------------------------------------------------


def _probe_features(arch: str) -> _CpuFacts:
    facts = _CpuFacts()
    if sys.platform.startswith("linux"):
        text = _read_text(Path("/proc/cpuinfo"))
        if text:
            facts = parse_cpuinfo(text, arch)
    elif sys.platform == "darwin":
        facts = parse_sysctl(_run_sysctl())
    if not facts.features:
        numpy_features = features_from_numpy(_numpy_cpu_features())
        if numpy_features:
            facts.features, facts.source = numpy_features, "numpy"
    return facts


def parse_cpuinfo(text: str, arch: str = "") -> _CpuFacts:
    """Model name, vendor and features from the text of Linux's ``/proc/cpuinfo``.

    Only the first processor block is read: Linux reports the same flags on every core.
    """
    fields = _first_block(text)
    if "flags" in fields:  # x86
        flags = set(fields["flags"].split())
        features = tuple(f for f in X86_FEATURES if f in flags)
        vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(
            fields.get("vendor_id", ""), fields.get("vendor_id", ""))
        return _CpuFacts(fields.get("model name", ""), vendor, features, "/proc/cpuinfo")
    flags = set(fields.get("Features", "").split())
    found = {_ARM_LINUX_FLAGS[f] for f in flags if f in _ARM_LINUX_FLAGS}
    if arch in ("aarch64", "arm64"):
        found.add("neon")  # Advanced SIMD is mandatory on AArch64
    vendor = _ARM_IMPLEMENTERS.get(fields.get("CPU implementer", "").lower(), "")
    name = fields.get("model name", "")
    if not name and vendor:
        name = f"{vendor} {arch or 'ARM'} (part {fields.get('CPU part', '?')})"
    features = tuple(f for f in ARM_FEATURES if f in found)
    return _CpuFacts(name, vendor, features, "/proc/cpuinfo" if fields else "")


def _first_block(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields.get("flags") or fields.get("Features"):
                break
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def parse_sysctl(text: str) -> _CpuFacts:
    """Features and brand from ``sysctl machdep.cpu.brand_string hw.optional`` output (macOS)."""
    found: set[str] = set()
    name = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "machdep.cpu.brand_string":
            name = value
        elif key in _MACOS_SYSCTL and value == "1":
            found.add(_MACOS_SYSCTL[key])
    features = tuple(f for f in X86_FEATURES + ARM_FEATURES if f in found)
    vendor = "Apple" if name.startswith("Apple") else ("Intel" if "Intel" in name else "")
    return _CpuFacts(name, vendor, features, "sysctl" if text else "")


def _run_sysctl() -> str:
    try:
        done = subprocess.run(["sysctl", "machdep.cpu.brand_string", "hw.optional"],
                              capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("sysctl failed: %s", exc)
        return ""
    return done.stdout


def features_from_numpy(cpu_features: Mapping[str, bool]) -> tuple[str, ...]:
    """Hetrix feature names from NumPy's runtime dispatch table (``__cpu_features__``)."""
    found = {_NUMPY_FEATURES[k] for k, on in cpu_features.items() if on and k in _NUMPY_FEATURES}
    return tuple(f for f in X86_FEATURES + ARM_FEATURES if f in found)


def _numpy_cpu_features() -> Mapping[str, bool]:
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return __import__(module, fromlist=["__cpu_features__"]).__cpu_features__
        except (ImportError, AttributeError):
            continue
    return {}


# -- cores and memory --------------------------------------------------------------------------


def _core_counts() -> tuple[int, int | None]:
    try:
        import psutil

        logical = psutil.cpu_count(logical=True)
        physical = psutil.cpu_count(logical=False)
    except Exception as exc:  # psutil can fail inside odd sandboxes
        logger.debug("psutil.cpu_count failed: %s", exc)
        logical, physical = None, None
    return logical or os.cpu_count() or 1, physical


def _usable_cores(logical: int) -> int:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return logical
    try:
        return len(getter(0)) or logical
    except OSError:
        return logical


def _memory() -> tuple[int | None, int | None]:
    try:
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.total), int(memory.available)
    except Exception as exc:
        logger.debug("psutil.virtual_memory failed: %s", exc)
        return None, None


def _cgroup_memory_limit(total: int | None) -> int | None:
    """The container's memory limit when it is below the machine's RAM (cgroup v2, then v1)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read_text(Path(path)).strip()
        if text.isdigit():
            limit = int(text)
            if total is None or limit < total:
                return limit
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# -- NumPy's build -----------------------------------------------------------------------------


def numpy_build_info() -> tuple[BlasInfo, tuple[str, ...]]:
    """NumPy's BLAS and the SIMD targets it found, from ``np.show_config(mode="dicts")``."""
    try:
        config = np.show_config(mode="dicts")
    except Exception as exc:  # NumPy < 2 has no mode argument
        logger.debug("np.show_config(mode='dicts') failed: %s", exc)
        return BlasInfo(), ()
    return parse_numpy_config(config or {})


def parse_numpy_config(config: Mapping[str, Any]) -> tuple[BlasInfo, tuple[str, ...]]:
    """The BLAS entry and the found SIMD targets of a ``show_config`` dict."""
    blas = config.get("Build Dependencies", {}).get("blas", {})
    info = BlasInfo(
        name=str(blas.get("name", "unknown")),
        version=str(blas.get("version", "")),
        config=_squash(str(blas.get("openblas configuration", ""))),
    )
    simd = config.get("SIMD Extensions", {}).get("found", [])
    return info, tuple(str(s) for s in _as_list(simd))


def _as_list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, (list, tuple)) else []


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
