"""linalg kernels of the NumPy CPU backend: MatMul, Gemm, Einsum, Det, MatMulInteger.

float32 matrix products of some size run in PyTorch's CPU libraries when PyTorch is installed (see
:mod:`._library`), each shape on the library measured fastest for it (``benchmarks/`` has the
numbers; the operands are shared with torch, not copied, and so is the result):

* ``activation((..., M, K) @ (K, N) + bias)`` on a constant 2-D weight (a layer's, in MatMul, Gemm
  or their fused forms) of at least 2^19 multiply-adds, with the ``onednn`` extra, two rows or
  more (float32; the weight one this node alone reads, whose original is then released): the
  node's kept oneDNN matmul primitive (:func:`._onednn.kept_linear`, the weight packed once,
  bias and activation inside, a direct call plans join).  BERT-base at batch 1 ran in 0.92x
  the time of the paths below, GPT-2 0.94x (``benchmarks/ab_dnnl.py --part linear``);
* otherwise the same product of at least 2^20 multiply-adds, float32, with the ``onednn``
  extra (a single row, a weight other nodes read): oneDNN's GEMM
  on the plain weight (:func:`._onednn.plain_gemm`: read in place, a (N, K) weight copied once
  into (K, N)), the bias filled in first.  In the models (``benchmarks/ab_dnnl.py --part
  gemm``) it ran in 0.80x the time of the packed product below on AlexNet at batch 1, 0.96-1.02x on
  GPT-2, BERT and MobileNetV2;
* otherwise (bfloat16, an activation oneDNN fuses on more than 8 rows, no ``onednn`` extra):
  oneDNN's inner product on the weight packed once per node
  (:func:`._onednn.packed_linear`, whose original is then released), the bias and activation in
  the same pass.  Unpacked, oneDNN reorders the weight on every call: packing took BERT's
  768x3072 layer from 4.46 to 2.95 ms, and AlexNet's 9216x4096 one at batch 1 from 7.2 ms
  (OpenBLAS's GEMV, one thread beside torch) to 4.3;
* the same on a weight computed at run time, M > 1: oneDNN's inner product on the plain weight
  (``mkldnn._linear_pointwise``, which reads it as the transposed view it is).  On BERT's and
  GPT-2's shapes it beat both MKL's GEMM (by up to 1.9x on GPT-2's 50257-wide head, on an AMD
  EPYC) and NumPy's OpenBLAS (by 1.1-2x);
* a single row on a small or computed weight: NumPy's OpenBLAS GEMV;
* batched products of two activations (attention): ``torch.matmul``.

Other dtypes, tiny products and the NumPy-only mode use ``np.matmul``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _library, _onednn
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.registry import Kernel

# Types NumPy has no BLAS (or no linalg) path for: computed in float32 and cast back.
_UPCAST = frozenset({np.dtype(np.float16)})


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype to run BLAS/linalg in for ``dtype`` (float16, bfloat16, float8 -> float32)."""
    if dtype in _UPCAST or dtype.type.__module__ == "ml_dtypes":
        return np.dtype(np.float32)
    return dtype


def _shape_error(op: str, *arrays: np.ndarray) -> ValueError:
    shapes = ", ".join(str(a.shape) for a in arrays)
    return ValueError(f"{op}: incompatible input shapes {shapes}")


_TORCH_MIN_MACS = 1 << 20
"""Multiply-adds below which a product stays on NumPy: there torch's per-call overhead (about
5 us more than NumPy's) outweighs its faster GEMM (measured even at about 1M, 64x128x128)."""


