"""Shape arithmetic on symbolic dims, without knowing the input shapes.

Exporters write ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x),
1))))`` and the like: a reshape of ``x`` to its own shape, proven for every batch size, yet
invisible to constant folding when a dim is symbolic.  This pass tracks the content of small
integer tensors built from ``Shape`` as a list of elements, each an ``int`` or a :class:`Dim`
("axis ``k`` of value ``v``"), through ``Shape``, ``Gather``, ``Unsqueeze``, ``Squeeze``,
``Concat``, ``Slice``, ``Cast`` and ``Identity``, and then:

* bypasses ``Reshape`` and ``Expand`` whose target is the input's own shape;
* folds into a constant every such value whose elements are all known integers (``Gather(Shape(x),
  1)`` of an ``x`` shaped ``[batch, 64]`` is ``64``), for the constant folding that follows.

Two dims are equal only when provably so: the same axis of the same value, or of values that
differ by shape-preserving ops (an elementwise op, or a broadcast with a constant that cannot
grow the shape).  Symbolic dim *names* are not trusted: nothing makes a caller feed two inputs
declared ``batch`` with the same size.  What this pass cannot prove, the session's shape
specialization (:mod:`hetrix.runtime.specialize`) folds once the input shapes are known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from hetrix.passes import _ir
from hetrix.passes.rewrite import RewriteStats

MAX_ELEMENTS = 16
"""Integer tensors longer than this are not tracked (shapes are short)."""

_SHAPE_PRESERVING_UNARY = frozenset(
    "Abs Cast Ceil Clip Cos Dropout Elu Erf Exp Floor Gelu HardSigmoid HardSwish Identity "
    "LeakyRelu Log LogSoftmax Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Softmax "
    "Softplus Softsign Sqrt Tanh".split()
)
"""Ops whose first output has the shape of their first input (other inputs are scalars or
parameters that do not broadcast: Clip's bounds, Dropout's ratio)."""

_BROADCASTING = frozenset(
    "Add Sub Mul Div Pow Max Min Mod And Or Xor Equal Greater Less GreaterOrEqual "
    "LessOrEqual".split()
)


@dataclass(frozen=True, eq=False)
class Dim:
    """Axis ``axis`` of ``value``: a dim whose size is known only at run time."""

    value: ir.Value
    axis: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dim) and other.value is self.value and other.axis == self.axis

    def __hash__(self) -> int:
        return hash((id(self.value), self.axis))


Element = int | Dim


def dim_of(value: ir.Value, axis: int) -> Element:
    """Axis ``axis`` (non-negative) of ``value``: its size when static, else a canonical
    :class:`Dim` (followed back through shape-preserving producers)."""
    while True:
        shape = value.shape
        dim = shape[axis] if shape is not None and axis < len(shape) else None
        if isinstance(dim, int):
            return dim
        source = _same_shape_source(value)
        if source is None:
            return Dim(value, axis)
        value = source


def _same_shape_source(value: ir.Value) -> ir.Value | None:
    """An input of ``value``'s producer that provably has ``value``'s shape, or None."""
    node = value.producer()
    if node is None or _ir.normal_domain(node.domain) or value is not node.outputs[0]:
        return None
    if node.op_type in _SHAPE_PRESERVING_UNARY and node.inputs and node.inputs[0] is not None:
        return node.inputs[0]
    if node.op_type in _BROADCASTING and len(node.inputs) == 2:
        for index in (0, 1):
            operand, other = node.inputs[index], node.inputs[1 - index]
            if operand is not None and other is not None and _cannot_grow(other, operand):
                return operand
    return None


def _cannot_grow(constant: ir.Value, operand: ir.Value) -> bool:
    """Whether broadcasting ``operand`` with the constant ``constant`` keeps ``operand``'s
    shape: the constant has no more axes, and each of its dims is 1 or the operand's static
    dim at that (right-aligned) axis."""
    array = _ir.const_array(constant)
    rank = _ir.rank(operand)
    if array is None or rank is None or array.ndim > rank or operand.shape is None:
        return False
    dims = list(operand.shape)[rank - array.ndim:]
    return all(d == 1 or (isinstance(o, int) and o == d) for d, o in zip(array.shape, dims))


class SymbolicShapePass(ir.passes.InPlacePass):
    """Bypasses Reshape/Expand to the input's own symbolic shape and folds the known integers of
    shape arithmetic (see the module docstring).  ``stats`` counts what fired."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = RewriteStats()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = RewriteStats()
        for graph in list(model.graphs()):
            self._rewrite(graph, model)
        return ir.passes.PassResult(model, modified=bool(self.stats.counts))

    def _rewrite(self, graph: ir.Graph, model: ir.Model) -> None:
        tracker = _Tracker()
        for node in list(graph):
            version = _ir.opset(model, node.domain)
            source = node.inputs[0] if node.inputs else None
            if (
                source is not None
                and _ir.is_op(node, "Reshape", "Expand")
                and tracker.is_identity(node, version)
            ):
                self.stats.counts[f"{node.op_type} to own shape"] += 1
                _ir.bypass(node, source)
                continue
            content = tracker.visit(node, version)
            if content is not None and not _ir.is_op(node, "Shape"):
                self._fold(node, content)

    def _fold(self, node: ir.Node, content: _Content) -> None:
        """When every element is a known int, readers of the output read a constant instead
        (the node is then dead code).  Shape itself is left to constant folding."""
        output = node.outputs[0]
        elements, is_scalar = content
        if not all(isinstance(e, int) for e in elements):
            return
        if not output.uses() or output.is_graph_output():
            return
        array = np.array(elements, dtype=np.int64)
        graph = node.graph
        assert graph is not None
        folded = _ir.add_initializer(
            graph, output.name or "shape", array.reshape(()) if is_scalar else array
        )
        output.replace_all_uses_with(folded)
        self.stats.counts["shape element folded"] += 1


