"""Optional vendor kernels for the ops where NumPy is slow.

The NumPy backend computes everything with NumPy and its BLAS.  Some ops have no fast NumPy
formulation: depthwise convolution (BLAS sees only tiny per-channel products; ufunc loops ran
4-9x slower than oneDNN's kernel on MobileNetV2's layers) and GELU's erf (about 5 ms per BERT-base
layer in accurate float64, 0.3 ms in PyTorch's vectorised kernel).  Others are faster in PyTorch's
kernels: float32 matrix products (MKL's SGEMM outruns NumPy's OpenBLAS on transformer shapes),
softmax and layer normalization (one fused pass instead of several NumPy temporaries).  When
PyTorch is installed, its CPU kernels serve those ops on the same host arrays
(``torch.from_numpy`` shares memory, so nothing is copied); without it, or with
``HETRIX_NUMPY_ONLY=1``, the NumPy paths run.  Tests run both paths.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

import numpy as np

_FUNCTIONAL: Any = None
_READONLY_SEEN = False


def torch_functional() -> Any:
    """``torch.nn.functional`` when PyTorch is installed and allowed, else None (checked once)."""
    global _FUNCTIONAL
    if _FUNCTIONAL is None:
        _FUNCTIONAL = False
        if os.environ.get("HETRIX_NUMPY_ONLY") != "1" and importlib.util.find_spec("torch"):
            from hetrix.backends.torch_setup import import_torch

            _FUNCTIONAL = import_torch().nn.functional
    return _FUNCTIONAL or None


def as_tensor(array: np.ndarray) -> Any:
    """A torch tensor sharing ``array``'s memory (call only when :func:`torch_functional` is set).

    Read-only arrays (weights, constants) are viewed as they are, not copied: the kernels only read
    their inputs.  Torch warns once per process about such views; that one warning is silenced
    here, so later conversions need no ``catch_warnings`` (which is slow and not thread-safe).
    Negative strides, which torch cannot represent, cost a copy.
    """
    global _READONLY_SEEN
    import torch

    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    if array.flags.writeable or _READONLY_SEEN:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    _READONLY_SEEN = True
    return tensor
