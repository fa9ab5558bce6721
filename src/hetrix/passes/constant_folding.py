"""Constant folding: evaluate, once, every node whose inputs are all constants.

The node runs on Hetrix's own NumPy kernel (``REGISTRY.lookup("numpy", ...)``) with a
:class:`NodeContext` built the way the planner builds it, so a folded value is exactly what the
session would have computed at run time.  ``Shape`` and ``Size`` of a value whose shape is fully
static fold too, which collapses the shape arithmetic exporters emit (``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape``) once shape inference has run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from hetrix.backends.registry import REGISTRY, NodeContext
from hetrix.passes import _ir
from hetrix.passes.rewrite import Rejection, RewriteStats
from hetrix.runtime.plan import attribute_value

logger = logging.getLogger(__name__)

NON_DETERMINISTIC = frozenset(
    {
        "RandomUniform",
        "RandomNormal",
        "RandomUniformLike",
        "RandomNormalLike",
        "Multinomial",
        "Bernoulli",
    }
)
"""Ops whose output changes from run to run: never folded."""

DEFAULT_SIZE_LIMIT = 64 * 1024 * 1024
"""Folded outputs larger than this many bytes stay computed at run time."""


_WEIGHT_READERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
                             "FusedMatMul", "FusedConvPool"})
"""Ops whose inputs 1 and 2 are weights and bias."""


def _only_weights(node: ir.Node) -> bool:
    """Whether every output is read only as a weight or bias (e.g. a ``ConstantOfShape`` that
    stands for a conv weight, as in onnx's light model zoo).  Such a value exists in full on every
    run anyway; folding it, whatever its size, makes that once at load (ORT folds it too)."""
    readers = [(reader, index) for value in node.outputs for reader, index in value.uses()]
    return bool(readers) and all(
        reader.op_type in _WEIGHT_READERS and index in (1, 2) for reader, index in readers
    ) and not any(value.is_graph_output() for value in node.outputs)


class ConstantFoldingPass(ir.passes.InPlacePass):
    """Replaces nodes whose inputs are all constants by initializers holding their outputs.

    Invariant: a folded value equals what the NumPy kernel computes for the node at run time;
    random ops, control flow, ops without a NumPy kernel and outputs over ``size_limit`` bytes
    (unless only read as weights, see :func:`_only_weights`) are left alone (the reason is kept
    in ``stats.rejections``).
    """

    def __init__(self, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        super().__init__()
        self.size_limit = size_limit
        self.stats = RewriteStats()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        import hetrix.backends.numpy_cpu  # noqa: F401 - registers the NumPy kernels

        self.stats = RewriteStats()
        for graph in list(model.graphs()):
            for node in list(graph):
                self._fold(node, model)
        return ir.passes.PassResult(model, modified=bool(self.stats.counts))

    def _fold(self, node: ir.Node, model: ir.Model) -> None:
        outputs = self._static_shape_outputs(node) or self._evaluate(node, model)
        if outputs is None:
            return
        graph = node.graph
        assert graph is not None
        for value, array in zip(node.outputs, outputs):
            if value.uses() or value.is_graph_output():
                _replace_by_constant(graph, value, array)
        graph.remove(node, safe=True)
        self.stats.counts[f"fold {node.op_type}"] += 1

    def _static_shape_outputs(self, node: ir.Node) -> list[np.ndarray] | None:
        """Outputs of Shape / Size of a value with a fully static shape."""
        if not _ir.is_op(node, "Shape", "Size") or node.inputs[0] is None:
            return None
        shape = _ir.static_shape(node.inputs[0])
        if shape is None or (node.inputs[0].const_value is not None):
            return None  # constant inputs go through the kernel like everything else
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        start = _ir.attribute(node, "start", None) or 0
        end = _ir.attribute(node, "end", None)
        return [np.array(shape[slice(start, end)], dtype=np.int64)]

    def _evaluate(self, node: ir.Node, model: ir.Model) -> list[np.ndarray] | None:
        reason, inputs = self._precheck(node)
        if reason:
            return None if reason == "-" else self._reject(node, reason)
        domain = _ir.normal_domain(node.domain)
        version = _ir.opset(model, domain)
        kernel = REGISTRY.lookup("numpy", domain, node.op_type, version or 1)
        if kernel is None:
            return self._reject(node, f"no NumPy kernel for {node.op_type} at opset {version}")
        limit = math.inf if _only_weights(node) else self.size_limit
        expected = self._expected_bytes(node)
        if expected is not None and expected > limit:
            return self._reject(node, f"output of {expected} bytes is over the folding limit")
        try:
            result = kernel(_context(node, domain, version), *inputs)
        except Exception as exc:  # a kernel error is the run-time error: leave it to run time
            return self._reject(node, f"kernel raised {type(exc).__name__}: {exc}")
        return self._check_result(node, result, limit)

    def _precheck(self, node: ir.Node) -> tuple[str, list[Any]]:
        """('', inputs) when the node may fold; ('-', []) to skip silently; else the reason."""
        if _ir.is_op(node, "Constant") or not node.inputs:
            return "-", []
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            return "-", []
        arrays: list[Any] = []
        for value in node.inputs:
            array = _ir.const_array(value) if value is not None else None
            if value is not None and array is None:
                return "-", []
            arrays.append(array)
        if _ir.normal_domain(node.domain) == "" and node.op_type in NON_DETERMINISTIC:
            return "random op", []
        return "", [_as_kernel_input(a) for a in arrays]

    def _expected_bytes(self, node: ir.Node) -> int | None:
        total = 0
        for value in node.outputs:
            shape = _ir.static_shape(value)
            if shape is None or value.dtype is None:
                return None
            total += int(np.prod(shape)) * int(value.dtype.itemsize)
        return total

    def _check_result(self, node: ir.Node, result: Any,
                      limit: float) -> list[np.ndarray] | None:
        results = list(result) if isinstance(result, tuple) else [result]
        if len(results) != len(node.outputs):
            return self._reject(node, "kernel returned a different number of outputs")
        arrays = []
        for value, item in zip(node.outputs, results):
            if isinstance(item, np.generic):
                item = np.asarray(item)
            if not isinstance(item, np.ndarray) or item.dtype == object:
                return self._reject(node, "an output is not a numeric tensor")
            if item.nbytes > limit:
                return self._reject(node, f"output of {item.nbytes} bytes is over the limit")
            if value.dtype is not None and value.dtype.numpy() != item.dtype:
                return self._reject(node, f"kernel gave {item.dtype}, model declares {value.dtype}")
            arrays.append(item)
        return arrays

    def _reject(self, node: ir.Node, reason: str) -> list[np.ndarray] | None:
        """Record why ``node`` is not folded; returns None, the "no outputs" of the callers."""
        self.stats.rejections.append(Rejection("constant folding", node.name or "", reason))
        logger.debug("constant folding: not folding %r (%s): %s", node.name, node.op_type, reason)
        return None


def _replace_by_constant(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Make every reader of ``value`` (a graph output too, keeping its name) read ``array``."""
    name = value.name if value.is_graph_output() else None
    if name:
        value.name = _ir.fresh_name(name)
    folded = _ir.add_initializer(graph, value.name or "folded", array, exact_name=name)
    value.replace_all_uses_with(folded, replace_graph_outputs=True)


def _as_kernel_input(array: np.ndarray | None) -> Any:
    """Initializer content as the planner hands it to kernels (read-only, strings decoded)."""
    if array is None:
        return None
    if array.dtype.kind in "SU" or array.dtype == object:
        array = (
            np.vectorize(lambda s: s.decode() if isinstance(s, bytes) else str(s), otypes=[object])(
                array
            )
            if array.size
            else array.astype(object)
        )
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def _context(node: ir.Node, domain: str, version: int | None) -> NodeContext:
    label = f"node '{node.name}' ({node.op_type})"
    attrs = {
        name: attribute_value(attr, label)
        for name, attr in _ir.attributes_with_defaults(node, version).items()
    }
    return NodeContext(
        op_type=node.op_type,
        domain=domain,
        name=node.name or "",
        opset=version or 1,
        attrs=attrs,
        num_inputs=len(node.inputs),
        num_outputs=len(node.outputs),
        input_names=tuple(v.name or "" if v is not None else "" for v in node.inputs),
        output_names=tuple(v.name or "" for v in node.outputs),
        output_dtypes=tuple(_numpy_dtype(v) for v in node.outputs),
    )


def _numpy_dtype(value: ir.Value) -> Any:
    if value.dtype is None or value.dtype == ir.DataType.UNDEFINED:
        return None
    try:
        return np.dtype(value.dtype.numpy())
    except (TypeError, ValueError, NotImplementedError):
        return None
