"""elementwise kernels of the NumPy CPU backend.

Unary math, binary arithmetic with broadcasting, comparisons, logic and bitwise ops, the variadic
Max/Min/Sum/Mean, Clip and Where.  Every kernel returns an ``np.ndarray`` of exactly the ONNX output
dtype: ufuncs on 0-d arrays return numpy scalars and mixed-type inputs promote, so results go
through :func:`_out`.  Float types numpy has no loops for (bfloat16, float8: ``kind == "V"``) are
computed in float32 and cast back.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.registry import offer_direct

Ufunc = Callable[..., np.ndarray]


# ----------------------------------------------------------------------------------------------
# helpers


def _out(y: np.ndarray | np.generic, dtype: np.dtype) -> np.ndarray:
    """``y`` as an ndarray of ``dtype`` (no copy when it already is one)."""
    return np.asarray(y).astype(dtype, copy=False)


def _exotic(dtype: np.dtype) -> bool:
    """True for the ml_dtypes types (bfloat16, float8...) that numpy has few loops for."""
    return dtype.kind == "V"


def _wide(x: np.ndarray) -> np.ndarray:
    """``x`` in a dtype numpy computes natively: exotic floats go to float32."""
    return x.astype(np.float32) if _exotic(x.dtype) else x


def _apply(fn: Ufunc, x: np.ndarray) -> np.ndarray:
    """``fn(x)`` with x's dtype kept, silencing inf/nan warnings (they are valid results)."""
    with np.errstate(all="ignore"):
        return _out(fn(_wide(x)), x.dtype)


def _broadcast_error(ctx: NodeContext, shapes: list[tuple[int, ...]]) -> ValueError:
    return ValueError(f"{ctx.op_type} '{ctx.name}': inputs of shapes {shapes} do not broadcast")


def _check_broadcast(ctx: NodeContext, *arrays: np.ndarray) -> None:
    """Raise a ValueError naming the node when the inputs' shapes are not broadcastable."""
    try:
        np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise _broadcast_error(ctx, [a.shape for a in arrays]) from None


def _legacy_operands(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Opset < 7 broadcasting: B must equal A, or (``broadcast=1``) fit A's dims from ``axis``."""
    if not ctx.attrs.get("broadcast", 0):
        if a.shape != b.shape:
            raise ValueError(
                f"{ctx.op_type} '{ctx.name}': shapes {a.shape} and {b.shape} differ and the node "
                "does not set broadcast=1"
            )
        return b
    axis = ctx.attrs.get("axis")
    if axis is None or b.ndim == 0:
        return b  # suffix matching: numpy's own rule
    axis = axis + a.ndim if axis < 0 else axis
    if axis + b.ndim > a.ndim or a.shape[axis : axis + b.ndim] != b.shape:
        raise ValueError(
            f"{ctx.op_type} '{ctx.name}': B of shape {b.shape} does not match A {a.shape} "
            f"at axis {axis}"
        )
    return b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))


# ----------------------------------------------------------------------------------------------
# erf.  Two implementations, both written for this backend (no scipy):
# - erf_single: for outputs of float32 or narrower.  erf(x) ~ x P(s) / Q(s), s = x^2 / 16, x clamped
#   to [-4, 4] (erf(4) rounds to 1.0 in float32).  P, Q come from a weighted least-squares rational
#   fit to math.erf (max relative error 5e-9 on [0, 4]); evaluated in float64 in cache-sized blocks,
#   the float32 result is within 0.6 ulp.
# - erf64 / erfc64: float64-accurate (~1e-14 relative), Chebyshev fits to math.erf made on first
#   use, for float64 inputs and the far tail of Gelu.

