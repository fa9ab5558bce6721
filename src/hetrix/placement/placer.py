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


class PriorityPlacer(KernelChooser):
    """Chooses, per node, the first backend in ``backends`` that can run it."""

    def __init__(self, backends: list[Backend], allow_fallback: bool = True) -> None:
        if not backends:
            raise ValueError("a placer needs at least one backend")
        self.backends = backends
        self.allow_fallback = allow_fallback

    def __call__(self, node: ir.Node, opset: int) -> tuple[Kernel | None, Placement]:
        op = f"{node.domain + '::' if node.domain else ''}{node.op_type}"
        tried: list[str] = []
        candidates = self.backends if self.allow_fallback else self.backends[:1]
        for backend in candidates:
            kernel = backend.kernel_for(node, opset)
            if kernel is not None:
                reason = ""
                if tried:
                    reason = f"{', '.join(tried)} cannot run {op} at opset {opset}"
                    logger.info("node '%s' (%s) falls back to %s: %s",
                                node.name, op, backend.name, reason)
                return kernel, Placement(node.name or "", node.op_type, node.domain,
                                         backend.name, reason, backend.memory)
            tried.append(backend.name)
        having = REGISTRY.backends_for(node.domain, node.op_type)
        elsewhere = f"kernels exist on: {', '.join(having)}" if having else "no backend has it"
        message = (f"node '{node.name}' op {op} (domain '{node.domain or 'ai.onnx'}', opset "
                   f"{opset}): not supported by {', '.join(tried)}; {elsewhere}")
        return None, Placement(node.name or "", node.op_type, node.domain, "", message)

    def transfer(self, source: str, target: str):  # type: ignore[no-untyped-def]
        """Copy function from memory ``source`` to ``target`` through the owning backends."""
        source_backend = self._owner(source)
        target_backend = self._owner(target)
        return lambda value: target_backend.copy_from(value, source_backend)

    def _owner(self, memory: str) -> Backend:
        for backend in self.backends:
            if backend.memory == memory:
                return backend
        if memory == HOST:
            from hetrix.backends.numpy_cpu import NumpyBackend

            return NumpyBackend()
        raise ValueError(f"no backend of this session owns memory '{memory}'")