_Content = tuple[list[Element], bool]
"""The elements of a tracked int64 tensor, and whether it is a scalar (else a vector)."""


class _Tracker:
    """The contents of the int64 scalars and vectors of one graph, computed node by node."""

    def __init__(self) -> None:
        self.contents: dict[ir.Value, _Content] = {}

    def known(self, value: ir.Value | None) -> _Content | None:
        """The content of ``value``: tracked, or a small int64 constant; else None."""
        if value is None:
            return None
        if value in self.contents:
            return self.contents[value]
        array = _ir.const_array(value)
        if array is None or array.dtype != np.int64 or array.ndim > 1 or array.size > MAX_ELEMENTS:
            return None
        return [int(v) for v in array.reshape(-1)], array.ndim == 0

    def visit(self, node: ir.Node, version: int | None) -> _Content | None:
        """Track ``node``'s first output when it is shape arithmetic; returns its content."""
        content = self._content(node, version) if not _ir.normal_domain(node.domain) else None
        if content is not None and len(content[0]) <= MAX_ELEMENTS:
            self.contents[node.outputs[0]] = content
            return content
        return None

    def _content(self, node: ir.Node, version: int | None) -> _Content | None:
        op = node.op_type
        if op == "Shape":
            return _shape(node, version)
        if op == "Identity" or (
            op == "Cast" and _ir.attribute(node, "to", version) == ir.DataType.INT64
        ):
            return self.known(node.inputs[0])
        if op == "Gather":
            return self._gather(node, version)
        if op in ("Unsqueeze", "Squeeze"):
            return self._squeeze(node, version)
        if op == "Concat":
            return self._concat(node, version)
        if op == "Slice":
            return self._slice(node)
        return None

    def is_identity(self, node: ir.Node, version: int | None) -> bool:
        """Whether a Reshape/Expand ``node`` provably returns its input unchanged."""
        source = node.inputs[0]
        target = self.known(node.inputs[1]) if len(node.inputs) > 1 else None
        rank = _ir.rank(source)
        if source is None or target is None or target[1] or rank is None:
            return False
        own = [dim_of(source, axis) for axis in range(rank)]
        if all(isinstance(d, int) for d in own):
            return False  # static shapes: the no-op elimination pass's business
        if node.op_type == "Reshape":
            allow_zero = bool(_ir.attribute(node, "allowzero", version) or 0)
            return _reshape_keeps(own, target[0], allow_zero)
        return _expand_keeps(own, target[0])

    def _gather(self, node: ir.Node, version: int | None) -> _Content | None:
        data, indices = self.known(node.inputs[0]), self.known(node.inputs[1])
        if data is None or indices is None or data[1] or _ir.attribute(node, "axis", version):
            return None
        elements = data[0]
        size = len(elements)
        if not all(isinstance(i, int) and -size <= i < size for i in indices[0]):
            return None
        return [elements[i] for i in indices[0]], indices[1]  # type: ignore[index]

    def _squeeze(self, node: ir.Node, version: int | None) -> _Content | None:
        """Unsqueeze of a scalar at axis 0, Squeeze of a one-element vector: same elements."""
        data = self.known(node.inputs[0])
        if data is None:
            return None
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = self.known(node.inputs[1])
            if axes is None:
                return None
            axes_list: list[Element] | None = axes[0]
        else:
            axes_list = _ir.attribute(node, "axes", version)
        if node.op_type == "Unsqueeze":
            return (data[0], False) if data[1] and axes_list in ([0], [-1]) else None
        if not data[1] and len(data[0]) == 1 and axes_list in (None, [0], [-1]):
            return data[0], True
        return None

    def _concat(self, node: ir.Node, version: int | None) -> _Content | None:
        if _ir.attribute(node, "axis", version) not in (0, -1):
            return None
        elements: list[Element] = []
        for value in node.inputs:
            part = self.known(value)
            if part is None or part[1]:
                return None
            elements += part[0]
        return elements, False

    def _slice(self, node: ir.Node) -> _Content | None:
        """Slice of a vector along axis 0 with step 1 (where ONNX clamps as Python does)."""
        data = self.known(node.inputs[0])
        if data is None or data[1] or len(node.inputs) < 3:
            return None
        params: list[int | None] = []
        for value in node.inputs[1:5]:
            item = self.known(value) if value is not None else None
            if item is None:
                if value is not None:
                    return None
                params.append(None)
                continue
            first = item[0][0] if len(item[0]) == 1 else None
            if not isinstance(first, int):
                return None
            params.append(first)
        start, end, axis, step = params + [None] * (4 - len(params))
        if axis not in (None, 0, -1) or step not in (None, 1):
            return None
        return data[0][start:end], False


