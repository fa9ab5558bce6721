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

The worker threads are also **bound to cores**, one each, the main thread's core left to it
(what ONNX Runtime does with its default thread count, and OpenVINO always).  Unbound, a model
run after an idle spell (a request after a quiet moment) was 1.5-2x slower than back to back:
the scheduler had placed the waking worker beside the main thread, and the two shared a core
until it moved one, while each kernel waited on both.  Measured here, SqueezeNet batch 1 after a
0.1 s pause, median of 30: 13.8-19.1 ms unbound, 8.9-9.7 bound; ShuffleNet 12.8-19.1 vs 11-12,
with the 90th percentile 21-23 ms vs 13.  libgomp binds at start-up from ``OMP_PROC_BIND`` and
``OMP_PLACES``, the main thread included, so Hetrix sets them for the import only and then gives
the main thread back its own affinity (Linux only, where it can; elsewhere nothing is bound).
The cores are those of the process's CPU mask at start-up: several Hetrix processes on one
machine should each get their own (``taskset``, a cgroup cpuset), or set ``OMP_PROC_BIND=false``,
or their workers would all be bound to the same first cores.

Both have to be said before OpenMP starts, i.e. before torch is first imported, so every place in
Hetrix that imports torch does it through :func:`import_torch`.  A user who set
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (the spin), any of ``OMP_PROC_BIND``, ``OMP_PLACES``,
``GOMP_CPU_AFFINITY`` (the binding; ``OMP_PROC_BIND=false`` keeps threads free), or imported torch
first, keeps their own setting.

NumPy's OpenBLAS has worker threads of its own, which busy-wait long after each call.  Beside
torch's OpenMP workers they fight for the same cores: on MobileNetV2 here one 1280x1000 GEMV of
the classifier left an OpenBLAS worker spinning through the next run's convolutions, 30 ms a run
instead of 10.  Once Hetrix computes through torch, every product big enough to gain from threads
goes to torch's libraries, so OpenBLAS is capped to one thread (through ``threadpoolctl``, part of
the ``torch`` extra), unless the user chose a count with ``OPENBLAS_NUM_THREADS`` or
``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


SPIN_ROUNDS = 300_000
"""libgomp spin rounds of an idle worker before it sleeps (its own default when no policy is set;
set explicitly so that the choice is visible and does not depend on the environment)."""


def import_torch() -> Any:
    """``import torch``; if torch is not loaded yet, OpenMP's idle threads set to spin briefly
    and its workers bound to cores (see the module's docstring)."""
    if "torch" in sys.modules:
        import torch
    else:
        with openmp_set_up():
            import torch
    _cap_openblas_once()
    return torch


@contextlib.contextmanager
def openmp_set_up() -> Iterator[None]:
    """Around whatever may load libgomp first, PyTorch or oneDNN's library (one libgomp serves
    both, set up once, when it is loaded): Hetrix's bounded spin and bound workers (see the
    module's docstring).  Loaded by oneDNN first, without them, the workers stayed unbound: a
    ShuffleNet run after a 0.1 s pause took 12.5-12.9 ms instead of 6.5-7.8 (medians of 20)."""
    set_openmp_spin()
    with _workers_bound():
        yield


def set_openmp_spin() -> None:
    """Ask libgomp for Hetrix's bounded spin (see the module's docstring) unless the user chose a
    wait policy; takes effect only if OpenMP has not started yet (call before importing torch)."""
    if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_ROUNDS)


_BINDING_VARIABLES = frozenset({"OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY"})
"""Set by the user: OpenMP's binding is theirs (``OMP_PROC_BIND=false`` keeps threads free)."""


@contextlib.contextmanager
def _workers_bound() -> Iterator[None]:
    """Inside it, OpenMP starting up binds its threads to cores, one each; on the way out the
    main thread gets its own affinity back and the variables are removed again, so that child
    processes of the user's do not inherit them."""
    mask = _own_affinity()
    if mask is None or len(mask) < 2 or _BINDING_VARIABLES & os.environ.keys():
        yield
        return
    os.environ.update(OMP_PROC_BIND="close", OMP_PLACES="cores")
    try:
        yield
    finally:
        for name in ("OMP_PROC_BIND", "OMP_PLACES"):
            os.environ.pop(name, None)
        try:
            os.sched_setaffinity(0, mask)
        except OSError as exc:  # never expected: the mask is the thread's own
            logger.warning("could not restore the main thread's CPU affinity: %s", exc)


def _own_affinity() -> set[int] | None:
    """The calling thread's CPU set, or None where it cannot be read and set back (not Linux)."""
    if not (hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity")):
        return None
    try:
        return set(os.sched_getaffinity(0))
    except OSError:
        return None


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
