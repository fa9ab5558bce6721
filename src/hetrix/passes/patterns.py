"""Recognition of LayerNormalization, GELU and attention as torch.onnx exports spell them.

* LayerNorm: ``d = x - ReduceMean(x)``, ``n = d / Sqrt(ReduceMean(d ** 2) + eps)``, then
  optionally ``* gamma`` and ``+ beta`` (constants), the means over the same trailing axes.
  Becomes ``LayerNormalization`` at opset >= 17, else ``hetrix.LayerNormalization``.
* GELU: ``0.5 * x * (1 + Erf(x / sqrt 2))`` (erf form) or ``0.5 * x * (1 + Tanh(sqrt(2/pi) *
  (x + 0.044715 * x ** 3)))`` (tanh form), the 0.5 applied first, last or to the bracket.
  Becomes ``Gelu`` at opset >= 20, else ``hetrix.Gelu``, with ``approximate`` none/tanh.
* Attention: ``MatMul(Q, Kt)`` scaled by a constant (Mul or Div), plus an optional additive mask,
  ``Softmax`` over the last axis, ``MatMul`` with V: becomes ``hetrix.Attention(Q, Kt, V, mask)``
  with ``scale``.
* Channel shuffle (ShuffleNet): ``Reshape`` of ``[N, C, H, W]`` to ``[N, g, C/g, H, W]``,
  ``Transpose`` with ``perm=[0, 2, 1, 3, 4]``, ``Reshape`` back to ``[N, C, H, W]``: becomes
  ``hetrix.ChannelShuffle(X)`` with ``groups=g``, one pass that keeps a convolution's
  channels-last layout, where the three ops make two copies and leave the next convolution a
  layout to convert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from hetrix.passes import _ir
from hetrix.passes.rewrite import Reject, RewriteContext, RewritePass, Rule

_TOLERANCE = 1e-3
"""Relative tolerance on the constants of a pattern (exporters round sqrt(2) etc. to float32)."""


def _is_const(value: ir.Value | None, expected: float) -> bool:
    found = _ir.scalar(value)
    return found is not None and math.isclose(found, expected, rel_tol=_TOLERANCE)


def _operands(node: ir.Node, op_type: str, constant: float) -> ir.Value:
    """For ``op_type(v, c)`` or (commutative ops) ``op_type(c, v)`` with ``c == constant``: v."""
    if not _ir.is_op(node, op_type) or len(node.inputs) != 2:
        raise Reject(f"expected {op_type}, found {node.op_type if node else 'nothing'}")
    a, b = node.inputs
    if a is None or b is None:
        raise Reject(f"{op_type} {node.name!r} has a missing operand")
    if _is_const(b, constant):
        return a
    if op_type in ("Add", "Mul") and _is_const(a, constant):
        return b
    raise Reject(f"{op_type} {node.name!r} is not by the constant {constant}")


def _single_use(value: ir.Value | None, what: str) -> ir.Node:
    if value is None or (reader := _ir.sole_consumer(value)) is None:
        raise Reject(f"{what} has several readers")
    return reader


def _producer_of(value: ir.Value | None, op_type: str) -> ir.Node:
    node = _ir.producer(value)
    if not _ir.is_op(node, op_type):
        raise Reject(f"expected {op_type} upstream, found {node.op_type if node else 'input'}")
    assert node is not None
    return node


# ------------------------------------------------------------------------------- LayerNorm


@dataclass
class _LayerNorm:
    x: ir.Value
    axis: int
    epsilon: float
    gamma: ir.Value | None
    beta: ir.Value | None
    nodes: list[ir.Node]
    output: ir.Value


class LayerNormRule(Rule):
    """The decomposed LayerNorm, anchored at its Div -> one LayerNormalization."""

    name = "LayerNormalization"
    op_types = ("Div",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> _LayerNorm:
        sub = _producer_of(node.inputs[0], "Sub")
        x, mean = sub.inputs
        if x is None:
            raise Reject("the Sub has no minuend")
        mean_node = _producer_of(mean, "ReduceMean")
        if mean_node.inputs[0] is not x:
            raise Reject("the mean is not of the Sub's minuend")
        axes = _reduce_axes(mean_node, ctx)
        sqrt = _producer_of(node.inputs[1], "Sqrt")
        add_eps = _producer_of(sqrt.inputs[0], "Add")
        var_node, epsilon = _var_and_eps(add_eps)
        if _reduce_axes(var_node, ctx) != axes:
            raise Reject("mean and variance reduce different axes")
        square = (
            _producer_of(var_node.inputs[0], "Pow")
            if _ir.is_op(_ir.producer(var_node.inputs[0]), "Pow")
            else _producer_of(var_node.inputs[0], "Mul")
        )
        _check_square(square, sub.outputs[0])
        axis = _trailing_axis(axes, _ir.rank(x))
        nodes = [mean_node, sub, square, var_node, add_eps, sqrt, node]
        for inner in nodes[:-1]:
            readers = {use.node for use in inner.outputs[0].uses()}
            if inner.outputs[0].is_graph_output() or not readers <= set(nodes):
                raise Reject(f"intermediate {inner.op_type} {inner.name!r} is read elsewhere")
        match = self._affine(_LayerNorm(x, axis, epsilon, None, None, nodes, node.outputs[0]))
        if match.gamma is None and (_ir.static_shape(x) is None or x.dtype is None):
            raise Reject("no gamma, and the normalized shape is not static")
        return match

    @staticmethod
    def _affine(match: _LayerNorm) -> _LayerNorm:
        """Extend the match over a following ``* gamma`` and ``+ beta`` when present."""
        for op_type in ("Mul", "Add"):
            reader = _ir.sole_consumer(match.output)
            if not _ir.is_op(reader, op_type) or (op_type == "Add" and match.gamma is None):
                break
            assert reader is not None
            other = _ir.other_input(reader, match.output)
            constant = _ir.const_array(other)
            if constant is None or constant.ndim > -match.axis or constant.ndim == 0:
                break
            if op_type == "Mul":
                match.gamma = other
            else:
                match.beta = other
            match.nodes.append(reader)
            match.output = reader.outputs[0]
        return match

    def apply(self, match: _LayerNorm, ctx: RewriteContext) -> None:
        graph = match.nodes[-1].graph
        assert graph is not None
        version = ctx.opset() or 1
        domain = "" if version >= 17 else _ir.HETRIX_DOMAIN
        if domain:
            ctx.import_hetrix()
        gamma = match.gamma
        if gamma is None:
            shape = _ir.static_shape(match.x)
            assert shape is not None and match.x.dtype is not None
            ones = np.ones(shape[match.axis :], dtype=match.x.dtype.numpy())
            gamma = _ir.add_initializer(graph, "layernorm_scale", ones)
        inputs = [match.x, gamma] + ([match.beta] if match.beta is not None else [])
        attributes = {"axis": match.axis, "epsilon": match.epsilon}
        out = ir.Value(name=_ir.fresh_name(match.output.name or "layernorm"))
        fused = ir.node(
            "LayerNormalization",
            inputs,
            attributes,
            domain=domain,
            name=match.nodes[-1].name,
            outputs=[out],
        )
        _ir.replace(match.nodes[-1], match.nodes, [fused], [match.output], [out])


def _reduce_axes(node: ir.Node, ctx: RewriteContext) -> tuple[int, ...]:
    keepdims = _ir.attribute(node, "keepdims", ctx.opset())
    if keepdims == 0:
        raise Reject("ReduceMean with keepdims=0")
    axes = _ir.attribute(node, "axes", None)
    if axes is None and len(node.inputs) > 1:
        array = _ir.const_array(node.inputs[1])
        axes = None if array is None else [int(a) for a in array.reshape(-1)]
    if not axes:
        raise Reject("ReduceMean axes are not constant")
    return tuple(sorted(axes))


def _trailing_axis(axes: tuple[int, ...], rank: int | None) -> int:
    """The LayerNormalization ``axis`` (negative) for reduction ``axes``, or Reject."""
    if rank is not None:
        axes = tuple(sorted(a - rank if a >= 0 else a for a in axes))
    if any(a >= 0 for a in axes) or axes != tuple(range(-len(axes), 0)):
        raise Reject(f"axes {list(axes)} are not the trailing axes")
    return -len(axes)


def _var_and_eps(add: ir.Node) -> tuple[ir.Node, float]:
    for index in (0, 1):
        var = _ir.producer(add.inputs[index])
        eps = _ir.scalar(add.inputs[1 - index])
        if _ir.is_op(var, "ReduceMean") and eps is not None:
            assert var is not None
            return var, eps
    raise Reject("the epsilon Add does not add a constant to a ReduceMean")


def _check_square(node: ir.Node, d: ir.Value) -> None:
    if node.op_type == "Pow" and node.inputs[0] is d and _is_const(node.inputs[1], 2.0):
        return
    if node.op_type == "Mul" and node.inputs[0] is d and node.inputs[1] is d:
        return
    raise Reject("the variance is not the mean of (x - mean) ** 2")


# ------------------------------------------------------------------------------- GELU

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@dataclass
class _Gelu:
    x: ir.Value
    approximate: str
    nodes: list[ir.Node]
    output: ir.Value


class GeluRule(Rule):
    """The erf and tanh GELU formulas, anchored at the Erf / Tanh -> one Gelu."""

    name = "Gelu"
    op_types = ("Erf", "Tanh")

    def match(self, node: ir.Node, ctx: RewriteContext) -> _Gelu:
        if node.op_type == "Erf":
            x, inner = self._erf_argument(node)
            approximate = "none"
        else:
            x, inner = self._tanh_argument(node)
            approximate = "tanh"
        add_one = _single_use(node.outputs[0], node.op_type)
        bracket = _operands(add_one, "Add", 1.0)
        if bracket is not node.outputs[0]:
            raise Reject("the Add does not add 1 to the Erf/Tanh")
        outer, output = _outer_half_product(x, add_one.outputs[0])
        nodes = inner + [node, add_one] + outer
        _check_private(nodes, output)
        return _Gelu(x, approximate, nodes, output)

    @staticmethod
    def _erf_argument(erf: ir.Node) -> tuple[ir.Value, list[ir.Node]]:
        scale = _ir.producer(erf.inputs[0])
        if _ir.is_op(scale, "Div"):
            assert scale is not None
            return _operands(scale, "Div", _SQRT2), [scale]
        if _ir.is_op(scale, "Mul"):
            assert scale is not None
            return _operands(scale, "Mul", 1 / _SQRT2), [scale]
        raise Reject("the Erf argument is not x / sqrt(2)")

    @staticmethod
    def _tanh_argument(tanh: ir.Node) -> tuple[ir.Value, list[ir.Node]]:
        scale = _ir.producer(tanh.inputs[0])
        if scale is None:
            raise Reject("the Tanh argument is a graph input")
        inner = _operands(scale, "Mul", _SQRT_2_OVER_PI)
        add = _producer_of(inner, "Add")
        for index in (0, 1):
            x, cubic_term = add.inputs[index], add.inputs[1 - index]
            cubic_node = _ir.producer(cubic_term)
            if not _ir.is_op(cubic_node, "Mul"):
                continue
            assert cubic_node is not None
            try:
                cube = _operands(cubic_node, "Mul", 0.044715)
            except Reject:
                continue
            pow_node = _producer_of(cube, "Pow")
            if x is not None and pow_node.inputs[0] is x and _is_const(pow_node.inputs[1], 3.0):
                return x, [pow_node, cubic_node, add, scale]
        raise Reject("the Tanh argument is not sqrt(2/pi) * (x + 0.044715 * x ** 3)")

    def apply(self, match: _Gelu, ctx: RewriteContext) -> None:
        version = ctx.opset() or 1
        domain = "" if version >= 20 else _ir.HETRIX_DOMAIN
        if domain:
            ctx.import_hetrix()
        out = ir.Value(name=_ir.fresh_name(match.output.name or "gelu"))
        gelu = ir.node(
            "Gelu",
            [match.x],
            {"approximate": match.approximate},
            domain=domain,
            name=match.nodes[-1].name,
            outputs=[out],
        )
        last = _last(match.nodes, match.output)
        _ir.replace(last, match.nodes, [gelu], [match.output], [out])


def _outer_half_product(x: ir.Value, bracket: ir.Value) -> tuple[list[ir.Node], ir.Value]:
    """The nodes computing ``0.5 * x * bracket`` in any of the three groupings, and the result."""
    reader = _single_use(bracket, "1 + erf")
    if not _ir.is_op(reader, "Mul"):
        raise Reject("1 + erf is not multiplied")
    other = _ir.other_input(reader, bracket)
    if other is x:  # (x * bracket) * 0.5
        half = _single_use(reader.outputs[0], "x * (1 + erf)")
        _operands(half, "Mul", 0.5)
        return [reader, half], half.outputs[0]
    if _is_const(other, 0.5):  # x * (bracket * 0.5)
        final = _single_use(reader.outputs[0], "(1 + erf) / 2")
        if not _ir.is_op(final, "Mul") or _ir.other_input(final, reader.outputs[0]) is not x:
            raise Reject("(1 + erf) * 0.5 is not multiplied by x")
        return [reader, final], final.outputs[0]
    half_x = _ir.producer(other)  # (x * 0.5) * bracket
    if half_x is not None and _ir.is_op(half_x, "Mul") and _operands(half_x, "Mul", 0.5) is x:
        if _ir.sole_consumer(half_x.outputs[0]) is None:
            raise Reject("x * 0.5 has several readers")
        return [half_x, reader], reader.outputs[0]
    raise Reject("the product is not 0.5 * x * (1 + erf)")


def _check_private(nodes: list[ir.Node], output: ir.Value) -> None:
    """Every intermediate value of the match is read only inside it."""
    members = set(nodes)
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output() or not {u.node for u in value.uses()} <= members:
                raise Reject(f"intermediate {node.op_type} {node.name!r} is read elsewhere")


def _last(nodes: list[ir.Node], output: ir.Value) -> ir.Node:
    producer = output.producer()
    assert producer is not None and producer in nodes
    return producer


# ------------------------------------------------------------------------------- attention


@dataclass
class _Attention:
    q: ir.Value
    kt: ir.Value
    v: ir.Value
    mask: ir.Value | None
    scale: float
    nodes: list[ir.Node]
    output: ir.Value


class AttentionRule(Rule):
    """``MatMul(softmax(MatMul(Q, Kt) * scale + mask), V)``, anchored at Softmax."""

    name = "Attention"
    op_types = ("Softmax",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> _Attention:
        if (ctx.opset() or 1) < 13 or _ir.attribute(node, "axis", ctx.opset()) not in (-1, None):
            raise Reject("Softmax is not over the last axis (opset >= 13, axis=-1)")
        nodes = [node]
        source, mask = node.inputs[0], None
        add = _ir.producer(source)
        if _ir.is_op(add, "Add"):
            assert add is not None
            source, mask = self._scores_and_mask(add)
            nodes.insert(0, add)
        scaled = _producer_or_reject(source, ("Mul", "Div"), "scaled scores")
        scores, scale = self._unscaled(scaled)
        qk = _producer_of(scores, "MatMul")
        nodes[:0] = [qk, scaled]
        pv = _single_use(node.outputs[0], "Softmax")
        if not _ir.is_op(pv, "MatMul") or pv.inputs[0] is not node.outputs[0]:
            raise Reject("the probabilities are not multiplied with V")
        nodes.append(pv)
        _check_private(nodes, pv.outputs[0])
        q, kt = qk.inputs
        assert q is not None and kt is not None and pv.inputs[1] is not None
        return _Attention(q, kt, pv.inputs[1], mask, scale, nodes, pv.outputs[0])

    @staticmethod
    def _scores_and_mask(add: ir.Node) -> tuple[ir.Value | None, ir.Value | None]:
        for index in (0, 1):
            if _ir.is_op(_ir.producer(add.inputs[index]), "Mul", "Div"):
                return add.inputs[index], add.inputs[1 - index]
        raise Reject("the Add before Softmax does not add a mask to scaled scores")

    @staticmethod
    def _unscaled(node: ir.Node) -> tuple[ir.Value | None, float]:
        a, b = node.inputs
        factor = _ir.scalar(b)
        if factor is None and node.op_type == "Mul":
            factor, a = _ir.scalar(a), b
        if factor is None or factor == 0:
            raise Reject("the scores are not scaled by a constant")
        return a, (1.0 / factor if node.op_type == "Div" else factor)

    def apply(self, match: _Attention, ctx: RewriteContext) -> None:
        ctx.import_hetrix()
        inputs = [match.q, match.kt, match.v] + ([match.mask] if match.mask is not None else [])
        out = ir.Value(name=_ir.fresh_name(match.output.name or "attention"))
        fused = ir.node(
            "Attention",
            inputs,
            {"scale": float(match.scale)},
            domain=_ir.HETRIX_DOMAIN,
            name=match.nodes[-1].name,
            outputs=[out],
        )
        _ir.replace(match.nodes[-1], match.nodes, [fused], [match.output], [out])


def _producer_or_reject(value: ir.Value | None, op_types: tuple[str, ...], what: str) -> ir.Node:
    node = _ir.producer(value)
    if not _ir.is_op(node, *op_types):
        raise Reject(f"{what} are not produced by {'/'.join(op_types)}")
    assert node is not None
    return node


# ------------------------------------------------------------------------------- channel shuffle


class ChannelShuffleRule(Rule):
    """Reshape -> Transpose(0, 2, 1, 3, 4) -> Reshape back, anchored at the last Reshape ->
    one hetrix ChannelShuffle.  Decided on the inferred shapes of the three values, so that the
    reshape targets' spellings (-1, 0, shapes computed by Shape/Concat) do not matter.  Where
    shape inference left one dim of a reshaped value unknown (a ``-1`` next to a symbolic batch),
    the element count, which a reshape keeps, gives it."""

    name = "ChannelShuffle"
    op_types = ("Reshape",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[list[ir.Node], ir.Value, int]:
        transpose = _producer_of(node.inputs[0], "Transpose")
        if list(_ir.attribute(transpose, "perm", None) or []) != [0, 2, 1, 3, 4]:
            raise Reject("the Transpose does not swap axes 1 and 2 of a 5-D value")
        _single_use(transpose.outputs[0], "the transposed value")
        split = _producer_of(transpose.inputs[0], "Reshape")
        _single_use(split.outputs[0], "the grouped value")
        x = split.inputs[0]
        shape = _dims(x)
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise Reject("the input is not known as [N, C, H, W] with C, H, W fixed")
        grouped = _reshaped_dims(split.outputs[0], shape)
        out = _reshaped_dims(node.outputs[0], shape)
        if grouped is None or out is None or (len(grouped), len(out)) != (5, 4):
            raise Reject("the reshaped shapes are not known as [N, g, C/g, H, W], [N, C, H, W]")
        n, channels, h, w = shape
        groups, per_group = grouped[1:3]
        if not (isinstance(groups, int) and isinstance(per_group, int)
                and groups * per_group == channels and grouped[0] == n
                and grouped[3:] == [h, w] and out == shape):
            raise Reject("the reshapes do not split and restore the channel axis alone")
        assert x is not None
        return [split, transpose, node], x, groups

    def apply(self, match: tuple[list[ir.Node], ir.Value, int], ctx: RewriteContext) -> None:
        nodes, x, groups = match
        ctx.import_hetrix()
        out = ir.Value(name=_ir.fresh_name(nodes[-1].outputs[0].name or "shuffled"))
        shuffle = ir.node("ChannelShuffle", [x], {"groups": groups}, domain=_ir.HETRIX_DOMAIN,
                          name=nodes[-1].name, outputs=[out])
        _ir.replace(nodes[-1], nodes, [shuffle], [nodes[-1].outputs[0]], [out])


Dims = list[int | str | None]
"""A shape as ints, names of symbolic dims, and None where a dim is unknown."""


def _dims(value: ir.Value | None) -> Dims | None:
    """A value's dims, or None without a known rank."""
    if value is None or value.shape is None:
        return None
    return [dim if isinstance(dim, int) else getattr(dim, "value", None) for dim in value.shape]


