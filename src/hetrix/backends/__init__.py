"""Backends: a device kind plus the library that drives it, with its kernels.

``numpy_cpu`` is the default CPU backend.  Each backend registers its kernels in
:data:`hetrix.backends.registry.REGISTRY` when its package is imported.
"""
