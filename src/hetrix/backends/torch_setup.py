"""Importing PyTorch to run beside NumPy's BLAS in one process.

PyTorch's CPU build parallelises with OpenMP, whose worker threads by default spin for a while
after each parallel region.  When the next node runs on NumPy (OpenBLAS has its own threads), the
spinning threads take the cores it needs: measured on MobileNetV2 here, 182 ms a run instead of
20 ms.  Asking OpenMP to sleep when idle removes that; it has to be said before OpenMP starts,
i.e. before torch is first imported, so every place in Hetrix that imports torch does it through
:func:`import_torch`.  A user who imported torch earlier keeps their own setting.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def import_torch() -> Any:
    """``import torch``, with OpenMP told not to spin if torch is not loaded yet."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    return torch
