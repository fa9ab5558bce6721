"""normalization kernels of the NumPy CPU backend.

BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
RMSNormalization, LRN, MeanVarianceNormalization and LpNormalization.  Statistics of float16 and
bfloat16 inputs are computed in float32 (the ``stash_type`` default) and cast back at the end.
float32 LayerNormalization and inference BatchNormalization run on PyTorch's fused kernels when it
is installed (one pass over the data, where NumPy makes two to five and allocates temporaries;
BatchNormalization keeps a convolution's channels-last layout: 2-4x faster on DenseNet's shapes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from hetrix.backends.numpy_cpu.kernels import _dnnl, _library, _onednn
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


def _work_dtype(dtype: np.dtype, stash: np.dtype | None = None) -> np.dtype:
    """The float dtype to compute statistics in: at least float32, at least ``stash``."""
    if dtype == np.float16 or dtype.type.__module__ == "ml_dtypes" or dtype.kind != "f":
        dtype = np.dtype(np.float32)
    return np.promote_types(dtype, stash) if stash is not None else dtype


def _as_work(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return x.astype(dtype, copy=False)


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel (axis 1) vector against ``x``."""
    return (-1,) + (1,) * (x.ndim - 2)


def _check_channel_param(op: str, name: str, p: np.ndarray, channels: int) -> None:
    if p.size != channels:
        raise ValueError(
            f"{op}: {name} has {p.size} elements, expected one per channel ({channels})"
        )


def _broadcast_into(op: str, y: np.ndarray, p: np.ndarray, ufunc: np.ufunc) -> None:
    """In-place ``y = ufunc(y, p)``; ValueError when ``p`` does not broadcast to ``y``."""
    try:
        ufunc(y, p, out=y, casting="unsafe")
    except ValueError as exc:
        raise ValueError(
            f"{op}: parameter of shape {p.shape} does not broadcast to {y.shape}"
        ) from exc


# --- BatchNormalization ---------------------------------------------------------------------


def _bn_param(op: str, name: str, p: np.ndarray, x: np.ndarray, spatial: bool) -> np.ndarray:
    """A BN parameter shaped to broadcast: per channel, or per activation when not spatial."""
    if spatial:
        _check_channel_param(op, name, p, x.shape[1])
        return p.reshape(_channel_shape(x))
    size = math.prod(x.shape[1:])
    if p.size != size:
        raise ValueError(f"{op}: non-spatial {name} must have C*D1*..*Dn = {size} elements")
    return p.reshape(x.shape[1:])


