"""The backend interface: a device kind plus the library that drives it.

A backend answers one question for the planner, "can you run this node, and with which kernel?",
and owns how values live in its memory.  Host backends (NumPy) keep values as numpy arrays; device
backends convert at the boundary with :meth:`Backend.to_host` / :meth:`Backend.from_host`.
Importing a backend module never initialises a device runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import onnx_ir as ir

from hetrix.backends.registry import REGISTRY, Kernel

SHAPE_INPUTS: dict[str, frozenset[int]] = {
    op: frozenset(indices)
    for op, indices in {
        "Reshape": {1},
        "Expand": {1},
        "Tile": {1},
        "Slice": {1, 2, 3, 4},
        "Unsqueeze": {1},
        "Squeeze": {1},
        "Pad": {1, 2, 3},
        "Resize": {1, 2, 3},
        "Upsample": {1},
        "ConstantOfShape": {0},
        "TopK": {1},
        "Range": {0, 1, 2},
        "Split": {1},
        "OneHot": {1},
        "CumSum": {1},
        "ReduceSum": {1},
        "ReduceMean": {1},
        "ReduceMax": {1},
        "ReduceMin": {1},
        "ReduceProd": {1},
        "ReduceL1": {1},
        "ReduceL2": {1},
        "ReduceLogSum": {1},
        "ReduceLogSumExp": {1},
        "ReduceSumSquare": {1},
        "EyeLike": set(),
        "Trilu": {1},
    }.items()
}
"""Inputs of default-domain ops that are shape/axis arguments: small, and read on the host."""


class Backend(ABC):
    """One kernel library on one device.  ``name`` is unique, e.g. ``numpy:cpu``."""

    name: str
    device: str = "cpu"
    memory: str = "host"
    """Memory space of the values its kernels take and return; "host" means numpy arrays."""
    runs_fused_ops: bool = False
    """Whether it has kernels for the ``hetrix``-domain ops the level-2 passes emit (host
    backends always can: the NumPy backend takes whatever they do not)."""

    @abstractmethod
    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        """The kernel that runs ``node`` at ``opset``, or None when this backend cannot."""

    def host_input_indices(self, node: ir.Node) -> frozenset[int]:
        """Inputs of ``node`` this backend's kernel wants as host values (shape arguments).

        A device backend reads them with ``.tolist()`` anyway, so they stay on the host rather
        than making a round trip through device memory.
        """
        if self.memory == "host" or node.domain:
            return frozenset()
        return SHAPE_INPUTS.get(node.op_type, frozenset())

    def to_host(self, value: Any) -> Any:
        """Bring a value held by this backend to host memory (numpy); identity for host backends."""
        return value

    def from_host(self, value: Any) -> Any:
        """Place a host value in this backend's memory; identity for host backends."""
        return value

    def copy_from(self, value: Any, source: Backend) -> Any:
        """Bring a value held by ``source`` into this backend's memory (override to go direct)."""
        return self.from_host(source.to_host(value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class RegistryBackend(Backend):
    """A backend whose kernels are the functions registered under ``registry_name``."""

    registry_name: str

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        return REGISTRY.lookup(self.registry_name, node.domain, node.op_type, opset)

    def supports(self, domain: str, op_type: str, opset: int) -> bool:
        """Whether a kernel exists for the op at this opset (no node needed)."""
        return REGISTRY.lookup(self.registry_name, domain, op_type, opset) is not None
