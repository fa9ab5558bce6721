"""The devices Hetrix can run on, discovered without initialising any device runtime.

Today that is the host CPU; accelerators will join the list as further :class:`Device`
subclasses, each describing itself (kind, name, memory) plus its own facts.
"""

from __future__ import annotations

from hetrix.devices.base import Device
from hetrix.devices.cpu import BlasInfo, CpuInfo, detect_cpu

__all__ = ["BlasInfo", "CpuInfo", "Device", "detect_cpu", "list_devices"]


def list_devices() -> list[Device]:
    """Every device found on this machine, the host CPU first."""
    return [detect_cpu()]
