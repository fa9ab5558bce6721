"""Peak memory of one runtime, measured in a fresh Python process so that runtimes do not mix.

The figures, in MiB of resident set size (RSS):

* **import**: RSS growth from importing the runtime's package *and the compute libraries it runs
  on*, and from its first use, over an interpreter that has imported NumPy (both runtimes'
  Python APIs need it).  For ONNX Runtime the import is ``import onnxruntime``, which maps its
  whole native library.  For Hetrix it is ``import hetrix`` (onnx, onnx-ir) plus PyTorch when its
  CPU kernels will use it (they import it lazily).  First use is one load and run of a tiny model
  (Conv, Relu, MaxPool, a one-row MatMul of 2^19 multiply-adds, Softmax; :func:`_warm_up`), the
  same for every runtime: start-up work a runtime defers to its first session (Hetrix's kernel
  modules, oneDNN's and OpenMP's set-up, about 17-19 MiB of RSS measured for Hetrix with
  PyTorch) then counts as the runtime's, not as the first model's.
* **baseline**: RSS once the runtime is imported and has run the tiny model, after a garbage
  collection and a heap trim (``malloc_trim``: what the tiny model freed is not lent to the
  model measured).
* **load growth**: RSS right after creating the session, minus the baseline.
* **peak growth**: the highest RSS during session creation and ``runs`` runs, minus the baseline:
  a thread samples RSS with psutil every ``SAMPLE_INTERVAL_S``, and on Linux the kernel's own
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after the baseline) catches
  peaks between samples.

So peak growth is the memory a model costs in a process where the runtime is already in use,
and import + peak growth what a process pays from scratch; reports show both.

The child is this file run as a script, not a ``multiprocessing`` child: a spawned child imports
the parent's main module and this package before any code of ours runs, so the import could not
be measured and the baseline would depend on the caller (``hetrix bench`` or a script).  That is
why the module-level imports here are the standard library and NumPy only.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.002
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_RESULT_MARK = "hetrix-memory-result: "
"""Prefix of the child's result line on stdout (runtimes may print lines of their own)."""
_CHILD_COMMAND = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
"""Runs this file as the child.  Not ``python memory.py``, which would put this package's folder
first on ``sys.path``, where its modules (``inputs``, ``report``...) could shadow others."""


@dataclass
class MemoryStats:
    """RSS figures of one runtime in MiB (see the module docstring for their definitions)."""

    baseline_mb: float
    load_growth_mb: float
    peak_growth_mb: float
    method: str
    import_mb: float = 0.0


# -- the child -----------------------------------------------------------------------------------


def _rss() -> int:
    """This process's resident set size in bytes (psutil, imported before any measurement)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class _Sampler:
    """A thread that records the largest RSS seen every ``SAMPLE_INTERVAL_S``."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _high_water_mark() -> int | None:
    """The kernel's peak RSS of this process in bytes (``VmHWM``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def measure_in_child(
    runtime_name: str, module: str, path: str, feeds: Mapping[str, np.ndarray], threads: int,
    providers: Sequence[str] | None, runs: int, precision: str = "fp32",
) -> MemoryStats:
    """Import the runtime, then load and run the model ``runs`` times in this process, recording
    RSS (the child's job; ``module`` is the runtime's package, imported first and measured)."""
    _rss()  # psutil's own import must not count as the runtime's
    gc.collect()
    start = _rss()
    importlib.import_module(module)
    imported = _rss() - start
    from hetrix.bench.runtimes import RUNTIMES  # imports hetrix for any runtime
    from hetrix.runtime.memory import release_free_memory

    runtime = RUNTIMES[runtime_name]
    before_libraries = _rss()
    runtime.prepare()
    _warm_up(runtime, threads, providers, precision)
    imported += _rss() - before_libraries
    gc.collect()
    # what the tiny model freed goes back to the OS: an allocator told to keep freed memory
    # (Hetrix's, see runtime.memory.retain_freed_memory) would otherwise lend it to the model
    # measured next, whose growth would then look smaller than it is
    release_free_memory()
    baseline = _rss()
    hwm_ok = _reset_high_water_mark()
    with _Sampler() as sampler:
        run = runtime.load(path, feeds, threads, providers, precision)
        after_load = _rss()
        for _ in range(max(1, runs)):
            run(feeds)
    peak = sampler.peak
    hwm = _high_water_mark() if hwm_ok else None
    method = "psutil sampling"
    if hwm is not None:
        peak, method = max(peak, hwm), "psutil sampling + VmHWM"
    return MemoryStats(baseline / MB, (after_load - baseline) / MB, (peak - baseline) / MB,
                       method, imported / MB)


def _warm_up(runtime: Any, threads: int, providers: Sequence[str] | None,
             precision: str) -> None:
    """Load and run a tiny model once with ``runtime`` (see the module docstring, "import")."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # a one-row product of 2^19 multiply-adds: every runtime takes its GEMM library's path
    # (Hetrix's oneDNN GEMM starts there; its first call in a process generates 2.8 MiB of
    # kernels, a start-up cost like oneDNN's convolution set-up)
    weights = {"w": rng.standard_normal((8, 4, 3, 3)), "m": rng.standard_normal((128, 4096))}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "m"], ["l"]),
         helper.make_node("Softmax", ["l"], ["y"])],
        "warm_up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "warm_up.onnx")
        onnx.save(model, path)
        run = runtime.load(path, feeds, threads, providers, precision)
        for _ in range(2):
            run(feeds)
        del run
    gc.collect()


def _child_main() -> None:
    """Entry point of the child: a pickled request on stdin, a JSON result line on stdout."""
    request = pickle.load(sys.stdin.buffer)
    stats = measure_in_child(**request)
    sys.stdout.write(_RESULT_MARK + json.dumps(dataclasses.asdict(stats)) + "\n")
    sys.stdout.flush()


# -- the parent ----------------------------------------------------------------------------------


def _child_env(threads: int) -> dict[str, str]:
    """The child's environment: this one, with the BLAS/OpenMP thread variables when capped."""
    env = dict(os.environ)
    if threads:
        env.update({k: str(threads) for k in _THREAD_ENV})
    return env


def _parse_result(stdout: str) -> MemoryStats | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return MemoryStats(**json.loads(line[len(_RESULT_MARK):]))
    return None


def measure_memory(
    runtime_name: str, path: str, feeds: Mapping[str, np.ndarray], threads: int = 0,
    providers: Sequence[str] | None = None, runs: int = 3, precision: str = "fp32",
) -> MemoryStats:
    """Import, load and run ``runtime_name`` on ``path`` in a fresh process; its RSS figures."""
    from hetrix.bench.runtimes import RUNTIMES

    request: dict[str, Any] = {
        "runtime_name": runtime_name, "module": RUNTIMES[runtime_name].module, "path": str(path),
        "feeds": {k: np.asarray(v) for k, v in feeds.items()}, "threads": threads,
        "providers": list(providers) if providers else None, "runs": runs,
        "precision": precision,
    }
    done = subprocess.run([sys.executable, "-c", _CHILD_COMMAND, __file__],
                          input=pickle.dumps(request), capture_output=True,
                          env=_child_env(threads), check=False)
    stats = _parse_result(done.stdout.decode(errors="replace"))
    if done.returncode != 0 or stats is None:
        error = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"the memory process of {runtime_name} failed "
                           f"(exit code {done.returncode}): {error[-1] if error else 'no output'}")
    return stats


if __name__ == "__main__":
    _child_main()
