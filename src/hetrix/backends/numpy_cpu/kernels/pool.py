"""pool kernels of the NumPy CPU backend.

Windowed pools loop over the (few) kernel offsets and combine one strided slice of the padded input
per offset into the whole output at once, which beats reducing a 2N-d window view in numpy.

2-D float pools go to oneDNN through PyTorch when it is installed (see :mod:`._onednn`): a conv
network's activations arrive channels-last from the convolutions, a layout NumPy's strided slices
walk slowly and oneDNN's pooling reads natively, so the layout survives to the next convolution.
Only the geometries PyTorch's pooling expresses exactly take that path (symmetric pads of at most
half the kernel, and for AveragePool no dilation and no ceil-mode overhang); the output shape is
checked against ONNX's before use.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _dnnl, _onednn
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.kernels.conv import pad_spatial, resolve_pads, spatial_ints
from hetrix.backends.registry import Kernel


@dataclass
class _Window:
    """Geometry of a pooling node on one input: sizes per spatial axis."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begin: list[int]  # explicit (or auto) pads
    end: list[int]
    extra: list[int]  # extra end padding so that ceil_mode's last window fits
    out: list[int]

    def slices(self, offset: tuple[int, ...]) -> tuple[slice, ...]:
        """Index into the padded input picking kernel tap ``offset`` of every output window."""
        return (slice(None), slice(None)) + tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, d, o, s in zip(offset, self.dilations, self.out, self.strides, strict=True)
        )

    def offsets(self) -> itertools.product:
        """Every kernel tap, in row-major order."""
        return itertools.product(*(range(k) for k in self.kernel))

    def library_end(self) -> list[int]:
        """The end pads for a library that takes the ceil mode's overhang as padding."""
        return [e + extra for e, extra in zip(self.end, self.extra, strict=True)]


def library_pooling(ctx: NodeContext, win: _Window) -> str | None:
    """The oneDNN pooling kind (:data:`._dnnl.POOLINGS`) that computes this MaxPool or
    AveragePool node's result on a 2-D window ``win``, or None where oneDNN's answer would
    differ (MaxPool's Indices output; an average counting pads whose ceil-mode windows run
    past them, taps oneDNN would count too)."""
    if len(win.kernel) != 2:
        return None
    if ctx.op_type == "MaxPool":
        return "max" if ctx.num_outputs < 2 else None
    if ctx.op_type != "AveragePool":
        return None
    include_pad = bool(ctx.attrs.get("count_include_pad", 0))
    if include_pad and any(win.extra):
        return None
    return "average_with_pads" if include_pad else "average"


def window(ctx: NodeContext, shape: tuple[int, ...]) -> _Window:
    """The node's window on an input of ``shape``: measured once per input shape and kept in
    the node's cache (parsing the attributes and pads cost 15-20 us a call, next to 20-100 us
    of pooling on Inception's shapes).  Callers only read it."""
    cached = ctx.cache.get("window")
    if cached is not None and cached[0] == shape:
        return cached[1]
    measured = _measure_window(ctx, shape)
    ctx.cache["window"] = (shape, measured)
    return measured


def _measure_window(ctx: NodeContext, shape: tuple[int, ...]) -> _Window:
    """Read kernel_shape/strides/dilations/pads/auto_pad/ceil_mode and size the output."""
    nsp = len(shape) - 2
    if nsp < 1:
        raise ValueError(f"{ctx.op_type}: input must have rank >= 3, got shape {shape}")
    ksz = spatial_ints(ctx, "kernel_shape", nsp, 0)
    if not all(k > 0 for k in ksz):
        raise ValueError(f"{ctx.op_type} {ctx.name!r}: kernel_shape attribute is required")
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    sizes = shape[2:]
    begin, end = resolve_pads(ctx, sizes, ksz, strides, dilations)
    ceil_mode = bool(ctx.attrs.get("ceil_mode", 0))
    out, extra = [], []
    for size, k, s, d, pb, pe in zip(sizes, ksz, strides, dilations, begin, end, strict=True):
        span = size + pb + pe - ((k - 1) * d + 1)
        if span < 0:
            raise ValueError(f"{ctx.op_type}: kernel {ksz} larger than padded input {sizes}")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + pb:
            o -= 1  # a window may not start in the right padding
        out.append(o)
        extra.append(max(0, (o - 1) * s + (k - 1) * d + 1 - (size + pb + pe)))
    return _Window(ksz, strides, dilations, begin, end, extra, out)


