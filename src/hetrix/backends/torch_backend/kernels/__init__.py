"""The torch kernels, one module per family of operators (importing registers them)."""

from hetrix.backends.torch_backend.kernels import (
    activations,
    attention,
    cast,
    conv,
    elementwise,
    indexing,
    linalg,
    normalization,
    pool,
    reduce,
    resize,
    softmax,
    tensor,
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
