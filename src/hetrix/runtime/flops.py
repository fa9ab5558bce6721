"""Floating-point work of the heavy nodes, from their input shapes (for profiles).

Only the ops that dominate model time are counted: convolutions and matrix products, 2 FLOPs per
multiply-add.  Everything else reports None: its cost is memory traffic, not arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_CONV = {"Conv", "FusedConv"}
_MATMUL = {"MatMul", "FusedMatMul"}
_GEMM = {"Gemm", "FusedGemm"}


def node_flops(op_type: str, attrs: dict[str, Any], args: Sequence[Any], result: Any) -> int | None:
    """FLOPs of one call, or None for ops not counted or values without shapes."""
    try:
        if op_type in _CONV:
            out = result[0] if isinstance(result, tuple) else result
            weight = args[1]
            return 2 * math.prod(out.shape) * math.prod(weight.shape[1:])
        if op_type == "FusedConvPool":  # the convolution's work; its output is pooled after
            x, weight = args[0], args[1]
            spatial = conv_output_spatial(x.shape[2:], weight.shape[2:], attrs)
            return 2 * x.shape[0] * weight.shape[0] * math.prod(spatial) * \
                math.prod(weight.shape[1:])
        if op_type in _MATMUL:
            a = args[0]
            out = result[0] if isinstance(result, tuple) else result
            return 2 * math.prod(out.shape) * a.shape[-1]
        if op_type in _GEMM:
            a = args[0]
            k = a.shape[0] if attrs.get("transA", 0) else a.shape[-1]
            out = result[0] if isinstance(result, tuple) else result
            return 2 * math.prod(out.shape) * k
    except (AttributeError, IndexError, TypeError):
        return None
    return None


def conv_output_spatial(sizes: Sequence[int], kernel: Sequence[int],
                        attrs: dict[str, Any]) -> list[int]:
    """A convolution's output size per spatial axis, from its attributes (ONNX's formulas)."""
    n = len(sizes)
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return [-(-size // s) for size, s in zip(sizes, strides, strict=True)]
    pads = [0] * 2 * n if auto_pad == "VALID" else list(attrs.get("pads") or [0] * 2 * n)
    return [(size + pads[i] + pads[i + n] - d * (k - 1) - 1) // s + 1
            for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations,
                                                   strict=True))]
