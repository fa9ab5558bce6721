"""quantize kernels of the NumPy CPU backend.

QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul and QLinearConv.  Integer
accumulation is done in float64 through BLAS: every product of 8/16-bit values and every partial
sum of realistic size is exactly representable there, and dgemm is far faster than NumPy's
integer matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.kernels.linalg import integer_matmul

_NARROW_FLOATS = frozenset(
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
        ml_dtypes.float4_e2m1fn,
    )
)
# Types with no infinity/NaN encoding always saturate, whatever the ``saturate`` attribute says.
_ALWAYS_SATURATE = frozenset({np.dtype(ml_dtypes.float4_e2m1fn)})


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    """(min, max) of an integer type, including ml_dtypes' int4/uint4/int2/uint2."""
    info = ml_dtypes.iinfo(dtype) if dtype.type.__module__ == "ml_dtypes" else np.iinfo(dtype)
    return int(info.min), int(info.max)


def _is_int(dtype: np.dtype) -> bool:
    return dtype.kind in "iu" or (
        dtype.type.__module__ == "ml_dtypes"
        and dtype not in _NARROW_FLOATS
        and dtype != np.dtype(ml_dtypes.bfloat16)
    )


def _float_math(dtype: np.dtype) -> np.dtype:
    """Where to do arithmetic for values of ``dtype``: float16/bfloat16/narrow types in float32."""
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return dtype
    return np.dtype(np.float32)


def _saturate(v: np.ndarray, out: np.dtype, saturate: bool = True) -> np.ndarray:
    """Round-to-nearest-even ``v`` into the quantized type ``out``, clipping to its range."""
    if _is_int(out):
        lo, hi = _int_range(out)
        v = np.clip(np.rint(v), lo, hi)
        return np.asarray(v).astype(out)
    if out in _NARROW_FLOATS:
        if saturate or out in _ALWAYS_SATURATE:
            top = float(ml_dtypes.finfo(out).max)
            v = np.clip(v, -top, top)  # NaN stays NaN; +-inf becomes +-max
        return np.asarray(v).astype(out)
    raise ValueError(f"unsupported quantized type {out}")