_ERF_P = (
    1.1283791682296707, 2.964125462997001, 13.899346980541704, 15.761689911776722,
    24.795925672467764, 4.875271908849658, -0.21844774776206566,
)  # fmt: skip
_ERF_Q = (
    1.0, 7.960222135521702, 29.172377856524367, 63.30154711911398, 85.56320931153539,
    65.82781162741749,
)  # fmt: skip
_ERF_CLAMP = 4.0
_BLOCK = 65536  # elements per float64 block: the temporaries stay in the CPU cache


def _horner(s: np.ndarray, coefs: tuple[float, ...]) -> np.ndarray:
    """sum(coefs[i] * s**i), in place on one new array."""
    acc = s * coefs[-1]
    acc += coefs[-2]
    for c in coefs[-3::-1]:
        acc *= s
        acc += c
    return acc


def _erf_single_block(x: np.ndarray, out: np.ndarray, scale: float) -> None:
    """out[:] = erf(scale * x) for one block, through the float64 rational."""
    xc = x.astype(np.float64)
    if scale != 1.0:
        xc *= scale
    np.clip(xc, -_ERF_CLAMP, _ERF_CLAMP, out=xc)
    s = xc * xc
    s *= 1.0 / (_ERF_CLAMP * _ERF_CLAMP)
    num = _horner(s, _ERF_P)
    num *= xc
    np.divide(num, _horner(s, _ERF_Q), out=out, casting="unsafe")


def erf_single(x: np.ndarray, dtype: np.dtype | None = None, scale: float = 1.0) -> np.ndarray:
    """erf(scale * x) to float32 accuracy, as ``dtype`` (default x's); NaN propagates."""
    out = np.empty(x.shape, dtype=dtype or x.dtype)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    for i in range(0, flat_x.size, _BLOCK):
        _erf_single_block(flat_x[i : i + _BLOCK], flat_out[i : i + _BLOCK], scale)
    return out


_ERF_SPLIT = 2.5  # |x| below: erf(x) / x as a series in x^2; above: erfc(x) * exp(x^2) in x
_ERFC_END = 15.0  # |x| above: the asymptotic series of erfc (erf is exactly +-1 in float64 there)


@functools.cache
def _erf_series() -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev coefficients of erf(x)/x on x^2 in [0, 2.5^2] and of erfcx on [2.5, 15]."""
    cheb = np.polynomial.chebyshev
    erf = np.frompyfunc(math.erf, 1, 1)
    erfc = np.frompyfunc(math.erfc, 1, 1)

    def small(t: np.ndarray) -> np.ndarray:  # t in [-1, 1] maps to x^2 in [0, split^2]
        x = np.sqrt((t + 1) * (0.5 * _ERF_SPLIT**2))
        return erf(x).astype(np.float64) / x  # Chebyshev nodes never hit x == 0

    def large(t: np.ndarray) -> np.ndarray:  # t in [-1, 1] maps to x in [split, end]
        x = _ERF_SPLIT + (t + 1) * (0.5 * (_ERFC_END - _ERF_SPLIT))
        return erfc(x).astype(np.float64) * np.exp(x * x)

    # Degrees chosen for ~1e-15 relative error on the small part and ~1e-13 on the tail.
    return cheb.chebinterpolate(small, 20), cheb.chebinterpolate(large, 30)


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf(x) for |x| <= split, float64."""
    small, _ = _erf_series()
    t = x * x
    t *= 2.0 / _ERF_SPLIT**2
    t -= 1.0
    return np.polynomial.chebyshev.chebval(t, small) * x


def _erfc_large(x: np.ndarray) -> np.ndarray:
    """erfc(x) for x >= split, float64, accurate in relative terms (no cancellation)."""
    _, large = _erf_series()
    xc = np.minimum(x, _ERFC_END)
    t = (xc - _ERF_SPLIT) * (2.0 / (_ERFC_END - _ERF_SPLIT)) - 1.0
    scaled = np.polynomial.chebyshev.chebval(t, large)
    far = x > _ERFC_END
    if far.any():
        # erfc(x) exp(x^2) ~ (1 - u + 3u^2 - 15u^3 + 105u^4 - 945u^5) / (x sqrt(pi)), u = 1/(2x^2)
        xf = x[far]
        u = 1.0 / (2.0 * xf * xf)
        series = 1.0 - u * (1.0 - 3.0 * u * (1.0 - 5.0 * u * (1.0 - 7.0 * u * (1.0 - 9.0 * u))))
        scaled[far] = series / (xf * math.sqrt(math.pi))
    with np.errstate(under="ignore"):
        return scaled * np.exp(-x * x)


