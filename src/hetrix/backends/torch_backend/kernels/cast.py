"""Cast and CastLike on the torch backend (the support check rules out strings and float8)."""

from __future__ import annotations

import torch

from hetrix.backends.torch_backend.kernels._common import NodeContext, kernel, onnx_dtype


@kernel("Cast", since=1)
def cast(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Cast: convert to the ``to`` element type (floats truncate toward zero into integers)."""
    return x.to(onnx_dtype(ctx.attrs["to"]))


@kernel("CastLike", since=15)
def cast_like(ctx: NodeContext, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """CastLike: convert to the dtype of the second input."""
    return x.to(like.dtype)
