"""Fusions of a linear op with what follows it: a bias Add, then an activation.

* ``MatMul(A, W) + b`` with constant 2-D ``W`` and a constant bias along the last axis becomes
  ``Gemm(A, W, b)`` when ``A`` is known to be 2-D, else ``hetrix.FusedMatMul(A, W, b)``.
* ``Conv(X, W, B) + Z`` (Add, or a two-input Sum, where Z is not known to broadcast and the conv
  output has no other reader) becomes ``hetrix.FusedConv(X, W, B, Z)``: the residual connection of
  ResNet-style blocks, which oneDNN adds while the output is still in cache.  The activation that
  usually follows fuses next, by the rule below.
* ``Conv``/``FusedConv`` (without activation)/``Gemm``/``MatMul``/``FusedMatMul`` followed by
  Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh or Gelu (directly, or through one
  Reshape, Flatten, Squeeze or Unsqueeze that then moves after the fused node) becomes
  ``hetrix.FusedConv``/
  ``FusedGemm``/``FusedMatMul`` with the producer's attributes plus ``activation`` (the op
  name, ``"GeluTanh"`` for the tanh Gelu) and
  ``activation_params`` (LeakyRelu alpha; Clip min, max; HardSigmoid alpha, beta).  The kernels in
  ``hetrix.backends.numpy_cpu.kernels.fused`` run the original kernel, then the activation in
  place on its fresh output.
* An inference ``BatchNormalization`` (opset 9+, one output) followed by one of those activations
  becomes ``hetrix.FusedBatchNormalization``: the pre-activation BN + Relu of DenseNet-style blocks
  (BN over a concatenation, so nothing to fold it into), where the activation then runs in place
  instead of writing one more full tensor.
* A ``Concat`` followed by one of them becomes ``hetrix.FusedConcat``: ShuffleNet's downsampling
  units end in Concat then Relu, which the kernel applies while it copies the inputs.
* ``Relu(Concat(a, b, ...))`` becomes ``Concat`` of the parts, each with a Relu only where it
  may be negative, which the activation fusion then folds into its producer (ShuffleNet's
  downsampling units: the Concat of a Conv and a pooling of Relu'd values, then Relu).
* ``MaxPool(Concat(a, b, ...))`` or ``AveragePool`` (channels, the Concat read by the pooling
  alone, a stride above 1) becomes ``Concat(MaxPool(a), MaxPool(b), ...)``: pooling never
  mixes channels, so the parts are pooled where they are and only the smaller pooled parts
  are copied (or, before a convolution, not at all: the rule below).
* ``Conv(Concat(a, b, ...), W, B)`` (channels, the Concat read by the Conv alone, a constant
  ungrouped weight) becomes ``Conv(a, W_a)`` then ``hetrix.FusedConv(b, W_b, B, Z)`` adding into
  the sum so far: a convolution is linear in its input channels, so the parts are read where
  they are and the concatenation, a copy of all of them, is never written (SqueezeNet's fire
  modules, a U-Net decoder's skip connection).  Not where the partial sums (one output per part
  after the first) would be larger than the concatenation.
* A ``Conv``/``FusedConv`` of an image input (a graph input of up to four channels) read only by
  a 2-D ``MaxPool`` or ``AveragePool`` becomes ``hetrix.FusedConvPool``, with the pooling's
  attributes (schema defaults filled) prefixed ``pool_`` and its op type as ``pool_op_type``:
  the first layer of ResNet, SqueezeNet, DenseNet, Inception and ShuffleNet, whose output the CPU
  kernel passes to the pooling in oneDNN's blocked layout.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from hetrix.passes import _ir
from hetrix.passes.rewrite import Reject, RewriteContext, RewritePass, Rule

FUSED_OP = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul",
            "BatchNormalization": "FusedBatchNormalization", "Concat": "FusedConcat"}
"""The hetrix op a producer becomes when an activation is fused into it."""

_FLOAT_MAX = float(np.finfo(np.float32).max)


class MatMulAddRule(Rule):
    """``MatMul(A, W) + b`` (``W`` a constant matrix, ``b`` a constant row) -> Gemm/FusedMatMul."""

    name = "MatMul+Add"
    op_types = ("Add",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Node, np.ndarray]:
        for index in (0, 1):
            matmul = _ir.producer(node.inputs[index])
            if _ir.is_op(matmul, "MatMul"):
                return matmul, node, self._bias(matmul, node.inputs[1 - index])
        raise Reject("no operand is produced by a MatMul")

    @staticmethod
    def _bias(matmul: ir.Node, value: ir.Value | None) -> np.ndarray:
        if _ir.sole_consumer(matmul.outputs[0]) is None:
            raise Reject("the MatMul output has other readers")
        weight = _ir.const_array(matmul.inputs[1])
        bias = _ir.const_array(value)
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
            raise Reject("the MatMul weight is not a constant float matrix")
        if bias is None or bias.dtype != weight.dtype:
            raise Reject("the addend is not a constant of the weight's type")
        rank = _ir.rank(matmul.inputs[0])
        if bias.ndim > (rank if rank is not None else 1):
            raise Reject("the bias would broadcast the product to a higher rank")
        if any(d != 1 for d in bias.shape[:-1]) or bias.size not in (1, weight.shape[1]):
            raise Reject(f"bias of shape {list(bias.shape)} is not one value per column")
        return bias.reshape(-1)

    def apply(self, match: tuple[ir.Node, ir.Node, np.ndarray], ctx: RewriteContext) -> None:
        matmul, add, bias = match
        assert matmul.graph is not None
        bias_value = _ir.add_initializer(matmul.graph, (matmul.name or "matmul") + "_bias", bias)
        inputs = [matmul.inputs[0], matmul.inputs[1], bias_value]
        out = ir.Value(name=_ir.fresh_name(add.outputs[0].name or "matmul_add"))
        if _ir.rank(matmul.inputs[0]) == 2:
            attributes = {"broadcast": 1} if (ctx.opset() or 13) < 7 else {}
            fused = ir.node("Gemm", inputs, attributes, name=matmul.name, outputs=[out])
        else:
            ctx.import_hetrix()
            fused = ir.node(
                "FusedMatMul",
                inputs,
                {"activation": ""},
                domain=_ir.HETRIX_DOMAIN,
                name=matmul.name,
                outputs=[out],
            )
        _ir.replace(add, [matmul, add], [fused], [add.outputs[0]], [out])


class ResidualAddRule(Rule):
    """``Conv(X, W, B) + Z`` -> ``hetrix.FusedConv(X, W, B, Z)`` unless Z provably broadcasts."""

    name = "Conv+Add"
    op_types = ("Add", "Sum")

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Node, ir.Value]:
        if len(node.inputs) != 2 or any(v is None for v in node.inputs):
            raise Reject("not a sum of two values")
        reasons = []
        for index in (0, 1):
            conv = _ir.producer(node.inputs[index])
            residual = node.inputs[1 - index]
            assert residual is not None
            reason = self._why_not(conv, node.inputs[index], residual)
            if reason is None:
                assert conv is not None
                return conv, node, residual
            reasons.append(reason)
        raise Reject("; ".join(reasons))

    @staticmethod
    def _why_not(conv: ir.Node | None, out: ir.Value | None, residual: ir.Value) -> str | None:
        plain_fused_conv = _ir.is_op(conv, "FusedConv", domain=_ir.HETRIX_DOMAIN) and (
            _is_plain_fused(conv)
        )
        if not (_ir.is_op(conv, "Conv") or plain_fused_conv):
            return "operand is not produced by a Conv"
        assert conv is not None and out is not None
        if len(conv.inputs) > 3:
            return "the Conv already adds a residual"
        if _ir.sole_consumer(out) is None:
            return "the Conv output has other readers"
        if out.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
            return "not a floating-point output"
        if residual.dtype != out.dtype:
            return "the other operand does not have the Conv output's type"
        if _known_different_shapes(out.shape, residual.shape):
            return "the other operand broadcasts to the Conv output"
        return None

    def apply(self, match: tuple[ir.Node, ir.Node, ir.Value], ctx: RewriteContext) -> None:
        conv, add, residual = match
        ctx.import_hetrix()
        inputs = list(conv.inputs) + [None] * (3 - len(conv.inputs)) + [residual]
        attributes = {k: v for k, v in conv.attributes.items() if k != "activation_params"}
        attributes["activation"] = ir.Attr("activation", ir.AttributeType.STRING, "")
        fused = ir.Node(
            _ir.HETRIX_DOMAIN,
            "FusedConv",
            inputs,
            attributes.values(),
            name=conv.name,
            outputs=[ir.Value(name=_ir.fresh_name(add.outputs[0].name or "conv_add"))],
        )
        _ir.replace(add, [conv, add], [fused], [add.outputs[0]], fused.outputs)


def _concat_read_only_by(node: ir.Node) -> ir.Node:
    """The Concat that produces ``node``'s first input and that nothing else reads, or Reject:
    the premise of the rules that move an op onto a concatenation's parts."""
    concat = _ir.producer(node.inputs[0])
    if not _ir.is_op(concat, "Concat"):
        raise Reject("input is not produced by a Concat")
    if _ir.sole_consumer(concat.outputs[0]) is not node:
        raise Reject("the Concat output has other readers")
    return concat