def _padded(x: np.ndarray, win: _Window, value: float) -> np.ndarray:
    """``x`` padded by the explicit pads plus the ceil-mode extension."""
    return pad_spatial(
        x, win.begin, [e + x_ for e, x_ in zip(win.end, win.extra, strict=True)], value
    )


def _separable(xp: np.ndarray, win: _Window, combine: np.ufunc) -> np.ndarray:
    """Reduce every window of padded ``xp`` with ``combine`` (max or add), one axis at a time.

    Windows are boxes, so reducing axis by axis costs sum(kernel) passes instead of prod(kernel).
    """
    y = xp
    for a in range(len(win.kernel)):
        k, d, o, s = win.kernel[a], win.dilations[a], win.out[a], win.strides[a]
        lead = (slice(None),) * (2 + a)
        acc = y[lead + (slice(0, (o - 1) * s + 1, s),)].copy()
        for t in range(1, k):
            combine(acc, y[lead + (slice(t * d, t * d + (o - 1) * s + 1, s),)], out=acc)
        y = acc
    return y


def _lowest(dtype: np.dtype) -> float | int:
    """Padding value that never wins a max."""
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


# --------------------------------------------------------------------------- MaxPool


def _tap_positions(
    sizes: tuple[int, ...], win: _Window, offset: tuple[int, ...], column_major: bool
) -> np.ndarray:
    """Flat spatial index (int64, shape (1, 1, *out)) each output reads at kernel tap ``offset``."""
    nsp = len(sizes)
    flat = np.zeros((1, 1) + (1,) * nsp, dtype=np.int64)
    for a in range(nsp - 1, -1, -1) if column_major else range(nsp):
        shape = [1] * (nsp + 2)
        shape[2 + a] = win.out[a]
        pos = np.arange(win.out[a]) * win.strides[a] - win.begin[a] + offset[a] * win.dilations[a]
        flat = flat * sizes[a] + pos.reshape(shape)
    return flat


def _torch_pool_fits(x: np.ndarray, win: _Window, asymmetric_ok: bool = False) -> bool:
    """Whether PyTorch's 2-D pooling computes exactly this window geometry (asymmetric pads only
    where the caller pads explicitly first)."""
    return (
        x.ndim == 4
        and x.dtype in _onednn.SUPPORTED_DTYPES
        and (asymmetric_ok or win.begin == win.end)
        and all(2 * p <= k for p, k in zip(win.begin, win.kernel, strict=True))
        and min(win.begin + win.end) >= 0
        and _onednn.available()
    )


