"""What the torch backend refuses at plan time, so the planner places the node elsewhere.

A node is refused when a declared input or output element type is one torch cannot hold or compute
with (strings, float8, 4-bit, complex, unsigned beyond uint8), when the device lacks the type
(float64 on MPS), or when an op-specific check in ``ATTR_CHECKS`` rejects its attributes.  Values
whose type the model does not declare are looked up through their producers (Cast's ``to``,
Constant's value, ...), since Hetrix does not run shape inference before planning.
"""

from __future__ import annotations

import onnx_ir as ir

from hetrix.backends.torch_backend.kernels._common import ATTR_CHECKS, ONNX_TO_TORCH, node_attr

_NO_FLOAT64 = {"mps"}
_NO_BFLOAT16 = {"mps"}
_BOOL_OUT = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
             "Not", "IsNaN", "IsInf"}
_INT64_OUT = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero"}
_SAME_AS_FIRST_INPUT_DEPTH = 8


def unsupported_reason(node: ir.Node, device_type: str) -> str:
    """Why torch on ``device_type`` cannot run ``node``; empty when it can."""
    for kind, values in (("input", node.inputs), ("output", node.outputs)):
        for index, value in enumerate(values):
            if value is None or not value.name:
                continue
            dtype = value_dtype(value)
            reason = _dtype_problem(dtype, device_type)
            if reason:
                return f"{kind} {index} '{value.name}' is {reason}"
    reason = _attribute_dtype_problem(node, device_type)
    if reason:
        return reason
    check = ATTR_CHECKS.get(node.op_type)
    return check(node, device_type) if check is not None and not node.domain else ""


def _dtype_problem(dtype: int | None, device_type: str) -> str:
    if dtype is None or dtype == 0:
        return ""  # unknown: assume a numeric tensor (the common case)
    if dtype not in ONNX_TO_TORCH:
        return f"{_name(dtype)}, which torch cannot hold here"
    if dtype == 11 and device_type in _NO_FLOAT64:
        return f"DOUBLE, which {device_type} does not support"
    if dtype == 16 and device_type in _NO_BFLOAT16:
        return f"BFLOAT16, which {device_type} does not support"
    return ""


def _attribute_dtype_problem(node: ir.Node, device_type: str) -> str:
    """Element types named by attributes (Cast's ``to``, ConstantOfShape's value...)."""
    for name in ("to", "dtype"):
        value = node_attr(node, name)
        if isinstance(value, int) and node.op_type in ("Cast", "EyeLike"):
            problem = _dtype_problem(value, device_type)
            if problem:
                return f"attribute {name} is {problem}"
    for name in ("value", "sparse_value"):
        attr = node.attributes.get(name)
        if attr is not None and attr.type in (ir.AttributeType.TENSOR,):
            problem = _dtype_problem(int(attr.value.dtype), device_type)
            if problem:
                return f"attribute {name} is {problem}"
        if attr is not None and attr.type == ir.AttributeType.SPARSE_TENSOR:
            return "a sparse constant"
    if node.op_type == "Constant" and node.attributes.get("value_string") is not None:
        return "a string constant"
    if node.op_type == "Constant" and node.attributes.get("value_strings") is not None:
        return "a string constant"
    return ""


def value_dtype(value: ir.Value, depth: int = 0) -> int | None:
    """The element type of ``value`` (an ONNX TensorProto int), inferred through producers."""
    if value.dtype is not None:
        return int(value.dtype)
    producer = value.producer()
    if producer is None or depth > _SAME_AS_FIRST_INPUT_DEPTH or producer.domain:
        return None
    op = producer.op_type
    if op in _BOOL_OUT:
        return 9
    if op in _INT64_OUT:
        return 7
    if op == "Cast":
        return node_attr(producer, "to")
    if op == "CastLike" and len(producer.inputs) > 1 and producer.inputs[1] is not None:
        return value_dtype(producer.inputs[1], depth + 1)
    if op in ("Constant", "ConstantOfShape"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return int(attr.value.dtype)
        return 8 if producer.attributes.get("value_string") is not None else None
    if op == "Where" and len(producer.inputs) > 1 and producer.inputs[1] is not None:
        return value_dtype(producer.inputs[1], depth + 1)
    first = producer.inputs[0] if producer.inputs else None
    return value_dtype(first, depth + 1) if first is not None else None


def _name(dtype: int) -> str:
    try:
        return ir.DataType(dtype).name
    except ValueError:
        return f"element type {dtype}"
