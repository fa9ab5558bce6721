"""activations kernels of the NumPy CPU backend.

Each kernel keeps the input dtype.  float16 / bfloat16 inputs are computed in float32 (numpy's
float16 transcendental loops are slow, ml_dtypes' bfloat16 has few), float32 and float64 natively.
Formulas avoid cancellation (Softplus, Gelu's tail) and ``np.where`` on hot paths (it is several
times slower than arithmetic on unpredictable masks); overflow to inf is allowed only where the
result stays right (``1 / (1 + inf) = 0`` in Sigmoid).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.kernels.elementwise import erf_single, erfc64
from hetrix.backends.registry import Kernel

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _quiet(fn: Kernel) -> Kernel:
    """Run the kernel with numpy's float warnings off: extreme inputs give inf / NaN exactly as
    the ONNX formula does (e.g. -inf * 0 in HardSwish), and the warnings would only be noise."""

    @functools.wraps(fn)
    def run(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return fn(ctx, *inputs)

    return run


def _compute(x: np.ndarray) -> np.ndarray:
    """``x`` as the math runs on it: float32/float64 as is, other types in float32, and 0-d as
    1-d (ufuncs return numpy scalars for 0-d arrays, which in-place ``out=`` cannot take)."""
    xc = x if x.dtype in _NATIVE else x.astype(np.float32)
    return xc.reshape(1) if xc.ndim == 0 else xc


def _back(y: np.ndarray | np.generic, x: np.ndarray) -> np.ndarray:
    """The result as an ndarray of x's dtype and shape."""
    return np.asarray(y).astype(x.dtype, copy=False).reshape(x.shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), in a new array.

    Relative accuracy holds on both tails: for x << 0, exp(-x) is large and the division exact
    enough; exp overflows to inf only where the true result is below the smallest normal float.
    """
    y = np.exp(-x)
    y += 1.0
    np.reciprocal(y, out=y)
    return y


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for any x."""
    y = np.exp(-np.abs(x))
    np.log1p(y, out=y)
    y += np.maximum(x, 0)
    return y


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    """x for x > 0, alpha * (exp(x) - 1) otherwise, as max(x, 0) + alpha * expm1(min(x, 0)).

    The sum form is exact (one term is always 0) and avoids np.where, which is several times
    slower than arithmetic on unpredictable masks.
    """
    y = np.minimum(x, 0)
    np.expm1(y, out=y)
    y *= alpha
    y += np.maximum(x, 0)
    return y


def _leaky(x: np.ndarray, slope: np.ndarray | float) -> np.ndarray:
    """x for x >= 0, slope * x otherwise, as max(x, 0) + slope * min(x, 0) (exact, no where)."""
    y = np.minimum(x, 0)
    y = y * slope if isinstance(slope, np.ndarray) else np.multiply(y, slope, out=y)
    y += np.maximum(x, 0)
    return y


_TORCH_RELU_MIN = 4096
"""float32 arrays of at least this many elements take PyTorch's Relu, Sigmoid and HardSwish:
NumPy's ``maximum`` checks for NaN on every element and runs on one thread (98,304 values: 38 us
against 7; a channels-last 136x28x28 activation: 41 against 8); below it the call costs more
than it saves."""


@kernel("Relu", since=1)
@_quiet
def relu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Relu: max(x, 0) (NaN stays NaN)."""
    if x.dtype.kind == "V":
        return _back(np.maximum(_compute(x), 0), x)
    if x.dtype == np.float32 and x.size >= _TORCH_RELU_MIN:
        functional = _library.torch_functional()
        if functional is not None:
            return functional.relu(_library.as_tensor(x)).numpy()
    return np.asarray(np.maximum(x, x.dtype.type(0)))


def relu_in_place(y: np.ndarray) -> np.ndarray:
    """Relu of ``y`` written over ``y``, a fresh writable array the caller owns (a fused kernel's
    output); PyTorch's for large float32 arrays, as in :func:`relu`."""
    if y.dtype == np.float32 and y.size >= _TORCH_RELU_MIN and y.flags.writeable:
        functional = _library.torch_functional()
        if functional is not None:
            functional.relu(_library.as_tensor(y), inplace=True)
            return y
    return np.maximum(y, y.dtype.type(0), out=y)