def _shape(node: ir.Node, version: int | None) -> _Content | None:
    source = node.inputs[0]
    rank = _ir.rank(source)
    if source is None or rank is None:
        return None
    start = _ir.attribute(node, "start", version) or 0
    end = _ir.attribute(node, "end", version)
    return [dim_of(source, axis) for axis in range(rank)][start:end], False


def _reshape_keeps(own: list[Element], target: list[Element], allow_zero: bool) -> bool:
    """Whether Reshape to ``target`` keeps a tensor of dims ``own``.

    A 0 copies the input dim (unless ``allowzero``).  A -1 is accepted only when every other
    target dim is a known positive int: it then resolves to the one remaining dim, whereas with
    a symbolic dim that may be 0 at run time it would be an error, not an identity."""
    if len(target) != len(own):
        return False
    free = [i for i, want in enumerate(target) if want == -1]
    if len(free) > 1:
        return False
    for i, (mine, want) in enumerate(zip(own, target)):
        if i in free or (want == 0 and not allow_zero):
            continue
        if want != mine:
            return False
    return not free or all(
        isinstance(want, int) and want > 0 for i, want in enumerate(target) if i != free[0]
    )


def _expand_keeps(own: list[Element], target: list[Element]) -> bool:
    """Whether Expand to ``target`` keeps a tensor of dims ``own``: no new axes, and each
    target dim (right-aligned) is 1 or the input's own dim."""
    if len(target) > len(own):
        return False
    aligned = own[len(own) - len(target):]
    return all(want == 1 or want == mine for mine, want in zip(aligned, target))
