"""Last-resort fallback: run a node on onnx's reference evaluator (``onnx.reference``).

It is slow and meant for rare operators only.  The session uses it only when enabled
(``SessionOptions.enable_reference_fallback``), after every real backend declined the node, and the
placement report marks each such node, so ``hetrix check`` can count what passes on Hetrix's own
kernels and what only through this fallback.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from hetrix.backends.base import Backend
from hetrix.backends.registry import Kernel, NodeContext
from hetrix.model.functions import find_schema


class ReferenceFallbackBackend(Backend):
    """Runs any node that onnx's reference evaluator implements, one node at a time."""

    name = "onnx-reference:cpu"
    device = "cpu"

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        if any(
            attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for attr in node.attributes.values()
        ):
            return None  # subgraph-bearing ops need outer-scope values: not handled here
        if find_schema(node.op_type, opset, node.domain) is None:
            return None
        node_proto = ir.serde.serialize_node(node)
        opsets = {node.domain: opset}
        if node.domain:
            opsets.setdefault("", 1)
        return _ReferenceKernel(node_proto, opsets)


class _ReferenceKernel:
    """A kernel that builds the reference evaluator for its node on first call."""

    def __init__(self, node_proto: Any, opsets: dict[str, int]) -> None:
        self._node_proto = node_proto
        self._opsets = opsets
        self._evaluator: Any = None

    def __call__(self, ctx: NodeContext, *inputs: Any) -> Any:
        from onnx.reference import ReferenceEvaluator  # imported lazily: it is large

        if self._evaluator is None:
            self._evaluator = ReferenceEvaluator(self._node_proto, opsets=self._opsets)
        names = list(self._node_proto.input)
        feeds = {name: value for name, value in zip(names, inputs) if name}
        outputs = self._evaluator.run(None, feeds)
        return tuple(outputs) if len(outputs) != 1 else outputs[0]
