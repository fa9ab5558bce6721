"""Gather/Scatter family and OneHot on the torch backend.

Negative indices count from the end, as ONNX allows; they are normalized with ``where`` so the
kernels stay on the device.
"""

from __future__ import annotations

import math

import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    host_scalar,
    kernel,
    normalize_axis,
)

_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _positive(indices: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    indices = indices.to(torch.int64)
    return torch.where(indices < 0, indices + size, indices)


@kernel("Gather", since=1)
def gather(ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Gather: x[..., indices, ...] along ``axis``; the index shape replaces that axis."""
    axis = normalize_axis(ctx.attrs.get("axis", 0), x.dim())
    flat = _positive(indices, x.shape[axis]).reshape(-1)
    picked = x.index_select(axis, flat)
    return picked.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:]))


@kernel("GatherElements", since=11)
def gather_elements(ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """GatherElements: torch.gather along ``axis``."""
    axis = normalize_axis(ctx.attrs.get("axis", 0), x.dim())
    return torch.gather(x, axis, _positive(indices, x.shape[axis]))


def _nd_coordinates(
    x: torch.Tensor, indices: torch.Tensor, batch_dims: int
) -> tuple[torch.Tensor, ...]:
    """Advanced-indexing coordinates into ``x`` reshaped to (batch, *rest) for the ND ops."""
    depth = indices.shape[-1]
    batch = math.prod(x.shape[:batch_dims])
    idx = indices.to(torch.int64).reshape(batch, -1, depth)
    sizes = torch.tensor(x.shape[batch_dims:batch_dims + depth], device=x.device)
    idx = torch.where(idx < 0, idx + sizes, idx)
    rows = torch.arange(batch, device=x.device).reshape(batch, 1).expand(batch, idx.shape[1])
    return (rows, *idx.unbind(-1))


@kernel("GatherND", since=11)
def gather_nd(ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """GatherND: slices of x addressed by the last axis of ``indices`` (after batch_dims)."""
    batch_dims = ctx.attrs.get("batch_dims", 0)
    depth = indices.shape[-1]
    data = x.reshape((math.prod(x.shape[:batch_dims]),) + tuple(x.shape[batch_dims:]))
    picked = data[_nd_coordinates(x, indices, batch_dims)]
    return picked.reshape(tuple(indices.shape[:-1]) + tuple(x.shape[batch_dims + depth:]))


@kernel("ScatterElements", since=11)
def scatter_elements(
    ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor
) -> torch.Tensor:
    """ScatterElements: torch.scatter / scatter_reduce along ``axis`` on a copy of x."""
    axis = normalize_axis(ctx.attrs.get("axis", 0), x.dim())
    index = _positive(indices, x.shape[axis])
    reduction = ctx.attrs.get("reduction", "none")
    if reduction == "none":
        return torch.scatter(x, axis, index, updates)
    return torch.scatter_reduce(x, axis, index, updates, _SCATTER_REDUCE[reduction])


@kernel("Scatter", since=9)
def scatter(
    ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor
) -> torch.Tensor:
    """Scatter (deprecated ScatterElements without reduction)."""
    axis = normalize_axis(ctx.attrs.get("axis", 0), x.dim())
    return torch.scatter(x, axis, _positive(indices, x.shape[axis]), updates)


@kernel("ScatterND", since=11)
def scatter_nd(
    ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor
) -> torch.Tensor:
    """ScatterND: write (or reduce) update slices at the addressed positions of a copy of x."""
    depth = indices.shape[-1]
    lead = math.prod(x.shape[:depth])
    data = x.reshape((lead,) + tuple(x.shape[depth:]))
    strides = torch.tensor([math.prod(x.shape[i + 1:depth]) for i in range(depth)],
                           device=x.device, dtype=torch.int64)
    sizes = torch.tensor(x.shape[:depth], device=x.device, dtype=torch.int64)
    idx = indices.to(torch.int64).reshape(-1, depth)
    linear = (torch.where(idx < 0, idx + sizes, idx) * strides).sum(dim=1)
    rows = updates.reshape((-1,) + tuple(x.shape[depth:]))
    index = linear.reshape((-1,) + (1,) * (data.dim() - 1)).expand(rows.shape)
    reduction = ctx.attrs.get("reduction", "none")
    if reduction == "none":
        out = torch.scatter(data, 0, index, rows)
    else:
        out = torch.scatter_reduce(data, 0, index, rows, _SCATTER_REDUCE[reduction])
    return out.reshape(x.shape)


@kernel("OneHot", since=9)
def one_hot(
    ctx: NodeContext, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """OneHot: values[1] where the new ``axis`` equals the index, values[0] elsewhere."""
    size = int(host_scalar(depth))
    index = indices.to(torch.int64)
    index = torch.where(index < 0, index + size, index)
    valid = (index >= 0) & (index < size)
    hot = torch.nn.functional.one_hot(torch.where(valid, index, 0), size).bool()
    hot = hot & valid.unsqueeze(-1)
    axis = normalize_axis(ctx.attrs.get("axis", -1), indices.dim() + 1)
    hot = hot.movedim(-1, axis)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(hot, on, off)