@kernel("LeakyRelu", since=1)
@_quiet
def leaky_relu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """LeakyRelu: x for x >= 0, alpha * x otherwise."""
    xc = _compute(x)
    alpha = ctx.attrs.get("alpha", 0.01)
    if 0.0 <= alpha <= 1.0:
        return _back(np.maximum(xc, xc * xc.dtype.type(alpha)), x)  # one pass fewer
    return _back(_leaky(xc, alpha), x)


@kernel("PRelu", since=1)
@_quiet
def prelu(ctx: NodeContext, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """PRelu: x for x >= 0, slope * x otherwise; slope broadcasts onto X."""
    if ctx.opset < 7 and slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1] > 1:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))  # pre-7: one slope per channel
    try:
        shape = np.broadcast_shapes(x.shape, slope.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"PRelu '{ctx.name}': slope of shape {slope.shape} does not broadcast to X {x.shape}"
        )
    xc = x if x.dtype.kind in "iu" else _compute(x)
    return _back(_leaky(xc, slope.astype(xc.dtype, copy=False)), x)


@kernel("ThresholdedRelu", since=10)
@_quiet
def thresholded_relu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """ThresholdedRelu: x for x > alpha, 0 otherwise."""
    xc = _compute(x)
    alpha = xc.dtype.type(ctx.attrs.get("alpha", 1.0))
    return _back(np.where(xc > alpha, xc, xc.dtype.type(0)), x)


@kernel("Elu", since=1)
@_quiet
def elu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Elu: x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return _back(_elu(_compute(x), ctx.attrs.get("alpha", 1.0)), x)


@kernel("Selu", since=1)
@_quiet
def selu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Selu: gamma * (x for x > 0, alpha * (exp(x) - 1) otherwise)."""
    alpha = ctx.attrs.get("alpha", 1.67326319217681884765625)
    gamma = ctx.attrs.get("gamma", 1.05070102214813232421875)
    y = _elu(_compute(x), alpha)
    y *= gamma
    return _back(y, x)


@kernel("Celu", since=12)
@_quiet
def celu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Celu: max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    alpha = ctx.attrs.get("alpha", 1.0)
    if alpha == 0:
        raise ValueError(f"Celu '{ctx.name}': alpha must be non-zero")
    xc = _compute(x)
    y = np.minimum(xc, 0)
    y /= alpha
    np.expm1(y, out=y)
    y *= alpha
    y += np.maximum(xc, 0)
    return _back(y, x)


@kernel("HardSigmoid", since=1)
@_quiet
def hard_sigmoid(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """HardSigmoid: clip(alpha * x + beta, 0, 1)."""
    xc = _compute(x)
    y = xc * xc.dtype.type(ctx.attrs.get("alpha", 0.2))
    y += ctx.attrs.get("beta", 0.5)
    np.clip(y, 0, 1, out=y)
    return _back(y, x)


@kernel("HardSwish", since=14)
@_quiet
def hard_swish(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """HardSwish: x * clip(x / 6 + 0.5, 0, 1); PyTorch's kernel for large float32 arrays
    (MobileNetV3's activations: 0.9 ms through NumPy's four passes for 1 x 64 x 96 x 96), its
    ``x * relu6(x + 3) / 6`` within a rounding of ONNX's formula."""
    if x.dtype == np.float32 and x.size >= _TORCH_RELU_MIN:
        functional = _library.torch_functional()
        if functional is not None:
            return functional.hardswish(_library.as_tensor(x)).numpy()
    xc = _compute(x)
    y = xc * xc.dtype.type(1 / 6)
    y += 0.5
    np.clip(y, 0, 1, out=y)
    y *= xc
    return _back(y, x)


@kernel("Sigmoid", since=1)
@_quiet
def sigmoid(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Sigmoid: 1 / (1 + exp(-x)); PyTorch's vectorised kernel for large float32 arrays (a
    detection head's 408,000 logits: 0.68 ms through NumPy's exp and reciprocal), in the
    input's layout."""
    if x.dtype == np.float32 and x.size >= _TORCH_RELU_MIN:
        functional = _library.torch_functional()
        if functional is not None:
            return functional.sigmoid(_library.as_tensor(x)).numpy()
    return _back(_sigmoid(_compute(x)), x)


def _swish(xc: np.ndarray, alpha: float) -> np.ndarray:
    """x * sigmoid(alpha * x) = x / (1 + exp(-alpha x)), in a new array."""
    y = np.exp(xc * xc.dtype.type(-alpha))
    y += 1.0
    np.divide(xc, y, out=y)
    return y