def _on_torch(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a @ b`` (at least 2-D each, inner dims checked) goes to a PyTorch library."""
    return (
        a.dtype == np.float32
        and b.dtype == np.float32
        and a.ndim >= 2
        and b.ndim >= 2
        and a.size * b.shape[-1] >= _TORCH_MIN_MACS
        and a.size != a.shape[-1]  # one row: OpenBLAS's GEMV is faster than torch's paths
        and _library.torch_functional() is not None
    )


def _linear(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``a @ b + bias`` for a 2-D ``b`` (K, N) through oneDNN's inner product (bias: N values).

    oneDNN takes the weight as (N, K): ``b``'s transposed view, so nothing is copied.
    """
    import torch

    t = _library.as_tensor
    with torch.no_grad():
        y = torch.ops.mkldnn._linear_pointwise(
            t(a), t(b).t(), None if bias is None else t(bias), "none", [], "")
    return y.numpy()


def _torch_matmul(a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    """``a @ b`` by ``torch.matmul``: batch dims broadcast as in NumPy, and (..., M, K) @ (K, N)
    folds into one GEMM the way :func:`matmul` does it."""
    import torch

    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as exc:
        raise _shape_error(op, a, b) from exc
    return torch.matmul(_library.as_tensor(a), _library.as_tensor(b)).numpy()


def matmul(a: np.ndarray, b: np.ndarray, op: str = "MatMul") -> np.ndarray:
    """``np.matmul`` with ONNX checks; batch dims fold into one BLAS call when ``b`` is 2-D."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"{op}: inputs must be at least 1-D, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: input dtypes differ ({a.dtype} vs {b.dtype})")
    out_dtype = a.dtype
    work = _compute_dtype(out_dtype)
    if work != out_dtype:
        a, b = a.astype(work), b.astype(work)
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise _shape_error(op, a, b)
    if _on_torch(a, b):
        return _linear(a, b, None) if b.ndim == 2 else _torch_matmul(a, b, op)
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        # (..., M, K) @ (K, N): one (prod(...)*M, K) GEMM is much faster than a batched loop.
        y = np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])
    else:
        try:
            y = np.matmul(a, b)
        except ValueError as exc:
            raise _shape_error(op, a, b) from exc
    return np.asarray(y, dtype=out_dtype)  # 1-D @ 1-D gives a NumPy scalar


def matmul_bias(a: np.ndarray, b: np.ndarray, bias: np.ndarray, op: str = "MatMul") -> np.ndarray:
    """``a @ b + bias``, ``bias`` holding one value or one per output column (the last axis).

    On oneDNN, (..., M, K) @ (K, N) + bias is one inner product: the bias joins the output pass.
    """
    if bias.ndim > 1:
        raise ValueError(f"{op}: bias must be 1-D, got shape {bias.shape}")
    if (
        b.ndim == 2
        and a.ndim >= 2
        and a.shape[-1] == b.shape[0]
        and bias.dtype == np.float32
        and bias.size == b.shape[1]
        and _on_torch(a, b)
    ):
        return _linear(a, b, bias)
    y = matmul(a, b, op)
    if bias.size not in (1, y.shape[-1] if y.ndim else 1):
        raise ValueError(f"{op}: bias of shape {bias.shape} for output {y.shape}")
    np.add(y, bias.astype(y.dtype, copy=False), out=y)
    return y


_GEMM_MIN_MACS = 1 << 19
"""Multiply-adds from which a product without activation goes to oneDNN's GEMM
(:func:`_onednn.plain_gemm`), called through ctypes at less cost per call than torch: one row
of 544 x 1000 (ShuffleNet's classifier) took 36 us there against 43 on NumPy, 1024 x 1000
(Inception's, DenseNet's) 40 against 58 (2 threads, weights in cache; medians of 100
alternating calls); 512 x 512, 18 against 17.  Below it NumPy's call is the cheaper."""

def on_packed_weight(ctx: NodeContext, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
                     transposed: bool = False, activation: str = "",
                     activation_params: list[float] | tuple[float, ...] = (),
                     kernel: Kernel | None = None,
                     inputs: tuple[Any, ...] | None = None) -> np.ndarray | None:
    """``activation(a @ b + bias)`` on the node's packed float32 weight, or None (see the module
    docstring); ``activation`` one that ``_onednn.linear_fuses``, or empty.  Once a node has
    packed its weight every call comes here: the original's memory may be gone (callers that go
    on without it read ``_onednn.linear_weight``).  ``kernel``: the node's kernel when it
    returns this result as it is for ``inputs``, so a kept primitive may be its direct call."""
    macs = a.size // max(a.shape[-1], 1) * b.size
    if macs >= _GEMM_MIN_MACS:
        y = _onednn.kept_linear(ctx, a, b, bias, transposed=transposed, activation=activation,
                                activation_params=activation_params, kernel=kernel,
                                inputs=inputs)
        if y is not None:
            return y
    if not activation and (macs >= _GEMM_MIN_MACS
                           and _library.torch_functional() is not None):
        y = _onednn.plain_gemm(ctx.cache, a, b, bias, transposed=transposed,
                               owns_weight=1 in ctx.owned_inputs,
                               max_copy_bytes=_onednn.PACK_MAX_BYTES)
        if y is not None:
            return y
    if "linear" not in ctx.cache and not (
        a.dtype == np.float32
        and b.dtype == np.float32
        and a.ndim >= 2
        and b.ndim == 2
        and not b.flags.writeable  # a constant of the plan
        and 1 in ctx.owned_inputs  # its original is released: the weight stays held once
        and b.nbytes <= _onednn.PACK_MAX_BYTES
        and a.size // max(a.shape[-1], 1) * b.size >= _TORCH_MIN_MACS
        and _library.torch_functional() is not None
    ):
        return None
    return _onednn.packed_linear(ctx.cache, a, b, bias, transposed=transposed,
                                 activation=activation, activation_params=activation_params,
                                 owns_weight=1 in ctx.owned_inputs)


def gemm_on_packed_weight(ctx: NodeContext, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                          activation: str = "",
                          activation_params: list[float] | tuple[float, ...] = (),
                          kernel: Kernel | None = None) -> np.ndarray | None:
    """A Gemm of the form ``activation(A @ B' + C)`` (alpha 1, beta 1 or no C, A not transposed)
    on the node's packed weight (:func:`on_packed_weight`), or None.  ``kernel``: the node's,
    when it returns this result as it is."""
    if a.ndim == 2 and ctx.attrs.get("alpha", 1.0) == 1.0 and not ctx.attrs.get("transA", 0) and (
            c is None or ctx.attrs.get("beta", 1.0) == 1.0):
        return on_packed_weight(ctx, a, b, c, transposed=bool(ctx.attrs.get("transB", 0)),
                                activation=activation, activation_params=activation_params,
                                kernel=kernel, inputs=(a, b, c)[:ctx.num_inputs])
    return None


@kernel("MatMul", since=1)
def matmul_kernel(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product with NumPy ``matmul`` broadcasting semantics."""
    y = on_packed_weight(ctx, a, b, None, kernel=matmul_kernel, inputs=(a, b))
    return y if y is not None else matmul(a, _onednn.linear_weight(ctx.cache, b))


@kernel("Gemm", since=1)
def gemm(ctx: NodeContext, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Y = alpha * A' @ B' + beta * C, optional transposes, C broadcast unidirectionally."""
    y = gemm_on_packed_weight(ctx, a, b, c, kernel=gemm)
    if y is not None:
        return y
    b = _onednn.linear_weight(ctx.cache, b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm: A and B must be 2-D, got shapes {a.shape} and {b.shape}")
    if ctx.attrs.get("transA", 0):
        a = a.T
    if ctx.attrs.get("transB", 0):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"Gemm: inner dimensions differ: A' is {a.shape}, B' is {b.shape}")
    alpha = ctx.attrs.get("alpha", 1.0)
    beta = ctx.attrs.get("beta", 1.0)
    if a.dtype == b.dtype and _on_torch(a, b):
        return _torch_gemm(a, b, c, alpha, beta)
    y = matmul(a, b, "Gemm")
    if alpha != 1.0:
        np.multiply(y, alpha, out=y, casting="unsafe")
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = c * beta if y.dtype.kind == "f" else (c * beta).astype(y.dtype)
        try:
            np.add(y, c, out=y, casting="unsafe")
        except ValueError as exc:
            raise ValueError(
                f"Gemm: C of shape {c.shape} does not broadcast to the output {y.shape}"
            ) from exc
    return y


def _torch_gemm(
    a: np.ndarray, b: np.ndarray, c: np.ndarray | None, alpha: float, beta: float
) -> np.ndarray:
    """``alpha * a @ b + beta * c`` in one ``torch.addmm`` (the bias joins the GEMM's output
    pass); ``a`` and ``b`` may be transposed views, which MKL reads as they are."""
    import torch

    shape = (a.shape[0], b.shape[1])
    if alpha == 1.0 and (c is None or beta == 0.0 or (beta == 1.0 and c.shape in (
            (shape[1],), (1, shape[1])) and c.dtype == np.float32)):
        bias = None if c is None or beta == 0.0 else c.reshape(shape[1])
        return _linear(a, b, bias)  # a layer: oneDNN's inner product, bias in the same pass
    ta, tb = _library.as_tensor(a), _library.as_tensor(b)
    if c is None or beta == 0.0:
        y = torch.mm(ta, tb)
        if alpha != 1.0:
            y.mul_(alpha)
        return y.numpy()
    try:
        fits = np.broadcast_shapes(c.shape, shape) == shape  # unidirectional: C onto Y only
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"Gemm: C of shape {c.shape} does not broadcast to the output {shape}")
    tc = _library.as_tensor(c.astype(np.float32, copy=False))
    return torch.addmm(tc, ta, tb, beta=beta, alpha=alpha).numpy()


@kernel("Einsum", since=12)
def einsum(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """Einstein summation; contraction order is planned once per input shapes and cached."""
    equation = ctx.attrs["equation"].replace(" ", "")
    out_dtype = inputs[0].dtype
    work = _compute_dtype(out_dtype)
    if work != out_dtype:
        inputs = tuple(x.astype(work) for x in inputs)
    key = ("einsum_path", tuple(x.shape for x in inputs))
    path = ctx.cache.get(key)
    try:
        if path is None:
            path = np.einsum_path(equation, *inputs, optimize="greedy")[0]
            ctx.cache[key] = path
        y = np.einsum(equation, *inputs, optimize=path)
    except ValueError as exc:
        shapes = [x.shape for x in inputs]
        raise ValueError(f"Einsum: equation {equation!r} does not fit shapes {shapes}") from exc
    return np.asarray(y, dtype=out_dtype)


def _det(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"Det: input must be [..., M, M], got shape {x.shape}")
    work = _compute_dtype(x.dtype)
    return np.asarray(np.linalg.det(x.astype(work, copy=False)), dtype=x.dtype)


@kernel("Det", since=11)
def det(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Determinant of each square matrix in the trailing two dimensions."""
    return _det(ctx, x)


def _zero_point_rows(zp: np.ndarray | None, a: np.ndarray, name: str) -> np.ndarray | float:
    """A zero point per tensor (scalar) or per row of ``a`` (1-D of M), shaped to broadcast."""
    if zp is None:
        return 0.0
    if zp.size == 1:
        return float(zp.reshape(()))
    rows = a.shape[-2] if a.ndim > 1 else 1
    if zp.ndim == 1 and zp.shape[0] == rows:
        return zp.astype(np.float64).reshape(rows, 1)
    # N-D zero point matching a's leading dims: broadcast it as given (last dim 1).
    return zp.astype(np.float64)


def _zero_point_cols(zp: np.ndarray | None, b: np.ndarray, name: str) -> np.ndarray | float:
    """A zero point per tensor (scalar) or per column of ``b`` (1-D of N)."""
    if zp is None:
        return 0.0
    if zp.size == 1:
        return float(zp.reshape(()))
    cols = b.shape[-1]
    if zp.ndim == 1 and zp.shape[0] != cols:
        raise ValueError(f"{name}: zero point of shape {zp.shape} does not match {cols} columns")
    return zp.astype(np.float64)


def integer_matmul(
    a: np.ndarray,
    b: np.ndarray,
    a_zp: np.ndarray | None,
    b_zp: np.ndarray | None,
    op: str,
) -> np.ndarray:
    """Exact ``(a - a_zp) @ (b - b_zp)`` of 8/16-bit integers, as float64 (BLAS, no rounding)."""
    # float64 holds every partial sum exactly (|products| < 2**32, far below 2**53), and dgemm
    # is much faster than NumPy's non-BLAS integer matmul.
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    zpa = _zero_point_rows(a_zp, a, op)
    zpb = _zero_point_cols(b_zp, b, op)
    if not isinstance(zpa, float) or zpa:
        af -= zpa
    if not isinstance(zpb, float) or zpb:
        bf -= zpb
    return matmul(af, bf, op)


@kernel("MatMulInteger", since=10)
def matmul_integer(
    ctx: NodeContext,
    a: np.ndarray,
    b: np.ndarray,
    a_zero_point: np.ndarray | None = None,
    b_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """Integer matrix product with zero points, accumulated exactly into int32."""
    y = integer_matmul(a, b, a_zero_point, b_zero_point, "MatMulInteger")
    return y.astype(np.int32)
