"""Elementwise math, comparisons and logic of the torch backend.

Binary ops broadcast like numpy (torch does the same).  Transcendental functions of float16 /
bfloat16 inputs on the CPU are computed in float32 and rounded back, which is what the spec's
expected values do; on accelerators the native half kernels run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    compute_dtype,
    host_scalar,
    kernel,
)

Unary = Callable[[torch.Tensor], torch.Tensor]


def _upcast(fn: Unary) -> Unary:
    """``fn`` computed in :func:`compute_dtype` and cast back to the input dtype."""

    def run(x: torch.Tensor) -> torch.Tensor:
        wanted = compute_dtype(x)
        return fn(x.to(wanted)).to(x.dtype) if wanted != x.dtype else fn(x)

    return run


def _register_unary(op_type: str, fn: Unary, since: int = 1) -> None:
    def unary(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    unary.__doc__ = f"{op_type}: elementwise, same dtype as the input."
    unary.__name__ = op_type.lower()
    kernel(op_type, since=since)(unary)


_UNARY: dict[str, Unary] = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX
    "Sign": torch.sign,
    "Sqrt": _upcast(torch.sqrt),
    "Exp": _upcast(torch.exp),
    "Log": _upcast(torch.log),
    "Reciprocal": _upcast(torch.reciprocal),
    "Sin": _upcast(torch.sin),
    "Cos": _upcast(torch.cos),
    "Tan": _upcast(torch.tan),
    "Asin": _upcast(torch.asin),
    "Acos": _upcast(torch.acos),
    "Atan": _upcast(torch.atan),
    "Sinh": _upcast(torch.sinh),
    "Cosh": _upcast(torch.cosh),
    "Asinh": _upcast(torch.asinh),
    "Acosh": _upcast(torch.acosh),
    "Atanh": _upcast(torch.atanh),
    "Erf": _upcast(torch.erf),
    "Tanh": _upcast(torch.tanh),
    "Sigmoid": _upcast(torch.sigmoid),
    "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not,
    "IsNaN": torch.isnan,
}
for _name, _fn in _UNARY.items():
    _register_unary(_name, _fn)


@kernel("IsInf", since=10)
def is_inf(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """IsInf: +inf and/or -inf, as the detect_* attributes select."""
    positive = ctx.attrs.get("detect_positive", 1)
    negative = ctx.attrs.get("detect_negative", 1)
    if positive and negative:
        return torch.isinf(x)
    if positive:
        return torch.isposinf(x)
    return torch.isneginf(x) if negative else torch.zeros_like(x, dtype=torch.bool)


# -- binary arithmetic --------------------------------------------------------------------------


@kernel("Add", since=1)
def add(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Add: a + b with broadcasting."""
    return torch.add(a, b)


@kernel("Sub", since=1)
def sub(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sub: a - b with broadcasting."""
    return torch.sub(a, b)


@kernel("Mul", since=1)
def mul(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mul: a * b with broadcasting."""
    return torch.mul(a, b)


@kernel("Div", since=1)
def div(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Div: true division for floats, truncation toward zero for integers (C semantics)."""
    if a.dtype.is_floating_point:
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


@kernel("Pow", since=1)
def pow_(ctx: NodeContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pow: x ** y, result in x's dtype (y may have another numeric type)."""
    if not x.dtype.is_floating_point and y.dtype.is_floating_point:
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)
    return _upcast(lambda t: torch.pow(t, y.to(t.dtype)))(x)


@kernel("Mod", since=10)
def mod(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mod: sign of the divisor (Python) when fmod=0, of the dividend (C fmod) when fmod=1."""
    if ctx.attrs.get("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):  # type: ignore[no-untyped-def]
    def run(ctx: NodeContext, *xs: torch.Tensor) -> torch.Tensor:
        result = xs[0]
        for x in xs[1:]:
            result = fn(result, x)
        return result if len(xs) > 1 else result.clone()

    return run


kernel("Max", since=1)(_variadic(torch.maximum))
kernel("Min", since=1)(_variadic(torch.minimum))
kernel("Sum", since=1)(_variadic(torch.add))


@kernel("Mean", since=1)
def mean(ctx: NodeContext, *xs: torch.Tensor) -> torch.Tensor:
    """Mean: elementwise average of all inputs, with broadcasting."""
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total / len(xs)


@kernel("Clip", since=1)
def clip(
    ctx: NodeContext,
    x: torch.Tensor,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clip: bounds from attributes before opset 11, from optional scalar inputs after."""
    if ctx.opset < 11:
        low_value = ctx.attrs.get("min", float("-inf"))
        high_value = ctx.attrs.get("max", float("inf"))
        return torch.clamp(x, low_value, high_value)
    low_value, high_value = host_scalar(low), host_scalar(high)
    if low_value is None and high_value is None:
        return x.clone()
    return torch.clamp(x, low_value, high_value)


# -- comparisons and logic ----------------------------------------------------------------------


Binary = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _register_binary(op_type: str, fn: Binary) -> None:
    def binary(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)

    binary.__doc__ = f"{op_type}: elementwise with broadcasting."
    binary.__name__ = op_type.lower()
    kernel(op_type, since=1)(binary)


_BINARY = {
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}
for _name, _binary in _BINARY.items():
    _register_binary(_name, _binary)


@kernel("BitShift", since=11)
def bit_shift(ctx: NodeContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BitShift: x << y or x >> y as ``direction`` says (unsigned inputs)."""
    if ctx.attrs.get("direction") == "LEFT":
        return torch.bitwise_left_shift(x, y)
    return torch.bitwise_right_shift(x, y)


@kernel("Where", since=9)
def where(ctx: NodeContext, cond: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Where: x where cond else y, all three broadcast."""
    return torch.where(cond, x, y)
