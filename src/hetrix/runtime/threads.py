"""A session's thread count (``SessionOptions.intra_op_num_threads``), applied while it runs.

ONNX Runtime gives each session a thread pool of its own.  Hetrix's kernels run on libraries
whose thread counts are per process: PyTorch's intra-op threads (OpenMP) and NumPy's BLAS
(OpenBLAS).  So a session with a count other than 0 sets those libraries to it when a run starts
and puts back what it found when the run ends: code outside the run, PyTorch code of the user's
included, keeps its own setting, and sessions with different counts can take turns in one
process.  Two sessions with different counts running *at the same time* on two Python threads
would share whichever count was set last; that is the cost of per-process libraries.

Which library gets the count:

* PyTorch, once Hetrix computes through it (see :mod:`hetrix.backends.torch_setup`): its threads
  take the count, and OpenBLAS stays at the one thread it was capped to there (its spinning
  workers would take cores from PyTorch's);
* otherwise NumPy's BLAS, through threadpoolctl when it is installed (without it the BLAS keeps
  its own count, and the session says so once in the log).

Setting and restoring costs a few microseconds per run (measured: ``torch.set_num_threads`` about
0.3 µs, OpenBLAS's setter through threadpoolctl about 1.3 µs).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

from hetrix.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

_blas_controllers: list[Any] | None = None


def _blas() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries loaded now (found once per process:
    the search walks the loaded libraries, about 4 ms)."""
    global _blas_controllers
    if _blas_controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            logger.warning("threadpoolctl is not installed: intra_op_num_threads does not limit "
                           "NumPy's BLAS threads (pip install threadpoolctl, or set "
                           "OPENBLAS_NUM_THREADS)")
            _blas_controllers = []
        else:
            _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_controllers


class ComputeThreads:
    """A session's thread count; ``applied()`` is the context manager around one run.

    ``count`` 0 (the default) changes nothing: the libraries keep their own defaults (one thread
    per core).
    """

    def __init__(self, count: int) -> None:
        if not isinstance(count, int) or count < 0:
            raise InvalidArgumentError(
                f"SessionOptions.intra_op_num_threads must be 0 (the libraries' default) or a "
                f"positive number of threads, got {count!r}"
            )
        self.count = count
        # decided once, when the session is made: PyTorch is imported here if the kernels will
        # compute on it, so that the first run already has the count
        self._torch = _torch_computes() if count else None

    def applied(self) -> contextlib.AbstractContextManager[None]:
        """Inside it, the compute libraries use ``count`` threads; each use restores on its own,
        so runs may nest or overlap."""
        return _Applied(self.count, self._torch) if self.count else _UNCHANGED


_UNCHANGED = contextlib.nullcontext()


class _Applied:
    def __init__(self, count: int, torch: Any) -> None:
        self.count = count
        self.torch = torch
        self.restore: list[tuple[Any, int]] = []

    def __enter__(self) -> None:
        count, torch = self.count, self.torch
        if torch is not None:
            previous = torch.get_num_threads()
            if previous != count:
                torch.set_num_threads(count)
                self.restore.append((torch.set_num_threads, previous))
            return
        for controller in _blas():
            previous = controller.get_num_threads()
            if previous != count:
                controller.set_num_threads(count)
                self.restore.append((controller.set_num_threads, previous))

    def __exit__(self, *exc: object) -> None:
        for setter, previous in reversed(self.restore):
            setter(previous)


def _torch_computes() -> Any:
    """The torch module when the NumPy backend's kernels run on PyTorch (imported here), else
    None."""
    from hetrix.backends.numpy_cpu.kernels import _library

    return sys.modules["torch"] if _library.torch_functional() is not None else None
