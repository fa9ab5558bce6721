"""MatMul, Gemm and Einsum on the torch backend."""

from __future__ import annotations

import torch

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    attr_check,
    compute_dtype,
    kernel,
)

_FLOATS = {1, 10, 11, 16}


@attr_check("MatMul", "Gemm", "Einsum")
def _float_only_off_cpu(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """Accelerator BLAS libraries have no integer GEMM: keep integer products elsewhere."""
    if device_type == "cpu":
        return ""
    for value in node.inputs:
        if value is not None and value.dtype is not None and int(value.dtype) not in _FLOATS:
            return f"integer {node.op_type} is not supported on {device_type}"
    return ""


def _compute(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x.to(compute_dtype(x)) for x in xs)


@kernel("MatMul", since=1)
def matmul(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MatMul: numpy.matmul semantics (1-D operands promoted and squeezed back)."""
    ac, bc = _compute(a, b)
    return torch.matmul(ac, bc).to(a.dtype)


@kernel("Gemm", since=1)
def gemm(
    ctx: NodeContext, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None
) -> torch.Tensor:
    """Gemm: alpha * A' @ B' + beta * C, A' and B' optionally transposed."""
    alpha, beta = ctx.attrs.get("alpha", 1.0), ctx.attrs.get("beta", 1.0)
    ac, bc = _compute(a, b)
    if ctx.attrs.get("transA", 0):
        ac = ac.T
    if ctx.attrs.get("transB", 0):
        bc = bc.T
    y = torch.matmul(ac, bc)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        cc = c.to(y.dtype)
        y = y + (cc * beta if beta != 1.0 else cc)
    return y.to(a.dtype)


@kernel("Einsum", since=12)
def einsum(ctx: NodeContext, *xs: torch.Tensor) -> torch.Tensor:
    """Einsum: torch.einsum on the equation (implicit output mode included)."""
    equation = ctx.attrs["equation"]
    if isinstance(equation, bytes):
        equation = equation.decode()
    return torch.einsum(equation.replace(" ", ""), *_compute(*xs)).to(xs[0].dtype)
