"""The torch kernels, one module per family of operators (importing registers them)."""

from hetrix.backends.torch_backend.kernels import (
    elementwise,
    activations,
    cast,
    tensor,
    indexing,
    resize,
    conv,
    pool,
    normalization,
    linalg,
    reduce,
    softmax,
    attention,
)

__all__ = [
    "elementwise",
    "activations",
    "cast",
    "tensor",
    "indexing",
    "resize",
    "conv",
    "pool",
    "normalization",
    "linalg",
    "reduce",
    "softmax",
    "attention",
]