def _torch_pool(pool: str, x: np.ndarray, win: _Window, **options: object) -> np.ndarray | None:
    """``max_pool2d``/``avg_pool2d`` of PyTorch on ``x``, or None if its output shape differs."""
    import torch

    functional = torch.nn.functional
    xt = _onednn.as_tensor(x)
    padding = win.begin
    with torch.no_grad():
        if pool == "max":
            if win.begin != win.end and not options.get("ceil_mode"):
                # more padding at the end (Inception's "pads 0 0 1 1"): the same windows as
                # PyTorch's ceil mode, which clips them at the edge, when the output sizes agree
                # (1.2-2x faster than padding a copy, and the layout stays channels-last)
                if all(b <= e for b, e in zip(win.begin, win.end, strict=True)):
                    y = functional.max_pool2d(xt, win.kernel, win.strides, win.begin,
                                              win.dilations, ceil_mode=True)
                    if list(y.shape[2:]) == win.out:
                        return _onednn.to_numpy(y)
            if win.begin != win.end:  # pad the uneven side with -inf ourselves
                low = [min(b, e) for b, e in zip(win.begin, win.end, strict=True)]
                before = [b - m for b, m in zip(win.begin, low, strict=True)]
                after = [e - m for e, m in zip(win.end, low, strict=True)]
                xt = functional.pad(xt, (before[1], after[1], before[0], after[0]),
                                    value=-math.inf)
                padding = low
            y = functional.max_pool2d(xt, win.kernel, win.strides, padding, win.dilations,
                                      **options)
        else:
            y = functional.avg_pool2d(xt, win.kernel, win.strides, padding, **options)
    if list(y.shape[2:]) != win.out:
        return None
    return _onednn.to_numpy(y)


def _kept_pool(ctx: NodeContext, x: np.ndarray, kind: str, win: _Window | None,
               node_kernel: Kernel) -> np.ndarray | None:
    """The pooling by a oneDNN primitive the node keeps (:mod:`._dnnl`), or None where that
    path does not serve it.  ``win`` None: a global pool (the window is the whole image).
    ``node_kernel``: the node's kernel, which returns this result as it is.

    Why: PyTorch's pooling call costs tens of microseconds of setup around the work, and its
    channels-last max pooling ran 4x slower than oneDNN's (SqueezeNet's first MaxPool, 64
    channels at 111x111: 219 us); the primitive takes the ceil mode's extra padding as it is.
    A window holding a NaN: oneDNN's max gives the window's largest number, PyTorch's and
    NumPy's give NaN, ONNX Runtime's and ONNX's reference evaluator either, by the NaN's place
    in the window (``test_pools_with_nan_in_a_window`` pins each route's answer).
    """
    if x.ndim != 4 or not _onednn.available():  # a library route: not with HETRIX_NUMPY_ONLY
        return None

    def make() -> _dnnl.Pool2d | None:
        if win is None:
            kernel, strides, dilations = list(x.shape[2:]), [1, 1], [1, 1]
            begin, end, out = [0, 0], [0, 0], [1, 1]
        else:
            kernel, strides, dilations, begin, out = (win.kernel, win.strides, win.dilations,
                                                      win.begin, win.out)
            end = win.library_end()
        return _dnnl.create_pool(x, kind=kind, kernel=kernel, strides=strides,
                                 dilations=dilations, pads_begin=begin, pads_end=end, out=out)

    return _dnnl.run_kept(ctx, "dnnl_pool", "pooling", x, make, kernel=node_kernel)


def _max_pool(ctx: NodeContext, x: np.ndarray) -> tuple[np.ndarray, ...] | np.ndarray:
    win = window(ctx, x.shape)
    if library_pooling(ctx, win) is not None:
        y = _kept_pool(ctx, x, "max", win, max_pool)
        if y is not None:
            return y
    if ctx.num_outputs < 2 and _torch_pool_fits(x, win, asymmetric_ok=True):
        y = _torch_pool("max", x, win, ceil_mode=bool(ctx.attrs.get("ceil_mode", 0)))
        if y is not None:
            return y
    xp = _padded(x, win, _lowest(x.dtype))
    y = _separable(xp, win, np.maximum)
    if ctx.num_outputs < 2:
        return y
    # Indices: walk the taps backwards so that on ties the first tap wins, like ONNX Runtime.
    column_major = int(ctx.attrs.get("storage_order", 0)) == 1
    best = np.zeros(y.shape, dtype=np.int64)
    for offset in reversed(list(win.offsets())):
        hit = xp[win.slices(offset)] == y
        np.copyto(best, _tap_positions(x.shape[2:], win, offset, column_major), where=hit)
    n, c = x.shape[:2]
    plane = math.prod(x.shape[2:])
    best += (np.arange(n * c, dtype=np.int64) * plane).reshape((n, c) + (1,) * (x.ndim - 2))
    return y, best


