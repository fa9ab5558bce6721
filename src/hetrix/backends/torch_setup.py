"""Importing PyTorch with its OpenMP threads set up for a run of many short kernels.

PyTorch's CPU build parallelises with OpenMP (libgomp).  What an idle worker thread does between
two parallel regions decides the per-node cost of a model run through it:

* told to sleep at once (``OMP_WAIT_POLICY=PASSIVE``, what Hetrix used first), every kernel starts
  by waking the worker through the kernel's scheduler: 50-150 us per node on the 2-vCPU VMs here,
  more than a small convolution takes (SqueezeNet: 26 convolutions of 40-300 us each).  A model of
  small layers then gains nothing from the second core;
* told to spin for ever (``ACTIVE``), it takes a core from everything else in the process and on
  the machine, even between runs;
* spinning a bounded number of rounds (``GOMP_SPINCOUNT``), it stays awake across the short gaps
  between the nodes of a run (tens of microseconds) and sleeps about 10 ms after the run ends.

Hetrix asks for the third, 300,000 rounds (measured: about 10 ms of spinning after a run here).
It has to be said before OpenMP starts, i.e. before torch is first imported, so every place in
Hetrix that imports torch does it through :func:`import_torch`.  A user who set
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, or imported torch first, keeps their own setting.

NumPy's OpenBLAS has worker threads of its own, which busy-wait long after each call.  Beside
torch's OpenMP workers they fight for the same cores: on MobileNetV2 here one 1280x1000 GEMV of
the classifier left an OpenBLAS worker spinning through the next run's convolutions, 30 ms a run
instead of 10.  Once Hetrix computes through torch, every product big enough to gain from threads
goes to torch's libraries, so OpenBLAS is capped to one thread (through ``threadpoolctl``, part of
the ``torch`` extra), unless the user chose a count with ``OPENBLAS_NUM_THREADS`` or
``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)


SPIN_ROUNDS = 300_000
"""libgomp spin rounds of an idle worker before it sleeps (its own default when no policy is set;
set explicitly so that the choice is visible and does not depend on the environment)."""


def import_torch() -> Any:
    """``import torch``; OpenMP's idle threads set to spin briefly if torch is not loaded yet."""
    if "torch" not in sys.modules:
        set_openmp_spin()
    import torch

    _cap_openblas_once()
    return torch


def set_openmp_spin() -> None:
    """Ask libgomp for Hetrix's bounded spin (see the module's docstring) unless the user chose a
    wait policy; takes effect only if OpenMP has not started yet (call before importing torch)."""
    if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_ROUNDS)


_openblas_capped = False


def _cap_openblas_once() -> None:
    """Limit NumPy's OpenBLAS to one thread (see the module's docstring), once per process."""
    global _openblas_capped
    if _openblas_capped:
        return
    _openblas_capped = True
    if {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"} & os.environ.keys():
        return  # the user's choice
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning("threadpoolctl is not installed: NumPy's BLAS threads may compete with "
                       "PyTorch's (pip install 'hetrix[torch]', or set OPENBLAS_NUM_THREADS=1)")
        return
    threadpool_limits(limits=1, user_api="blas")  # stays in force: not used as a context
