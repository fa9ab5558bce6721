"""Random generator kernels of the NumPy CPU backend.

Each node owns one ``numpy.random.Generator`` kept in ``ctx.cache``: with a ``seed`` attribute it
is seeded from it, so a fresh session replays the same draws (later runs of the same session
continue the stream, as ONNX Runtime does); without one it is seeded from OS entropy.
"""

from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

_FLOAT_KINDS = (np.float16, np.float32, np.float64)


def _rng(ctx: NodeContext) -> np.random.Generator:
    """The node's generator, created on first use from its ``seed`` attribute when set."""
    rng = ctx.cache.get("rng")
    if rng is None:
        seed = ctx.attrs.get("seed")
        # The seed is a float: use its exact bits so that e.g. 0.5 and 0.0 differ.
        entropy = None if seed is None else int(np.float64(seed).view(np.uint64))
        rng = ctx.cache["rng"] = np.random.default_rng(entropy)
    return rng


def _dtype(ctx: NodeContext, default: np.dtype | None = None) -> np.dtype:
    """The output dtype: the ``dtype`` attribute, else ``default``."""
    code = ctx.attrs.get("dtype")
    dtype = np.dtype(tensor_dtype_to_np_dtype(code)) if code is not None else default
    if dtype is None:
        raise ValueError(f"{ctx.op_type}: no output dtype")
    return dtype


def _float_dtype(ctx: NodeContext, default: np.dtype | None = None) -> np.dtype:
    dtype = _dtype(ctx, default)
    if dtype.type not in _FLOAT_KINDS and dtype.name != "bfloat16":
        raise ValueError(f"{ctx.op_type}: output dtype must be floating point, got {dtype}")
    return dtype


def _shape(ctx: NodeContext) -> tuple[int, ...]:
    shape = ctx.attrs.get("shape")
    if shape is None:
        raise ValueError(f"{ctx.op_type}: attribute 'shape' is required")
    return tuple(int(d) for d in shape)


def _uniform(ctx: NodeContext, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    low, high = float(ctx.attrs.get("low", 0.0)), float(ctx.attrs.get("high", 1.0))
    return _rng(ctx).uniform(low, high, size=shape).astype(dtype, copy=False)


def _normal(ctx: NodeContext, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    mean, scale = float(ctx.attrs.get("mean", 0.0)), float(ctx.attrs.get("scale", 1.0))
    return _rng(ctx).normal(mean, scale, size=shape).astype(dtype, copy=False)


@kernel("RandomUniform", since=1)
def random_uniform(ctx: NodeContext) -> np.ndarray:
    """Samples from U[low, high) with the ``shape`` and ``dtype`` attributes."""
    return _uniform(ctx, _shape(ctx), _float_dtype(ctx))


@kernel("RandomNormal", since=1)
def random_normal(ctx: NodeContext) -> np.ndarray:
    """Samples from N(mean, scale^2) with the ``shape`` and ``dtype`` attributes."""
    return _normal(ctx, _shape(ctx), _float_dtype(ctx))


@kernel("RandomUniformLike", since=1)
def random_uniform_like(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Samples from U[low, high) shaped like ``x`` (dtype: attribute, else ``x``'s)."""
    return _uniform(ctx, x.shape, _float_dtype(ctx, x.dtype))


@kernel("RandomNormalLike", since=1)
def random_normal_like(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Samples from N(mean, scale^2) shaped like ``x`` (dtype: attribute, else ``x``'s)."""
    return _normal(ctx, x.shape, _float_dtype(ctx, x.dtype))


@kernel("Bernoulli", since=15)
def bernoulli(ctx: NodeContext, p: np.ndarray) -> np.ndarray:
    """Draws 1 with probability ``p`` element-wise (dtype: attribute, else ``p``'s)."""
    dtype = _dtype(ctx, p.dtype)
    return (_rng(ctx).random(size=p.shape) < p).astype(dtype)


@kernel("Multinomial", since=7)
def multinomial(ctx: NodeContext, logits: np.ndarray) -> np.ndarray:
    """``sample_size`` class draws per batch row from unnormalised log-probabilities."""
    if logits.ndim != 2:
        raise ValueError(f"Multinomial: input must be [batch, classes], got shape {logits.shape}")
    dtype = _dtype(ctx, np.dtype(np.int32))
    if dtype not in (np.int32, np.int64):
        raise ValueError(f"Multinomial: output dtype must be int32 or int64, got {dtype}")
    samples = int(ctx.attrs.get("sample_size", 1))
    batch, classes = logits.shape
    # Softmax in float64 (max-shifted for stability), then invert the CDF of each row.
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = _rng(ctx).random(size=(batch, samples))
    out = np.empty((batch, samples), dtype=dtype)
    for b in range(batch):  # one binary search per row; batch is small
        out[b] = np.minimum(np.searchsorted(cdf[b], u[b], side="right"), classes - 1)
    return out
