"""The common description of a device Hetrix can run on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class Device:
    """A compute device: what it is, what it is called and how much memory it has.

    Subclasses (:class:`~hetrix.devices.cpu.CpuInfo`, later accelerators) add their own facts;
    ``to_dict`` gives a JSON-ready view of every field.
    """

    kind: str
    """``"cpu"``, later ``"cuda"``, ``"rocm"``, ``"mps"``..."""
    name: str
    """Human-readable model name, e.g. ``"Intel(R) Xeon(R) Platinum 8480+"``."""
    memory_bytes: int | None
    """Total memory the device can address (host RAM for the CPU); None when unknown."""
    index: int = 0
    """Position among devices of the same kind."""

    @property
    def id(self) -> str:
        """A short handle such as ``cpu:0``."""
        return f"{self.kind}:{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["id"] = self.id
        return {key: _plain(value) for key, value in data.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value