class ConcatConvSplitRule(Rule):
    """``Conv(Concat(a, b, ...), W, B)`` -> ``Conv(a, W_a)``, then ``FusedConv(b, W_b, B, Z)``
    adding each part's convolution into the sum of those before: a convolution is linear in
    its input channels, so the concatenation (a full copy of every part) is never made."""

    name = "Conv of Concat"
    op_types = ("Conv",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, list[int], np.ndarray]:
        concat = _concat_read_only_by(node)
        if len(concat.inputs) < 2 or any(v is None for v in concat.inputs):
            raise Reject("fewer than two parts")
        version = ctx.opset(node.domain)
        if (_ir.attribute(node, "group", version) or 1) != 1:
            raise Reject("a grouped convolution")
        weight = _ir.const_array(node.inputs[1])
        if weight is None or weight.ndim < 3:
            raise Reject("the weight is not a constant")
        rank = weight.ndim
        axis = _ir.attribute(concat, "axis", ctx.opset(concat.domain))
        if axis is None or axis % rank != 1:
            raise Reject("not a concatenation of channels")
        channels = []
        for part in concat.inputs:
            shape = part.shape if part is not None else None
            dim = shape[1] if shape is not None and len(shape) == rank else None
            size = dim if isinstance(dim, int) else getattr(dim, "value", None)
            if not isinstance(size, int):
                raise Reject("a part's channel count is unknown")
            channels.append(size)
        if sum(channels) != weight.shape[1]:
            raise Reject("the parts' channels do not add up to the weight's")
        # each part after the first writes and reads back a partial sum of the output's size:
        # worth it while that is less than the concatenation it replaces (written and read)
        if weight.shape[0] * (len(channels) - 1) > sum(channels):
            raise Reject("the partial sums would outweigh the concatenation")
        if node.outputs[0].dtype not in (None, ir.DataType.FLOAT):
            raise Reject("not a float32 output")
        return concat, channels, weight

    def apply(self, match: tuple[ir.Node, list[int], np.ndarray], ctx: RewriteContext) -> None:
        concat, channels, weight = match
        conv = _ir.sole_consumer(concat.outputs[0])
        assert conv is not None and conv.graph is not None
        ctx.import_hetrix()
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        attributes = list(conv.attributes.values())

        def copied(extra: list[ir.Attr]) -> list[ir.Attr]:  # each node gets its own
            return [ir.Attr(a.name, a.type, a.value) for a in [*attributes, *extra]]

        nodes: list[ir.Node] = []
        start = 0
        total: ir.Value | None = None
        for index, (part, count) in enumerate(zip(concat.inputs, channels, strict=True)):
            piece = _ir.add_initializer(conv.graph, _ir.name_of(conv.inputs[1], "w") + "_part",
                                        np.ascontiguousarray(weight[:, start:start + count]))
            start += count
            last = index == len(channels) - 1
            out = ir.Value(name=_ir.fresh_name((conv.outputs[0].name or "conv") + "_part"))
            if total is None:
                nodes.append(ir.Node("", "Conv", [part, piece], copied([]), name=conv.name,
                                     outputs=[out]))
            else:
                activation = ir.Attr("activation", ir.AttributeType.STRING, "")
                nodes.append(ir.Node(_ir.HETRIX_DOMAIN, "FusedConv",
                                     [part, piece, bias if last else None, total],
                                     copied([activation]), name=f"{conv.name}_part{index}",
                                     outputs=[out]))
            out.type = conv.outputs[0].type
            out.shape = conv.outputs[0].shape
            total = out
        assert total is not None
        _ir.replace(conv, [concat, conv], nodes, [conv.outputs[0]], [total])