def _bn_apply(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> np.ndarray:
    """y = (x - mean) / sqrt(var + eps) * scale + bias, folded into one multiply-add."""
    wd = _work_dtype(x.dtype)
    mul = _as_work(scale, wd) / np.sqrt(_as_work(var, wd) + wd.type(eps))
    add = _as_work(bias, wd) - _as_work(mean, wd) * mul
    y = _as_work(x, wd) * mul
    y += add
    return y.astype(x.dtype, copy=False)


def _bn_params(
    op: str, x: np.ndarray, spatial: bool, named: tuple[tuple[str, np.ndarray], ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale, bias, mean and var shaped to broadcast against ``x`` (see :func:`_bn_param`)."""
    s, b, m, v = (_bn_param(op, name, p, x, spatial) for name, p in named)
    return s, b, m, v


def batch_norm_inference(
    x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
    eps: float, cache: dict[str, Any] | None = None, relu: bool = False,
) -> np.ndarray | None:
    """Inference BatchNormalization on torch (one pass, layout kept), then Relu in place when
    ``relu``; None where it does not apply (no torch, not float32, parameters not one value per
    channel).

    The statistics fold into one multiplier and one offset per channel, computed in float64 and
    kept in ``cache`` (the node's) while the parameters are the same constant arrays, so a run
    costs one ``addcmul`` pass: twice as fast as ``torch.batch_norm`` on DenseNet's
    channels-last activations, which recomputes ``1/sqrt(var + eps)`` on every call.
    """
    channels = x.shape[1] if x.ndim >= 2 else -1
    if not (
        x.dtype == np.float32
        and x.ndim >= 3
        and x.size
        and all(p.dtype == np.float32 and p.shape == (channels,) for p in (scale, bias, mean, var))
        and _library.torch_functional() is not None
    ):
        return None
    import torch

    multiplier, offset = folded_batch_norm(cache, scale, bias, mean, var, eps, x.ndim,
                                           torch.float32)
    y = torch.addcmul(offset, _library.as_tensor(x), multiplier)
    if relu:
        y.relu_()
    return y.numpy()


def kept_batch_norm(ctx: NodeContext, kernel: Any, inputs: tuple[np.ndarray, ...],
                    relu: bool) -> np.ndarray | None:
    """Inference BatchNormalization of ``inputs`` (X, scale, B, mean, var), then Relu when
    ``relu``, by the oneDNN primitive the node keeps (:class:`._dnnl.BatchNorm`), offered as
    ``kernel``'s direct call; None where that path does not serve it (no library, a statistic
    that may change between runs: only read-only constants are copied into a primitive)."""
    x, scale, bias, mean, var = inputs
    if (type(x) is not np.ndarray or x.ndim != 4 or not _onednn.available()
            or any(p.flags.writeable for p in (scale, bias, mean, var))):
        return None
    eps = float(ctx.attrs.get("epsilon", 1e-5))
    return _dnnl.run_kept(
        ctx, "dnnl_batch_norm", "batch normalization", x,
        lambda: _dnnl.create_batch_norm(x, scale, bias, mean, var, epsilon=eps, relu=relu),
        kernel=kernel, inputs=inputs)


def prefix_batch_norm(ctx: NodeContext, kernel: Any, inputs: tuple[np.ndarray, ...],
                      relu: bool) -> np.ndarray | None:
    """Inference BatchNormalization of ``inputs`` (X, scale, B, mean, var), then Relu when
    ``relu``, for channels-last values whose channels are a prefix of a wider buffer
    (DenseNet's Concat chain, which oneDNN's normalization takes only as reference code), by the
    node's kept copy-then-binary primitive (:class:`._dnnl.ScaleShift`), offered as
    ``kernel``'s direct call; None where that does not serve (no library, another layout,
    statistics that may change between runs).

    In float32 PyTorch's pass alone was the faster (72 us against 98 back to back); as a direct
    call, the plan joins it with the convolutions after it (:mod:`._dnnl_chain`), which pays:
    see ``benchmarks/RESULTS.md``."""
    x, scale, bias, mean, var = inputs
    if (type(x) is not np.ndarray or x.ndim != 4 or x.strides[1] != x.itemsize
            or x.strides[3] == x.shape[1] * x.itemsize  # dense: the kept normalization's
            or not _onednn.available()
            or any(p.flags.writeable for p in (scale, bias, mean, var))):
        return None
    epsilon = float(ctx.attrs.get("epsilon", 1e-5))

    def make() -> Any:
        multiplier, offset = batch_norm_factors(scale, bias, mean, var, epsilon)
        return _dnnl.create_scale_shift(x, multiplier, offset, relu)

    return _dnnl.run_kept(ctx, "dnnl_scale_shift", "scale and shift", x, make, kernel=kernel,
                          inputs=inputs)


def batch_norm_factors(scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                       eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization's statistics folded, in float64, into ``(multiplier,
    offset)`` with ``x * multiplier + offset`` the op."""
    multiplier = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return multiplier, np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * multiplier


def folded_batch_norm(
    cache: dict[str, Any] | None, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
    var: np.ndarray, eps: float, ndim: int, dtype: Any,
) -> tuple[Any, Any]:
    """Inference BatchNormalization's statistics as ``(multiplier, offset)``: torch tensors of
    ``dtype`` shaped ``(1, C, 1, ...)`` for an ``ndim``-D input, so that ``x * multiplier +
    offset`` is the op.  Computed in float64, then rounded once to ``dtype``; kept in ``cache``
    (the node's) while the parameters are the same constant arrays (a parameter fed at run time
    is writable and may change, so it is folded again on each call)."""
    import torch

    params = (scale, bias, mean, var)
    key = (eps, ndim, dtype)
    folded = cache.get("bn_folded") if cache is not None else None
    if folded is not None and folded[1] == key and all(
            a is b for a, b in zip(folded[0], params, strict=True)):
        return folded[2], folded[3]
    multiplier, offset = batch_norm_factors(scale, bias, mean, var, eps)
    shape = (1, -1) + (1,) * (ndim - 2)
    tensors = (torch.from_numpy(multiplier.reshape(shape)).to(dtype),
               torch.from_numpy(offset.reshape(shape)).to(dtype))
    if cache is not None and not any(p.flags.writeable for p in params):
        cache["bn_folded"] = (params, key, *tensors)
    return tensors


def _bn_batch_stats(x: np.ndarray, spatial: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance over every axis but the channel (or over the batch only)."""
    axes = (0, *range(2, x.ndim)) if spatial else (0,)
    xf = _as_work(x, _work_dtype(x.dtype))
    mean = xf.mean(axis=axes, keepdims=True)
    d = xf - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    return mean, var


def _bn_check(x: np.ndarray) -> None:
    if x.ndim < 2:
        raise ValueError(f"BatchNormalization: X must be [N, C, ...], got shape {x.shape}")


@kernel("BatchNormalization", since=1)
def batch_norm_v1(
    ctx: NodeContext,
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Opsets 1-9: test mode (one output) or training mode (Y, mean, var, saved mean/var)."""
    _bn_check(x)
    op, eps = "BatchNormalization", ctx.attrs.get("epsilon", 1e-5)
    spatial = bool(ctx.attrs.get("spatial", 1))
    named = (("scale", scale), ("B", bias), ("mean", mean), ("var", var))
    if ctx.num_outputs == 1 or ctx.attrs.get("is_test", 0):
        # the one-pass torch path checks the parameters' shapes itself; NumPy's broadcast ones
        # (and the errors for bad ones) are built only where it does not run
        y = batch_norm_inference(x, scale, bias, mean, var, eps, ctx.cache) if spatial else None
        if y is None:
            y = _bn_apply(x, *_bn_params(op, x, spatial, named), eps)
        return y if ctx.num_outputs == 1 else (y, mean.copy(), var.copy(), mean.copy(), var.copy())
    s, b, m, v = _bn_params(op, x, spatial, named)
    bm, bv = _bn_batch_stats(x, spatial)
    y = _bn_apply(x, s, b, bm, bv, eps)
    momentum = ctx.attrs.get("momentum", 0.9)
    outs = (
        (m * momentum + bm * (1 - momentum)).reshape(mean.shape).astype(mean.dtype),
        (v * momentum + bv * (1 - momentum)).reshape(var.shape).astype(var.dtype),
        bm.reshape(mean.shape).astype(mean.dtype),
        bv.reshape(var.shape).astype(var.dtype),
    )
    return (y, *outs[: ctx.num_outputs - 1])


@kernel("BatchNormalization", since=14)
def batch_norm(
    ctx: NodeContext,
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Opset 14+: inference with the given statistics, or training_mode with running updates."""
    _bn_check(x)
    op, eps = "BatchNormalization", ctx.attrs.get("epsilon", 1e-5)
    named = (("scale", scale), ("B", bias), ("input_mean", mean), ("input_var", var))
    if not ctx.attrs.get("training_mode", 0):
        y = batch_norm_inference(x, scale, bias, mean, var, eps, ctx.cache)  # as in v1
        if y is None:
            y = _bn_apply(x, *_bn_params(op, x, True, named), eps)
        return y if ctx.num_outputs == 1 else (y, mean.copy(), var.copy())[: ctx.num_outputs]
    s, b, m, v = _bn_params(op, x, True, named)
    bm, bv = _bn_batch_stats(x, True)
    y = _bn_apply(x, s, b, bm, bv, eps)
    momentum = ctx.attrs.get("momentum", 0.9)
    running_mean = (m * momentum + bm * (1 - momentum)).reshape(mean.shape).astype(mean.dtype)
    running_var = (v * momentum + bv * (1 - momentum)).reshape(var.shape).astype(var.dtype)
    return (y, running_mean, running_var)[: ctx.num_outputs]


# --- Instance / Group normalization ----------------------------------------------------------


def _standardize_rows(x2: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalize each row of the 2-D float array ``x2``: returns (normalized, mean, inv_std)."""
    n = x2.shape[1]
    mean = x2.mean(axis=1, keepdims=True) if n else np.zeros((x2.shape[0], 1), x2.dtype)
    d = x2 - mean
    var = np.einsum("ij,ij->i", d, d)[:, None] / max(n, 1)  # one pass, no d*d temporary
    inv_std = 1.0 / np.sqrt(var + eps)
    d *= inv_std
    return d, mean, inv_std


_TORCH_GROUP_NORM_MIN = 4096
"""Inputs of at least this many float32 elements take PyTorch's group normalization (instance
normalization is its one-channel-per-group case).  NumPy's path first copies a channels-last
input to C order and makes several passes: InstanceNormalization of a 1 x 64 x 96 x 96
convolution output took 1.8 ms in a run, GroupNormalization in 8 groups 4.4 (ORT's model
whole: 1.5 and 2.4)."""


def _torch_group_norm(x: np.ndarray, groups: int, scale: np.ndarray, bias: np.ndarray,
                      epsilon: float) -> np.ndarray | None:
    """``torch.nn.functional.group_norm`` of ``x`` with per-channel ``scale`` and ``bias``
    (float32, at least :data:`_TORCH_GROUP_NORM_MIN` elements, PyTorch installed); else None.
    The result keeps ``x``'s layout (channels-last stays channels-last)."""
    functional = _library.torch_functional()
    if (functional is None or x.dtype != np.float32 or x.ndim < 3
            or x.size < _TORCH_GROUP_NORM_MIN or scale.dtype != np.float32
            or bias.dtype != np.float32):
        return None
    return functional.group_norm(
        _library.as_tensor(x), groups, _library.as_tensor(scale.reshape(-1)),
        _library.as_tensor(bias.reshape(-1)), float(epsilon)).numpy()


@kernel("InstanceNormalization", since=1)
def instance_norm(
    ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """Normalize each (instance, channel) over its spatial dims; scale and shift per channel."""
    op = "InstanceNormalization"
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be [N, C, ...], got shape {x.shape}")
    _check_channel_param(op, "scale", scale, x.shape[1])
    _check_channel_param(op, "B", bias, x.shape[1])
    fast = _torch_group_norm(x, x.shape[1], scale, bias, ctx.attrs.get("epsilon", 1e-5))
    if fast is not None:
        return fast
    wd = _work_dtype(x.dtype)
    rows = x.shape[0] * x.shape[1]
    y, _, _ = _standardize_rows(_as_work(x, wd).reshape(rows, -1), ctx.attrs.get("epsilon", 1e-5))
    y = y.reshape(x.shape)
    y *= _as_work(scale, wd).reshape(_channel_shape(x))
    y += _as_work(bias, wd).reshape(_channel_shape(x))
    return y.astype(x.dtype, copy=False)


def _group_norm(
    ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, per_group: bool
) -> np.ndarray:
    op = "GroupNormalization"
    groups = ctx.attrs["num_groups"]
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be [N, C, ...], got shape {x.shape}")
    channels = x.shape[1]
    if groups <= 0 or channels % groups:
        raise ValueError(f"{op}: {channels} channels cannot be split into {groups} groups")
    if per_group:  # opset 18: scale/bias hold one value per group
        _check_channel_param(op, "scale", scale, groups)
        _check_channel_param(op, "bias", bias, groups)
        scale = np.repeat(scale.reshape(-1), channels // groups)
        bias = np.repeat(bias.reshape(-1), channels // groups)
    _check_channel_param(op, "scale", scale, channels)
    _check_channel_param(op, "bias", bias, channels)
    stash = tensor_dtype_to_np_dtype(ctx.attrs.get("stash_type", 1))
    if stash == np.float32:  # PyTorch computes the statistics in float32 as well
        fast = _torch_group_norm(x, groups, scale, bias, ctx.attrs.get("epsilon", 1e-5))
        if fast is not None:
            return fast
    wd = _work_dtype(x.dtype, stash)
    rows = x.shape[0] * groups
    y, _, _ = _standardize_rows(_as_work(x, wd).reshape(rows, -1), ctx.attrs.get("epsilon", 1e-5))
    y = y.reshape(x.shape).astype(x.dtype, copy=False)
    # The affine stage runs in X's type (it does not depend on stash_type).
    y = y * scale.astype(x.dtype).reshape(_channel_shape(x))
    y += bias.astype(x.dtype).reshape(_channel_shape(x))
    return y


@kernel("GroupNormalization", since=18)
def group_norm_v18(
    ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """Group normalization with one scale/bias per group (opset 18)."""
    return _group_norm(ctx, x, scale, bias, per_group=True)


@kernel("GroupNormalization", since=21)
def group_norm(ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Group normalization with one scale/bias per channel (opset 21+)."""
    return _group_norm(ctx, x, scale, bias, per_group=False)


# --- Layer / RMS normalization ---------------------------------------------------------------


def _trailing_axis(op: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def _layer_norm_params_fit(x: np.ndarray, axis: int, *params: np.ndarray | None) -> bool:
    """Whether scale and bias are float32 and broadcast onto the normalized shape x.shape[axis:]
    alone (what torch's layer_norm takes); other layouts stay on NumPy, which broadcasts onto X."""
    normalized = x.shape[axis:]
    for p in params:
        if p is None:
            continue
        if p.dtype != np.float32 or p.ndim > len(normalized):
            return False
        try:
            if np.broadcast_shapes(p.shape, normalized) != normalized:
                return False
        except ValueError:
            return False
    return True


def _torch_layer_norm(
    x: np.ndarray, axis: int, eps: float, scale: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, mean, inv_std) by ``torch.native_layer_norm``; statistics shaped like NumPy's."""
    import torch

    normalized = x.shape[axis:]

    def param(p: np.ndarray | None) -> torch.Tensor | None:
        if p is None:
            return None
        return _library.as_tensor(np.broadcast_to(p, normalized) if p.shape != normalized else p)

    y, mean, inv_std = torch.native_layer_norm(
        _library.as_tensor(x), list(normalized), param(scale), param(bias), eps
    )
    return y.numpy(), mean.numpy(), inv_std.numpy()


@kernel("LayerNormalization", since=17)
def layer_norm(
    ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Normalize over axes [axis, rank), scale and shift; optional Mean and InvStdDev outputs."""
    return layer_norm_of(ctx, layer_norm, x, scale, bias)


def layer_norm_of(
    ctx: NodeContext, kernel: Any, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None
) -> np.ndarray | tuple[np.ndarray, ...]:
    """LayerNormalization for the node whose kernel is ``kernel`` (the standard op's, or
    Hetrix's for older opsets): that kernel's call is what a kept primitive may replace."""
    op = "LayerNormalization"
    axis = _trailing_axis(op, ctx.attrs.get("axis", -1), x.ndim)
    stash = tensor_dtype_to_np_dtype(ctx.attrs.get("stash_type", 1))
    wd = _work_dtype(x.dtype, stash)
    eps = ctx.attrs.get("epsilon", 1e-5)
    if ctx.num_outputs == 1 and x.dtype == wd == np.float32:
        y = kept_layer_norm(ctx, kernel, (x, scale, bias)[:ctx.num_inputs], axis, eps)
        if y is not None:
            return y
    if (
        x.dtype == wd == np.float32
        and x.size
        and _library.torch_functional() is not None
        and _layer_norm_params_fit(x, axis, scale, bias)
    ):
        y, mean, inv_std = _torch_layer_norm(x, axis, eps, scale, bias)
    else:
        y, mean, inv_std = _numpy_layer_norm(op, x, axis, eps, wd, scale, bias)
    if ctx.num_outputs == 1:
        return y
    stat_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    outs = [y]
    for i, stat in ((1, mean), (2, inv_std)):
        if i < ctx.num_outputs:
            dt = (ctx.output_dtypes[i] if i < len(ctx.output_dtypes) else None) or stash
            outs.append(stat.reshape(stat_shape).astype(dt, copy=False))
    return tuple(outs)


def kept_layer_norm(ctx: NodeContext, kernel: Any, inputs: tuple[np.ndarray | None, ...],
                    axis: int, eps: float) -> np.ndarray | None:
    """LayerNormalization of ``inputs`` (X, scale, B?) over the axes from ``axis`` on by the
    oneDNN primitive the node keeps (:class:`._dnnl.LayerNorm`), offered as ``kernel``'s direct
    call; None where that path does not serve it (no library, parameters that may change between
    runs or are not float32 values of the normalized shape)."""
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    assert x is not None and scale is not None
    if (type(x) is not np.ndarray or not _onednn.available()
            or any(p is not None and p.flags.writeable for p in (scale, bias))
            or not _layer_norm_params_fit(x, axis, scale, bias)):
        return None
    normalized = x.shape[axis:]

    def make() -> Any:
        scale_values, bias_values = (None if p is None else np.broadcast_to(p, normalized)
                                     for p in (scale, bias))
        assert scale_values is not None
        return _dnnl.create_layer_norm(x, axis, scale_values, bias_values, float(eps))

    return _dnnl.run_kept(ctx, "dnnl_layer_norm", "layer normalization", x, make,
                          kernel=kernel, inputs=inputs)


def _numpy_layer_norm(
    op: str,
    x: np.ndarray,
    axis: int,
    eps: float,
    wd: np.dtype,
    scale: np.ndarray,
    bias: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, mean, inv_std) in NumPy, statistics in ``wd``; Y in X's dtype."""
    rows = math.prod(x.shape[:axis])
    x2 = _as_work(x, wd).reshape(rows, -1)
    y, mean, inv_std = _standardize_rows(x2, eps)
    y = y.reshape(x.shape)
    _broadcast_into(op, y, scale, np.multiply)
    if bias is not None:
        _broadcast_into(op, y, bias, np.add)
    return y.astype(x.dtype, copy=False), mean, inv_std


@kernel("RMSNormalization", since=23)
def rms_norm(ctx: NodeContext, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x / sqrt(mean(x**2 over [axis, rank)) + epsilon) * scale."""
    op = "RMSNormalization"
    axis = _trailing_axis(op, ctx.attrs.get("axis", -1), x.ndim)
    stash = tensor_dtype_to_np_dtype(ctx.attrs.get("stash_type", 1))
    wd = _work_dtype(x.dtype, stash)
    rows = math.prod(x.shape[:axis])
    x2 = _as_work(x, wd).reshape(rows, -1)
    ms = np.einsum("ij,ij->i", x2, x2)[:, None] / max(x2.shape[1], 1)
    y = x2 * (1.0 / np.sqrt(ms + ctx.attrs.get("epsilon", 1e-5))).astype(wd)
    y = y.reshape(x.shape).astype(x.dtype, copy=False)
    _broadcast_into(op, y, scale, np.multiply)
    return y


# --- LRN, MVN, LpNormalization ---------------------------------------------------------------


def _torch_lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """LRN by PyTorch's vectorised elementwise kernels, in the layout ``x`` comes in.

    The window sum over channels is ``size`` shifted adds of the squares padded with zeros along
    the channel axis: floor((size-1)/2) channels before, the rest after, which is ONNX's window
    for every size.  Measured 6-8x faster than ``torch.nn.functional.local_response_norm`` (which
    pools over a 5-D view, and pads even sizes the other way) on AlexNet/ZFNet/Inception shapes.
    """
    import torch

    channels = x.shape[1]
    before = (size - 1) // 2
    t = _library.as_tensor(x)
    with torch.no_grad():
        squares = torch.nn.functional.pad(
            t * t, (0, 0) * (x.ndim - 2) + (before, size - 1 - before))
        window = squares[:, :channels].clone()
        for offset in range(1, size):
            window += squares[:, offset:offset + channels]
        return (t / window.mul_(alpha / size).add_(bias).pow_(beta)).numpy()


def kept_lrn(ctx: NodeContext, kernel_fn: Any, x: np.ndarray) -> np.ndarray | None:
    """LRN by the oneDNN primitive the node keeps (:class:`._dnnl.LocalResponseNorm`), offered
    as ``kernel_fn``'s direct call; None where that path does not serve it."""
    if type(x) is not np.ndarray or x.ndim != 4 or not _onednn.available():
        return None
    size = ctx.attrs["size"]
    alpha, beta = float(ctx.attrs.get("alpha", 1e-4)), float(ctx.attrs.get("beta", 0.75))
    bias = float(ctx.attrs.get("bias", 1.0))
    return _dnnl.run_kept(ctx, "dnnl_lrn", "LRN", x,
                          lambda: _dnnl.create_lrn(x, size, alpha, beta, bias), kernel=kernel_fn)


@kernel("LRN", since=1)
def lrn(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Local response normalization across ``size`` neighbouring channels."""
    size = ctx.attrs["size"]
    alpha = ctx.attrs.get("alpha", 1e-4)
    beta = ctx.attrs.get("beta", 0.75)
    bias = ctx.attrs.get("bias", 1.0)
    if x.ndim < 2 or size < 1:
        raise ValueError(f"LRN: need X of rank >= 2 and size >= 1, got {x.shape} and {size}")
    if x.dtype == np.float32:
        y = kept_lrn(ctx, lrn, x)
        if y is not None:
            return y
    if x.dtype == np.float32 and x.ndim >= 3 and x.size and _library.torch_functional():
        return _torch_lrn(x, size, alpha, beta, bias)
    wd = _work_dtype(x.dtype)
    xf = _as_work(x, wd)
    sq = xf * xf
    channels = x.shape[1]
    lo = (size - 1) // 2  # the window is [c - floor((size-1)/2), c + ceil((size-1)/2)]
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo, size - 1 - lo)
    sq = np.pad(sq, pad)
    acc = np.zeros_like(xf)
    for k in range(size):  # loop over the small window, vectorised over everything else
        acc += sq[:, k : k + channels]
    acc *= wd.type(alpha / size)
    acc += wd.type(bias)
    y = xf / acc ** wd.type(beta)
    return y.astype(x.dtype, copy=False)


@kernel("MeanVarianceNormalization", since=9)
def mean_variance_norm(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """(X - E[X]) / (sqrt(Var[X]) + 1e-9) over ``axes`` (default [0, 2, 3])."""
    axes = tuple(ctx.attrs.get("axes", [0, 2, 3]))
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(f"MeanVarianceNormalization: axes {list(axes)} out of range for {x.shape}")
    wd = _work_dtype(x.dtype)
    xf = _as_work(x, wd)
    d = xf - xf.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.mean(d * d, axis=axes, keepdims=True))
    std += wd.type(1e-9)  # the epsilon of the ONNX function body, added after the sqrt
    d /= std
    return d.astype(x.dtype, copy=False)


@kernel("LpNormalization", since=1)
def lp_norm(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Divide by the L1 or L2 norm along ``axis``."""
    p, axis = ctx.attrs.get("p", 2), ctx.attrs.get("axis", -1)
    if p not in (1, 2):
        raise ValueError(f"LpNormalization: p must be 1 or 2, got {p}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"LpNormalization: axis {axis} out of range for shape {x.shape}")
    wd = _work_dtype(x.dtype)
    xf = _as_work(x, wd)
    if p == 1:
        norm = np.sum(np.abs(xf), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(xf * xf, axis=axis, keepdims=True))
    norm[norm == 0] = 1  # an all-zero slice stays zero instead of becoming NaN
    return (xf / norm).astype(x.dtype, copy=False)
