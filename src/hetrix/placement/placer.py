"""Priority placement with per-node fallback.

The session's backends are tried in the user's order; the first that has a kernel for a node at the
model's opset runs it.  When that is not the first backend, the placement records why (the
preferred backend lacks the op) and the fallback is logged, never silent.  The onnx reference
evaluator, when enabled, is the very last resort.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from hetrix.backends.base import Backend
from hetrix.backends.registry import REGISTRY, Kernel
from hetrix.runtime.plan import HOST, KernelChooser, Placement

logger = logging.getLogger(__name__)

_SHAPE_SOURCES = {"Shape", "Size"}
_SHAPE_OPS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Neg",
    "Abs",
    "Max",
    "Min",
    "Cast",
    "Concat",
    "Gather",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Range",
    "Equal",
    "Where",
    "ReduceProd",
    "ReduceSum",
    "Identity",
    "Less",
    "Greater",
    "Not",
    "And",
    "Or",
    "ConstantOfShape",
    "Expand",
    "Floor",
    "Ceil",
    "Sqrt",
}
"""Ops that count as shape arithmetic when every input is shape data."""
_SMALL = 64


def _is_small_int_constant(value: ir.Value) -> bool:
    """An initializer or Constant output holding at most a few integers."""
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant" or producer.domain:
            return False
        attr = producer.attributes.get("value")
        if attr is None:
            return "value_int" in producer.attributes or "value_ints" in producer.attributes
        tensor = attr.value
    dtype = tensor.dtype
    return dtype in (ir.DataType.INT64, ir.DataType.INT32) and tensor.size <= _SMALL


class PriorityPlacer(KernelChooser):
    """Chooses, per node, the first backend in ``backends`` that can run it."""

    def __init__(self, backends: list[Backend], allow_fallback: bool = True) -> None:
        if not backends:
            raise ValueError("a placer needs at least one backend")
        self.backends = backends
        self.allow_fallback = allow_fallback
        self._shape_values: set[str] = set()
        """Values known to be small shape data (from Shape/Size or integer constants)."""

    def _host_backend(self) -> Backend | None:
        return next((b for b in self.backends if b.memory == HOST), None)

    def _is_shape_arithmetic(self, node: ir.Node) -> bool:
        """Shape/Size, and integer work on shape data only: cheap, and its result is read on
        the host anyway (Reshape's target, Slice's starts), so a device would only add copies."""
        if node.op_type in _SHAPE_SOURCES and not node.domain:
            return True
        if node.op_type == "Constant" and not node.domain:
            return _is_small_int_constant(node.outputs[0])
        if node.op_type not in _SHAPE_OPS or node.domain:
            return False
        inputs = [v for v in node.inputs if v is not None]
        return bool(inputs) and all(
            v.name in self._shape_values or _is_small_int_constant(v) for v in inputs
        )

    def __call__(self, node: ir.Node, opset: int) -> tuple[Kernel | None, Placement]:
        op = f"{node.domain + '::' if node.domain else ''}{node.op_type}"
        tried: list[str] = []
        rejections: list[str] = []
        candidates = self.backends if self.allow_fallback else self.backends[:1]
        host = self._host_backend()
        if host is not None and host is not self.backends[0] and self._is_shape_arithmetic(node):
            kernel = host.kernel_for(node, opset)
            if kernel is not None:
                self._shape_values.update(v.name for v in node.outputs if v.name)
                return kernel, Placement(
                    node.name or "",
                    node.op_type,
                    node.domain,
                    host.name,
                    "shape arithmetic stays on the CPU",
                    host.memory,
                )
        for backend in candidates:
            kernel = backend.kernel_for(node, opset)
            if kernel is not None:
                reason = ""
                if tried:
                    reason = f"{', '.join(tried)} cannot run {op} at opset {opset}"
                    why = "; ".join(r for r in rejections if r)
                    reason += f" ({why})" if why else ""
                    logger.info(
                        "node '%s' (%s) falls back to %s: %s", node.name, op, backend.name, reason
                    )
                return kernel, Placement(
                    node.name or "",
                    node.op_type,
                    node.domain,
                    backend.name,
                    reason,
                    backend.memory,
                    backend.host_input_indices(node),
                )
            tried.append(backend.name)
            rejections.append(getattr(backend, "last_rejection", "") or "")
        having = REGISTRY.backends_for(node.domain, node.op_type)
        elsewhere = f"kernels exist on: {', '.join(having)}" if having else "no backend has it"
        message = (
            f"node '{node.name}' op {op} (domain '{node.domain or 'ai.onnx'}', opset "
            f"{opset}): not supported by {', '.join(tried)}; {elsewhere}"
        )
        return None, Placement(node.name or "", node.op_type, node.domain, "", message)

    def transfer(self, source: str, target: str):  # type: ignore[no-untyped-def]
        """Copy function from memory ``source`` to ``target`` through the owning backends."""
        source_backend = self.owner(source)
        target_backend = self.owner(target)
        return lambda value: target_backend.copy_from(value, source_backend)

    def owner(self, memory: str) -> Backend:
        """The backend whose values live in ``memory`` (the host one for "host")."""
        for backend in self.backends:
            if backend.memory == memory:
                return backend
        if memory == HOST:
            from hetrix.backends.numpy_cpu import NumpyBackend

            return NumpyBackend()
        raise ValueError(f"no backend of this session owns memory '{memory}'")
