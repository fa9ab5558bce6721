"""Removal of nodes that return their input unchanged.

Identity itself is onnx-ir's ``IdentityEliminationPass``; the rules here catch the ops that are an
identity only for the arguments they got: Dropout at inference, a Cast to the type the value
already has, a Reshape/Expand to the shape it already has, a Transpose with the identity
permutation, a one-input Concat, a zero Pad, and ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from hetrix.passes import _ir
from hetrix.passes.rewrite import Reject, RewriteContext, RewritePass, Rule


class _NoOpRule(Rule):
    """A rule whose match is the value the node's first output equals; apply bypasses the node.

    Invariant: the node's other outputs are unused, so removing it loses nothing.
    """

    def apply(self, match: tuple[ir.Node, ir.Value], ctx: RewriteContext) -> None:
        node, source = match
        _ir.bypass(node, source)

    @staticmethod
    def _only_first_output(node: ir.Node) -> None:
        for value in node.outputs[1:]:
            if value.uses() or value.is_graph_output():
                raise Reject(f"output {value.name!r} is used")


class DropoutRule(_NoOpRule):
    """Dropout in inference mode returns its input (a used mask output keeps it)."""

    name = "Dropout"
    op_types = ("Dropout",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        self._only_first_output(node)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            training = _ir.const_array(node.inputs[2])
            if training is None or bool(training.reshape(-1)[0]):
                raise Reject("training_mode is not a constant false")
        return node, _first_input(node)


class CastRule(_NoOpRule):
    """Cast (or CastLike) to the element type the input already has."""

    name = "Cast to same type"
    op_types = ("Cast", "CastLike")

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        source = _first_input(node)
        if node.op_type == "Cast":
            target = _ir.attribute(node, "to", None)
        else:
            target = node.inputs[1].dtype if node.inputs[1] is not None else None
        if source.dtype is None or target is None or ir.DataType(target) != source.dtype:
            raise Reject(f"input type {source.dtype} is not the target type {target}")
        return node, source


class ReshapeRule(_NoOpRule):
    """Reshape whose target is the input's own (static) shape."""

    name = "Reshape to same shape"
    op_types = ("Reshape",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        source = _first_input(node)
        shape = _ir.static_shape(source)
        target = _ir.const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if shape is None or target is None:
            raise Reject("input shape or target shape is not static")
        allow_zero = _ir.attribute(node, "allowzero", ctx.opset()) or 0
        dims = [int(d) for d in target.reshape(-1)]
        resolved = [
            shape[i] if d == 0 and not allow_zero and i < len(shape) else d
            for i, d in enumerate(dims)
        ]
        if -1 in resolved and len(resolved) == len(shape):
            known = [d for d in resolved if d != -1]
            if known and np.prod(known) > 0:
                resolved[resolved.index(-1)] = int(np.prod(shape)) // int(np.prod(known))
        if tuple(resolved) != shape:
            raise Reject(f"target {dims} differs from input shape {list(shape)}")
        return node, source


class TransposeRule(_NoOpRule):
    """Transpose with the identity permutation."""

    name = "Transpose identity"
    op_types = ("Transpose",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        source = _first_input(node)
        perm = _ir.attribute(node, "perm", None)
        rank = _ir.rank(source)
        if perm is None:
            if rank is None or rank > 1:
                raise Reject("no perm (reverse) on a tensor of rank > 1 or unknown rank")
        elif list(perm) != list(range(len(perm))):
            raise Reject(f"perm {list(perm)} is not the identity")
        return node, source


class ExpandRule(_NoOpRule):
    """Expand to a shape the input already has."""

    name = "Expand to same shape"
    op_types = ("Expand",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        source = _first_input(node)
        shape = _ir.static_shape(source)
        target = _ir.const_array(node.inputs[1])
        if shape is None or target is None:
            raise Reject("input shape or target shape is not static")
        try:
            result = np.broadcast_shapes(shape, tuple(int(d) for d in target.reshape(-1)))
        except ValueError as exc:
            raise Reject("shapes do not broadcast") from exc
        if result != shape:
            raise Reject(f"expands {list(shape)} to {list(result)}")
        return node, source


class ConcatRule(_NoOpRule):
    """Concat of a single input."""

    name = "Concat of one input"
    op_types = ("Concat",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        if len(node.inputs) != 1:
            raise Reject("more than one input")
        return node, _first_input(node)


class PadRule(_NoOpRule):
    """Pad whose pads are all zero."""

    name = "Pad by zero"
    op_types = ("Pad",)

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        if len(node.inputs) > 1:
            pads = _ir.const_array(node.inputs[1])
        else:
            pads = _ir.attribute(node, "pads", None)
        if pads is None or np.any(np.asarray(pads) != 0):
            raise Reject("pads are not constant zeros")
        return node, _first_input(node)


class NeutralElementRule(_NoOpRule):
    """``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1`` with no broadcasting."""

    name = "Arithmetic with neutral element"
    op_types = ("Add", "Sub", "Mul", "Div")

    def match(self, node: ir.Node, ctx: RewriteContext) -> tuple[ir.Node, ir.Value]:
        neutral = 0 if node.op_type in ("Add", "Sub") else 1
        commutes = node.op_type in ("Add", "Mul")
        for index in (1, 0) if commutes else (1,):
            constant = _ir.const_array(node.inputs[index])
            source = node.inputs[1 - index]
            if source is None or constant is None or not constant.size:
                continue
            if np.all(constant == neutral):
                self._check_shape(source, constant, node)
                return node, source
        raise Reject(f"no constant operand that is all {neutral}")

    @staticmethod
    def _check_shape(source: ir.Value | None, constant: np.ndarray, node: ir.Node) -> None:
        shape = _ir.static_shape(source)
        if source is None or shape is None or source.dtype is None:
            raise Reject("operand shape or type unknown")
        if source.dtype.numpy() != constant.dtype:
            raise Reject("operand types differ")
        if np.broadcast_shapes(shape, constant.shape) != shape:
            raise Reject("the constant broadcasts the operand to a larger shape")


def _first_input(node: ir.Node) -> ir.Value:
    if not node.inputs or node.inputs[0] is None:
        raise Reject("no first input")
    return node.inputs[0]


NOOP_RULES: tuple[type[Rule], ...] = (
    DropoutRule,
    CastRule,
    ReshapeRule,
    TransposeRule,
    ExpandRule,
    ConcatRule,
    PadRule,
    NeutralElementRule,
)


class NoOpEliminationPass(RewritePass):
    """Removes the nodes :data:`NOOP_RULES` prove to be identities (see the module docstring)."""

    rule_types = tuple(NOOP_RULES)
