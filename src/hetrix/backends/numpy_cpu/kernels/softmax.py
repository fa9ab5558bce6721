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

from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.registry import offer_direct

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


def _offer_torch(ctx: NodeContext, kernel_fn: Callable[..., np.ndarray], x: np.ndarray,
                 name: str, axis: int, coerced: bool) -> None:
    """Offer PyTorch's softmax (``name``: "softmax" or "log_softmax") as the node's direct call
    (:func:`~hetrix.backends.registry.offer_direct`), made for ``x``'s shape and normalized
    ``axis`` (on the 2-D view at ``axis`` when ``coerced``): a classifier's last op, where the
    kernel's layers cost more in a run than the softmax of 1,000 numbers."""
    if ctx.direct is not None or not _on_torch(x) or x.size == 0:
        return
    functional = _library.torch_functional()
    shape = x.shape
    view = (math.prod(shape[:axis]), -1) if coerced else shape
    dim = 1 if coerced else axis

    def make(fallback: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        import torch

        fn, from_numpy = getattr(functional, name), torch.from_numpy

        def call(x: np.ndarray) -> np.ndarray:
            if (type(x) is not np.ndarray or x.shape != shape or x.dtype != np.float32
                    or not x.flags.writeable or min(x.strides) < 0):
                return fallback(x)
            return fn(from_numpy(x.reshape(view)), dim).numpy().reshape(shape)

        return call

    offer_direct(ctx, kernel_fn, (x,), (0,), make, name)


def _coerced_axis(ctx: NodeContext, x: np.ndarray) -> int:
    axis = ctx.attrs.get("axis", 1)
    return axis + x.ndim if axis < 0 else axis


@kernel("Softmax", since=1)
def softmax_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Softmax over the input coerced to 2-D at ``axis``."""
    y = _coerced_2d(ctx, x, _softmax)
    _offer_torch(ctx, softmax_v1, x, "softmax", _coerced_axis(ctx, x), coerced=True)
    return y


@kernel("Softmax", since=13)
def softmax(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    y = _on_axis(ctx, x, _softmax)
    _offer_torch(ctx, softmax, x, "softmax", ctx.attrs.get("axis", -1) % x.ndim, coerced=False)
    return y


@kernel("LogSoftmax", since=1)
def log_softmax_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """LogSoftmax over the input coerced to 2-D at ``axis``."""
    y = _coerced_2d(ctx, x, _log_softmax)
    _offer_torch(ctx, log_softmax_v1, x, "log_softmax", _coerced_axis(ctx, x), coerced=True)
    return y


@kernel("LogSoftmax", since=13)
def log_softmax(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax along ``axis``."""
    y = _on_axis(ctx, x, _log_softmax)
    _offer_torch(ctx, log_softmax, x, "log_softmax", ctx.attrs.get("axis", -1) % x.ndim,
                 coerced=False)
    return y


@kernel("Hardmax", since=1)
def hardmax_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """One-hot of the maximum over the input coerced to 2-D at ``axis``."""
    return _coerced_2d(ctx, x, _hardmax)


@kernel("Hardmax", since=13)
def hardmax(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """One-hot of the first maximum along ``axis``."""
    return _on_axis(ctx, x, _hardmax)