def _param(
    op: str, name: str, p: np.ndarray | None, x: np.ndarray, axis: int, block: int
) -> np.ndarray | None:
    """Expand a scale/zero point to broadcast against ``x``: per tensor, per axis or blocked."""
    if p is None:
        return None
    if p.ndim == 0 or (p.ndim == 1 and p.size == 1 and block == 0):
        return p.reshape(())
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for input of rank {x.ndim}")
    axis %= x.ndim
    dim = x.shape[axis]
    if block > 0:
        want = list(x.shape)
        want[axis] = -(-dim // block)
        if list(p.shape) != want:
            raise ValueError(f"{op}: blocked {name} has shape {p.shape}, expected {tuple(want)}")
        return np.repeat(p, block, axis=axis)[(slice(None),) * axis + (slice(0, dim),)]
    if p.ndim != 1 or p.size != dim:
        raise ValueError(
            f"{op}: {name} of shape {p.shape} is neither a scalar nor a 1-D tensor of length {dim} "
            f"(the size of axis {axis})"
        )
    shape = [1] * x.ndim
    shape[axis] = dim
    return p.reshape(shape)


def _quantize(
    ctx: NodeContext, x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None
) -> np.ndarray:
    op = "QuantizeLinear"
    axis, block = ctx.attrs.get("axis", 1), ctx.attrs.get("block_size", 0)
    if zp is not None:
        out = zp.dtype
    elif ctx.attrs.get("output_dtype", 0):
        out = np.dtype(tensor_dtype_to_np_dtype(ctx.attrs["output_dtype"]))
    else:
        out = np.dtype(np.uint8)
    s = _param(op, "y_scale", scale, x, axis, block)
    z = _param(op, "y_zero_point", zp, x, axis, block)
    # The division runs in `precision`, else in the scale's type (emulated by rounding to it).
    prec = ctx.attrs.get("precision", 0)
    div_type = np.dtype(tensor_dtype_to_np_dtype(prec)) if prec else s.dtype
    work = _float_math(div_type)
    v = x.astype(work) / s.astype(work)
    if work != div_type:
        v = v.astype(div_type).astype(work)
    if _is_int(out):
        np.rint(v, out=v)  # round x / scale before adding the zero point: ties go to even there
    if z is not None:
        v += z.astype(work)
    return _saturate(v, out, bool(ctx.attrs.get("saturate", 1)))


@kernel("QuantizeLinear", since=10)
def quantize_linear(
    ctx: NodeContext, x: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray | None = None
) -> np.ndarray:
    """y = saturate(round(x / y_scale) + y_zero_point), per tensor, per axis or blocked."""
    return _quantize(ctx, x, y_scale, y_zero_point)


@kernel("DequantizeLinear", since=10)
def dequantize_linear(
    ctx: NodeContext, x: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray | None = None
) -> np.ndarray:
    """y = (x - x_zero_point) * x_scale, per tensor, per axis or blocked."""
    op = "DequantizeLinear"
    axis, block = ctx.attrs.get("axis", 1), ctx.attrs.get("block_size", 0)
    s = _param(op, "x_scale", x_scale, x, axis, block)
    z = _param(op, "x_zero_point", x_zero_point, x, axis, block)
    out_attr = ctx.attrs.get("output_dtype", 0)
    out = np.dtype(tensor_dtype_to_np_dtype(out_attr)) if out_attr else x_scale.dtype
    work = _float_math(out)
    if _is_int(x.dtype):
        # Subtract in integers (exact, also for int32), then convert once.
        d = x.astype(np.int64) if x.dtype.itemsize >= 4 else x.astype(np.int32)
        if z is not None:
            d = d - z.astype(d.dtype)
        v = d.astype(work)
    else:
        v = x.astype(work)
        if z is not None:
            v -= z.astype(work)
    v *= s.astype(work)
    return v.astype(out, copy=False)


@kernel("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(
    ctx: NodeContext, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 quantization with scale and zero point chosen from the data range (which holds 0)."""
    xf = x.astype(np.float32, copy=False)
    lo = min(float(xf.min()), 0.0) if xf.size else 0.0
    hi = max(float(xf.max()), 0.0) if xf.size else 0.0
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    if scale == 0:  # all zeros: any scale represents the data; keep zero point 0
        return np.zeros(x.shape, np.uint8), np.asarray(scale), np.asarray(0, np.uint8)
    zp = _saturate(np.asarray(np.float32(0 - lo) / scale, np.float32), np.dtype(np.uint8))
    y = _saturate(np.rint(xf / scale) + zp.astype(np.float32), np.dtype(np.uint8))
    return y, np.asarray(scale, np.float32), zp


def _row_param(p: np.ndarray, a: np.ndarray, op: str, name: str) -> np.ndarray:
    """A per-tensor or per-row (1-D of M) parameter of ``a``, shaped to broadcast on the result."""
    if p.size == 1:
        return p.reshape(())
    rows = a.shape[-2] if a.ndim > 1 else 1
    if p.ndim == 1 and p.size == rows:
        return p.reshape(rows, 1)
    if p.ndim == a.ndim and p.shape[-1] == 1:
        return p
    raise ValueError(f"{op}: {name} of shape {p.shape} is not per-tensor or per-row of {a.shape}")


def _col_param(p: np.ndarray, b: np.ndarray, op: str, name: str) -> np.ndarray:
    """A per-tensor or per-column (1-D of N) parameter of ``b``."""
    if p.size == 1:
        return p.reshape(())
    if p.shape[-1] == b.shape[-1]:
        return p
    raise ValueError(
        f"{op}: {name} of shape {p.shape} is not per-tensor or per-column of {b.shape}"
    )


def _requantize(acc: np.ndarray, multiplier: np.ndarray, y_zp: np.ndarray) -> np.ndarray:
    """saturate(round(acc * multiplier) + y_zero_point) in the zero point's type."""
    v = acc * multiplier
    v = np.rint(v)
    v += y_zp.astype(np.float64)
    return _saturate(v, y_zp.dtype)


@kernel("QLinearMatMul", since=10)
def qlinear_matmul(
    ctx: NodeContext,
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
) -> np.ndarray:
    """Quantized matmul: requantize (a - a_zp) @ (b - b_zp) by a_scale * b_scale / y_scale."""
    op = "QLinearMatMul"
    acc = integer_matmul(
        a,
        b,
        _row_param(a_zero_point, a, op, "a_zero_point"),
        _col_param(b_zero_point, b, op, "b_zero_point"),
        op,
    )
    sa = _row_param(a_scale, a, op, "a_scale").astype(np.float64)
    sb = _col_param(b_scale, b, op, "b_scale").astype(np.float64)
    return _requantize(acc, sa * sb / y_scale.astype(np.float64).reshape(()), y_zero_point)


# --- QLinearConv ------------------------------------------------------------------------------


def _conv_pads(
    ctx: NodeContext,
    spatial: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis from ``pads`` or ``auto_pad``."""
    n = len(spatial)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel_shape, strides, dilations, strict=True):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            pads.append(
                (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
            )
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * n
    flat = list(ctx.attrs.get("pads") or [0] * (2 * n))
    if len(flat) != 2 * n:
        raise ValueError(f"QLinearConv: pads {flat} must have {2 * n} values")
    return list(zip(flat[:n], flat[n:], strict=True))


def _im2col(
    x: np.ndarray, kernel_shape: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> np.ndarray:
    """Strided view [N, C, *out, *kernel] of the (already padded) input: no copy."""
    spatial = x.shape[2:]
    out = [
        (size - (k - 1) * d - 1) // s + 1
        for size, k, s, d in zip(spatial, kernel_shape, strides, dilations, strict=True)
    ]
    if any(o <= 0 for o in out):
        raise ValueError(
            f"QLinearConv: kernel {list(kernel_shape)} larger than padded input {spatial}"
        )
    sx = x.strides[2:]
    shape = (*x.shape[:2], *out, *kernel_shape)
    strides_ = (
        *x.strides[:2],
        *(a * s for a, s in zip(sx, strides, strict=True)),
        *(a * d for a, d in zip(sx, dilations, strict=True)),
    )
    return np.lib.stride_tricks.as_strided(x, shape, strides_, writeable=False)


def _conv_float(ctx: NodeContext, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """N-D grouped convolution of float64 arrays (no bias): [N, C, ...] * [M, C/g, ...]."""
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(
            f"QLinearConv: x {x.shape} and w {w.shape} must be [N, C, ...] and [M, C/g, ...]"
        )
    n_sp = x.ndim - 2
    group = ctx.attrs.get("group", 1)
    kernel_shape = list(ctx.attrs.get("kernel_shape") or w.shape[2:])
    strides = list(ctx.attrs.get("strides") or [1] * n_sp)
    dilations = list(ctx.attrs.get("dilations") or [1] * n_sp)
    channels, m = x.shape[1], w.shape[0]
    if channels % group or m % group or w.shape[1] * group != channels:
        raise ValueError(f"QLinearConv: x {x.shape} and w {w.shape} do not match group={group}")
    pads = _conv_pads(ctx, x.shape[2:], kernel_shape, strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0), *pads]) if any(p != (0, 0) for p in pads) else x
    cols = _im2col(xp, kernel_shape, strides, dilations)
    cg, mg = channels // group, m // group
    k_axes = [1, *range(2 + n_sp, 2 + 2 * n_sp)]
    outs = []
    for g in range(group):  # loop over groups, one BLAS contraction each
        part = np.tensordot(
            cols[:, g * cg : (g + 1) * cg],
            w[g * mg : (g + 1) * mg],
            axes=(k_axes, list(range(1, w.ndim))),
        )
        outs.append(part)  # [N, *out, mg]
    y = outs[0] if group == 1 else np.concatenate(outs, axis=-1)
    return np.moveaxis(y, -1, 1)


@kernel("QLinearConv", since=10)
def qlinear_conv(
    ctx: NodeContext,
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    w_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Quantized convolution: requantize conv(x - x_zp, w - w_zp) + B by x_s * w_s / y_s."""
    op = "QLinearConv"
    m = w.shape[0]
    per_channel = (1, m) + (1,) * (x.ndim - 2)
    xf = x.astype(np.float64) - float(x_zero_point.reshape(-1)[0])
    wz = w_zero_point.astype(np.float64)
    if wz.size not in (1, m):
        raise ValueError(f"{op}: w_zero_point must be scalar or have {m} elements, got {wz.shape}")
    wf = w.astype(np.float64) - wz.reshape((-1,) + (1,) * (w.ndim - 1))
    acc = _conv_float(ctx, xf, wf)
    if bias is not None:
        if bias.size != m:
            raise ValueError(
                f"{op}: B must have one value per output channel ({m}), got {bias.shape}"
            )
        acc += bias.astype(np.float64).reshape(per_channel)
    ws = w_scale.astype(np.float64)
    if ws.size not in (1, m):
        raise ValueError(f"{op}: w_scale must be scalar or have {m} elements, got {ws.shape}")
    multiplier = float(x_scale.reshape(-1)[0]) * ws.reshape(-1) / float(y_scale.reshape(-1)[0])
    return _requantize(acc, multiplier.reshape(per_channel if ws.size > 1 else ()), y_zero_point)
