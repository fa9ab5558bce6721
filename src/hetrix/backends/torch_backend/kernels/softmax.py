"""Softmax, LogSoftmax and Hardmax, with both axis conventions.

Before opset 13 the input is coerced to 2-D at ``axis`` (default 1) and normalized over the flat
trailing block; from 13 on it is normalized along the single ``axis`` (default -1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    compute_dtype,
    kernel,
    normalize_axis,
)

Along = Callable[[torch.Tensor, int], torch.Tensor]


def _apply(ctx: NodeContext, x: torch.Tensor, fn: Along) -> torch.Tensor:
    if x.dim() == 0:
        return fn(x.reshape(1), 0).reshape(())
    if ctx.opset >= 13:
        return fn(x, normalize_axis(ctx.attrs.get("axis", -1), x.dim()))
    axis = normalize_axis(ctx.attrs.get("axis", 1), x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, 1).reshape(x.shape)


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(x.to(compute_dtype(x)), dim).to(x.dtype)


def _log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.log_softmax(x.to(compute_dtype(x)), dim).to(x.dtype)


def _hardmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.numel() == 0:
        return x.clone()
    index = torch.argmax(x, dim=dim, keepdim=True)  # first maximum, as ONNX
    return torch.zeros_like(x).scatter(dim, index, 1)


@kernel("Softmax", since=1)
def softmax(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Softmax along ``axis`` (coerced 2-D before opset 13)."""
    return _apply(ctx, x, _softmax)


@kernel("LogSoftmax", since=1)
def log_softmax(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """LogSoftmax along ``axis`` (coerced 2-D before opset 13)."""
    return _apply(ctx, x, _log_softmax)


@kernel("Hardmax", since=1)
def hardmax(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Hardmax: 1 at the first maximum along ``axis``, 0 elsewhere."""
    return _apply(ctx, x, _hardmax)
