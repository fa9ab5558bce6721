"""The devices Hetrix can run on, discovered without initialising any device runtime at import.

The host CPU (:class:`CpuInfo`) comes first, then the accelerators torch and JAX can see
(:class:`AcceleratorInfo`); torch and JAX are imported only when :func:`list_devices` looks for
accelerators.  Each device's measured figures (:class:`DeviceFigures`: matmul GFLOP/s per dtype,
memory and transfer bandwidth, latencies) come from :func:`get_figures`, cached on disk per
device fingerprint.
"""

from __future__ import annotations

from hetrix.devices.accelerators import AcceleratorInfo, discover_accelerators
from hetrix.devices.base import Device
from hetrix.devices.cache import fingerprint, get_figures, load_figures, store_figures
from hetrix.devices.cpu import BlasInfo, CpuInfo, detect_cpu
from hetrix.devices.measure import DeviceFigures, MeasureConfig, measure_config, measure_device

__all__ = [
    "AcceleratorInfo",
    "BlasInfo",
    "CpuInfo",
    "Device",
    "DeviceFigures",
    "MeasureConfig",
    "detect_cpu",
    "discover_accelerators",
    "fingerprint",
    "get_figures",
    "list_devices",
    "load_figures",
    "measure_config",
    "measure_device",
    "store_figures",
]


def list_devices(accelerators: bool = True) -> list[Device]:
    """Every device found on this machine, the host CPU first; ``accelerators=False`` skips
    the torch/JAX probe (and their import)."""
    found: list[Device] = [detect_cpu()]
    if accelerators:
        found += discover_accelerators()
    return found