@kernel("Swish", since=24)
@_quiet
def swish(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Swish: x * sigmoid(alpha * x)."""
    return _back(_swish(_compute(x), ctx.attrs.get("alpha", 1.0)), x)


@kernel("SwiGLU", since=28)
@_quiet
def swiglu(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SwiGLU: Swish_alpha(A) * B, for A and B of identical shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"SwiGLU '{ctx.name}': A {a.shape} and B {b.shape} must have the same shape"
        )
    y = _swish(_compute(a), ctx.attrs.get("alpha", 1.0))
    y *= _compute(b)
    return _back(y, a)


@kernel("Softplus", since=1)
@_quiet
def softplus(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Softplus: log(1 + exp(x))."""
    return _back(_softplus(_compute(x)), x)


@kernel("Softsign", since=1)
@_quiet
def softsign(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Softsign: x / (1 + |x|)."""
    xc = _compute(x)
    d = np.abs(xc)
    d += 1
    return _back(np.divide(xc, d, out=d), x)


@kernel("Mish", since=18)
@_quiet
def mish(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Mish: x * tanh(softplus(x))."""
    xc = _compute(x)
    y = _softplus(xc)
    np.tanh(y, out=y)
    y *= xc
    return _back(y, x)


@kernel("Shrink", since=9)
@_quiet
def shrink(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Shrink: x + bias for x < -lambd, x - bias for x > lambd, 0 otherwise."""
    lambd, bias = ctx.attrs.get("lambd", 0.5), ctx.attrs.get("bias", 0.0)
    # integer inputs compute in float64 so that float lambd / bias compare and subtract exactly
    xc = x.astype(np.float64) if x.dtype.kind in "iu" else _compute(x)
    y = np.where(xc < -lambd, xc + bias, np.where(xc > lambd, xc - bias, 0))
    return _back(y, x)


_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TAIL = 1.4


@kernel("Gelu", since=20)
@_quiet
def gelu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Gelu: 0.5 x (1 + erf(x / sqrt 2)), or its tanh approximation (``approximate="tanh"``)."""
    return _gelu(x, ctx.attrs.get("approximate", "none"), ctx.name)


def gelu_in_place(y: np.ndarray, approximate: str = "none") -> np.ndarray:
    """Gelu of ``y`` written over ``y``, a fresh writable array the caller owns (a fused kernel's
    output), where PyTorch can: no new array and one pass fewer.  Elsewhere a new array."""
    functional = _library.torch_functional() if y.dtype == np.float32 else None
    if functional is not None and y.flags.writeable and approximate in ("none", "tanh"):
        import torch

        torch.ops.aten.gelu_(_library.as_tensor(y), approximate=approximate)
        return y
    with np.errstate(all="ignore"):
        return _gelu(y, approximate, "")


def _gelu(x: np.ndarray, approximate: str, name: str) -> np.ndarray:
    """Gelu of ``x`` in a new array (``name`` names the node in errors)."""
    functional = _library.torch_functional() if x.dtype == np.float32 else None
    if functional is not None and approximate in ("none", "tanh"):
        return functional.gelu(_library.as_tensor(x), approximate=approximate).numpy()
    xc = _compute(x)
    if approximate == "tanh":
        # 0.5 (1 + tanh(z)) = sigmoid(2 z): the sigmoid form keeps relative accuracy for x << 0
        z = xc * xc
        z *= 0.044715
        z += 1.0
        z *= xc
        z *= 2.0 * _SQRT_2_OVER_PI
        y = _sigmoid(z)
        y *= xc
        return _back(y, x)
    if approximate != "none":
        raise ValueError(f"Gelu '{name}': approximate must be 'none' or 'tanh'")
    if x.dtype == np.float64:
        # 1 + erf(x / sqrt 2) = erfc(-x / sqrt 2): no cancellation for negative x
        y = erfc64(x * -_SQRT_HALF)
    else:
        # float64 output: 1 + erf must not add the float32 rounding of erf
        y = erf_single(xc, np.dtype(np.float64), scale=_SQRT_HALF)
        y += 1.0
        # below -1.4, 1 + erf cancels: recompute those few elements with the accurate erfc
        tail = xc < -_GELU_TAIL
        if tail.any():
            y[tail] = erfc64(xc[tail].astype(np.float64) * -_SQRT_HALF)
    y *= xc
    y *= 0.5
    return _back(y, x)
