"""Resize (and Upsample) with nearest, linear and cubic modes, one axis at a time.

ONNX's n-linear and n-cubic interpolation are separable, so each resized axis is one gather of
``taps`` neighbours per output position and a weighted sum.  Source coordinates, neighbour indices
and weights are computed with numpy on the host (they depend only on sizes and attributes) and
cached per input shape; the gathers run on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    attr_check,
    compute_dtype,
    host_ints,
    host_size,
    kernel,
    node_attr,
    normalize_axis,
)

_TRANSFORMS = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric"}


def _text(value: object, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


@attr_check("Resize", "Upsample")
def _resize_supported(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """Modes this kernel reproduces exactly; others (crop-and-resize, antialias...) fall back."""
    mode = _text(node_attr(node, "mode"), "nearest")
    transform = _text(node_attr(node, "coordinate_transformation_mode"), "half_pixel")
    policy = _text(node_attr(node, "keep_aspect_ratio_policy"), "stretch")
    if mode not in ("nearest", "linear", "cubic", "bilinear", "trilinear"):
        return f"Resize mode {mode}"
    if transform not in _TRANSFORMS:
        return f"Resize coordinate_transformation_mode {transform}"
    if node_attr(node, "antialias", 0):
        return "Resize with antialias"
    if policy != "stretch":
        return f"Resize keep_aspect_ratio_policy {policy}"
    x = node.inputs[0]
    if mode != "nearest" and x is not None and x.dtype is not None and int(x.dtype) not in (
        1, 10, 11, 16
    ):
        return f"Resize {mode} on {x.dtype.name}"
    return ""


def _sizes_and_scales(
    ctx: NodeContext, x: torch.Tensor, scales: torch.Tensor | None, sizes: torch.Tensor | None
) -> tuple[list[int], list[float]]:
    """Output size and scale factor of every axis."""
    rank = x.dim()
    axes = [normalize_axis(a, rank) for a in (ctx.attrs.get("axes") or range(rank))]
    out, factors = list(x.shape), [1.0] * rank
    wanted = host_ints(sizes) if host_size(sizes) else []
    if wanted:
        for axis, size in zip(axes, wanted):
            out[axis], factors[axis] = size, size / x.shape[axis]
        return out, factors
    given = ctx.attrs.get("scales") if not host_size(scales) else scales.reshape(-1).tolist()
    for axis, factor in zip(axes, given):
        out[axis], factors[axis] = int(math.floor(x.shape[axis] * factor)), float(factor)
    return out, factors


def _source(transform: str, out: int, size: int, scale: float) -> np.ndarray:
    """ONNX's source coordinate of every output position along one axis."""
    x = np.arange(out, dtype=np.float64)
    width = scale * size  # the reference uses the unrounded output width here
    if transform == "align_corners":
        return np.zeros(out) if width == 1 else x * (size - 1) / (width - 1)
    if transform == "asymmetric":
        return x / scale
    if transform == "pytorch_half_pixel":
        return np.full(out, -0.5) if width == 1 else (x + 0.5) / scale - 0.5
    if transform == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / width)
        return offset + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5


def _taps(ctx: NodeContext, coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each ``(out, taps)``, for one axis."""
    mode = ctx.attrs.get("mode", "nearest")
    mode = _text(mode, "nearest")
    whole = np.floor(coords) == coords
    base = np.where(whole, coords - 1, np.floor(coords)).astype(np.int64)  # ratio in (0, 1]
    ratio = coords - base
    if mode == "nearest":
        nearest = _text(ctx.attrs.get("nearest_mode"), "round_prefer_floor")
        if ctx.opset < 11:
            nearest = "floor"
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
              "floor": np.zeros_like(whole), "ceil": np.ones_like(whole)}[nearest]
        index = base + np.where(whole | up, 1, 0)
        return np.clip(index, 0, size - 1)[:, None], np.ones((len(coords), 1))
    if mode == "cubic":
        a = ctx.attrs.get("cubic_coeff_a", -0.75)
        offsets = np.array([-1, 0, 1, 2])
        distance = np.abs(ratio[:, None] - offsets[None, :])
        weights = _cubic(distance, a)
    else:
        offsets = np.array([0, 1])
        weights = np.stack([1 - ratio, ratio], axis=1)
    index = base[:, None] + offsets[None, :]
    if ctx.attrs.get("exclude_outside", 0):
        weights = np.where((index < 0) | (index >= size), 0.0, weights)
        weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(index, 0, size - 1), weights


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d`` (all in [0, 3])."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _resize_axis(
    x: torch.Tensor, axis: int, index: np.ndarray, weights: np.ndarray
) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    if index.shape[1] == 1:
        return x.index_select(axis, torch.as_tensor(index[:, 0], device=x.device))
    total = None
    for tap in range(index.shape[1]):
        picked = x.index_select(axis, torch.as_tensor(index[:, tap], device=x.device))
        w = torch.as_tensor(weights[:, tap], dtype=x.dtype, device=x.device).reshape(shape)
        total = picked * w if total is None else total + picked * w
    return total


@kernel("Resize", since=10)
def resize(
    ctx: NodeContext,
    x: torch.Tensor,
    roi: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resize: separable nearest / linear / cubic interpolation on the resized axes."""
    if ctx.opset < 11:
        roi, scales = None, roi  # Resize-10 has (X, scales)
    out, factors = _sizes_and_scales(ctx, x, scales, sizes)
    return _resize(ctx, x, out, factors)


@kernel("Upsample", since=7)
def upsample(ctx: NodeContext, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """Upsample (deprecated): Resize with asymmetric coordinates and floor rounding."""
    out, factors = _sizes_and_scales(ctx, x, scales, None)
    return _resize(ctx, x, out, factors, transform="asymmetric", nearest_floor=True)


def _resize(
    ctx: NodeContext,
    x: torch.Tensor,
    out: list[int],
    factors: list[float],
    transform: str | None = None,
    nearest_floor: bool = False,
) -> torch.Tensor:
    if transform is None:
        transform = _text(ctx.attrs.get("coordinate_transformation_mode"), "half_pixel")
        if ctx.opset < 11:
            transform = "asymmetric"
    key = ("taps", tuple(x.shape), tuple(out), tuple(factors))
    plan = ctx.cache.get(key)
    if plan is None:
        plan = []
        for axis, (size, target, factor) in enumerate(zip(x.shape, out, factors)):
            if size == target and factor == 1.0:
                continue
            coords = _source(transform, target, size, factor)
            index, weights = _taps(ctx, coords, size)
            if nearest_floor:
                index = np.clip(np.floor(coords).astype(np.int64), 0, size - 1)[:, None]
            plan.append((axis, index, weights))
        ctx.cache.clear()  # one shape at a time: dynamic shapes must not grow the cache
        ctx.cache[key] = plan
    y = x.to(compute_dtype(x)) if x.dtype.is_floating_point else x
    for axis, index, weights in plan:
        y = _resize_axis(y, axis, index, weights)
    return y.to(x.dtype)
