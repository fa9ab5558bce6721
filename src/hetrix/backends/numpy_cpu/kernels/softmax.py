"""softmax kernels of the NumPy CPU backend: Softmax, LogSoftmax, Hardmax.

Before opset 13 these operators coerce the input to 2-D at ``axis`` (default 1) and normalize
over the whole flattened second dimension; from opset 13 they work on the single ``axis``
(default -1).  float32 Softmax and LogSoftmax run on PyTorch's fused kernels when it is installed
(one pass with vectorised exp, where NumPy makes four passes and two temporaries).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _dnnl, _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

AxisFn = Callable[[np.ndarray, int], np.ndarray]


def _work(x: np.ndarray) -> np.ndarray:
    """float16/bfloat16 are computed in float32; float32/float64 in place of a fresh copy."""
    if x.dtype == np.float16 or x.dtype.type.__module__ == "ml_dtypes":
        return x.astype(np.float32)
    return x.astype(x.dtype, copy=True)


def _on_torch(x: np.ndarray) -> bool:
    return x.dtype == np.float32 and _library.torch_functional() is not None


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    if _on_torch(x):
        return _library.torch_functional().softmax(_library.as_tensor(x), axis).numpy()
    y = _work(x)
    y -= y.max(axis=axis, keepdims=True)  # stable: the largest exponent is exp(0)
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    if _on_torch(x):
        return _library.torch_functional().log_softmax(_library.as_tensor(x), axis).numpy()
    y = _work(x)
    y -= y.max(axis=axis, keepdims=True)
    y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
    return y


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    # One-hot of the first maximum along the axis.
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


def _check_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"{ctx.op_type}: axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _on_axis(ctx: NodeContext, x: np.ndarray, fn: AxisFn) -> np.ndarray:
    """Opset >= 13: normalize along the one axis ``axis`` (default -1)."""
    if x.ndim == 0:
        raise ValueError(f"{ctx.op_type}: input must have rank >= 1")
    axis = _check_axis(ctx, ctx.attrs.get("axis", -1), x.ndim)
    if x.size == 0:
        return x.copy()
    return fn(x, axis).astype(x.dtype, copy=False)


def _coerced_2d(ctx: NodeContext, x: np.ndarray, fn: AxisFn) -> np.ndarray:
    """Opset < 13: flatten to [prod(shape[:axis]), prod(shape[axis:])], normalize each row."""
    axis = ctx.attrs.get("axis", 1)
    if not -x.ndim <= axis <= x.ndim:  # axis == rank is allowed: it coerces to [N, 1]
        raise ValueError(f"{ctx.op_type}: axis {axis} is out of range for rank {x.ndim}")
    axis = axis + x.ndim if axis < 0 else axis
    if x.size == 0:
        return x.copy()
    rows = math.prod(x.shape[:axis])
    y = fn(x.reshape(rows, -1), 1)
    return y.reshape(x.shape).astype(x.dtype, copy=False)


def _kept(ctx: NodeContext, kernel_fn: Callable[..., np.ndarray], x: np.ndarray, axis: int,
          coerced: bool, log: bool) -> np.ndarray | None:
    """The result by the oneDNN primitive the node keeps (:class:`._dnnl.Softmax`), offered as
    its direct call, over ``axis`` (normalized; the 2-D coercion at ``axis`` when
    ``coerced``); None where that path does not serve this call (the library absent, a float
    type it does not take, a row ONNX makes NaN)."""
    if (axis < 0 or x.dtype != np.float32 or x.ndim == 0 or x.size == 0
            or not _library.torch_functional()):  # a library route: not HETRIX_NUMPY_ONLY's
        return None  # (an axis out of range: the kernel's path reports it)
    shape = x.shape
    if coerced:
        view = (math.prod(shape[:axis]), math.prod(shape[axis:]), 1)
    else:
        view = (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))
    return _dnnl.run_kept(ctx, "dnnl_softmax", "log_softmax" if log else "softmax", x,
                          lambda: _dnnl.create_softmax(x, view, log), kernel=kernel_fn)


def _coerced_axis(ctx: NodeContext, x: np.ndarray) -> int:
    """Opset < 13's ``axis``, normalized; out of range it is -1 (then the kernel reports it)."""
    axis = ctx.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return axis if 0 <= axis <= x.ndim else -1


def _single_axis(ctx: NodeContext, x: np.ndarray) -> int:
    """Opset >= 13's ``axis``, normalized; out of range it is -1 (then the kernel reports it)."""
    axis = ctx.attrs.get("axis", -1)
    return axis % x.ndim if x.ndim and -x.ndim <= axis < x.ndim else -1


@kernel("Softmax", since=1)
def softmax_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Softmax over the input coerced to 2-D at ``axis``."""
    y = _kept(ctx, softmax_v1, x, _coerced_axis(ctx, x), coerced=True, log=False)
    return _coerced_2d(ctx, x, _softmax) if y is None else y


@kernel("Softmax", since=13)
def softmax(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    y = _kept(ctx, softmax, x, _single_axis(ctx, x), coerced=False, log=False)
    return _on_axis(ctx, x, _softmax) if y is None else y


@kernel("LogSoftmax", since=1)
def log_softmax_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """LogSoftmax over the input coerced to 2-D at ``axis``."""
    y = _kept(ctx, log_softmax_v1, x, _coerced_axis(ctx, x), coerced=True, log=True)
    return _coerced_2d(ctx, x, _log_softmax) if y is None else y


@kernel("LogSoftmax", since=13)
def log_softmax(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax along ``axis``."""
    y = _kept(ctx, log_softmax, x, _single_axis(ctx, x), coerced=False, log=True)
    return _on_axis(ctx, x, _log_softmax) if y is None else y


@kernel("Hardmax", since=1)
def hardmax_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """One-hot of the maximum over the input coerced to 2-D at ``axis``."""
    return _coerced_2d(ctx, x, _hardmax)


@kernel("Hardmax", since=13)
def hardmax(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """One-hot of the first maximum along ``axis``."""
    return _on_axis(ctx, x, _hardmax)
