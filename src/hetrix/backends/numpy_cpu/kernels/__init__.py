"""The NumPy CPU kernels, one module per family of operators.

Importing this package registers every kernel; the list is explicit so that grep finds where each
family lives.  To add an operator, add a function with ``@kernel(...)`` to the module of its family.
"""

from hetrix.backends.numpy_cpu.kernels import (
    elementwise,
    activations,
    cast,
    tensor,
    indexing,
    resize,
    conv,
    pool,
    normalization,
    vision,
    linalg,
    reduce,
    softmax,
    quantize,
    attention,
    loss,
    control_flow,
    sequence,
    rnn,
    random_ops,
    strings,
    signal,
    ml,
    training,
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
    "vision",
    "linalg",
    "reduce",
    "softmax",
    "quantize",
    "attention",
    "loss",
    "control_flow",
    "sequence",
    "rnn",
    "random_ops",
    "strings",
    "signal",
    "ml",
    "training",
]
