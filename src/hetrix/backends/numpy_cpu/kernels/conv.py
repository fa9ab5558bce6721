"""conv kernels of the NumPy CPU backend.

Conv is im2col (a strided window view of the padded input, copied once into a column matrix laid
out ``(C*K, out_pixels)``) followed by one BLAS matmul per group, so the output comes out directly
in NCHW order.  ConvTranspose and Col2Im share the inverse scatter (col2im), which loops over
kernel offsets only.  The spatial-attribute helpers here are shared with the pooling kernels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _library, _onednn
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

_FAST_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_BATCH_CHANNEL = (slice(None), slice(None))
"""Index prefix selecting every sample and channel."""


# --------------------------------------------------------------------------- spatial attributes


def spatial_ints(ctx: NodeContext, name: str, n: int, fill: int) -> list[int]:
    """The INTS attribute ``name`` with one value per spatial axis, ``fill`` when absent."""
    value = ctx.attrs.get(name)
    if not value:
        return [fill] * n
    if len(value) != n:
        raise ValueError(f"{ctx.op_type} {ctx.name!r}: {name}={list(value)} needs {n} values")
    return [int(v) for v in value]


def resolve_pads(
    ctx: NodeContext,
    in_shape: tuple[int, ...],
    kernel_shape: list[int],
    strides: list[int],
    dilations: list[int],
) -> tuple[list[int], list[int]]:
    """Begin and end pads per spatial axis, from ``pads`` or ``auto_pad`` (SAME_*/VALID)."""
    n = len(in_shape)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_shape, kernel_shape, strides, dilations, strict=True):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            # SAME_UPPER puts the odd extra pixel at the end, SAME_LOWER at the beginning.
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin, end
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad not in ("NOTSET", ""):
        raise ValueError(f"{ctx.op_type} {ctx.name!r}: unknown auto_pad {auto_pad!r}")
    pads = spatial_ints(ctx, "pads", 2 * n, 0)
    return pads[:n], pads[n:]


def pad_spatial(x: np.ndarray, begin: list[int], end: list[int], value: float = 0) -> np.ndarray:
    """``x`` padded with ``value`` on its trailing spatial axes (no copy when nothing to pad)."""
    if not any(begin) and not any(end):
        return x
    if min(begin) < 0 or min(end) < 0:  # negative pads crop: np.pad's semantics do not apply
        widths = [(0, 0)] * (x.ndim - len(begin)) + list(zip(begin, end, strict=True))
        return np.pad(x, widths, constant_values=value)
    # np.pad is general and slow; a filled buffer with the input copied into its middle is not
    lead = x.ndim - len(begin)
    shape = x.shape[:lead] + tuple(n + b + e for n, b, e in zip(x.shape[lead:], begin, end))
    out = np.full(shape, value, dtype=x.dtype)
    inner = tuple(slice(b, b + n) for b, n in zip(begin, x.shape[lead:]))
    out[(slice(None),) * lead + inner] = x
    return out


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16/bfloat16 math goes through float32 (numpy has no BLAS for them)."""
    return dtype if dtype in _FAST_FLOATS else np.dtype(np.float32)


# --------------------------------------------------------------------------- im2col / col2im


def im2col(
    xp: np.ndarray, kernel_shape: list[int], strides: list[int], dilations: list[int]
) -> tuple[np.ndarray, list[int]]:
    """Windows of padded ``xp`` (N, C, *S) as a view (N, C, *K, *O), and the output sizes O."""
    nsp = len(kernel_shape)
    axes = tuple(range(2, 2 + nsp))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    sizes = xp.shape[2:]
    if any(e > s for e, s in zip(eff, sizes, strict=True)):
        raise ValueError(f"kernel {kernel_shape} (dilated {eff}) larger than padded input {sizes}")
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=axes)  # (N, C, *O_all, *eff)
    index = (
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in strides)
        + tuple(slice(None, None, d) for d in dilations)
    )
    win = win[index]
    out = list(win.shape[2 : 2 + nsp])
    # Window axes first so that the column matrix is (C*K, O): the matmul then yields NCHW.
    order = (0, 1, *range(2 + nsp, 2 + 2 * nsp), *range(2, 2 + nsp))
    return win.transpose(order), out


