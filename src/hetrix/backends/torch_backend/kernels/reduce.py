"""Reductions, ArgMax/ArgMin, TopK and CumSum on the torch backend.

``axes`` is an attribute before opset 18 (13 for ReduceSum) and an optional input after; an empty
or missing axes list reduces everything unless ``noop_with_empty_axes`` is set.  Reducing an empty
extent gives the operation's identity (0, 1, -inf, +inf), as the spec's reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    compute_dtype,
    host_ints,
    host_scalar,
    kernel,
    normalize_axis,
)

Reducer = Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]
"""``reduce(x, dims) -> result with keepdim`` on a non-empty extent."""


def _axes(ctx: NodeContext, x: torch.Tensor, axes_input: torch.Tensor | None) -> tuple[int, ...]:
    input_since = 13 if ctx.op_type == "ReduceSum" else 18
    if ctx.opset >= input_since:
        axes = host_ints(axes_input) if axes_input is not None else []
    else:
        axes = list(ctx.attrs.get("axes") or [])
    if not axes:
        return () if ctx.attrs.get("noop_with_empty_axes", 0) else tuple(range(x.dim()))
    return tuple(sorted({normalize_axis(a, x.dim()) for a in axes}))


def _empty_fill(x: torch.Tensor, dims: tuple[int, ...], value: float) -> torch.Tensor:
    shape = [1 if i in dims else s for i, s in enumerate(x.shape)]
    return torch.full(shape, value, dtype=x.dtype, device=x.device)


def _register(op_type: str, reduce: Reducer, empty: float) -> None:
    def reduction(
        ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None = None
    ) -> torch.Tensor:
        dims = _axes(ctx, x, axes)
        if not dims:
            return _identity_case(op_type, x)
        if math.prod(x.shape[d] for d in dims) == 0:
            y = _empty_fill(x, dims, _limit(x, empty))
        else:
            y = reduce(x, dims)
        if not ctx.attrs.get("keepdims", 1):
            y = y.reshape([s for i, s in enumerate(y.shape) if i not in dims])
        return y

    reduction.__doc__ = f"{op_type} over the selected axes."
    reduction.__name__ = op_type.lower()
    kernel(op_type, since=1)(reduction)


def _limit(x: torch.Tensor, value: float) -> float:
    """``value`` clamped to x's dtype (integer dtypes have no infinities)."""
    if x.dtype.is_floating_point or not math.isinf(value):
        return value
    if x.dtype == torch.bool:
        return value > 0
    info = torch.iinfo(x.dtype)
    return info.max if value > 0 else info.min


def _identity_case(op_type: str, x: torch.Tensor) -> torch.Tensor:
    """noop_with_empty_axes: the input, with the element function of the reduction applied."""
    if op_type in ("ReduceL1", "ReduceL2"):
        return torch.abs(x)
    if op_type == "ReduceSumSquare":
        return x * x
    if op_type == "ReduceLogSum":
        return torch.log(x)
    return x.clone()


def _float(fn: Reducer) -> Reducer:
    """Compute in float (float32 for halves on CPU, float64 for integers), cast back."""

    def run(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        dtype = compute_dtype(x) if x.dtype.is_floating_point else torch.float64
        y = fn(x.to(dtype), dims)
        return y.to(x.dtype)

    return run


def _prod(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    for dim in dims:  # torch.prod reduces one dim at a time
        x = torch.prod(x, dim=dim, keepdim=True)
    return x


def _sum(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    if x.dtype.is_floating_point:
        return _float(lambda t, d: torch.sum(t, dim=d, keepdim=True))(x, dims)
    return torch.sum(x, dim=dims, keepdim=True).to(x.dtype)


def _log_sum_exp(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.logsumexp(x, dim=dims, keepdim=True)


_REDUCERS: dict[str, tuple[Reducer, float]] = {
    "ReduceSum": (_sum, 0.0),
    "ReduceMean": (_float(lambda x, d: torch.mean(x, dim=d, keepdim=True)), math.nan),
    "ReduceMax": (lambda x, d: torch.amax(x, dim=d, keepdim=True), -math.inf),
    "ReduceMin": (lambda x, d: torch.amin(x, dim=d, keepdim=True), math.inf),
    "ReduceProd": (_prod, 1.0),
    "ReduceL1": (lambda x, d: _sum(torch.abs(x), d), 0.0),
    "ReduceL2": (_float(lambda x, d: torch.sqrt(torch.sum(x * x, dim=d, keepdim=True))), 0.0),
    "ReduceSumSquare": (lambda x, d: _sum(x * x, d), 0.0),
    "ReduceLogSum": (_float(lambda x, d: torch.log(torch.sum(x, dim=d, keepdim=True))), -math.inf),
    "ReduceLogSumExp": (_float(_log_sum_exp), -math.inf),
}
for _name, (_fn, _empty) in _REDUCERS.items():
    _register(_name, _fn, _empty)


def _arg(ctx: NodeContext, x: torch.Tensor, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    axis = normalize_axis(ctx.attrs.get("axis", 0), x.dim())
    keep = bool(ctx.attrs.get("keepdims", 1))
    if ctx.attrs.get("select_last_index", 0):
        flipped = fn(torch.flip(x, dims=(axis,)), dim=axis, keepdim=keep)
        return x.shape[axis] - 1 - flipped
    return fn(x, dim=axis, keepdim=keep)


@kernel("ArgMax", since=1)
def arg_max(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """ArgMax: int64 index of the first (or last) maximum along ``axis``."""
    return _arg(ctx, x, torch.argmax)


@kernel("ArgMin", since=1)
def arg_min(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """ArgMin: int64 index of the first (or last) minimum along ``axis``."""
    return _arg(ctx, x, torch.argmin)


@kernel("TopK", since=1)
def top_k(
    ctx: NodeContext, x: torch.Tensor, k: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """TopK: the k largest (or smallest) along ``axis``; equal values keep index order."""
    count = ctx.attrs["k"] if ctx.opset < 10 else int(host_scalar(k))
    axis = normalize_axis(ctx.attrs.get("axis", -1), x.dim())
    largest = bool(ctx.attrs.get("largest", 1))
    # a stable sort gives ONNX's tie rule (lower index first); torch.topk does not promise it
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)


@kernel("CumSum", since=11)
def cum_sum(ctx: NodeContext, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """CumSum along ``axis``, optionally exclusive and/or reversed."""
    dim = normalize_axis(int(host_scalar(axis)), x.dim())
    reverse = bool(ctx.attrs.get("reverse", 0))
    xs = torch.flip(x, dims=(dim,)) if reverse else x
    y = torch.cumsum(xs, dim=dim).to(x.dtype)
    if ctx.attrs.get("exclusive", 0):
        y = y - xs
    return torch.flip(y, dims=(dim,)) if reverse else y
