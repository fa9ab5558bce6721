"""Reduced precision on the CPU: the matrix work of a float32 model in bfloat16 or float16.

Selected with ``SessionOptions(precision="bf16")`` (or ``"fp16"``).  This backend goes first in the
session and takes only the nodes where the matrix units pay off — Conv, MatMul, Gemm and their fused
forms — computing them through PyTorch's CPU kernels (oneDNN, which uses AMX on CPUs that have
it).  Inputs are rounded to the reduced type, products accumulate in float32 inside oneDNN, and
results come back as float32 numpy arrays, so every other node runs unchanged on the NumPy backend
with no copies (both live in host memory).  Constant weights are converted once per node.

Nothing is switched silently: the placement lists these nodes under ``bf16:cpu``, and
:meth:`hetrix.InferenceSession.compare_precision` measures the output difference against float32.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx_ir as ir

from hetrix.backends.base import Backend
from hetrix.backends.numpy_cpu.kernels import fused
from hetrix.backends.numpy_cpu.kernels.conv import resolve_pads, spatial_ints
from hetrix.backends.registry import Kernel, NodeContext
from hetrix.backends.torch_setup import import_torch
from hetrix.errors import InvalidArgumentError

PRECISIONS = {"bf16": "bfloat16", "fp16": "float16"}


class ReducedPrecisionBackend(Backend):
    """Conv/MatMul/Gemm (and Hetrix's fused forms) in bfloat16 or float16 through torch."""

    memory = "host"
    device = "cpu"

    def __init__(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of fp32, {', '.join(PRECISIONS)}; got {precision!r}"
            )
        try:
            torch = import_torch()
        except ImportError as exc:
            raise InvalidArgumentError(
                f"precision={precision!r} computes through PyTorch's CPU kernels: "
                "pip install 'hetrix[torch]'"
            ) from exc
        self.precision = precision
        self.name = f"{precision}:cpu"
        self._dtype = getattr(torch, PRECISIONS[precision])

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        key = (node.domain, node.op_type)
        make = _KERNELS.get(key)
        if make is None:
            return None
        if any(v is not None and v.dtype not in (None, ir.DataType.FLOAT) for v in node.inputs):
            return None  # only float32 models trade precision here
        return functools.partial(make, self._dtype)


def _torch() -> Any:
    import torch

    return torch


def _reduced(ctx: NodeContext, array: np.ndarray, dtype: Any, slot: str) -> Any:
    """``array`` as a reduced-precision tensor; weights (read-only constants) converted once."""
    torch = _torch()
    if array.flags.writeable:  # an activation: new values every run
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    cached = ctx.cache.get(slot)
    if cached is None or cached[0] is not array:
        # a writable copy for torch, which warns on read-only memory; made once per weight
        cached = (array, torch.from_numpy(np.array(array, order="C")).to(dtype))
        ctx.cache[slot] = cached
    return cached[1]


def _to_numpy(tensor: Any) -> np.ndarray:
    return tensor.float().numpy()


def _conv(dtype: Any, ctx: NodeContext, x: np.ndarray, w: np.ndarray,
          b: np.ndarray | None = None) -> np.ndarray:
    torch = _torch()
    functional = torch.nn.functional
    nsp = x.ndim - 2
    if nsp not in (1, 2, 3) or x.dtype != np.float32:
        raise ValueError(f"reduced-precision Conv needs a 1-3-d float32 input, got {x.shape}")
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    begin, end = resolve_pads(ctx, x.shape[2:], list(w.shape[2:]), strides, dilations)
    xt = _reduced(ctx, x, dtype, "x")
    padding: list[int] | int = begin
    if begin != end:  # torch pads symmetrically: pad the odd side explicitly first
        pairs = [p for axis in reversed(range(nsp)) for p in (begin[axis], end[axis])]
        xt = functional.pad(xt, pairs)
        padding = 0
    conv = (functional.conv1d, functional.conv2d, functional.conv3d)[nsp - 1]
    y = conv(xt, _reduced(ctx, w, dtype, "w"), None, strides, padding, dilations,
             int(ctx.attrs.get("group", 1)))
    out = _to_numpy(y)
    if b is not None:
        out += b.reshape((-1,) + (1,) * nsp)
    return out


def _matmul(dtype: Any, ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    torch = _torch()
    if a.ndim > 2 and b.ndim == 2:  # (..., K) @ (K, N): one 2-D product, oneDNN's fast path
        flat = _reduced(ctx, a.reshape(-1, a.shape[-1]), dtype, "a")
        y = torch.matmul(flat, _reduced(ctx, b, dtype, "b"))
        return _to_numpy(y).reshape(*a.shape[:-1], b.shape[-1])
    return _to_numpy(torch.matmul(_reduced(ctx, a, dtype, "a"), _reduced(ctx, b, dtype, "b")))


def _gemm(dtype: Any, ctx: NodeContext, a: np.ndarray, b: np.ndarray,
          c: np.ndarray | None = None) -> np.ndarray:
    torch = _torch()
    at, bt = _reduced(ctx, a, dtype, "a"), _reduced(ctx, b, dtype, "b")
    if ctx.attrs.get("transA", 0):
        at = at.T
    if ctx.attrs.get("transB", 0):
        bt = bt.T
    y = _to_numpy(torch.matmul(at, bt))
    alpha, beta = float(ctx.attrs.get("alpha", 1.0)), float(ctx.attrs.get("beta", 1.0))
    if alpha != 1.0:
        y *= np.float32(alpha)
    if c is not None and beta != 0.0:
        y += c * np.float32(beta) if beta != 1.0 else c
    return y


def _fused_conv(dtype: Any, ctx: NodeContext, x: np.ndarray, w: np.ndarray,
                b: np.ndarray | None = None, z: np.ndarray | None = None) -> np.ndarray:
    y = _conv(dtype, ctx, x, w, b)
    if z is not None:  # the residual, added in float32 before the activation
        y = np.add(y, z, out=y) if z.shape == y.shape else y + z
    return fused.activate(ctx, y)


def _fused_gemm(dtype: Any, ctx: NodeContext, a: np.ndarray, b: np.ndarray,
                c: np.ndarray | None = None) -> np.ndarray:
    return fused.activate(ctx, _gemm(dtype, ctx, a, b, c))


def _fused_matmul(dtype: Any, ctx: NodeContext, a: np.ndarray, b: np.ndarray,
                  bias: np.ndarray | None = None) -> np.ndarray:
    y = _matmul(dtype, ctx, a, b)
    if bias is not None:
        y += bias
    return fused.activate(ctx, y)


_KERNELS = {
    ("", "Conv"): _conv,
    ("", "MatMul"): _matmul,
    ("", "Gemm"): _gemm,
    ("hetrix", "FusedConv"): _fused_conv,
    ("hetrix", "FusedGemm"): _fused_gemm,
    ("hetrix", "FusedMatMul"): _fused_matmul,
}
"""The ops this backend takes: the matrix work.  Everything else stays in float32."""