def col2im(
    cols: np.ndarray,
    image_shape: list[int],
    strides: list[int],
    dilations: list[int],
    pads_begin: list[int],
) -> np.ndarray:
    """Sum the columns (N, C, *K, *L) back into an image (N, C, *image_shape) (cropped pads)."""
    nsp = len(image_shape)
    ksz = cols.shape[2 : 2 + nsp]
    lsz = cols.shape[2 + nsp :]
    # Buffer coordinates are shifted by ``offset`` so negative pads (crop < 0) stay in range.
    offset = [max(0, -p) for p in pads_begin]
    full = [
        max(o + (ln - 1) * s + (k - 1) * d + 1, o + p + size)
        for o, ln, s, k, d, p, size in zip(
            offset, lsz, strides, ksz, dilations, pads_begin, image_shape, strict=True
        )
    ]
    buf = np.zeros(cols.shape[:2] + tuple(full), dtype=cols.dtype)
    for koff in itertools.product(*(range(k) for k in ksz)):
        target = tuple(
            slice(o + k * d, o + k * d + (ln - 1) * s + 1, s)
            for o, k, d, ln, s in zip(offset, koff, dilations, lsz, strides, strict=True)
        )
        buf[_BATCH_CHANNEL + target] += cols[_BATCH_CHANNEL + koff]
    crop = tuple(
        slice(o + p, o + p + size)
        for o, p, size in zip(offset, pads_begin, image_shape, strict=True)
    )
    return buf[_BATCH_CHANNEL + crop]


def conv_nd(
    x: np.ndarray,
    w: np.ndarray,
    group: int,
    strides: list[int],
    dilations: list[int],
    pads_begin: list[int],
    pads_end: list[int],
) -> np.ndarray:
    """Grouped N-d convolution of x (N, C, *S) with w (M, C/group, *K), no bias, in x's dtype."""
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    ksz = list(w.shape[2:])
    if x.ndim != w.ndim:
        raise ValueError(f"Conv: input rank {x.ndim} and weight rank {w.ndim} differ")
    if group <= 0 or c % group or m % group or c // group != cg:
        raise ValueError(
            f"Conv: input channels {c}, weight {tuple(w.shape)} and group {group} do not match"
        )
    mg = m // group
    kprod = math.prod(ksz)
    if cg == 1 and mg == 1 and group > 1:
        if 1 <= len(ksz) <= 3 and x.dtype == np.float32 and _library.torch_functional() is not None:
            return _depthwise_onednn(x, w, group, strides, dilations, pads_begin, pads_end)
        return _depthwise(pad_spatial(x, pads_begin, pads_end), w, strides, dilations)
    if kprod == 1 and not any(pads_begin) and not any(pads_end):
        # 1x1 kernel: no im2col, the (strided) input already is the column matrix.
        if any(s != 1 for s in strides):
            x = x[_BATCH_CHANNEL + tuple(slice(None, None, s) for s in strides)]
        out = list(x.shape[2:])
        cols = x.reshape(n, group, cg, -1)
    else:
        view, out = im2col(pad_spatial(x, pads_begin, pads_end), ksz, strides, dilations)
        cols = view.reshape(n, group, cg * kprod, math.prod(out))  # the one im2col copy
    return grouped_matmul(w.reshape(group, mg, cg * kprod), cols).reshape(n, m, *out)


def _depthwise_onednn(
    x: np.ndarray, w: np.ndarray, group: int, strides: list[int], dilations: list[int],
    pads_begin: list[int], pads_end: list[int],
) -> np.ndarray:
    """Depthwise convolution through PyTorch's CPU kernel, on views of the numpy arrays
    (see :mod:`._library` for why)."""
    import torch

    functional = _library.torch_functional()
    nsp = x.ndim - 2
    xt = torch.from_numpy(np.ascontiguousarray(x))
    padding: list[int] | int = pads_begin
    if pads_begin != pads_end:
        pairs = [p for axis in reversed(range(nsp)) for p in (pads_begin[axis], pads_end[axis])]
        xt = functional.pad(xt, pairs)
        padding = 0
    wt = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    conv = (functional.conv1d, functional.conv2d, functional.conv3d)[nsp - 1]
    with torch.no_grad():
        return conv(xt, wt, None, strides, padding, dilations, group).numpy()


