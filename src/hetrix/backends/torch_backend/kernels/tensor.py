"""Shape and layout operators of the torch backend.

Shape-like inputs (Reshape's shape, Slice's starts, ...) are read on the host with ``.tolist()``;
they are tiny, and the placer keeps shape arithmetic on the CPU backend where it can.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    as_tensor,
    attr_check,
    host_ints,
    host_scalar,
    kernel,
    needs_device,
    normalize_axis,
    numpy_to_torch_dtype,
    onnx_dtype,
)


@kernel("Identity", since=1)
def identity(ctx: NodeContext, x: Any) -> Any:
    """Identity: the input itself (tensors are never written in place)."""
    return x


@kernel("Reshape", since=5)
def reshape(ctx: NodeContext, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred."""
    dims = host_ints(shape)
    if not ctx.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@kernel("Flatten", since=1)
def flatten(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Flatten: 2-D with the dims before ``axis`` in the first, the rest in the second."""
    axis = normalize_axis(ctx.attrs.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _axes_of(ctx: NodeContext, axes: torch.Tensor | None, since: int) -> list[int] | None:
    """An axes list from the attribute (before ``since``) or the input (from ``since``)."""
    if ctx.opset >= since:
        return host_ints(axes) if axes is not None else None
    value = ctx.attrs.get("axes")
    return list(value) if value is not None else None


@kernel("Squeeze", since=1)
def squeeze(ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    """Squeeze: drop the listed size-1 axes (all of them when none are listed)."""
    dims = _axes_of(ctx, axes, 13)
    if not dims:
        return x.reshape([s for s in x.shape if s != 1])
    drop = {normalize_axis(a, x.dim()) for a in dims}
    return x.reshape([s for i, s in enumerate(x.shape) if i not in drop])


@kernel("Unsqueeze", since=1)
def unsqueeze(ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    """Unsqueeze: insert size-1 axes at the listed positions of the output."""
    dims = _axes_of(ctx, axes, 13) or []
    rank = x.dim() + len(dims)
    inserted = {normalize_axis(a, rank) for a in dims}
    source = iter(x.shape)
    return x.reshape([1 if i in inserted else next(source) for i in range(rank)])


@kernel("Transpose", since=1)
def transpose(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Transpose: permute axes by ``perm`` (reversed when absent)."""
    perm = ctx.attrs.get("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@kernel("Concat", since=1)
def concat(ctx: NodeContext, *xs: torch.Tensor) -> torch.Tensor:
    """Concat along ``axis``."""
    axis = normalize_axis(ctx.attrs.get("axis", 0), xs[0].dim())
    return torch.cat(xs, dim=axis)


@kernel("Split", since=1)
def split(ctx: NodeContext, x: torch.Tensor, sizes: torch.Tensor | None = None) -> tuple:
    """Split along ``axis`` by explicit sizes, or into equal parts (the last one smaller)."""
    axis = normalize_axis(ctx.attrs.get("axis", 0), x.dim())
    parts = host_ints(sizes) if ctx.opset >= 13 and sizes is not None else ctx.attrs.get("split")
    if not parts:
        count = ctx.attrs.get("num_outputs") or ctx.num_outputs
        chunk = math.ceil(x.shape[axis] / count)
        parts = [min(chunk, max(0, x.shape[axis] - i * chunk)) for i in range(count)]
    return tuple(torch.split(x, list(parts), dim=axis))


@kernel("Slice", since=1)
def slice_(
    ctx: NodeContext,
    x: torch.Tensor,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Slice: Python slicing per axis; negative steps go through index_select."""
    if ctx.opset < 10:
        begin, end = list(ctx.attrs["starts"]), list(ctx.attrs["ends"])
        dims = list(ctx.attrs.get("axes") or range(len(begin)))
        step = [1] * len(begin)
    else:
        begin, end = host_ints(starts), host_ints(ends)
        dims = host_ints(axes) if axes is not None else list(range(len(begin)))
        step = host_ints(steps) if steps is not None else [1] * len(begin)
    y = x
    for b, e, a, s in zip(begin, end, dims, step):
        axis = normalize_axis(a, x.dim())
        start, stop, stride = slice(b, e, s).indices(x.shape[axis])
        if stride > 0:
            index = [slice(None)] * axis + [slice(start, max(start, stop), stride)]
            y = y[tuple(index)]
        else:
            picks = torch.arange(start, stop, stride, device=x.device)
            y = y.index_select(axis, picks)
    return y


@kernel("Expand", since=8)
def expand(ctx: NodeContext, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Expand: broadcast x and ``shape`` against each other (numpy rules)."""
    target = torch.broadcast_shapes(tuple(x.shape), tuple(host_ints(shape)))
    return x.expand(target).contiguous()  # no stride-0 views escape to numpy callers


@kernel("Tile", since=6)
def tile(ctx: NodeContext, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    """Tile: repeat the tensor ``repeats[i]`` times along axis i."""
    return x.repeat(*host_ints(repeats)) if x.dim() else x.clone()


@kernel("Pad", since=1)
def pad(
    ctx: NodeContext,
    x: torch.Tensor,
    pads: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pad: constant, reflect, edge or wrap; negative pads crop."""
    if ctx.opset < 11:
        amounts, fill = list(ctx.attrs.get("pads") or ctx.attrs.get("paddings")), ctx.attrs.get(
            "value", 0.0)
    else:
        amounts, fill = host_ints(pads), host_scalar(value, 0)
    rank = x.dim()
    dims = [normalize_axis(a, rank) for a in host_ints(axes)] if axes is not None else list(
        range(rank))
    n = len(dims)
    full = [0] * (2 * rank)
    for i, axis in enumerate(dims):
        full[axis], full[axis + rank] = amounts[i], amounts[i + n]
    mode = ctx.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        arg: list[int] = []
        for axis in reversed(range(rank)):
            arg += [full[axis], full[axis + rank]]
        if x.dtype == torch.bool:
            return F.pad(x.to(torch.uint8), arg, value=int(bool(fill))).to(torch.bool)
        return F.pad(x, arg, value=fill)
    return _pad_by_index(x, full, mode)


def _pad_by_index(x: torch.Tensor, full: list[int], mode: str) -> torch.Tensor:
    """reflect / edge / wrap padding as one index_select per padded axis (any rank)."""
    rank = x.dim()
    for axis in range(rank):
        begin, end = full[axis], full[axis + rank]
        if begin == 0 and end == 0:
            continue
        size = x.shape[axis]
        positions = torch.arange(-begin, size + end, device=x.device)
        if mode == "edge":
            positions = positions.clamp(0, size - 1)
        elif mode == "wrap":
            positions = positions.remainder(size)
        else:  # reflect: mirror without repeating the edge
            period = 2 * (size - 1) if size > 1 else 1
            positions = positions.remainder(period)
            positions = torch.where(positions >= size, period - positions, positions)
        x = x.index_select(axis, positions)
    return x


@kernel("Shape", since=1)
@needs_device
def shape(ctx: NodeContext, x: Any, *, device: torch.device) -> torch.Tensor:
    """Shape: int64 dims of the input (held in any memory), optionally ``[start:end]``."""
    dims = list(x.shape)
    start, end = ctx.attrs.get("start", 0), ctx.attrs.get("end")
    dims = dims[start:end] if end is not None else dims[start:]
    return torch.tensor(dims, dtype=torch.int64, device=device)


@kernel("Size", since=1)
@needs_device
def size(ctx: NodeContext, x: Any, *, device: torch.device) -> torch.Tensor:
    """Size: the element count as an int64 scalar (x may be any memory's value: only its shape
    is read, so the planner never copies it here)."""
    return torch.tensor(math.prod(x.shape), dtype=torch.int64, device=device)


@kernel("ConstantOfShape", since=9)
@needs_device
def constant_of_shape(
    ctx: NodeContext, shape: torch.Tensor | np.ndarray, *, device: torch.device
) -> torch.Tensor:
    """ConstantOfShape: a tensor of ``shape`` filled with ``value`` (float32 0 by default)."""
    value = ctx.attrs.get("value")
    array = np.asarray(value) if value is not None else np.zeros(1, np.float32)
    dtype = numpy_to_torch_dtype(array.dtype)
    return torch.full(host_ints(shape), array.reshape(-1)[0].item(), dtype=dtype,
                      device=device)


@kernel("Constant", since=1)
@needs_device
def constant(ctx: NodeContext, *, device: torch.device) -> torch.Tensor:
    """Constant: the attribute value as a tensor on the backend's device (made once)."""
    cached = ctx.cache.get("value")
    if cached is None:
        cached = ctx.cache["value"] = _constant_value(ctx, device)
    return cached


def _constant_value(ctx: NodeContext, device: torch.device) -> torch.Tensor:
    attrs = ctx.attrs
    if "value" in attrs or "sparse_value" in attrs:
        array = np.asarray(attrs.get("value", attrs.get("sparse_value")))
    elif "value_float" in attrs:
        array = np.array(attrs["value_float"], np.float32)
    elif "value_floats" in attrs:
        array = np.array(attrs["value_floats"], np.float32)
    elif "value_int" in attrs:
        array = np.array(attrs["value_int"], np.int64)
    else:
        array = np.array(attrs["value_ints"], np.int64)
    holder = torch.empty(0, device=device)
    return as_tensor(array, holder)


@kernel("Range", since=11)
@needs_device
def range_(
    ctx: NodeContext, start: Any, limit: Any, delta: Any, *, device: torch.device
) -> torch.Tensor:
    """Range: start + i * delta for i in [0, ceil((limit - start) / delta)).

    The three scalars arrive on the host (they are shape arguments); the result is made on the
    backend's device.
    """
    first, last, step = host_scalar(start), host_scalar(limit), host_scalar(delta)
    count = max(int(math.ceil((last - first) / step)), 0)
    dtype = _torch_dtype_of(start)
    steps = torch.arange(count, device=device,
                         dtype=torch.float64 if dtype.is_floating_point else torch.int64)
    return (steps * step + first).to(dtype)


def _torch_dtype_of(value: Any) -> torch.dtype:
    if isinstance(value, torch.Tensor):
        return value.dtype
    return numpy_to_torch_dtype(np.asarray(value).dtype) or torch.float32


@attr_check("Dropout")
def _inference_dropout(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """Training-mode dropout draws numpy's random stream on the host backend (reproducible)."""
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None or not training.name:
        return ""
    const = training.const_value
    if const is not None and not bool(const.numpy().reshape(-1)[0]):
        return ""
    return "Dropout with a training_mode input"


@kernel("Dropout", since=1)
def dropout(
    ctx: NodeContext,
    x: torch.Tensor,
    ratio: torch.Tensor | None = None,
    training: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dropout: identity at inference; training mode zeroes with probability ``ratio``."""
    rate = host_scalar(ratio, ctx.attrs.get("ratio", 0.5))
    if training is not None and bool(host_scalar(training)) and rate > 0:
        keep = torch.rand(x.shape, device=x.device) >= rate
        y = (x * keep / (1 - rate)).to(x.dtype)
    else:
        keep = torch.ones(x.shape, dtype=torch.bool, device=x.device)
        y = x
    return (y, keep) if ctx.num_outputs > 1 else y


@kernel("Trilu", since=14)
def trilu(ctx: NodeContext, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Trilu: the upper (triu) or lower (tril) triangle of the last two axes, offset by k."""
    offset = int(host_scalar(k, 0))
    if x.numel() == 0:
        return x.clone()
    return torch.triu(x, offset) if ctx.attrs.get("upper", 1) else torch.tril(x, offset)


@kernel("NonZero", since=9)
def non_zero(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """NonZero: int64 indices of the non-zero elements, one row per axis."""
    if x.dim() == 0:
        return torch.zeros((0, int(bool(x.item()))), dtype=torch.int64, device=x.device)
    return torch.nonzero(x).T.contiguous()


@kernel("EyeLike", since=9)
def eye_like(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """EyeLike: ones on diagonal ``k`` of a 2-D tensor shaped like x."""
    dtype = onnx_dtype(ctx.attrs["dtype"]) if ctx.attrs.get("dtype") is not None else x.dtype
    rows, cols = x.shape
    ones = torch.ones(rows, cols, dtype=dtype, device=x.device)
    return torch.triu(torch.tril(ones, ctx.attrs.get("k", 0)), ctx.attrs.get("k", 0))
