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
