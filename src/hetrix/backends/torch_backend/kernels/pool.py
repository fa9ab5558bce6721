"""MaxPool, AveragePool and the global pools on the torch backend.

The input is padded explicitly to exactly the extent ONNX's windows cover (explicit pads plus the
ceil_mode extension), and torch pools it with no padding and ``ceil_mode=False``, so the output
size and the padding values follow ONNX rather than torch's own conventions.  Averages divide a
window sum by a window count, both pooled the same way, so ``count_include_pad`` is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    attr_check,
    compute_dtype,
    kernel,
)
from hetrix.backends.torch_backend.kernels.conv import (
    conv_pads,
    spatial_float_input_problem,
    torch_pad_arg,
)

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@attr_check("MaxPool", "AveragePool")
def _pool_supported(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """torch pools 1-3 spatial dims of float tensors; its average pool has no dilation."""
    problem = spatial_float_input_problem(node)
    if problem:
        return problem
    dilations = node.attributes.get("dilations")
    if node.op_type == "AveragePool" and dilations is not None and any(
        d != 1 for d in dilations.value
    ):
        return "dilated AveragePool"
    return ""


def _geometry(ctx: NodeContext, x: torch.Tensor) -> tuple[list[int], ...]:
    """kernel, strides, dilations, ONNX pads and the ceil-mode extension at each axis end."""
    sizes = list(x.shape[2:])
    n = len(sizes)
    kernel_shape = list(ctx.attrs["kernel_shape"])
    strides = list(ctx.attrs.get("strides") or [1] * n)
    dilations = list(ctx.attrs.get("dilations") or [1] * n)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    pads = conv_pads(auto_pad, sizes, kernel_shape, strides, dilations, ctx.attrs.get("pads"))
    ceil = bool(ctx.attrs.get("ceil_mode", 0)) and auto_pad in ("NOTSET", "", None)
    extra = []
    for axis, (size, k, s, d) in enumerate(zip(sizes, kernel_shape, strides, dilations)):
        span = (k - 1) * d + 1
        padded = size + pads[axis] + pads[axis + n]
        out = (padded - span) / s + 1
        out = math.ceil(out) if ceil else math.floor(out)
        if ceil and (out - 1) * s >= size + pads[axis]:
            out -= 1  # the last window must start inside the input or its left padding
        extra.append(max(0, (out - 1) * s + span - padded))
    return kernel_shape, strides, dilations, pads, extra


def _full_pads(pads: list[int], extra: list[int]) -> list[int]:
    n = len(extra)
    return pads[:n] + [pads[n + i] + extra[i] for i in range(n)]


@kernel("MaxPool", since=1)
def max_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """MaxPool: padding never wins a max; the optional Indices output indexes the whole input."""
    kernel_shape, strides, dilations, pads, extra = _geometry(ctx, x)
    full = _full_pads(pads, extra)
    xc = x.to(compute_dtype(x))
    if any(full):
        xc = F.pad(xc, torch_pad_arg(full), value=float("-inf"))
    want_indices = ctx.num_outputs > 1 and bool(ctx.output_names[1:2] != ("",))
    pool = _MAX[x.dim() - 2]
    if not want_indices:
        return pool(xc, kernel_shape, strides, 0, dilations).to(x.dtype)
    y, flat = pool(xc, kernel_shape, strides, 0, dilations, return_indices=True)
    return y.to(x.dtype), _onnx_indices(flat, x, list(xc.shape[2:]), full,
                                        ctx.attrs.get("storage_order", 0))


def _onnx_indices(
    flat: torch.Tensor, x: torch.Tensor, padded: list[int], pads: list[int], storage_order: int
) -> torch.Tensor:
    """torch's per-plane indices into the padded input -> ONNX's indices into the whole input."""
    sizes = list(x.shape[2:])
    n = len(sizes)
    coords = []
    rest = flat
    for axis in reversed(range(n)):
        coords.append(rest % padded[axis] - pads[axis])
        rest = rest // padded[axis]
    coords.reverse()
    order = range(n) if not storage_order else reversed(range(n))
    index = torch.zeros_like(flat)
    for axis in order:
        index = index * sizes[axis] + coords[axis]
    plane = math.prod(sizes)
    batch, channels = x.shape[0], x.shape[1]
    offsets = torch.arange(batch * channels, device=x.device, dtype=torch.int64) * plane
    return index + offsets.reshape((batch, channels) + (1,) * n)


@kernel("AveragePool", since=1)
def average_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """AveragePool: window sums over window counts (pads counted iff ``count_include_pad``)."""
    kernel_shape, strides, _dilations, pads, extra = _geometry(ctx, x)
    n = x.dim() - 2
    dtype = compute_dtype(x)
    pool = _AVG[n]
    full = _full_pads(pads, extra)
    xc = F.pad(x.to(dtype), torch_pad_arg(full)) if any(full) else x.to(dtype)
    sums = pool(xc, kernel_shape, strides, 0)
    if not any(full):
        return sums.to(x.dtype)
    mask = torch.ones((1, 1, *x.shape[2:]), dtype=dtype, device=x.device)
    if ctx.attrs.get("count_include_pad", 0):
        mask = F.pad(mask, torch_pad_arg(pads), value=1.0)
        mask = F.pad(mask, torch_pad_arg([0] * n + extra))
    else:
        mask = F.pad(mask, torch_pad_arg(full))
    counts = pool(mask, kernel_shape, strides, 0)
    return (sums / counts).to(x.dtype)


@kernel("GlobalAveragePool", since=1)
def global_average_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """GlobalAveragePool: mean over every spatial axis, kept as size-1 axes."""
    dims = tuple(range(2, x.dim()))
    return x.to(compute_dtype(x)).mean(dim=dims, keepdim=True).to(x.dtype)


@kernel("GlobalMaxPool", since=1)
def global_max_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """GlobalMaxPool: max over every spatial axis, kept as size-1 axes."""
    dims = tuple(range(2, x.dim()))
    return torch.amax(x, dim=dims, keepdim=True)