class PoolOfConcatRule(Rule):
    """``MaxPool(Concat(a, b, ...))`` (or AveragePool) -> ``Concat(MaxPool(a), MaxPool(b),
    ...)``: pooling never mixes channels, so each part is pooled where it is and only the
    pooled parts, a fraction of the size, are concatenated (then, before a convolution, the
    Conv of Concat rule removes that concatenation too)."""

    name = "Pool of Concat"
    op_types = ("MaxPool", "AveragePool")

    def match(self, node: ir.Node, ctx: RewriteContext) -> ir.Node:
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            raise Reject("the MaxPool's Indices output is read")
        concat = _concat_read_only_by(node)
        rank = _ir.rank(concat.outputs[0])
        axis = _ir.attribute(concat, "axis", ctx.opset(concat.domain))
        if rank is None or axis is None or axis % rank != 1:
            raise Reject("not a concatenation of channels")
        version = ctx.opset(node.domain)
        strides = _ir.attribute(node, "strides", version) or []
        if not any(s > 1 for s in strides):
            raise Reject("the pooling does not shrink its input")
        return concat

    def apply(self, concat: ir.Node, ctx: RewriteContext) -> None:
        pool = _ir.sole_consumer(concat.outputs[0])
        assert pool is not None
        pooled = []
        result = pool.outputs[0]
        for index, part in enumerate(concat.inputs):
            out = ir.Value(name=_ir.fresh_name((result.name or "pool") + "_part"))
            # the pooled part's shape: the result's, with the part's channels
            if part is not None and result.shape is not None and part.shape is not None:
                out.shape = ir.Shape([result.shape[0], part.shape[1], *result.shape[2:]])
                out.type = part.type
            pooled.append(ir.Node(pool.domain, pool.op_type, [part],
                                  [ir.Attr(a.name, a.type, a.value)
                                   for a in pool.attributes.values()],
                                  name=f"{pool.name}_part{index}", outputs=[out]))
        joined = ir.Node(concat.domain, concat.op_type, [p.outputs[0] for p in pooled],
                         [ir.Attr(a.name, a.type, a.value) for a in concat.attributes.values()],
                         name=concat.name,
                         outputs=[ir.Value(name=_ir.fresh_name(pool.outputs[0].name or "cat"))])
        _ir.replace(pool, [concat, pool], [*pooled, joined], [pool.outputs[0]], joined.outputs)


