"""Conv and ConvTranspose (1-3 spatial dims) on the torch backend.

Padding is resolved to explicit begin/end amounts per axis first (``auto_pad`` needs the input
shape, so this happens per call); symmetric padding goes to torch's own ``padding`` argument,
asymmetric padding is applied with ``F.pad`` before a zero-padding convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    attr_check,
    compute_dtype,
    kernel,
)

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def spatial_float_input_problem(node) -> str:  # type: ignore[no-untyped-def]
    """Why torch's conv/pool functions cannot take the node's input: they handle 1-3 spatial
    dims of float tensors only.  Empty when they can (or when the input is not declared)."""
    x = node.inputs[0]
    rank = x.shape.rank() if x is not None and x.shape is not None else None
    if rank is not None and not 3 <= rank <= 5:
        return f"{node.op_type} on a rank-{rank} input (torch has 1-3 spatial dims)"
    if x is not None and x.dtype is not None and int(x.dtype) not in (1, 10, 11, 16):
        return f"{node.op_type} on {x.dtype.name} input"
    return ""


@attr_check("Conv", "ConvTranspose")
def _spatial_rank(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """torch has 1-, 2- and 3-D convolutions only; float only (no integer convolution)."""
    return spatial_float_input_problem(node)


def conv_pads(
    auto_pad: str,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
) -> list[int]:
    """ONNX begin/end pads (``[b1, b2.., e1, e2..]``) of a convolution or pooling window."""
    n = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * n)
    return list(pads)


def torch_pad_arg(pads: Sequence[int]) -> list[int]:
    """ONNX ``[b1.., e1..]`` pads as F.pad's list (last axis first, begin/end pairs)."""
    n = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(n)):
        out += [pads[axis], pads[axis + n]]
    return out


def _split_padding(
    x: torch.Tensor, pads: list[int], value: float = 0.0
) -> tuple[torch.Tensor, list[int]]:
    """(input, symmetric padding for torch): asymmetric pads are applied to the input here."""
    n = len(pads) // 2
    if all(pads[i] == pads[i + n] for i in range(n)):
        return x, pads[:n]
    return F.pad(x, torch_pad_arg(pads), value=value), [0] * n


def _attrs(ctx: NodeContext, x: torch.Tensor, w: torch.Tensor) -> tuple[list[int], ...]:
    n = x.dim() - 2
    kernel_shape = list(ctx.attrs.get("kernel_shape") or w.shape[2:])
    strides = list(ctx.attrs.get("strides") or [1] * n)
    dilations = list(ctx.attrs.get("dilations") or [1] * n)
    return kernel_shape, strides, dilations


@kernel("Conv", since=1)
def conv(
    ctx: NodeContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
) -> torch.Tensor:
    """Conv: grouped, dilated, strided convolution with explicit or automatic padding."""
    kernel_shape, strides, dilations = _attrs(ctx, x, w)
    pads = conv_pads(ctx.attrs.get("auto_pad", "NOTSET"), x.shape[2:], kernel_shape, strides,
                     dilations, ctx.attrs.get("pads"))
    dtype = compute_dtype(x)
    xc, padding = _split_padding(x.to(dtype), pads)
    bias = b.to(dtype) if b is not None else None
    y = _CONV[x.dim() - 2](xc, w.to(dtype), bias, strides, padding, dilations,
                           ctx.attrs.get("group", 1))
    return y.to(x.dtype)


@kernel("ConvTranspose", since=1)
def conv_transpose(
    ctx: NodeContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
) -> torch.Tensor:
    """ConvTranspose: the full transposed convolution, then cropped/extended to ONNX's window."""
    kernel_shape, strides, dilations = _attrs(ctx, x, w)
    n = x.dim() - 2
    dtype = compute_dtype(x)
    full = _CONV_T[n](x.to(dtype), w.to(dtype), None, strides, 0, 0, ctx.attrs.get("group", 1),
                      dilations)
    begins, sizes = _transpose_window(ctx, list(x.shape[2:]), kernel_shape, strides, dilations)
    y = _window(full, begins, sizes)
    if b is not None:
        y = y + b.to(dtype).reshape((-1,) + (1,) * n)
    return y.to(x.dtype)


def _transpose_window(
    ctx: NodeContext,
    in_sizes: list[int],
    kernel_shape: list[int],
    strides: list[int],
    dilations: list[int],
) -> tuple[list[int], list[int]]:
    """Where ONNX's output starts in the full transposed result, and its size, per axis."""
    n = len(in_sizes)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    output_padding = list(ctx.attrs.get("output_padding") or [0] * n)
    output_shape = list(ctx.attrs.get("output_shape") or [])[-n:] if ctx.attrs.get(
        "output_shape") else []
    full = [(i - 1) * s + (k - 1) * d + 1 for i, k, s, d in zip(in_sizes, kernel_shape, strides,
                                                                 dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not ctx.attrs.get("pads"):
        target = output_shape or [i * s for i, s in zip(in_sizes, strides)]
        totals = [f + p - t for f, p, t in zip(full, output_padding, target)]
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        return begins, target
    pads = list(ctx.attrs.get("pads") or [0] * (2 * n))
    if output_shape:
        return pads[:n], output_shape
    sizes = [f + p - pads[i] - pads[i + n] for i, (f, p) in enumerate(zip(full, output_padding))]
    return pads[:n], sizes


def _window(y: torch.Tensor, begins: list[int], sizes: list[int]) -> torch.Tensor:
    """``y[..., b:b+size]`` per spatial axis, zero-extended where the window leaves ``y``."""
    n = len(begins)
    extend: list[int] = []
    for axis in reversed(range(n)):
        have = y.shape[2 + axis]
        extend += [max(0, -begins[axis]), max(0, begins[axis] + sizes[axis] - have)]
    if any(extend):
        y = F.pad(y, extend)
    index = [slice(None), slice(None)]
    index += [slice(max(0, b), max(0, b) + s) for b, s in zip(begins, sizes)]
    return y[tuple(index)]
