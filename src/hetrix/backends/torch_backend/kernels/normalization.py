"""Batch, instance, layer, group, RMS and Lp normalization on the torch backend (inference)."""

from __future__ import annotations

import numpy as np
import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    attr_check,
    compute_dtype,
    kernel,
    normalize_axis,
    numpy_to_torch_dtype,
)


@attr_check("BatchNormalization")
def _inference_only(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """Training-mode batch norm (running-stat outputs) stays on the host backend."""
    training = node.attributes.get("training_mode")
    if (training is not None and training.value) or len(node.outputs) > 1:
        return "BatchNormalization in training mode"
    return ""


def _channel(t: torch.Tensor, rank: int, dtype: torch.dtype) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over axis 1 of a rank-``rank`` tensor."""
    return t.to(dtype).reshape((1, -1) + (1,) * max(0, rank - 2))


@kernel("BatchNormalization", since=1)
def batch_normalization(
    ctx: NodeContext,
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    """BatchNormalization (inference): (x - mean) / sqrt(var + eps) * scale + bias, per channel."""
    eps = ctx.attrs.get("epsilon", 1e-5)
    dtype = compute_dtype(x)
    rank = x.dim()
    inv = torch.rsqrt(_channel(var, rank, dtype) + eps) * _channel(scale, rank, dtype)
    y = (x.to(dtype) - _channel(mean, rank, dtype)) * inv + _channel(bias, rank, dtype)
    return y.to(x.dtype)


@kernel("InstanceNormalization", since=1)
def instance_normalization(
    ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """InstanceNormalization: each (sample, channel) plane to zero mean, unit variance."""
    eps = ctx.attrs.get("epsilon", 1e-5)
    dtype = compute_dtype(x)
    dims = tuple(range(2, x.dim()))
    xc = x.to(dtype)
    mean = xc.mean(dim=dims, keepdim=True)
    var = xc.var(dim=dims, unbiased=False, keepdim=True)
    y = (xc - mean) * torch.rsqrt(var + eps)
    y = y * _channel(scale, x.dim(), dtype) + _channel(bias, x.dim(), dtype)
    return y.to(x.dtype)


def _stash(ctx: NodeContext, x: torch.Tensor) -> torch.dtype:
    """stash_type 1 (the default) computes in float32, else in the input's own float type."""
    if ctx.attrs.get("stash_type", 1) == 1:
        return torch.float32 if x.dtype != torch.float64 else torch.float64
    return compute_dtype(x)


def _output_dtype(ctx: NodeContext, index: int, fallback: torch.dtype) -> torch.dtype:
    declared = ctx.output_dtypes[index] if len(ctx.output_dtypes) > index else None
    converted = numpy_to_torch_dtype(np.dtype(declared)) if declared is not None else None
    return converted or fallback


@kernel("LayerNormalization", since=17)
def layer_normalization(
    ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """LayerNormalization over axes [axis, rank); optional Mean and InvStdDev outputs."""
    axis = normalize_axis(ctx.attrs.get("axis", -1), x.dim())
    eps = ctx.attrs.get("epsilon", 1e-5)
    dtype = _stash(ctx, x)
    xc = x.to(dtype)
    dims = tuple(range(axis, x.dim()))
    mean = xc.mean(dim=dims, keepdim=True)
    centered = xc - mean
    inv_std = torch.rsqrt((centered * centered).mean(dim=dims, keepdim=True) + eps)
    y = centered * inv_std * scale.to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    y = y.to(x.dtype)
    if ctx.num_outputs == 1:
        return y
    return (y, mean.to(_output_dtype(ctx, 1, dtype)), inv_std.to(_output_dtype(ctx, 2, dtype)))


@kernel("GroupNormalization", since=18)
def group_normalization(
    ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """GroupNormalization: normalize channel groups; scale/bias per group (18) or channel (21)."""
    groups = ctx.attrs["num_groups"]
    eps = ctx.attrs.get("epsilon", 1e-5)
    dtype = _stash(ctx, x) if ctx.opset >= 21 else compute_dtype(x)
    batch, channels = x.shape[0], x.shape[1]
    xg = x.to(dtype).reshape(batch, groups, -1)
    mean = xg.mean(dim=2, keepdim=True)
    var = xg.var(dim=2, unbiased=False, keepdim=True)
    normalized = ((xg - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    rank = x.dim()
    if scale.numel() != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    y = normalized * _channel(scale, rank, dtype) + _channel(bias, rank, dtype)
    return y.to(x.dtype)


@kernel("RMSNormalization", since=23)
def rms_normalization(ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """RMSNormalization: x / sqrt(mean(x^2 over [axis, rank)) + eps) * scale."""
    axis = normalize_axis(ctx.attrs.get("axis", -1), x.dim())
    eps = ctx.attrs.get("epsilon", 1e-5)
    dtype = _stash(ctx, x)
    xc = x.to(dtype)
    dims = tuple(range(axis, x.dim()))
    inv = torch.rsqrt((xc * xc).mean(dim=dims, keepdim=True) + eps)
    return (xc * inv * scale.to(dtype)).to(x.dtype)


@kernel("LpNormalization", since=1)
def lp_normalization(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """LpNormalization: x divided by its L1 or L2 norm along ``axis``."""
    axis = normalize_axis(ctx.attrs.get("axis", -1), x.dim())
    p = ctx.attrs.get("p", 2)
    xc = x.to(compute_dtype(x))
    norm = torch.linalg.vector_norm(xc, ord=p, dim=axis, keepdim=True)
    return torch.where(norm == 0, 0.0, xc / norm).to(x.dtype)  # 0 / 0 is 0, as the reference
