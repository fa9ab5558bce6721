"""Kernels of Hetrix's own fused ops (domain ``hetrix``), which the graph passes introduce.

Each runs the existing kernel of the op it replaces, then applies the activation in place on the
fresh output, so a fused node computes exactly what the unfused pair did minus one temporary:

* ``FusedConv(X, W, B?, Z?)``: ``activation(Conv(X, W, B) + Z)`` (Z, the residual of
  ResNet-style blocks, has the output's shape); ``FusedGemm(A, B, C?)``: Conv / Gemm attributes,
  plus ``activation`` (``Relu``, ``LeakyRelu``, ``Clip``, ``Sigmoid``, ``HardSigmoid``,
  ``HardSwish``, ``Tanh``, ``Gelu``, ``GeluTanh`` or empty) and ``activation_params`` (LeakyRelu
  alpha; Clip min, max; HardSigmoid alpha, beta);
* ``FusedMatMul(A, B, bias?)``: MatMul, plus a bias along the last axis, plus the activation;
* ``Gelu(X)`` with ``approximate``, ``LayerNormalization(X, scale, B?)`` with ``axis``,
  ``epsilon``: the standard ops for models whose opset predates them (20 and 17);
* ``Attention(Q, Kt, V, mask?)`` with ``scale``: ``softmax(Q @ Kt * scale + mask) @ V`` where
  ``Kt`` is the key already transposed to ``[..., D, S_kv]``;
* ``FusedConvPool(X, W, B?)``: FusedConv's attributes, plus the MaxPool or AveragePool after
  it as ``pool_op_type`` and that node's attributes prefixed ``pool_``;
* ``ChannelShuffle(X)`` with ``groups``: ShuffleNet's Reshape -> Transpose -> Reshape, channel
  ``i * groups + j`` of the output being channel ``j * (C / groups) + i`` of ``X``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from hetrix.backends import registry
from hetrix.backends.numpy_cpu.kernels import (
    _dnnl,
    _onednn,
    activations,
    conv,
    normalization,
    pool,
    tensor,
)
from hetrix.backends.numpy_cpu.kernels import attention as attention_kernels
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.kernels.conv import conv_fused
from hetrix.backends.numpy_cpu.kernels.linalg import (
    gemm,
    gemm_on_packed_weight,
    matmul,
    matmul_bias,
    on_packed_weight,
)

Activation = Callable[[NodeContext, np.ndarray], np.ndarray]


def _relu(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    return activations.relu_in_place(y)


def _leaky_relu(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    (alpha,) = _params(ctx, 1)
    np.multiply(y, y.dtype.type(alpha), out=y, where=y < 0)
    return y


def _clip(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    low, high = _params(ctx, 2)
    return np.clip(y, low, high, out=y)


def _tanh(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    return np.tanh(y, out=y)


def _hard_sigmoid(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    alpha, beta = _params(ctx, 2)
    y *= y.dtype.type(alpha)
    y += y.dtype.type(beta)
    return np.clip(y, 0, 1, out=y)


def _by_kernel(fn: Activation, **attrs: object) -> Activation:
    """An activation computed by the standard kernel (not in place, same numbers as unfused)."""

    def apply(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
        inner = ctx.cache.get("activation_ctx")
        if inner is None:
            inner = NodeContext(
                op_type=ctx.attrs.get("activation", ""),
                domain="",
                name=ctx.name,
                opset=20,
                attrs=dict(attrs),
                num_inputs=1,
                num_outputs=1,
            )
            ctx.cache["activation_ctx"] = inner
        return fn(inner, y)

    return apply


ACTIVATIONS: dict[str, Activation] = {
    "": lambda ctx, y: y,
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Tanh": _tanh,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _by_kernel(activations.hard_swish),
    "Sigmoid": _by_kernel(activations.sigmoid),
    "Gelu": lambda ctx, y: activations.gelu_in_place(y, "none"),
    "GeluTanh": lambda ctx, y: activations.gelu_in_place(y, "tanh"),
}
"""Activation name -> function applying it to a fresh output (in place where it can)."""


def _params(ctx: NodeContext, n: int) -> list[float]:
    params = list(ctx.attrs.get("activation_params") or [])
    if len(params) != n:
        raise ValueError(
            f"{ctx.op_type} '{ctx.name}': activation {ctx.attrs.get('activation')!r} needs {n} "
            f"activation_params, got {params}"
        )
    return params


_PARAM_COUNTS = {"LeakyRelu": 1, "Clip": 2, "HardSigmoid": 2}
"""How many ``activation_params`` an activation takes (none where not listed)."""


def activation_name(ctx: NodeContext) -> str:
    """A fused node's ``activation`` attribute as a str ("" for none)."""
    name = ctx.attrs.get("activation", "") or ""
    return name.decode() if isinstance(name, bytes) else name