def _depthwise(
    xp: np.ndarray, w: np.ndarray, strides: list[int], dilations: list[int]
) -> np.ndarray:
    """Depthwise convolution (one filter per channel) as a sum over kernel offsets.

    A per-group matmul would make C tiny BLAS calls; instead each kernel offset contributes one
    whole-tensor multiply-add of a strided view of the input with that offset's C weights.
    """
    windows, out = im2col(xp, list(w.shape[2:]), strides, dilations)  # (N, C, *K, *O) view
    weights = w.reshape(w.shape[0], -1).astype(xp.dtype, copy=False)  # (C, K)
    y = np.zeros((xp.shape[0], xp.shape[1], *out), dtype=xp.dtype)
    scratch = np.empty_like(y)
    channel_shape = (1, -1) + (1,) * len(out)
    for index, offset in enumerate(np.ndindex(*w.shape[2:])):
        view = windows[(slice(None), slice(None), *offset)]
        np.multiply(view, weights[:, index].reshape(channel_shape), out=scratch)
        y += scratch
    return y


def grouped_matmul(wmat: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(group, M/g, K) @ (N, group, K, O) -> (N, group, M/g, O) through BLAS.

    numpy only reaches BLAS when the batch shapes of both operands agree (a broadcast batch axis
    drops it to a slow generic loop), so: one 2-D @ 3-D product for group 1, else one 3-D @ 3-D
    product per sample.
    """
    n, group, _, o = cols.shape
    if group == 1:
        return np.matmul(wmat[0], cols[:, 0])[:, None]
    y = np.empty((n, group, wmat.shape[1], o), dtype=np.result_type(wmat, cols))
    for i in range(n):
        np.matmul(wmat, cols[i], out=y[i])
    return y


def _geometry(ctx: NodeContext, x: np.ndarray, w: np.ndarray) -> tuple:
    """(strides, dilations, pads begin, pads end, group) of a Conv node on these shapes."""
    nsp = x.ndim - 2
    if nsp < 1:
        raise ValueError(f"Conv: input must have rank >= 3, got shape {x.shape}")
    ksz = spatial_ints(ctx, "kernel_shape", nsp, 0) if ctx.attrs.get("kernel_shape") else None
    if ksz is not None and tuple(ksz) != tuple(w.shape[2:]):
        raise ValueError(f"Conv: kernel_shape {ksz} does not match weight shape {w.shape}")
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    begin, end = resolve_pads(ctx, x.shape[2:], list(w.shape[2:]), strides, dilations)
    return strides, dilations, begin, end, int(ctx.attrs.get("group", 1))


def geometry(ctx: NodeContext, x: np.ndarray, w: np.ndarray) -> tuple:
    """(strides, dilations, pads begin, pads end, group) of a Conv node on these shapes, parsed
    once per input shape and kept in the node's cache."""
    key = (x.shape, w.shape)
    cached = ctx.cache.get("geometry")
    if cached is None or cached[0] != key:
        cached = (key, _geometry(ctx, x, w))
        ctx.cache["geometry"] = cached
    return cached[1]


def library_output_shape(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                         conv_geometry: tuple) -> tuple[int, ...] | None:
    """The output shape where oneDNN computes this convolution (``conv_geometry`` from
    :func:`geometry`), else None (the NumPy path then serves it, or raises what is wrong)."""
    strides, dilations, begin, end, group = conv_geometry
    if not (_onednn.can_run(x, w, b, begin, end) and _channels_match(x, w, group)):
        return None
    return _output_shape(x.shape, w.shape, strides, dilations, begin, end)


def _channels_match(x: np.ndarray, w: np.ndarray, group: int) -> bool:
    """Whether x, w and group agree (else the NumPy path raises the descriptive error)."""
    return group > 0 and x.shape[1] == w.shape[1] * group and w.shape[0] % group == 0


def _output_shape(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], strides: list[int],
    dilations: list[int], begin: list[int], end: list[int],
) -> tuple[int, ...]:
    spatial = (
        (size + b + e - d * (k - 1) - 1) // s + 1
        for size, k, s, d, b, e in zip(x_shape[2:], w_shape[2:], strides, dilations, begin, end)
    )
    return (x_shape[0], w_shape[0], *spatial)


