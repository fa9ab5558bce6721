"""The runtimes ``hetrix bench`` compares: Hetrix, ONNX Runtime and OpenVINO behind one interface.

Each :class:`Runtime` loads a model into a ``run(feeds) -> list[np.ndarray]`` callable.  Thread
settings: ONNX Runtime's ``intra_op_num_threads`` (with ``inter_op_num_threads=1``), OpenVINO's
``INFERENCE_NUM_THREADS``, and for Hetrix ``SessionOptions.intra_op_num_threads``, which the
session applies to PyTorch's threads, or NumPy's BLAS when PyTorch is not used, during its runs
(:mod:`hetrix.runtime.threads`).

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or AVX512-BF16 it would
otherwise compute in bfloat16, faster but neither comparable nor agreeing with float32 outputs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetrix.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], list[Any]]

HETRIX = "hetrix"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
COMPETITORS = (ONNXRUNTIME, OPENVINO)
_ALIASES = {"ort": ONNXRUNTIME, "onnxruntime": ONNXRUNTIME, "ov": OPENVINO, "openvino": OPENVINO}


@dataclass(frozen=True)
class Runtime:
    """One runtime: its name, the module that provides it, and how to load a model with it."""

    name: str
    module: str
    loader: Callable[[str, Mapping[str, np.ndarray], int, Sequence[str] | None, str], RunFn]
    libraries: Callable[[], None] | None = None
    """Imports the compute libraries the runtime loads lazily, on its first model (see
    :meth:`prepare`); None when importing ``module`` loads everything."""

    def version(self) -> str:
        """The installed version of the runtime's package."""
        module = importlib.import_module(self.module)
        return str(getattr(module, "__version__", "") or "unknown")

    def available(self) -> bool:
        """Whether the runtime's package can be imported."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True

    def prepare(self) -> None:
        """Import the runtime's package and every library its kernels use, so that a memory
        baseline taken afterwards holds the runtime's code, as ONNX Runtime's import does."""
        importlib.import_module(self.module)
        if self.libraries is not None:
            self.libraries()

    def load(
        self, path: str, feeds: Mapping[str, np.ndarray], threads: int,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
    ) -> RunFn:
        """Load ``path`` for inputs shaped like ``feeds``; ``threads`` 0 keeps the default."""
        return self.loader(path, feeds, threads, providers, precision)


def _load_hetrix(
    path: str, feeds: Mapping[str, np.ndarray], threads: int, providers: Sequence[str] | None,
    precision: str = "fp32",
) -> RunFn:
    from hetrix import InferenceSession, SessionOptions

    options = SessionOptions(intra_op_num_threads=threads, precision=precision)
    session = InferenceSession(path, options,
                               providers=list(providers) if providers else None)
    return lambda f: list(session.run(None, dict(f)))


def _hetrix_libraries() -> None:
    """PyTorch, which the NumPy backend's kernels import on first use when it is installed and
    allowed (``HETRIX_NUMPY_ONLY`` unset); nothing otherwise."""
    from hetrix.backends.numpy_cpu.kernels import _library

    _library.torch_functional()


def _load_onnxruntime(
    path: str, feeds: Mapping[str, np.ndarray], threads: int, providers: Sequence[str] | None,
    precision: str = "fp32",
) -> RunFn:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda f: list(session.run(None, dict(f)))


def _load_openvino(
    path: str, feeds: Mapping[str, np.ndarray], threads: int, providers: Sequence[str] | None,
    precision: str = "fp32",
) -> RunFn:
    import openvino

    core = openvino.Core()
    model = core.read_model(path)
    if any(p.get_partial_shape().is_dynamic for p in model.inputs):
        model.reshape({p.get_any_name(): openvino.PartialShape(list(feeds[p.get_any_name()].shape))
                       for p in model.inputs})
    # OpenVINO picks bf16 on AMX CPUs by default: name the precision, the same as Hetrix's
    hint = {"bf16": "bf16", "fp16": "f16"}.get(precision, "f32")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run(f: Mapping[str, np.ndarray]) -> list[Any]:
        results = request.infer(dict(f))
        return [np.array(results[o], copy=True) for o in outputs]

    return run


RUNTIMES: dict[str, Runtime] = {
    HETRIX: Runtime(HETRIX, "hetrix", _load_hetrix, _hetrix_libraries),
    ONNXRUNTIME: Runtime(ONNXRUNTIME, "onnxruntime", _load_onnxruntime),
    OPENVINO: Runtime(OPENVINO, "openvino", _load_openvino),
}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name`` (``onnxruntime``/``ort``, ``openvino``/``ov``, ``hetrix``)."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in RUNTIMES:
        raise InvalidArgumentError(
            f"unknown runtime '{name}'; choose from {', '.join(COMPETITORS)}"
        )
    runtime = RUNTIMES[key]
    if not runtime.available():
        raise InvalidArgumentError(
            f"{runtime.name} is not installed (pip install {runtime.module}, "
            "or pip install 'hetrix[bench]')"
        )
    return runtime


def threadpoolctl_available() -> bool:
    """Whether ``threadpoolctl`` (used to cap NumPy's BLAS threads) can be imported."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True