def activate(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    """Apply the node's ``activation`` to ``y``, a fresh array the kernel may overwrite."""
    name = activation_name(ctx)
    fn = ACTIVATIONS.get(name)
    if fn is None:
        raise ValueError(f"{ctx.op_type} '{ctx.name}': unknown activation {name!r}")
    if not y.flags.writeable:
        y = y.copy()
    return fn(ctx, y)


_FEW_ROWS = 8
"""Products of this many rows or fewer keep their activation out of the packed product: they
are GEMVs bound by reading the weight, where oneDNN's GEMM on the plain weight is faster
(``_onednn.plain_gemm``) and the separate activation pass touches a few thousand values.
Not those the kept matmul primitive takes (``_onednn.kept_linear``), which applies it."""


def linear_post_op(ctx: NodeContext, a: np.ndarray | None = None) -> tuple[str, list[float]]:
    """The node's activation and its parameters when oneDNN's inner product applies it as a
    post-op (``_onednn.linear_fuses``), else ``("", [])``: the kernel applies it after.  Given
    the float32 input ``a``, a product of few rows keeps it out (see :data:`_FEW_ROWS`)."""
    name = activation_name(ctx)
    if not name or not _onednn.linear_fuses(name):
        return "", []
    if a is not None and _few_rows_outside(a):
        return "", []
    params = list(ctx.attrs.get("activation_params") or [])
    expected = _PARAM_COUNTS.get(name, 0)
    if len(params) != expected:
        return "", []  # activate() reports the malformed node
    if name == "Clip" and params[0] > params[1]:
        return "", []  # oneDNN refuses crossed bounds; NumPy's clip gives ONNX's answer
    return name, params


def _few_rows_outside(a: np.ndarray) -> bool:
    """Whether a product of ``a`` keeps its activation outside (see :data:`_FEW_ROWS`)."""
    rows = a.size // max(a.shape[-1], 1)
    if rows > _FEW_ROWS or not (_onednn.PLAIN_GEMM and _onednn.plain_gemm_available()):
        return False
    return not (_onednn.KEPT_LINEAR
                and rows >= _onednn.KEPT_LINEAR_MIN_ROWS.get(a.dtype, rows + 1))


@kernel("FusedConv", since=1, domain="hetrix")
def fused_conv(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    z: np.ndarray | None = None,
) -> np.ndarray:
    """``activation(Conv(x, w, b) + z)``: oneDNN applies both as post-ops where it can."""
    name = activation_name(ctx)
    y, applied = conv_fused(ctx, x, w, b, residual=z, activation=name)
    if not applied:
        return activate(ctx, y)
    _onednn.offer_direct_conv(ctx, fused_conv, (x, w, b, z)[:ctx.num_inputs])
    return y


POOL_PREFIX = "pool_"
"""A FusedConvPool's pooling attributes are the pooling node's, under this prefix; its op type
is ``pool_op_type`` (MaxPool or AveragePool)."""
_POOLS = {"MaxPool": pool.max_pool, "AveragePool": pool.average_pool}


def _part_contexts(ctx: NodeContext) -> tuple[NodeContext, NodeContext]:
    """A FusedConvPool's convolution and pooling as nodes of their own (a FusedConv, a MaxPool
    or AveragePool: their attributes, their direct calls), made once per node.  The
    convolution shares the node's cache: its weight, packed once, serves both paths."""
    made: tuple[NodeContext, NodeContext] | None = ctx.cache.get("part_contexts")
    if made is None:
        attrs = {name[len(POOL_PREFIX):]: value for name, value in ctx.attrs.items()
                 if name.startswith(POOL_PREFIX)}
        op_type = attrs.pop("op_type", "")
        if op_type not in _POOLS:
            raise ValueError(f"FusedConvPool {ctx.name!r}: pool_op_type must be MaxPool or "
                             f"AveragePool, got {op_type!r}")
        conv_attrs = {name: value for name, value in ctx.attrs.items()
                      if not name.startswith(POOL_PREFIX)}
        made = ctx.cache["part_contexts"] = (
            dataclasses.replace(ctx, op_type="FusedConv", attrs=conv_attrs, direct=None),
            dataclasses.replace(
                ctx, op_type=op_type, domain="", attrs=attrs, num_inputs=1, num_outputs=1,
                input_names=(f"{ctx.name}/conv",), cache={}, owned_inputs=frozenset(),
                reusable_inputs=frozenset(), direct=None))
    return made


@kernel("FusedConvPool", since=1, domain="hetrix")
def fused_conv_pool(
    ctx: NodeContext, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None
) -> np.ndarray:
    """``pool(activation(Conv(x, w, b)))``: a model's first convolution and the pooling after
    it.  On an NCHW image oneDNN passes its blocked layout from one to the other
    (:func:`._onednn.conv_pool`); elsewhere the two kernels run one after the other."""
    conv_ctx, pool_ctx = _part_contexts(ctx)
    name = activation_name(ctx)
    conv_geometry = conv.geometry(ctx, x, w)
    out_shape = conv.library_output_shape(x, w, b, conv_geometry)
    if out_shape is not None and _onednn.fuses(name, with_residual=False):
        window = pool.window(pool_ctx, out_shape)
        kind = pool.library_pooling(pool_ctx, window)
        if kind is not None:
            y = _onednn.conv_pool(ctx, fused_conv_pool, x, w, b, conv_geometry, name,
                                  list(ctx.attrs.get("activation_params") or []), kind, window)
            if y is not None:
                return y
    inputs = (x, w, b)[:ctx.num_inputs]
    y = _POOLS[pool_ctx.op_type](pool_ctx, fused_conv(conv_ctx, *inputs))
    # the two parts' direct calls, one after the other, as the node's
    first, then = conv_ctx.direct, pool_ctx.direct
    if (first is not None and then is not None and first.positions == then.positions == (0,)
            and first.owner == then.owner):
        registry.offer_direct(ctx, fused_conv_pool, inputs, (0,),
                              functools.partial(_chained_parts, first.call, then.call),
                              (first.source, then.source))
    return y


@dataclasses.dataclass(frozen=True)
class _Parts:
    """The kept primitives a chained direct call runs (a replay's trace reads them by these
    names, as those of :class:`._dnnl.ConvPool`)."""

    conv: object
    pool: object


def _chained_parts(run_conv: Callable[..., Any], run_pool: Callable[..., Any],
                   _fallback: Callable[..., Any]) -> Callable[..., Any]:
    """A convolution's direct call and its pooling's, one after the other, as one call; the
    plan joins it with its neighbours where both run kept primitives alone (bfloat16 models'
    first layer, on the channels-last cast of the image), the convolution's result then a
    buffer of the replay's arena."""

    def call(x: Any) -> Any:
        y = run_conv(x)
        if _dnnl.tracer is not None:  # a buffer that dies inside the step, made by the step
            _dnnl.tracer.allocated(y)
        return run_pool(y)

    conv_join, pool_join = getattr(run_conv, "join", None), getattr(run_pool, "join", None)
    if conv_join is not None and conv_join is pool_join:
        call.primitive = _Parts(getattr(run_conv, "primitive", None),  # type: ignore[attr-defined]
                                getattr(run_pool, "primitive", None))
        call.join = conv_join  # type: ignore[attr-defined]
    return call


@kernel("FusedConcat", since=1, domain="hetrix")
def fused_concat(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """``activation(Concat(inputs))``.  A Relu over channels-last inputs is applied as they are
    copied into the result: one pass over the data where Concat then Relu make two (ShuffleNet's
    downsampling units end so); other activations and layouts run on the fresh result in place.
    """
    y, applied = tensor.concatenate(ctx, inputs[: ctx.num_inputs],
                                    relu=activation_name(ctx) == "Relu")
    return y if applied else activate(ctx, y)


PREFIX_SCALE_SHIFT = True
"""Whether a float32 normalization of a Concat chain's channel prefix runs on the kept
copy-then-binary primitive (``normalization.prefix_batch_norm``), else PyTorch's pass
(``benchmarks/ab_dnnl.py --part prefix`` switches it off for one arm)."""


@kernel("FusedBatchNormalization", since=1, domain="hetrix")
def fused_batch_norm(
    ctx: NodeContext,
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
) -> np.ndarray:
    """Inference BatchNormalization with its given statistics, then the activation in place."""
    activation = activation_name(ctx)
    if activation in ("", "Relu"):  # both in one oneDNN pass where it can
        inputs = (x, scale, bias, mean, var)
        relu = activation == "Relu"
        y = normalization.kept_batch_norm(ctx, fused_batch_norm, inputs, relu=relu)
        if y is None and PREFIX_SCALE_SHIFT:
            y = normalization.prefix_batch_norm(ctx, fused_batch_norm, inputs, relu=relu)
        if y is not None:
            return y
    if activation == "Relu":  # both in one torch pass when it can
        eps = ctx.attrs.get("epsilon", 1e-5)
        y = normalization.batch_norm_inference(x, scale, bias, mean, var, eps, ctx.cache, True)
        if y is not None:
            return y
    y = normalization.batch_norm(ctx, x, scale, bias, mean, var)
    assert isinstance(y, np.ndarray)  # one output: the fusion pass fuses no training-mode BN
    return activate(ctx, y)


@kernel("FusedGemm", since=1, domain="hetrix")
def fused_gemm(
    ctx: NodeContext, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None
) -> np.ndarray:
    """Gemm, then the activation: inside oneDNN's product on a packed weight where it can, else
    in place on the product."""
    fused, params = linear_post_op(ctx, a)
    final = bool(fused) or not activation_name(ctx)  # the result as it is, activation in it
    y = gemm_on_packed_weight(ctx, a, b, c, fused, params,
                              kernel=fused_gemm if final else None)
    if y is not None:
        return y if fused else activate(ctx, y)
    return activate(ctx, gemm(ctx, a, b, c))


@kernel("FusedMatMul", since=1, domain="hetrix")
def fused_matmul(
    ctx: NodeContext, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """MatMul plus the bias along the last axis (inside the GEMM), then the activation."""
    fused, params = linear_post_op(ctx, a)
    final = bool(fused) or not activation_name(ctx)  # the result as it is, activation in it
    y = on_packed_weight(ctx, a, b, bias, activation=fused, activation_params=params,
                         kernel=fused_matmul if final else None,
                         inputs=(a, b, bias)[:ctx.num_inputs])
    if y is not None:
        return y if fused else activate(ctx, y)
    b = _onednn.linear_weight(ctx.cache, b)
    y = matmul(a, b) if bias is None else matmul_bias(a, b, bias, f"FusedMatMul '{ctx.name}'")
    return activate(ctx, y)


@kernel("Gelu", since=1, domain="hetrix")
def gelu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """The standard Gelu (opset 20) for models of older opsets."""
    return activations.gelu(ctx, x)


@kernel("LayerNormalization", since=1, domain="hetrix")
def layer_norm(
    ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, ...]:
    """The standard LayerNormalization (opset 17) for models of older opsets."""
    return normalization.layer_norm_of(ctx, layer_norm, x, scale, bias)


@kernel("Attention", since=1, domain="hetrix")
def attention(
    ctx: NodeContext, q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """``softmax(q @ kt * scale + mask) @ v`` (see :func:`.attention.scaled_dot_product`)."""
    return attention_kernels.scaled_dot_product(ctx, q, kt, v, mask)


@kernel("ChannelShuffle", since=1, domain="hetrix")
def channel_shuffle(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """The channels (axis 1) of ``x`` regrouped: ``[N, g, C/g, ...]`` -> ``[N, C/g, g, ...]``.

    A 4-D input goes to a oneDNN reorder the node keeps (:class:`._dnnl.ChannelShuffle`),
    which keeps a convolution's channels-last layout in one pass; otherwise PyTorch's kernel
    does (ShuffleNet's 112-channel 28x28 shuffle: 23 us, against 54 us for NumPy's two copies,
    whose NCHW result the next convolution would convert back); NumPy's reshapes serve the
    other cases."""
    groups = int(ctx.attrs.get("groups", 1))
    if x.ndim < 3 or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"ChannelShuffle '{ctx.name}': {x.shape[1] if x.ndim > 1 else '?'} "
                         f"channels of a {x.ndim}-D input cannot form {groups} groups")
    y = _kept_shuffle(ctx, x, groups)
    if y is not None:
        return y
    if x.dtype in _onednn.SUPPORTED_DTYPES and x.size and _onednn.available():
        import torch

        return _onednn.to_numpy(torch.native_channel_shuffle(_onednn.as_tensor(x), groups))
    n, channels = x.shape[:2]
    grouped = x.reshape(n, groups, channels // groups, *x.shape[2:]).swapaxes(1, 2)
    return np.ascontiguousarray(grouped).reshape(x.shape)


def _kept_shuffle(ctx: NodeContext, x: np.ndarray, groups: int) -> np.ndarray | None:
    """The shuffle by the oneDNN reorder this node keeps, or None where that path does not
    serve (no library, not 4-D, a refused layout: the callers' paths then do)."""
    if x.ndim != 4 or not _onednn.available():
        return None
    return _dnnl.run_kept(ctx, "dnnl_shuffle", "reorder", x,
                          lambda: _dnnl.create_shuffle(x, groups), kernel=channel_shuffle)
