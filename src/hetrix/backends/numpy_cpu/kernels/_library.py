"""Optional vendor kernels for the few ops where NumPy has no fast primitive.

The NumPy backend computes everything with NumPy and its BLAS.  Two ops have no fast NumPy
formulation: depthwise convolution (BLAS sees only tiny per-channel products; ufunc loops ran
4-9x slower than oneDNN's kernel on MobileNetV2's layers) and GELU's erf (about 5 ms per BERT-base
layer in accurate float64, 0.3 ms in PyTorch's vectorised kernel).  When PyTorch is installed,
its CPU kernels serve those ops on the same host arrays (``torch.from_numpy`` shares memory, so
nothing is copied); without it, or with ``HETRIX_NUMPY_ONLY=1``, the NumPy paths run.  Tests run
both paths.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

_FUNCTIONAL: Any = None


def torch_functional() -> Any:
    """``torch.nn.functional`` when PyTorch is installed and allowed, else None (checked once)."""
    global _FUNCTIONAL
    if _FUNCTIONAL is None:
        _FUNCTIONAL = False
        if os.environ.get("HETRIX_NUMPY_ONLY") != "1" and importlib.util.find_spec("torch"):
            from hetrix.backends.torch_setup import import_torch

            _FUNCTIONAL = import_torch().nn.functional
    return _FUNCTIONAL or None