def erf64(x: np.ndarray) -> np.ndarray:
    """Vectorised erf in float64 (relative error ~1e-14); NaN propagates."""
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    small = ax <= _ERF_SPLIT
    if small.all():
        return _erf_small(x)
    out = np.empty_like(x)
    out[small] = _erf_small(x[small])
    big = ~small  # includes NaN, which the tail formula propagates
    out[big] = np.copysign(1.0 - _erfc_large(ax[big]), x[big])
    return out


def erfc64(x: np.ndarray) -> np.ndarray:
    """Vectorised erfc in float64, accurate for large positive x (where 1 - erf(x) cancels)."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) <= _ERF_SPLIT
    if small.all():
        return 1.0 - _erf_small(x)
    out = np.empty_like(x)
    out[small] = 1.0 - _erf_small(x[small])
    pos = x > _ERF_SPLIT
    out[pos] = _erfc_large(x[pos])
    rest = ~(small | pos)  # x < -split, and NaN
    out[rest] = 2.0 - _erfc_large(-x[rest])
    return out


# ----------------------------------------------------------------------------------------------
# unary


def _unary(op: str, since: int, fn: Ufunc) -> None:
    """Register ``op`` as ``fn`` applied elementwise, keeping the input dtype."""

    def run(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
        return _apply(fn, x)

    run.__name__ = op.lower()
    run.__doc__ = f"{op}: elementwise {getattr(fn, '__name__', op)}, dtype kept."
    kernel(op, since=since)(run)


# (op, first opset, numpy function); later versions only widened the type lists.
_UNARY_TABLE: tuple[tuple[str, int, Ufunc], ...] = (
    ("Abs", 1, np.abs),
    ("Neg", 1, np.negative),
    ("Sign", 9, np.sign),
    ("Ceil", 1, np.ceil),
    ("Floor", 1, np.floor),
    ("Round", 11, np.rint),  # half to even, as ONNX requires
    ("Reciprocal", 1, np.reciprocal),
    ("Sqrt", 1, np.sqrt),
    ("Exp", 1, np.exp),
    ("Log", 1, np.log),
    ("Sin", 7, np.sin),
    ("Cos", 7, np.cos),
    ("Tan", 7, np.tan),
    ("Asin", 7, np.arcsin),
    ("Acos", 7, np.arccos),
    ("Atan", 7, np.arctan),
    ("Sinh", 9, np.sinh),
    ("Cosh", 9, np.cosh),
    ("Asinh", 9, np.arcsinh),
    ("Acosh", 9, np.arccosh),
    ("Atanh", 9, np.arctanh),
    ("Tanh", 1, np.tanh),
    ("Not", 1, np.logical_not),
    ("BitwiseNot", 18, np.invert),
)
for _op, _since, _fn in _UNARY_TABLE:
    _unary(_op, _since, _fn)


@kernel("Erf", since=9)
def erf(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Erf: the Gauss error function (float32-accurate fast path unless the input is float64)."""
    if x.dtype == np.float64 or x.dtype.kind in "iu":
        return _out(erf64(x), x.dtype)
    return erf_single(x)