class ReluOfConcatRule(Rule):
    """``Relu(Concat(a, b, ...))`` -> ``Concat(Relu(a), b, ...)``: Relu is elementwise, so it
    moves onto the parts, where it costs nothing.  A part that cannot be negative (a Relu's
    output, or a pooling or reshape of one) needs none; any other part gets a Relu that the
    activation fusion after this rule folds into its producer (a Conv, Gemm, MatMul or
    BatchNormalization read by the Concat alone).  The Concat is then a plain copy (a library
    primitive) instead of a copy that computes a maximum.  ShuffleNet's downsampling units:
    Concat(Conv, AveragePool of the block's Relu'd input), then Relu."""

    name = "Relu of Concat"
    op_types = ("Relu",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, list[bool]]:
        concat = _concat_read_only_by(node)
        parts = list(concat.inputs)
        if any(part is None for part in parts) or len({id(p) for p in parts}) != len(parts):
            raise Reject("a part is missing or repeated")
        needs_relu = []
        for part in parts:
            assert part is not None
            if non_negative(part):
                needs_relu.append(False)
                continue
            source = _ir.producer(part)
            if not (_ir.is_op(source, "Conv", "Gemm", "MatMul") or _is_plain_fused(source)
                    or _is_inference_batch_norm(source, ctx)):
                raise Reject("a part may be negative and its producer takes no activation")
            if _ir.sole_consumer(part) is not concat:
                raise Reject("a part that needs the Relu has other readers")
            needs_relu.append(True)
        return concat, needs_relu

    def apply(self, match: tuple[ir.Node, list[bool]], ctx: RewriteContext) -> None:
        concat, needs_relu = match
        relu = _ir.sole_consumer(concat.outputs[0])
        assert relu is not None
        added, parts = [], []
        for index, (part, needs) in enumerate(zip(concat.inputs, needs_relu, strict=True)):
            assert part is not None
            if not needs:
                parts.append(part)
                continue
            out = ir.Value(name=_ir.fresh_name((part.name or "part") + "_relu"),
                           type=part.type, shape=part.shape)
            added.append(ir.Node(relu.domain, relu.op_type, [part], name=f"{relu.name}_part{index}",
                                 outputs=[out]))
            parts.append(out)
        joined = ir.Node(concat.domain, concat.op_type, parts,
                         [ir.Attr(a.name, a.type, a.value) for a in concat.attributes.values()],
                         name=concat.name,
                         outputs=[ir.Value(name=_ir.fresh_name(relu.outputs[0].name or "cat"))])
        _ir.replace(relu, [concat, relu], [*added, joined], [relu.outputs[0]], joined.outputs)


