"""resize kernels of the NumPy CPU backend.

Every interpolation mode of Resize is separable (N-linear and N-cubic filters are tensor products of
1-D filters), so the input is resized one axis at a time: per output position along the axis a few
source indices and weights are computed, and the output is a weighted sum of ``np.take`` slices.
"""

from __future__ import annotations

import math

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.layout import memory_order

_MODES = {
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
}


def _original_coords(
    mode: str, n_out: int, n_in: int, scale: float, roi: tuple[float, float]
) -> np.ndarray:
    """x_original (float64) of every output index along one axis, per coordinate mode.

    ``length_resized`` in the corner-aligned modes is the fractional ``n_in * scale`` (as in the
    ONNX conformance data), which equals ``n_out`` whenever the output size was given.
    """
    x = np.arange(n_out, dtype=np.float64)
    width = n_in * scale
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (n_in * scale)
        offset = n_in / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return x * ((n_in - 1) / (width - 1)) if width != 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if width != 1:
            return start * (n_in - 1) + x * ((end - start) * (n_in - 1) / (width - 1))
        return np.full(n_out, 0.5 * (start + end) * (n_in - 1))
    raise ValueError(f"Resize: unknown coordinate_transformation_mode {mode!r}")


def _nearest_index(xo: np.ndarray, nearest_mode: str, scale: float, n_in: int) -> np.ndarray:
    """Source index of each output for mode 'nearest'."""
    if nearest_mode == "round_prefer_floor":
        idx = np.ceil(xo - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(xo + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(xo)
    elif nearest_mode == "ceil":
        idx = np.ceil(xo)
    elif nearest_mode == "simple":
        # Resize-10/Upsample: truncate when upsampling, ceil when downsampling (ONNX Runtime).
        idx = np.ceil(xo) if scale < 1 else np.floor(xo)
    else:
        raise ValueError(f"Resize: unknown nearest_mode {nearest_mode!r}")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient ``a``."""
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _filter_taps(
    xo: np.ndarray, n_in: int, mode: str, scale: float, antialias: bool, a: float, exclude: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, both (n_out, taps), of a linear or cubic filter."""
    support = 1.0 if mode == "linear" else 2.0
    # Antialiasing stretches the filter by 1/scale when downsampling.
    s = min(scale, 1.0) if antialias else 1.0
    start = math.floor(-support / s) + 1
    offsets = np.arange(start, 2 - start)
    base = np.floor(xo)
    idx = base[:, None].astype(np.int64) + offsets[None, :]
    t = s * (offsets[None, :] - (xo - base)[:, None])
    w = np.maximum(1 - np.abs(t), 0) if mode == "linear" else _cubic(t, a)
    if exclude:
        w = np.where((idx >= 0) & (idx < n_in), w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = w / np.where(total == 0, 1, total)
    return np.clip(idx, 0, n_in - 1), w


def _resize_axis(
    y: np.ndarray, axis: int, xo: np.ndarray, mode: str, scale: float, opts: dict
) -> np.ndarray:
    """Resample ``y`` along ``axis`` at the source coordinates ``xo``."""
    n_in = y.shape[axis]
    if mode == "nearest":
        return np.take(y, _nearest_index(xo, opts["nearest_mode"], scale, n_in), axis=axis)
    idx, w = _filter_taps(
        xo, n_in, mode, scale, opts["antialias"], opts["cubic_coeff_a"], opts["exclude_outside"]
    )
    shape = [1] * y.ndim
    shape[axis] = len(xo)
    w = w.astype(y.dtype)
    out = np.take(y, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for t in range(1, idx.shape[1]):
        out += np.take(y, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def _vector(v: np.ndarray | None) -> np.ndarray | None:
    """An optional 1-D input, None when omitted or empty."""
    if v is None:
        return None
    v = np.asarray(v).reshape(-1)
    return v if v.size else None


def _output_geometry(
    ctx: NodeContext,
    shape: tuple[int, ...],
    axes: list[int],
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
    roi: list[tuple[float, float]],
) -> tuple[list[int], list[float]]:
    """Output shape and per-axis scale from ``scales`` or ``sizes`` (+ keep_aspect_ratio_policy)."""
    out, scale = list(shape), [1.0] * len(shape)
    given = scales if scales is not None else sizes
    if given is None or (scales is not None and sizes is not None):
        raise ValueError("Resize: exactly one of 'scales' and 'sizes' must be given")
    if given.size != len(axes):
        raise ValueError(f"Resize: {given.size} scales/sizes for {len(axes)} axes")
    if scales is not None:
        crop = ctx.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize"
        for a, s in zip(axes, scales.astype(np.float64), strict=True):
            if s <= 0:
                raise ValueError(f"Resize: scales must be positive, got {scales}")
            extent = roi[a][1] - roi[a][0] if crop else 1.0
            out[a], scale[a] = int(math.floor(shape[a] * extent * s + 1e-9)), float(s)
        return out, scale
    policy = ctx.attrs.get("keep_aspect_ratio_policy", "stretch")
    ratios = [int(n) / shape[a] for a, n in zip(axes, given, strict=True)]
    if policy == "stretch":
        for a, n, r in zip(axes, given, ratios, strict=True):
            out[a], scale[a] = int(n), r
        return out, scale
    if policy not in ("not_larger", "not_smaller"):
        raise ValueError(f"Resize: unknown keep_aspect_ratio_policy {policy!r}")
    common = min(ratios) if policy == "not_larger" else max(ratios)
    for a in axes:
        out[a], scale[a] = int(math.floor(common * shape[a] + 0.5)), common
    return out, scale


_TORCH_COORDINATES = {"align_corners": True, "half_pixel": False, "pytorch_half_pixel": False}
"""ONNX coordinate modes PyTorch's bilinear interpolation computes exactly: its
``align_corners`` flag for each (``pytorch_half_pixel`` only where no output axis has length
1, where ONNX puts the sample at 0).  Both clamp a source position outside the input to its
edge, as ONNX's edge padding does for linear interpolation."""


def _torch_bilinear(x: np.ndarray, out: list[int], scale: list[float], opts: dict,
                    scales_given: bool) -> np.ndarray | None:
    """A 4-D float32 linear Resize of the two spatial axes through PyTorch's bilinear
    interpolation (in the input's layout, on every core), or None where it does not compute
    ONNX's answer: antialiasing, other coordinate modes, resized batch or channel axes.

    NumPy's path gathers and weighs each axis in turn: a 2x align_corners upsampling of a
    1 x 64 x 64 x 64 convolution output took 5.6 ms in a run (ORT's model whole 1.5)."""
    coord = opts["coord"]
    if (x.dtype != np.float32 or x.ndim != 4 or opts["mode"] != "linear" or opts["antialias"]
            or coord not in _TORCH_COORDINATES or out[:2] != list(x.shape[:2])
            or scale[:2] != [1.0, 1.0] or min(out[2:]) < 1
            or (coord == "pytorch_half_pixel" and min(out[2:]) == 1)
            # ONNX's align_corners divides by the unrounded in * scale where scales are given
            or (coord == "align_corners" and scales_given
                and any(n * s != o for n, s, o in zip(x.shape[2:], scale[2:], out[2:])))):
        return None
    functional = _library.torch_functional()
    if functional is None:
        return None
    align = _TORCH_COORDINATES[coord]
    tensor = _library.as_tensor(x)
    if scales_given and not align:  # the given scale sets the positions, as in ONNX
        y = functional.interpolate(tensor, scale_factor=tuple(scale[2:]), mode="bilinear",
                                   align_corners=False, recompute_scale_factor=False)
    else:  # positions from the sizes (align_corners: (in - 1) / (out - 1) in both)
        y = functional.interpolate(tensor, size=tuple(out[2:]), mode="bilinear",
                                   align_corners=align)
    return y.numpy() if list(y.shape) == out else None


def _resize(
    ctx: NodeContext,
    x: np.ndarray,
    roi: np.ndarray | None,
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
    opts: dict,
) -> np.ndarray:
    """Shared body of Resize (all opsets) and Upsample."""
    rank = x.ndim
    axes = [a % rank for a in (ctx.attrs.get("axes") or range(rank))]
    mode, coord = opts["mode"], opts["coord"]
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize: unknown mode {mode!r}")
    if coord not in _MODES:
        raise ValueError(f"Resize: unknown coordinate_transformation_mode {coord!r}")
    roi_pairs = [(0.0, 1.0)] * rank
    if roi is not None and coord == "tf_crop_and_resize":
        if roi.size != 2 * len(axes):
            raise ValueError(f"Resize: roi has {roi.size} values for {len(axes)} axes")
        half = len(axes)
        for i, a in enumerate(axes):
            roi_pairs[a] = (float(roi[i]), float(roi[half + i]))
    out, scale = _output_geometry(ctx, x.shape, axes, scales, sizes, roi_pairs)
    fast = _torch_bilinear(x, out, scale, opts, scales is not None)
    if fast is not None:
        return fast
    work = x if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else x.astype(np.float32)
    if mode == "nearest":
        work = x  # nearest only gathers: any dtype, no rounding
    # a transposed view (a convolution's channels-last output) is resized in its memory order
    # and handed back in its layout (see layout.memory_order): a 2x nearest upsampling of
    # 1 x 64 x 64 x 64 channels-last took 1.9 ms on the view, 1.1 so, and the convolution
    # after it reads its input without a copy
    order = memory_order(work) or tuple(range(rank))
    work = work.transpose(order)
    place = {axis: position for position, axis in enumerate(order)}
    outside = []
    for a in axes:
        if out[a] == x.shape[a] and scale[a] == 1.0 and coord != "tf_crop_and_resize":
            continue  # identity along this axis
        if out[a] <= 0:
            raise ValueError(f"Resize: output shape {out} has an empty axis")
        xo = _original_coords(coord, out[a], x.shape[a], scale[a], roi_pairs[a])
        if coord == "tf_crop_and_resize":
            outside.append((a, (xo < 0) | (xo > x.shape[a] - 1)))
        work = _resize_axis(work, place[a], xo, mode, scale[a], opts)
    for a, mask in outside:
        if mask.any():
            shape = [1] * rank
            shape[place[a]] = out[a]
            work = np.where(
                mask.reshape(shape), np.asarray(opts["extrapolation"], work.dtype), work
            )
    work = work.transpose(np.argsort(order))
    if work.dtype != x.dtype:
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            work = np.clip(np.rint(work), info.min, info.max)
        work = work.astype(x.dtype)
    return work


def _options(ctx: NodeContext) -> dict:
    """Resize attributes (schema defaults already filled) as one dict."""
    return {
        "mode": ctx.attrs.get("mode", "nearest"),
        "coord": ctx.attrs.get("coordinate_transformation_mode", "half_pixel"),
        "nearest_mode": ctx.attrs.get("nearest_mode", "round_prefer_floor"),
        "antialias": bool(ctx.attrs.get("antialias", 0)),
        "cubic_coeff_a": float(ctx.attrs.get("cubic_coeff_a", -0.75)),
        "exclude_outside": bool(ctx.attrs.get("exclude_outside", 0)),
        "extrapolation": float(ctx.attrs.get("extrapolation_value", 0.0)),
    }


def _legacy_options(mode: str) -> dict:
    """Resize-10 / Upsample semantics: asymmetric coordinates, 'simple' nearest rounding."""
    if mode == "bilinear":
        mode = "linear"
    return {
        "mode": mode,
        "coord": "asymmetric",
        "nearest_mode": "simple",
        "antialias": False,
        "cubic_coeff_a": -0.75,
        "exclude_outside": False,
        "extrapolation": 0.0,
    }


@kernel("Resize", since=10)
def resize_10(ctx: NodeContext, x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Resize-10: nearest/linear with scales only, asymmetric coordinates."""
    opts = _legacy_options(ctx.attrs.get("mode", "nearest"))
    return _resize(ctx, x, None, _vector(scales), None, opts)


@kernel("Resize", since=11)
def resize(
    ctx: NodeContext,
    x: np.ndarray,
    roi: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Resize: all coordinate modes, nearest/linear/cubic, antialias, axes and aspect policy."""
    return _resize(ctx, x, _vector(roi), _vector(scales), _vector(sizes), _options(ctx))


@kernel("Upsample", since=1)
def upsample_1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Upsample-1: height_scale/width_scale attributes on an NCHW input."""
    if x.ndim != 4:
        raise ValueError(f"Upsample-1 needs a 4-D input, got shape {x.shape}")
    scales = np.array(
        [1.0, 1.0, ctx.attrs.get("height_scale", 1.0), ctx.attrs.get("width_scale", 1.0)]
    )
    return _resize(ctx, x, None, scales, None, _legacy_options(ctx.attrs.get("mode", "nearest")))


@kernel("Upsample", since=7)
def upsample_7(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Upsample-7: scales attribute, one per axis."""
    scales = np.asarray(ctx.attrs.get("scales") or [], dtype=np.float64)
    return _resize(ctx, x, None, scales, None, _legacy_options(ctx.attrs.get("mode", "nearest")))


@kernel("Upsample", since=9)
def upsample_9(ctx: NodeContext, x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Upsample-9/10: scales input, one per axis."""
    return _resize(
        ctx, x, None, _vector(scales), None, _legacy_options(ctx.attrs.get("mode", "nearest"))
    )