@kernel("IsNaN", since=9)
def isnan(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """IsNaN: boolean mask of the NaN elements."""
    return np.asarray(np.isnan(_wide(x)))


@kernel("IsInf", since=10)
def isinf(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """IsInf: mask of +inf and/or -inf elements (``detect_positive`` / ``detect_negative``)."""
    x = _wide(x)
    pos, neg = ctx.attrs.get("detect_positive", 1), ctx.attrs.get("detect_negative", 1)
    if pos and neg:
        return np.asarray(np.isinf(x))
    if pos:
        return np.asarray(x == np.inf)
    if neg:
        return np.asarray(x == -np.inf)
    return np.zeros(x.shape, dtype=bool)


# ----------------------------------------------------------------------------------------------
# binary


def _binary(
    ctx: NodeContext, fn: Ufunc, a: np.ndarray, b: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    """``fn(a, b)`` with numpy broadcasting, as ``dtype``; a clear error on bad shapes."""
    if a.dtype == b.dtype == dtype and a.dtype.kind in "fiub":  # the common case, kept lean
        try:
            y = fn(a, b)
        except ValueError:
            _check_broadcast(ctx, a, b)
            raise
        return y if type(y) is np.ndarray else np.asarray(y)  # 0-d inputs give numpy scalars
    try:
        with np.errstate(all="ignore"):
            y = fn(_wide(a), _wide(b))
    except ValueError:
        _check_broadcast(ctx, a, b)
        raise
    return _out(y, dtype)


def _direct_binary(fn: Ufunc, dtype: np.dtype,
                   fallback: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """An arithmetic op's direct call: ``fn(a, b)`` for two arrays of ``dtype``, as the kernel's
    lean case computes it; anything else (or a shape error, which the kernel reports by name)
    goes to the kernel."""

    def call(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != dtype or (
                b.dtype != dtype):
            return fallback(a, b)
        try:
            y = fn(a, b)
        except ValueError:
            return fallback(a, b)
        return y if type(y) is np.ndarray else np.asarray(y)

    return call


def _register_binary(op: str, since: int, fn: Ufunc, bool_out: bool, doc: str) -> None:
    """Register ``op`` from ``since``; ops that exist at opset 1 get a legacy kernel until 7.

    Output dtype: bool for comparisons and logic, A's dtype otherwise.
    """

    def run(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        y = _binary(ctx, fn, a, b, np.dtype(bool) if bool_out else a.dtype)
        if (ctx.direct is None and not bool_out and type(a) is np.ndarray
                and type(b) is np.ndarray and a.dtype == b.dtype and a.dtype.kind in "fiub"):
            # the lean case of _binary: the step may call the ufunc directly (NumPy's own where
            # this node's operands are too small for the library: no size check per call)
            large = max(a.size, b.size) >= LIBRARY_MIN_ELEMENTS
            direct_fn = fn if large else getattr(fn, "numpy", fn)
            offer_direct(ctx, run, (a, b), (0, 1),
                         functools.partial(_direct_binary, direct_fn, a.dtype), direct_fn)
        return y

    def run_legacy(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return run(ctx, a, _legacy_operands(ctx, a, b))

    run.__name__, run_legacy.__name__ = op.lower(), op.lower() + "_v1"
    run.__doc__ = f"{op}: {doc}."
    run_legacy.__doc__ = f"{op} (opset 1-6): {doc}, with the legacy broadcast/axis attributes."
    if since < 7:
        kernel(op, since=since)(run_legacy)
        since = 7
    kernel(op, since=since)(run)


def _trunc_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero (C semantics), as ONNX defines integer Div."""
    q = np.asarray(np.floor_divide(a, b))
    if a.dtype.kind == "i" or b.dtype.kind == "i":
        # floor and trunc differ where the signs differ and the division is inexact
        signs_differ = np.asarray((a ^ b) < 0)
        if signs_differ.any():
            q += ((a - q * b) != 0) & signs_differ
    return q


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: true division for floats, truncating division for integers."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return _trunc_divide(a, b)
    return np.true_divide(a, b)


LIBRARY_MIN_ELEMENTS = 1 << 17
"""float32 arithmetic with an operand of at least this many elements runs in PyTorch's kernels:
vectorised and on every core, where NumPy's loops use one.  Measured alone here: an Add of
2^17 values 10 us against NumPy's 17, of 2^18 31 against 85, 2^20 240 against 432 (2^16: 7
against 6, so below this NumPy's); an SE block's (1, 64, 96, 96) channels-last activation
times its (1, 64, 1, 1) gate 75 against 214.  Add, Sub, Mul and Div are correctly rounded in
both, so the values are the same; the result keeps the operands' layout."""


def _with_library(numpy_fn: Ufunc, torch_name: str) -> Ufunc:
    """``numpy_fn(a, b)``, through ``torch.<torch_name>`` for large float32 operands (see
    :data:`LIBRARY_MIN_ELEMENTS`); a shape error is NumPy's ValueError either way."""

    def fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if ((a.size >= LIBRARY_MIN_ELEMENTS or b.size >= LIBRARY_MIN_ELEMENTS)
                and a.dtype == _FLOAT32 and b.dtype == _FLOAT32
                and type(a) is np.ndarray and type(b) is np.ndarray
                and _library.torch_functional() is not None):
            import torch

            try:
                return getattr(torch, torch_name)(_library.as_tensor(a),
                                                  _library.as_tensor(b)).numpy()
            except RuntimeError as exc:  # the shapes do not broadcast
                raise ValueError(str(exc)) from None
        return numpy_fn(a, b)

    fn.__name__ = numpy_fn.__name__
    fn.numpy = numpy_fn  # type: ignore[attr-defined]
    return fn


_FLOAT32 = np.dtype(np.float32)

# (op, first opset, numpy function, bool output)
_BINARY_TABLE: tuple[tuple[str, int, Ufunc, bool], ...] = (
    ("Add", 1, _with_library(np.add, "add"), False),
    ("Sub", 1, _with_library(np.subtract, "sub"), False),
    ("Mul", 1, _with_library(np.multiply, "mul"), False),
    ("Div", 1, _with_library(_divide, "div"), False),
    ("Equal", 1, np.equal, True),
    ("Greater", 1, np.greater, True),
    ("Less", 1, np.less, True),
    ("GreaterOrEqual", 12, np.greater_equal, True),
    ("LessOrEqual", 12, np.less_equal, True),
    ("And", 1, np.logical_and, True),
    ("Or", 1, np.logical_or, True),
    ("Xor", 1, np.logical_xor, True),
    ("BitwiseAnd", 18, np.bitwise_and, False),
    ("BitwiseOr", 18, np.bitwise_or, False),
    ("BitwiseXor", 18, np.bitwise_xor, False),
)
for _op, _since, _fn, _bool in _BINARY_TABLE:
    _register_binary(_op, _since, _fn, _bool, f"elementwise {_op} with broadcasting")


@kernel("BitShift", since=11)
def bitshift(ctx: NodeContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """BitShift: shift X's bits LEFT or RIGHT (``direction``) by Y, with broadcasting."""
    direction = ctx.attrs.get("direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise ValueError(
            f"BitShift '{ctx.name}': direction must be LEFT or RIGHT, not {direction!r}"
        )
    fn = np.left_shift if direction == "LEFT" else np.right_shift
    return _binary(ctx, fn, x, y.astype(x.dtype, copy=False), x.dtype)


@kernel("Mod", since=10)
def mod(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mod: remainder with the divisor's sign (``fmod=0``) or the dividend's (``fmod=1``)."""
    fn = np.fmod if ctx.attrs.get("fmod", 0) else np.mod
    return _binary(ctx, fn, a, b, a.dtype)


def _power(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a ** b computed in the promoted type; integer bases tolerate negative exponents."""
    if b.size == 1 and b.ndim <= a.ndim and a.dtype.kind == "f":
        # common constant exponents (GELU's x^3, variance's x^2): cheaper than np.power
        e = b.item()
        if e == 2:
            return np.square(a)
        if e == 3:
            y = np.square(a)
            y *= a
            return y
        if e == 0.5:
            return np.sqrt(a)
        if e == 1:
            return a.copy()
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and (b < 0).any():
        return np.power(a.astype(np.float64), b)
    return np.power(a, b)


_register_binary("Pow", 1, _power, False, "A ** B with broadcasting, in the base's dtype")


# ----------------------------------------------------------------------------------------------
# variadic


def _variadic(ctx: NodeContext, fn: Ufunc, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Fold ``fn`` over all inputs with broadcasting, in the first input's dtype."""
    arrays = [a for a in inputs if a is not None]
    if not arrays:
        raise ValueError(f"{ctx.op_type} '{ctx.name}': needs at least one input")
    dtype = arrays[0].dtype
    if len(arrays) == 1:
        return arrays[0].copy()
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise _broadcast_error(ctx, [a.shape for a in arrays]) from None
    wide = [_wide(a) for a in arrays]
    with np.errstate(all="ignore"):
        acc = np.asarray(fn(wide[0], wide[1]))
        if acc.shape != shape or acc.dtype != wide[0].dtype:
            acc = np.broadcast_to(acc, shape).astype(wide[0].dtype)
        for a in wide[2:]:
            fn(acc, a, out=acc, casting="unsafe")  # accumulate in place
    return _out(acc, dtype)


@kernel("Max", since=1)
def max_(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """Max: elementwise maximum of all inputs (NaN propagates)."""
    return _variadic(ctx, np.maximum, inputs)


@kernel("Min", since=1)
def min_(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """Min: elementwise minimum of all inputs (NaN propagates)."""
    return _variadic(ctx, np.minimum, inputs)


@kernel("Sum", since=1)
def sum_(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """Sum: elementwise sum of all inputs."""
    return _variadic(ctx, np.add, inputs)


@kernel("Mean", since=1)
def mean(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """Mean: elementwise mean of all inputs."""
    total = _variadic(ctx, np.add, inputs)
    n = sum(a is not None for a in inputs)
    wide = _wide(total)
    return _out(wide / wide.dtype.type(n), total.dtype)


# ----------------------------------------------------------------------------------------------
# Clip, Where


def _clip(x: np.ndarray, lo: object, hi: object) -> np.ndarray:
    """min(max(x, lo), hi) (so hi wins when lo > hi, as ONNX specifies); NaN propagates."""
    xw = _wide(x)
    y = np.asarray(np.maximum(xw, lo)) if lo is not None else xw.copy()
    if hi is not None:
        np.minimum(y, hi, out=y, casting="unsafe")
    return _out(y, x.dtype)


def _bound(ctx: NodeContext, v: np.ndarray | None, x: np.ndarray, what: str) -> object:
    if v is None:
        return None
    if v.size != 1:
        raise ValueError(f"Clip '{ctx.name}': {what} must be a scalar, got shape {v.shape}")
    return _wide(v.reshape(())).astype(_wide(x).dtype)


@kernel("Clip", since=1)
def clip_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Clip (opset 1-10): bounds from the ``min`` / ``max`` attributes."""
    dt = _wide(x).dtype
    lo, hi = ctx.attrs.get("min"), ctx.attrs.get("max")
    return _clip(x, None if lo is None else dt.type(lo), None if hi is None else dt.type(hi))


@kernel("Clip", since=11)
def clip(
    ctx: NodeContext, x: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> np.ndarray:
    """Clip (opset 11+): bounds from the optional scalar inputs ``min`` / ``max``."""
    return _clip(x, _bound(ctx, lo, x, "min"), _bound(ctx, hi, x, "max"))


@kernel("Where", since=9)
def where(ctx: NodeContext, cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where: X where the condition holds, else Y, with broadcasting of all three."""
    _check_broadcast(ctx, cond, x, y)
    return _out(np.where(cond.astype(bool, copy=False), x, y), x.dtype)
