"""reduce kernels of the NumPy CPU backend: the ten ReduceXxx operators.

Every operator exists in two forms: ``axes`` as an attribute (old opsets) and ``axes`` as an
optional second input with ``noop_with_empty_axes`` (opset 13 for ReduceSum, 18 for the others).
Both forms share one reduction function per operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

Axes = tuple[int, ...]
Reduction = Callable[[np.ndarray, Axes, bool], np.ndarray]


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulation dtype: float16/bfloat16 sum in float32, others in their own type."""
    if dtype == np.float16 or dtype.type.__module__ == "ml_dtypes":
        return np.dtype(np.float32)
    if dtype == np.bool_:
        return np.dtype(np.int64)
    return dtype


def _normalize_axes(op: str, axes: Sequence[int], rank: int) -> Axes:
    """Axes as sorted non-negative ints; ValueError when out of range or repeated."""
    out = []
    for a in axes:
        a = int(a)
        if not -rank <= a < max(rank, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of rank {rank}")
        out.append(a % rank if rank else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axes {list(axes)}")
    return tuple(sorted(out)) if rank else ()


def _run(
    ctx: NodeContext, x: np.ndarray, axes: Sequence[int] | None, fn: Reduction, noop_ok: bool
) -> np.ndarray:
    """Apply ``fn`` over ``axes`` (None or empty: all axes, or identity when noop is set)."""
    keepdims = bool(ctx.attrs.get("keepdims", 1))
    if axes is None or len(axes) == 0:
        if noop_ok and ctx.attrs.get("noop_with_empty_axes", 0):
            return x.copy()
        norm = tuple(range(x.ndim))
    else:
        norm = _normalize_axes(ctx.op_type, axes, x.ndim)
    y = fn(x, norm, keepdims)
    return np.asarray(y).astype(x.dtype, copy=False)


def _register(op: str, input_since: int, fn: Reduction) -> None:
    """Register ``op`` with ``axes`` as attribute (opset 1) and as input (``input_since``)."""

    def with_attr(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
        return _run(ctx, x, ctx.attrs.get("axes"), fn, noop_ok=False)

    def with_input(ctx: NodeContext, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        return _run(ctx, x, None if axes is None else axes.reshape(-1).tolist(), fn, True)

    for f, since, how in ((with_attr, 1, "attribute"), (with_input, input_since, "input")):
        f.__name__ = f"{op.lower()}_axes_{how}"
        f.__doc__ = f"{op} with ``axes`` as an {how}."
        kernel(op, since=since)(f)


LIBRARY_MIN_ELEMENTS = 1 << 15
"""A float32 ReduceSum or ReduceMean of at least this many elements runs in PyTorch's kernel:
NumPy sums each short run of the reduced axis on its own (the 64 channels of each pixel of a
1 x 64 x 96 x 96 channels-last activation: 238 us, PyTorch 37).  Both sum in float32 with
partial sums, so the results agree to float32 rounding, not bit for bit."""


def _library_reduction(name: str, x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray | None:
    """``torch.<name>(x, dim=axes, keepdim=keep)`` for a large float32 ``x`` reduced over some
    of its axes, where PyTorch is installed; else None."""
    if (x.dtype != np.float32 or x.size < LIBRARY_MIN_ELEMENTS or not axes
            or _library.torch_functional() is None):
        return None
    import torch

    return getattr(torch, name)(_library.as_tensor(x), dim=axes, keepdim=keep).numpy()


def _sum(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    fast = _library_reduction("sum", x, axes, keep)
    if fast is not None:
        return fast
    return np.sum(x, axis=axes, keepdims=keep, dtype=_acc_dtype(x.dtype))


def _sum_square(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    xf = x.astype(_acc_dtype(x.dtype), copy=False)
    return np.sum(xf * xf, axis=axes, keepdims=keep)


def _l1(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return np.sum(np.abs(x.astype(_acc_dtype(x.dtype), copy=False)), axis=axes, keepdims=keep)


def _l2(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    s = _sum_square(x, axes, keep)
    return np.sqrt(s) if s.dtype.kind == "f" else np.sqrt(s.astype(np.float64))


def _mean(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    acc = _acc_dtype(x.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):  # mean of an empty set is NaN
        if acc.kind in "iub":
            # Integer mean truncates toward zero, like C integer division.
            total = np.sum(x, axis=axes, keepdims=keep, dtype=acc)
            return np.sign(total) * (np.abs(total) // _count(x, axes))
        fast = _library_reduction("mean", x, axes, keep)
        if fast is not None:
            return fast
        return np.mean(x, axis=axes, keepdims=keep, dtype=acc)


def _count(x: np.ndarray, axes: Axes) -> int:
    return max(math.prod(x.shape[a] for a in axes), 1)


def _prod(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return np.prod(x, axis=axes, keepdims=keep, dtype=_acc_dtype(x.dtype))


def _log_sum(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    with np.errstate(divide="ignore"):  # log(0) = -inf for the empty set
        return np.log(_sum(x, axes, keep))


def _log_sum_exp(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    xf = x.astype(_acc_dtype(x.dtype), copy=False)
    if xf.dtype.kind != "f":
        xf = xf.astype(np.float64)
    # Shift by the max so exp() cannot overflow; a non-finite max (empty set, inf) shifts by 0.
    m = _extreme(xf, axes, True, np.max)
    m[~np.isfinite(m)] = 0
    with np.errstate(divide="ignore"):
        y = np.log(np.sum(np.exp(xf - m), axis=axes, keepdims=True)) + m
    return y if keep else np.squeeze(y, axis=axes)


def _extreme(
    x: np.ndarray, axes: Axes, keep: bool, reduce: Callable[..., np.ndarray]
) -> np.ndarray:
    """np.max / np.min, with the identity element as the result of an empty reduction."""
    if x.size == 0 and any(x.shape[a] == 0 for a in axes):
        dt = x.dtype
        is_max = reduce is np.max
        if dt == np.bool_:
            init = not is_max
        elif dt.kind in "iu":
            init = np.iinfo(dt).min if is_max else np.iinfo(dt).max
        else:
            init = -np.inf if is_max else np.inf
        shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape) if keep or a not in axes)
        return np.full(shape, init, dtype=dt)
    return reduce(x, axis=axes, keepdims=keep)


def _max(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return _extreme(x, axes, keep, np.max)


def _min(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return _extreme(x, axes, keep, np.min)


_register("ReduceSum", 13, _sum)
_register("ReduceSumSquare", 18, _sum_square)
_register("ReduceL1", 18, _l1)
_register("ReduceL2", 18, _l2)
_register("ReduceMean", 18, _mean)
_register("ReduceProd", 18, _prod)
_register("ReduceLogSum", 18, _log_sum)
_register("ReduceLogSumExp", 18, _log_sum_exp)
_register("ReduceMax", 18, _max)
_register("ReduceMin", 18, _min)
