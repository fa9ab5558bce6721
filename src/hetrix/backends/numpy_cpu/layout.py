"""The NumPy backend's arrays in the layout a caller expects.

Kernels hand on what their library computed in the layout it computed it in: a convolution's
result is an NCHW-indexed view of channels-last (NHWC) memory, which the next kernels read as
it is.  Only what leaves the session must be C-ordered (callers pass buffers on to ctypes,
DLPack, file writers).  NumPy's copy of such a transposed view walks the source with the
channel stride, a cache miss per element: 5.4 ms for a first convolution's 1 x 64 x 112 x 112
float32 output, 61 ms for 8 x 256 x 56 x 56.
"""

from __future__ import annotations

import numpy as np

_BLOCK_ROWS = 128
"""Pixels per block of the NumPy copy: 128 pixels of 64 float32 channels, 32 KiB, stay in L1/L2
while they are scattered into the channel planes (0.58 ms against 5.4 for 1 x 64 x 112 x 112)."""


def c_order_copy(array: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(array)``, fast for a transposed view (:func:`memory_order`):
    through a oneDNN reorder where the ``onednn`` extra is installed (0.22 ms for the example
    above), else, for a channels-last 4-D view, in blocks of pixels that stay in the cache."""
    if array.size >= 4096 and memory_order(array) is not None:
        from hetrix.backends.numpy_cpu.kernels import _dnnl  # the kernels import this module

        copied = _dnnl.c_order_copy(array)
        if copied is not None:
            return copied
        if array.ndim == 4 and array.transpose(0, 2, 3, 1).flags.c_contiguous:
            return _blocked_channels_first(array)
    return np.ascontiguousarray(array)


def memory_order(x: np.ndarray) -> tuple[int, ...] | None:
    """The axis order in which ``x``'s memory is C-contiguous, where ``x`` is a transposed view
    of a C-ordered array (a channels-last NCHW view: ``(0, 2, 3, 1)``); None for a C-ordered
    ``x`` or any other layout.  A kernel that treats its axes alike (Pad, Resize) runs on
    ``x.transpose(order)`` and hands back the result transposed by ``np.argsort(order)``: the
    same layout out as in, where NumPy's functions on the view would walk it a cache miss per
    element and return C order."""
    if x.ndim < 2 or x.flags.c_contiguous:
        return None
    order = tuple(sorted(range(x.ndim), key=lambda a: -x.strides[a]))
    return order if x.transpose(order).flags.c_contiguous else None


def _blocked_channels_first(array: np.ndarray) -> np.ndarray:
    n, c, h, w = array.shape
    source = array.transpose(0, 2, 3, 1).reshape(n, h * w, c)  # the NHWC memory: no copy
    out = np.empty(array.shape, array.dtype)
    planes = out.reshape(n, c, h * w)  # a view: the blocks are written through it
    for start in range(0, h * w, _BLOCK_ROWS):
        block = source[:, start:start + _BLOCK_ROWS]
        planes[:, :, start:start + _BLOCK_ROWS] = block.transpose(0, 2, 1)
    return out
