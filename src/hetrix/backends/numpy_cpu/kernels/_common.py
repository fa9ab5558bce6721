"""Shared helpers of the NumPy kernels."""

from __future__ import annotations

import functools

from hetrix.backends.registry import NodeContext, register

kernel = functools.partial(register, "numpy")
"""``@kernel("Relu", since=6)`` registers a NumPy CPU kernel (see hetrix.backends.registry)."""

__all__ = ["NodeContext", "kernel"]