def _reshaped_dims(value: ir.Value, source: Dims) -> Dims | None:
    """The dims of ``value``, a reshape of a value shaped ``source``, with at most one unknown
    dim solved from the element count (symbolic dims both shapes share cancel out); None when
    that leaves it undetermined."""
    dims = _dims(value)
    if dims is None:
        return None
    shared = [d for d in source if isinstance(d, str)]
    unknown = []
    known = 1
    for index, dim in enumerate(dims):
        if isinstance(dim, int):
            known *= dim
        elif isinstance(dim, str) and dim in shared:
            shared.remove(dim)
        else:
            unknown.append(index)
    if not unknown:
        return dims
    if len(unknown) > 1 or shared or any(d is None for d in source) or known == 0:
        return None
    total = math.prod(d for d in source if isinstance(d, int))
    if total % known:
        return None
    return [total // known if i == unknown[0] else d for i, d in enumerate(dims)]


class PatternRecognitionPass(RewritePass):
    """LayerNorm, GELU and channel-shuffle formulas -> LayerNormalization / Gelu /
    ChannelShuffle ops."""

    rule_types = (LayerNormRule, GeluRule, ChannelShuffleRule)


class AttentionFusionPass(RewritePass):
    """Scaled dot-product attention -> hetrix Attention."""

    rule_types = (AttentionRule,)