def _add_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Add a per-channel bias (axis 1) in place."""
    if b is not None:
        if b.shape != (y.shape[1],):
            raise ValueError(f"bias shape {b.shape} does not match {y.shape[1]} output channels")
        y += b.astype(y.dtype, copy=False).reshape((-1,) + (1,) * (y.ndim - 2))
    return y


# --------------------------------------------------------------------------- Conv


@kernel("Conv", since=1)
def conv(ctx: NodeContext, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """N-d grouped, dilated, strided, padded convolution with optional bias."""
    y = conv_fused(ctx, x, w, b)[0]
    _onednn.offer_direct_conv(ctx, conv, (x, w, b)[:ctx.num_inputs])
    return y


def conv_fused(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    activation: str = "",
) -> tuple[np.ndarray, bool]:
    """Conv, plus ``residual`` when given; through oneDNN when it can (see :mod:`._onednn`).

    Returns ``(y, applied)``: whether ``activation`` (a Hetrix activation name, "" for none) was
    applied as a oneDNN post-op; when not, the caller applies it.
    """
    # a residual nothing reads afterwards takes the result in place (see _onednn.conv2d)
    overwrite = residual is not None and _onednn.residual_overwritable(ctx, residual)
    prepared = ctx.cache.get("onednn_prepared")
    if prepared is not None:  # this node's oneDNN call, decided on an earlier run
        y = prepared(x, w, b, residual, overwrite)
        if y is not None:
            return y, ctx.cache["onednn_applied"]
    strides, dilations, begin, end, group = geometry(ctx, x, w)
    out_shape = library_output_shape(x, w, b, (strides, dilations, begin, end, group))
    if out_shape is not None:
        # a residual that broadcasts is added by NumPy afterwards, and then so is the activation
        fuse_residual = residual is None or residual.shape == out_shape
        fusable = _onednn.fuses(activation, with_residual=residual is not None)
        post_op = activation if fuse_residual and fusable else ""
        y = _onednn.conv2d(
            ctx.cache, x, w, b, strides=strides, dilations=dilations, pads=begin, group=group,
            activation=post_op,
            activation_params=list(ctx.attrs.get("activation_params") or []),
            residual=residual if fuse_residual else None,
            owns_weight=1 in ctx.owned_inputs,
            overwrite=overwrite and fuse_residual,
        )
        if not fuse_residual:
            y = y + residual
        ctx.cache["onednn_applied"] = post_op == activation
        return y, post_op == activation
    dtype = _compute_dtype(x.dtype)
    w = _onednn.dense_weight(ctx.cache, w)  # its memory may have been released after packing
    y = conv_nd(
        x.astype(dtype, copy=False),
        w.astype(dtype, copy=False),
        group,
        strides,
        dilations,
        begin,
        end,
    )
    y = _add_bias(y, b)
    if residual is not None:
        y = np.add(y, residual, out=y) if residual.shape == y.shape else y + residual
    return y.astype(x.dtype, copy=False), not activation


@kernel("ConvInteger", since=10)
def conv_integer(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    x_zero_point: np.ndarray | None = None,
    w_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """Integer convolution of (x - x_zero_point) and (w - w_zero_point), accumulated in int32."""
    nsp = x.ndim - 2
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    begin, end = resolve_pads(ctx, x.shape[2:], list(w.shape[2:]), strides, dilations)
    # float64 BLAS is exact for these integer sums (< 2**53) and far faster than integer matmul.
    xf = x.astype(np.float64)
    if x_zero_point is not None:
        xf -= np.float64(np.asarray(x_zero_point).reshape(-1)[0])
    wf = w.astype(np.float64)
    if w_zero_point is not None:
        wzp = np.asarray(w_zero_point, dtype=np.float64).reshape(-1)
        wf -= wzp.reshape((-1,) + (1,) * (w.ndim - 1)) if wzp.size > 1 else wzp[0]
    y = conv_nd(xf, wf, int(ctx.attrs.get("group", 1)), strides, dilations, begin, end)
    return np.rint(y).astype(np.int32)


# --------------------------------------------------------------------------- ConvTranspose


def _conv_transpose_geometry(
    ctx: NodeContext, in_shape: tuple[int, ...], ksz: list[int]
) -> tuple[list[int], list[int], list[int], list[int]]:
    """strides, dilations, output spatial shape and begin pads of a ConvTranspose node."""
    nsp = len(in_shape)
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    out_pad = spatial_ints(ctx, "output_padding", nsp, 0)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    full = [
        s * (i - 1) + op + (k - 1) * d + 1
        for s, i, op, k, d in zip(strides, in_shape, out_pad, ksz, dilations, strict=True)
    ]
    output_shape = ctx.attrs.get("output_shape")
    if output_shape:
        out = [int(v) for v in output_shape][-nsp:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [i * s for i, s in zip(in_shape, strides, strict=True)]
    else:
        if auto_pad == "VALID":
            return strides, dilations, full, [0] * nsp
        pads = spatial_ints(ctx, "pads", 2 * nsp, 0)
        out = [f - pb - pe for f, pb, pe in zip(full, pads[:nsp], pads[nsp:], strict=True)]
        if any(o <= 0 for o in out):
            raise ValueError(f"ConvTranspose: pads {pads} leave an empty output {out}")
        return strides, dilations, out, pads[:nsp]
    totals = [f - o for f, o in zip(full, out, strict=True)]
    if auto_pad == "SAME_UPPER":
        begin = [t // 2 for t in totals]
    else:
        begin = [t - t // 2 for t in totals]
    return strides, dilations, out, begin


@kernel("ConvTranspose", since=1)
def conv_transpose(
    ctx: NodeContext, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> np.ndarray:
    """Transposed (fractionally strided) grouped convolution: matmul then col2im."""
    n, c = x.shape[:2]
    group = int(ctx.attrs.get("group", 1))
    if w.ndim != x.ndim or w.shape[0] != c or c % group:
        raise ValueError(
            f"ConvTranspose: weight {w.shape} does not fit input {x.shape} with group {group}"
        )
    ksz = list(w.shape[2:])
    cg, mg = c // group, w.shape[1]
    strides, dilations, out, begin = _conv_transpose_geometry(ctx, x.shape[2:], ksz)
    y = _onednn.conv_transpose2d(ctx.cache, x, w, b, strides, dilations, out, begin, group)
    if y is not None:
        return y
    dtype = _compute_dtype(x.dtype)
    kprod = math.prod(ksz)
    wmat = w.astype(dtype, copy=False).reshape(group, cg, mg * kprod).transpose(0, 2, 1)
    cols = np.matmul(wmat, x.astype(dtype, copy=False).reshape(n, group, cg, -1))
    cols = cols.reshape(n, group * mg, *ksz, *x.shape[2:])
    y = col2im(cols, out, strides, dilations, begin)
    return _add_bias(y, b).astype(x.dtype, copy=False)


@kernel("Col2Im", since=18)
def col2im_op(
    ctx: NodeContext, x: np.ndarray, image_shape: np.ndarray, block_shape: np.ndarray
) -> np.ndarray:
    """Rearrange column blocks (N, C*prod(block), L) back into an image, summing overlaps."""
    image = [int(v) for v in np.asarray(image_shape).reshape(-1)]
    block = [int(v) for v in np.asarray(block_shape).reshape(-1)]
    nsp = len(image)
    if len(block) != nsp or x.ndim != 3:
        raise ValueError(f"Col2Im: input {x.shape}, image_shape {image}, block_shape {block}")
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    pads = spatial_ints(ctx, "pads", 2 * nsp, 0)
    counts = [
        (i + pb + pe - (k - 1) * d - 1) // s + 1
        for i, pb, pe, k, d, s in zip(
            image, pads[:nsp], pads[nsp:], block, dilations, strides, strict=True
        )
    ]
    kprod = math.prod(block)
    if x.shape[1] % kprod or x.shape[2] != math.prod(counts):
        raise ValueError(
            f"Col2Im: input {x.shape} does not hold blocks {block} over {counts} positions"
        )
    cols = x.reshape(x.shape[0], x.shape[1] // kprod, *block, *counts)
    return col2im(cols, image, strides, dilations, pads[:nsp]).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- DeformConv


def _deform_columns(
    x: np.ndarray,
    offset: np.ndarray,
    mask: np.ndarray | None,
    ksz: list[int],
    strides: list[int],
    dilations: list[int],
    pads_begin: list[int],
    offset_group: int,
) -> tuple[np.ndarray, list[int]]:
    """Bilinearly sampled columns (N, C, K, O) at the offset kernel positions, and O's shape."""
    n, c = x.shape[:2]
    sizes = x.shape[2:]
    nsp = len(sizes)
    out = list(offset.shape[2:])
    kprod, oprod = math.prod(ksz), math.prod(out)
    if c % offset_group or offset.shape[1] != offset_group * kprod * nsp:
        raise ValueError(f"DeformConv: offset {offset.shape} does not fit input {x.shape}")
    off = offset.reshape(n, offset_group, kprod, nsp, oprod)
    # Undeformed sampling position of every (kernel offset, output pixel), per spatial axis.
    kgrid = np.indices(ksz).reshape(nsp, kprod)
    ogrid = np.indices(out).reshape(nsp, oprod)
    base = [
        (ogrid[a] * strides[a] - pads_begin[a])[None, :] + (kgrid[a] * dilations[a])[:, None]
        for a in range(nsp)
    ]
    pos = [base[a] + off[:, :, :, a, :] for a in range(nsp)]  # each (N, og, K, O)
    low = [np.floor(p) for p in pos]
    frac = [p - lo for p, lo in zip(pos, low, strict=True)]
    low = [lo.astype(np.int64) for lo in low]
    xg = x.reshape(n, offset_group, c // offset_group, -1)
    cols = np.zeros((n, offset_group, c // offset_group, kprod * oprod), dtype=x.dtype)
    for corner in itertools.product((0, 1), repeat=nsp):
        weight = np.ones_like(frac[0])
        flat = np.zeros(low[0].shape, dtype=np.int64)
        valid = np.ones(low[0].shape, dtype=bool)
        for a, bit in enumerate(corner):
            idx = low[a] + bit
            weight = weight * (frac[a] if bit else 1 - frac[a])
            valid &= (idx >= 0) & (idx < sizes[a])
            flat = flat * sizes[a] + np.clip(idx, 0, sizes[a] - 1)
        weight = np.where(valid, weight, 0).reshape(n, offset_group, 1, -1)
        picked = np.take_along_axis(xg, flat.reshape(n, offset_group, 1, -1), axis=3)
        cols += weight.astype(x.dtype, copy=False) * picked
    if mask is not None:
        m = mask.reshape(n, offset_group, 1, kprod * oprod).astype(x.dtype, copy=False)
        cols *= m
    return cols.reshape(n, c, kprod, oprod), out


@kernel("DeformConv", since=19)
def deform_conv(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    offset: np.ndarray,
    b: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Deformable convolution (v1/v2 with mask): bilinear sampling at offset taps, then matmul."""
    nsp = x.ndim - 2
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    ksz = list(w.shape[2:])
    group = int(ctx.attrs.get("group", 1))
    if c % group or m % group or c // group != cg:
        raise ValueError(f"DeformConv: input {x.shape}, weight {w.shape}, group {group} mismatch")
    strides = spatial_ints(ctx, "strides", nsp, 1)
    dilations = spatial_ints(ctx, "dilations", nsp, 1)
    pads = spatial_ints(ctx, "pads", 2 * nsp, 0)
    dtype = _compute_dtype(x.dtype)
    cols, out = _deform_columns(
        x.astype(dtype, copy=False),
        offset.astype(dtype, copy=False),
        mask,
        ksz,
        strides,
        dilations,
        pads[:nsp],
        int(ctx.attrs.get("offset_group", 1)),
    )
    kprod = math.prod(ksz)
    cols = cols.reshape(n, group, cg * kprod, -1)
    y = grouped_matmul(w.astype(dtype, copy=False).reshape(group, m // group, cg * kprod), cols)
    return _add_bias(y.reshape(n, m, *out), b).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- CausalConvWithState


@kernel("CausalConvWithState", since=27)
def causal_conv_with_state(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    past_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stateful causal depthwise 1-D conv: returns (output, last k-1 steps of the padded input)."""
    if x.ndim != 3 or w.ndim != 3 or w.shape[0] != x.shape[1] or w.shape[1] != 1:
        raise ValueError(f"CausalConvWithState: input {x.shape} and weight {w.shape} mismatch")
    bsz, ch, length = x.shape
    k = w.shape[2]
    dtype = _compute_dtype(x.dtype)
    if past_state is None:
        past = np.zeros((bsz, ch, k - 1), dtype=dtype)
    elif past_state.shape != (bsz, ch, k - 1):
        raise ValueError(
            f"CausalConvWithState: past_state {past_state.shape} != {(bsz, ch, k - 1)}"
        )
    else:
        past = past_state.astype(dtype, copy=False)
    seq = np.concatenate([past, x.astype(dtype, copy=False)], axis=2)
    wk = w.astype(dtype, copy=False).reshape(ch, k)
    # Depthwise: one multiply-add per kernel tap over the whole (batch, channel, time) block.
    y = seq[:, :, :length] * wk[:, 0, None]
    for j in range(1, k):
        y += seq[:, :, j : j + length] * wk[:, j, None]
    if b is not None:
        y += b.astype(dtype, copy=False)[:, None]
    activation = ctx.attrs.get("activation", "none")
    if activation in ("silu", "swish"):
        y *= 0.5 * (1 + np.tanh(0.5 * y))  # sigmoid without exp overflow
    elif activation != "none":
        raise ValueError(f"CausalConvWithState: unknown activation {activation!r}")
    present = seq[:, :, seq.shape[2] - (k - 1) :]
    return y.astype(x.dtype, copy=False), np.ascontiguousarray(present).astype(x.dtype, copy=False)
