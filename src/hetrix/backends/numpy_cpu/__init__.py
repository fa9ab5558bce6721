"""The default CPU backend: kernels written with NumPy (its BLAS does the heavy lifting)."""

from __future__ import annotations

from hetrix.backends.base import RegistryBackend
from hetrix.backends.numpy_cpu import kernels  # noqa: F401  (registers the kernels)


class NumpyBackend(RegistryBackend):
    """Host CPU backend; values are numpy arrays, Python lists (sequences) or None."""

    name = "numpy:cpu"
    device = "cpu"
    registry_name = "numpy"