_NON_NEGATIVE_DEPTH = 8
"""How many pooling/reshape/concat steps :func:`non_negative` looks back through."""


def non_negative(value: ir.Value, depth: int = _NON_NEGATIVE_DEPTH) -> bool:
    """Whether ``value`` provably holds no negative number: the output of a Relu (or of a fused
    node whose activation is Relu), or a pooling, reshape or concatenation of such values (NaN
    may pass, as it passes a Relu)."""
    node = _ir.producer(value)
    if node is None or depth == 0:
        return False
    if _ir.is_op(node, "Relu"):
        return True
    if _ir.normal_domain(node.domain) == _ir.HETRIX_DOMAIN:
        return bool(node.op_type.startswith("Fused")
                    and _ir.attribute(node, "activation", None) == "Relu")
    if _ir.is_op(node, "MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool",
                 *_RESHAPES, "Transpose", "Identity"):
        source = node.inputs[0]
        return value is node.outputs[0] and source is not None and non_negative(source,
                                                                                depth - 1)
    if _ir.is_op(node, "Concat"):
        return all(part is not None and non_negative(part, depth - 1) for part in node.inputs)
    return False


def _known_different_shapes(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    """Whether the shapes are provably different.  Unknown dims (dynamic image sizes) do not
    stop the fusion: the kernel adds a residual that turns out to broadcast separately."""
    if a is None or b is None:
        return False
    if len(a) != len(b):
        return True
    for x, y in zip(a, b, strict=True):
        x_value = x if isinstance(x, int) else x.value
        y_value = y if isinstance(y, int) else y.value
        if x_value is not None and y_value is not None and x_value != y_value:
            return True
    return False


Match = tuple[ir.Node, ir.Node | None, ir.Node, str, list]
"""(producer, the reshape between it and the activation or None, activation node, activation
name, activation_params)."""

_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
"""Ops that only change the shape, which an elementwise activation may cross."""


class ActivationFusionRule(Rule):
    """Conv/Gemm/MatMul (or an activation-free FusedMatMul) -> activation: one fused node."""

    name = "activation fusion"
    op_types: ClassVar[tuple[str, ...]] = (
        "Relu",
        "LeakyRelu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Gelu",
    )

    def match(self, node: ir.Node, ctx: RewriteContext) -> Match:
        producer, reshape = _ir.producer(node.inputs[0]), None
        if _ir.is_op(producer, *_RESHAPES) and _ir.sole_consumer(node.inputs[0]) is node:
            # an elementwise activation commutes with a reshape: Gemm -> Reshape -> Gelu (GPT-2's
            # MLP, which takes its 3-D input through 2-D Gemms) becomes FusedGemm -> Reshape
            assert producer is not None
            reshape, producer = producer, _ir.producer(producer.inputs[0])
        if not (_ir.is_op(producer, "Conv", "Gemm", "MatMul", "Concat")
                or _is_plain_fused(producer) or _is_inference_batch_norm(producer, ctx)):
            raise Reject("input is not produced by Conv, Gemm, MatMul, Concat or "
                         "BatchNormalization")
        assert producer is not None
        reader = node if reshape is None else reshape
        if _ir.sole_consumer(producer.outputs[0]) is not reader:
            raise Reject(f"the {producer.op_type} output has other readers")
        if producer.outputs[0].dtype not in (
            None,
            ir.DataType.FLOAT,
            ir.DataType.DOUBLE,
            ir.DataType.FLOAT16,
        ):
            raise Reject("not a floating-point output")
        activation, params = activation_spec(node, ctx)
        return producer, reshape, node, activation, params

    def apply(self, match: Match, ctx: RewriteContext) -> None:
        producer, reshape, node, activation, params = match
        ctx.import_hetrix()
        attributes = {
            k: v
            for k, v in producer.attributes.items()
            if k not in ("activation", "activation_params")
        }
        op_type = FUSED_OP.get(producer.op_type, producer.op_type)
        fused = ir.Node(
            _ir.HETRIX_DOMAIN,
            op_type,
            list(producer.inputs),
            attributes.values(),
            name=producer.name,
            outputs=[ir.Value(name=_ir.fresh_name(node.outputs[0].name or "fused"))],
        )
        fused.attributes["activation"] = ir.Attr("activation", ir.AttributeType.STRING, activation)
        fused.attributes["activation_params"] = ir.Attr(
            "activation_params", ir.AttributeType.FLOATS, [float(p) for p in params]
        )
        if reshape is None:
            _ir.replace(node, [producer, node], [fused], [node.outputs[0]], fused.outputs)
            return
        fused.outputs[0].type = producer.outputs[0].type
        fused.outputs[0].shape = producer.outputs[0].shape
        moved = ir.Node(reshape.domain, reshape.op_type, [fused.outputs[0], *reshape.inputs[1:]],
                        reshape.attributes.values(), name=reshape.name,
                        outputs=[ir.Value(name=_ir.fresh_name(node.outputs[0].name or "fused"))])
        _ir.replace(node, [producer, reshape, node], [fused, moved], [node.outputs[0]],
                    moved.outputs)


def activation_spec(node: ir.Node, ctx: RewriteContext) -> tuple[str, list[float]]:
    """``(activation, activation_params)`` of an activation node, or Reject."""
    version = ctx.opset(node.domain)
    op = node.op_type
    if op == "Gelu":
        approximate = _ir.attribute(node, "approximate", version) or "none"
        return ("GeluTanh" if approximate == "tanh" else "Gelu"), []
    if op == "LeakyRelu":
        alpha = _ir.attribute(node, "alpha", version)
        return op, [0.01 if alpha is None else alpha]
    if op == "HardSigmoid":
        alpha = _ir.attribute(node, "alpha", version)
        beta = _ir.attribute(node, "beta", version)
        return op, [0.2 if alpha is None else alpha, 0.5 if beta is None else beta]
    if op == "Clip":
        low, high = _clip_bounds(node, version)
        if low > high:
            # ONNX gives `high` everywhere; oneDNN refuses such a clip as a post-op
            raise Reject("Clip's min is above its max")
        return op, [low, high]
    return op, []


def _clip_bounds(node: ir.Node, version: int | None) -> list[float]:
    if version is not None and version < 11:
        low = _ir.attribute(node, "min", version)
        high = _ir.attribute(node, "max", version)
        return [-_FLOAT_MAX if low is None else low, _FLOAT_MAX if high is None else high]
    bounds = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is None:
            bounds.append(default)
            continue
        bound = _ir.scalar(value)
        if bound is None:
            raise Reject("Clip bounds are not constants")
        bounds.append(bound)
    return bounds


def _is_inference_batch_norm(node: ir.Node | None, ctx: RewriteContext) -> bool:
    """A BatchNormalization of opset 9+ that normalizes with its given statistics (one output,
    no training mode): per channel ``x * a + b``, which the activation can follow in place."""
    if not _ir.is_op(node, "BatchNormalization") or (ctx.opset("") or 0) < 9:
        return False
    assert node is not None
    return len(node.outputs) == 1 and not _ir.attribute(node, "training_mode", 0)


def _is_plain_fused(node: ir.Node | None) -> bool:
    """A FusedMatMul (bias only) or FusedConv (residual only) that has no activation yet."""
    if not _ir.is_op(node, "FusedMatMul", "FusedConv", domain=_ir.HETRIX_DOMAIN):
        return False
    assert node is not None
    return not _ir.attribute(node, "activation", None)


class HetrixGeluFusionRule(ActivationFusionRule):
    """The activation fusion for the ``hetrix.Gelu`` the GELU recognition emits below opset 20."""

    op_types = ("Gelu",)
    domain = _ir.HETRIX_DOMAIN


FIRST_LAYER_MAX_CHANNELS = 4
"""A convolution of a graph input with at most this many channels (an image, fed NCHW) fuses
with the pooling after it: the CPU kernel then keeps the convolution's blocked output for the
pooling (``_onednn.conv_pool``, which takes the same bound for its NCHW path)."""


class ConvPoolRule(Rule):
    """A model's first convolution (of an image input) -> the MaxPool or AveragePool reading
    it: one ``hetrix.FusedConvPool``."""

    name = "conv+pool fusion"
    op_types = ("MaxPool", "AveragePool")

    def match(self, node: ir.Node, ctx: RewriteContext) -> ir.Node:
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            raise Reject("the MaxPool's Indices output is read")
        conv = _ir.producer(node.inputs[0])
        if not (_ir.is_op(conv, "Conv") or _ir.is_op(conv, "FusedConv",
                                                     domain=_ir.HETRIX_DOMAIN)):
            raise Reject("input is not produced by a Conv")
        assert conv is not None
        if len(conv.inputs) > 3 and conv.inputs[3] is not None:
            raise Reject("the Conv adds a residual")
        if _ir.sole_consumer(conv.outputs[0]) is not node:
            raise Reject("the Conv output has other readers")
        image = conv.inputs[0]
        shape = image.shape if image is not None else None
        if image is None or not image.is_graph_input() or shape is None or len(shape) != 4:
            raise Reject("the Conv does not read a 4-D graph input")
        channels = shape[1] if isinstance(shape[1], int) else shape[1].value
        if not isinstance(channels, int) or channels > FIRST_LAYER_MAX_CHANNELS:
            raise Reject(f"the Conv's input has more than {FIRST_LAYER_MAX_CHANNELS} channels "
                         "(or an unknown number)")
        if image.dtype not in (None, ir.DataType.FLOAT):
            raise Reject("not a float32 input")
        pool_kernel = _ir.attribute(node, "kernel_shape", ctx.opset(node.domain))
        if pool_kernel is None or len(pool_kernel) != 2:
            raise Reject("not a 2-D pooling")
        return conv

    def apply(self, conv: ir.Node, ctx: RewriteContext) -> None:
        pool = _ir.sole_consumer(conv.outputs[0])
        assert pool is not None
        ctx.import_hetrix()
        attributes = [attr for attr in conv.attributes.values()]
        if conv.op_type == "Conv":
            attributes += [ir.Attr("activation", ir.AttributeType.STRING, ""),
                           ir.Attr("activation_params", ir.AttributeType.FLOATS, [])]
        attributes.append(ir.Attr("pool_op_type", ir.AttributeType.STRING, pool.op_type))
        for name, attr in _ir.attributes_with_defaults(pool, ctx.opset(pool.domain)).items():
            attributes.append(ir.Attr(f"pool_{name}", attr.type, attr.value))
        fused = ir.Node(
            _ir.HETRIX_DOMAIN,
            "FusedConvPool",
            [v for v in conv.inputs[:3]],
            attributes,
            name=conv.name,
            outputs=[ir.Value(name=_ir.fresh_name(pool.outputs[0].name or "conv_pool"))],
        )
        _ir.replace(pool, [conv, pool], [fused], [pool.outputs[0]], fused.outputs)


class MatMulAddFusionPass(RewritePass):
    """MatMul + bias Add -> Gemm (2-D) or hetrix FusedMatMul."""

    rule_types = (MatMulAddRule,)


class ResidualAddFusionPass(RewritePass):
    """Conv + same-shaped Add -> hetrix FusedConv with the residual input Z."""

    rule_types = (ResidualAddRule,)


class ActivationFusionPass(RewritePass):
    """Folds an activation into the Conv/Gemm/MatMul that feeds it (hetrix Fused* ops)."""

    rule_types = (ActivationFusionRule, HetrixGeluFusionRule)


class ConvPoolFusionPass(RewritePass):
    """A first-layer Conv (or FusedConv) + MaxPool/AveragePool -> hetrix FusedConvPool."""

    rule_types = (ConvPoolRule,)


class ConcatConvSplitPass(RewritePass):
    """Conv of a channel Concat read by it alone -> one convolution per part, summed."""

    rule_types = (ConcatConvSplitRule,)


class ReluOfConcatPass(RewritePass):
    """The Relu of a Concat moved onto its parts (:class:`ReluOfConcatRule`)."""

    rule_types = (ReluOfConcatRule,)


class PoolOfConcatPass(RewritePass):
    """MaxPool/AveragePool of a channel Concat read by it alone -> the Concat of pooled parts."""

    rule_types = (PoolOfConcatRule,)