@kernel("MaxPool", since=1)
def max_pool(ctx: NodeContext, x: np.ndarray) -> tuple[np.ndarray, ...] | np.ndarray:
    """Max pooling with pads/auto_pad, dilations, ceil_mode and the optional Indices output."""
    return _max_pool(ctx, x)


# --------------------------------------------------------------------------- AveragePool / LpPool


def _window_counts(x_shape: tuple[int, ...], win: _Window, include_pad: bool) -> np.ndarray:
    """How many taps of each output window fall in the input (or in input + explicit pads)."""
    counts = np.ones((1,) * len(x_shape), dtype=np.float64)
    for a, size in enumerate(x_shape[2:]):
        lo = -win.begin[a] if include_pad else 0
        hi = size + win.end[a] if include_pad else size
        pos = (np.arange(win.out[a]) * win.strides[a] - win.begin[a])[:, None] + (
            np.arange(win.kernel[a]) * win.dilations[a]
        )[None, :]
        count = ((pos >= lo) & (pos < hi)).sum(axis=1)
        shape = [1] * len(x_shape)
        shape[2 + a] = win.out[a]
        counts = counts * count.reshape(shape)  # windows are boxes: counts multiply per axis
    return counts


@kernel("AveragePool", since=1)
def average_pool(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Average pooling; count_include_pad chooses whether pads count in the divisor."""
    win = window(ctx, x.shape)
    include_pad = bool(ctx.attrs.get("count_include_pad", 0))
    # oneDNN's mean with pads divides by the whole kernel: ONNX's too, unless the ceil mode
    # extends windows past the explicit pads (those extra taps do not count)
    library_kind = library_pooling(ctx, win)
    if library_kind is not None:
        y = _kept_pool(ctx, x, library_kind, win, average_pool)
        if y is not None:
            return y
    if _torch_pool_fits(x, win) and not any(win.extra) and all(d == 1 for d in win.dilations):
        y = _torch_pool("avg", x, win, count_include_pad=include_pad)
        if y is not None:
            return y
    acc = np.float32 if x.dtype.itemsize < 4 else x.dtype
    total = _separable(_padded(x.astype(acc, copy=False), win, 0), win, np.add)
    counts = _window_counts(x.shape, win, bool(ctx.attrs.get("count_include_pad", 0)))
    total /= np.maximum(counts, 1).astype(total.dtype)
    return total.astype(x.dtype, copy=False)


def _p_norm(ctx: NodeContext) -> float:
    """LpPool's p: a FLOAT before opset 2, an INT after."""
    p = float(ctx.attrs.get("p", 2))
    if p <= 0:
        raise ValueError(f"{ctx.op_type} {ctx.name!r}: p must be positive, got {p}")
    return p


def _lp_finish(total: np.ndarray, p: float) -> np.ndarray:
    """Root of a sum of |x|**p."""
    return np.sqrt(total) if p == 2 else np.power(total, 1.0 / p)


def _lp_power(x: np.ndarray, p: float) -> np.ndarray:
    """|x|**p, cheaply for the usual p = 1, 2."""
    if p == 2:
        return x * x
    if p == 1:
        return np.abs(x)
    return np.power(np.abs(x), p)


@kernel("LpPool", since=1)
def lp_pool(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Lp pooling: (sum over the window of |x|**p) ** (1/p), pads count as zeros."""
    p = _p_norm(ctx)
    win = window(ctx, x.shape)
    acc = np.float32 if x.dtype.itemsize < 4 else x.dtype
    total = _separable(_padded(_lp_power(x.astype(acc, copy=False), p), win, 0), win, np.add)
    return _lp_finish(total, p).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- global pools


def _spatial_axes(ctx: NodeContext, x: np.ndarray) -> tuple[int, ...]:
    if x.ndim < 3:
        raise ValueError(f"{ctx.op_type}: input must have rank >= 3, got shape {x.shape}")
    return tuple(range(2, x.ndim))


@kernel("GlobalAveragePool", since=1)
def global_average_pool(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Mean over all spatial axes, kept as size-1 axes."""
    y = _kept_pool(ctx, x, "average", None, global_average_pool)
    if y is not None:
        return y
    if x.ndim == 4 and x.dtype in _onednn.SUPPORTED_DTYPES and _onednn.available():
        import torch

        with torch.no_grad():  # channels-last input: oneDNN's pooling reads it in place
            return _onednn.to_numpy(torch.nn.functional.adaptive_avg_pool2d(
                _onednn.as_tensor(x), 1))
    acc = np.float32 if x.dtype.itemsize < 4 else x.dtype
    return np.mean(x, axis=_spatial_axes(ctx, x), keepdims=True, dtype=acc).astype(x.dtype)


@kernel("GlobalMaxPool", since=1)
def global_max_pool(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Max over all spatial axes, kept as size-1 axes."""
    y = _kept_pool(ctx, x, "max", None, global_max_pool)
    if y is not None:
        return y
    return np.max(x, axis=_spatial_axes(ctx, x), keepdims=True)


@kernel("GlobalLpPool", since=1)
def global_lp_pool(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Lp norm over all spatial axes, kept as size-1 axes."""
    p = _p_norm(ctx)
    acc = np.float32 if x.dtype.itemsize < 4 else x.dtype
    xs = _lp_power(x.astype(acc, copy=False), p)
    total = np.sum(xs, axis=_spatial_axes(ctx, x), keepdims=True)
    return _lp_finish(total, p).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- MaxUnpool


@kernel("MaxUnpool", since=9)
def max_unpool(
    ctx: NodeContext, x: np.ndarray, indices: np.ndarray, output_shape: np.ndarray | None = None
) -> np.ndarray:
    """Scatter pooled values back to the positions MaxPool's Indices recorded; zeros elsewhere."""
    nsp = x.ndim - 2
    if indices.shape != x.shape:
        raise ValueError(f"MaxUnpool: indices {indices.shape} must have the shape of X {x.shape}")
    ksz = spatial_ints(ctx, "kernel_shape", nsp, 0)
    strides = spatial_ints(ctx, "strides", nsp, 1)
    pads = spatial_ints(ctx, "pads", 2 * nsp, 0)
    # The indices are flat positions in the tensor MaxPool saw: the shape inferred from the attrs.
    pooled = list(x.shape[:2]) + [
        (i - 1) * s + k - pb - pe
        for i, s, k, pb, pe in zip(x.shape[2:], strides, ksz, pads[:nsp], pads[nsp:], strict=True)
    ]
    shape = pooled
    if output_shape is not None and np.asarray(output_shape).size:
        shape = [int(v) for v in np.asarray(output_shape).reshape(-1)]
        if len(shape) == nsp:
            shape = list(x.shape[:2]) + shape
        if len(shape) != x.ndim or shape[:2] != list(x.shape[:2]):
            raise ValueError(f"MaxUnpool: output_shape {shape} does not fit input {x.shape}")
    flat = indices.reshape(-1).astype(np.int64, copy=False)
    if flat.size and (flat.min() < 0 or flat.max() >= math.prod(pooled)):
        raise ValueError(f"MaxUnpool: indices out of range for the pooled shape {pooled}")
    if shape != pooled:
        # Same coordinates, laid out in the requested (usually larger) output.
        coords = np.unravel_index(flat, pooled)
        if any((cd >= size).any() for cd, size in zip(coords, shape, strict=True)):
            raise ValueError(f"MaxUnpool: output_shape {shape} cannot hold the indexed positions")
        flat = np.ravel_multi_index(coords, shape)
    y = np.zeros(math.prod(shape), dtype=x.dtype)
    y[flat] = x.reshape(-1)
    return y.reshape(shape)
