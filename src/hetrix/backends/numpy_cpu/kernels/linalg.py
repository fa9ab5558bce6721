"""linalg kernels of the NumPy CPU backend: MatMul, Gemm, Einsum, Det, MatMulInteger."""

from __future__ import annotations

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

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
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        # (..., M, K) @ (K, N): one (prod(...)*M, K) GEMM is much faster than a batched loop.
        y = np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])
    else:
        try:
            y = np.matmul(a, b)
        except ValueError as exc:
            raise _shape_error(op, a, b) from exc
    return np.asarray(y, dtype=out_dtype)  # 1-D @ 1-D gives a NumPy scalar


@kernel("MatMul", since=1)
def matmul_kernel(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product with NumPy ``matmul`` broadcasting semantics."""
    return matmul(a, b)


@kernel("Gemm", since=1)
def gemm(ctx: NodeContext, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Y = alpha * A' @ B' + beta * C, optional transposes, C broadcast unidirectionally."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm: A and B must be 2-D, got shapes {a.shape} and {b.shape}")
    if ctx.attrs.get("transA", 0):
        a = a.T
    if ctx.attrs.get("transB", 0):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"Gemm: inner dimensions differ: A' is {a.shape}, B' is {b.shape}")
    y = matmul(a, b, "Gemm")
    alpha = ctx.attrs.get("alpha", 1.0)
    beta = ctx.attrs.get("beta", 1.0)
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
