"""signal kernels of the NumPy CPU backend."""

from __future__ import annotations

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
