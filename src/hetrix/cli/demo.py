"""``hetrix demo``: the model-zoo models shipped with onnx, run and checked against their outputs.

The nine ``onnx/backend/test/data/light`` models come with one expected output each, computed for
the input ``np.arange(n).reshape(shape) / n`` (float32).  :func:`run_demo_model` loads one, times
load+plan and the run (median of 3 after a warm-up), and compares with the expected output.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from hetrix.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

RTOL = 1e-3
ATOL = 1e-5
TIMED_RUNS = 3

Case = tuple[dict[str, np.ndarray], list[np.ndarray]]


@dataclass
class DemoResult:
    """One model's row of the demo table."""

    name: str
    ops: int = 0
    nodes: int = 0
    load_s: float = float("nan")
    run_s: float = float("nan")
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    ok: bool = False
    error: str = ""
    fallback_nodes: int = 0
    ort_s: float | None = None

    @property
    def ratio(self) -> float | None:
        """Hetrix run time / ONNX Runtime run time (None without an ORT time)."""
        if self.ort_s is None or not self.ort_s > 0:
            return None
        return self.run_s / self.ort_s


# -- the models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LightModel:
    """One light model: short name (``squeezenet``), the key its provider uses, its file."""

    name: str
    key: str
    path: Path


def light_models() -> dict[str, LightModel]:
    """Short model name (``squeezenet``) -> the light model."""
    models = _models_module()
    if models is not None and hasattr(models, "light_model_paths"):
        found = models.light_model_paths()
        pairs = found.items() if isinstance(found, Mapping) else ((Path(p).stem, p) for p in found)
        return {_short(str(key)): LightModel(_short(str(key)), str(key), Path(path))
                for key, path in pairs}
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return {_short(p.stem): LightModel(_short(p.stem), p.stem, p)
            for p in sorted(folder.glob("light_*.onnx"))}


def light_case(model: LightModel) -> Case:
    """The feeds and expected outputs of one light model."""
    models = _models_module()
    if models is not None and hasattr(models, "light_model_case"):
        feeds, expected = models.light_model_case(model.key)
        if isinstance(expected, Mapping):
            expected = list(expected.values())
        return dict(feeds), [np.asarray(e) for e in expected]
    return _own_light_case(model.path)


def _models_module() -> Any:
    """``hetrix.testing.models`` when it exists (it provides the light models), else None."""
    try:
        from hetrix.testing import models
    except ImportError:
        return None
    return models


def _own_light_case(path: Path) -> Case:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                      for d in value.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[value.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    expected = []
    for index in range(len(model.graph.output)):
        out = path.with_name(f"{path.stem}_output_{index}.pb")
        expected.append(numpy_helper.to_array(onnx.load_tensor(str(out))))
    return feeds, expected


def select_models(name: str | None) -> dict[str, LightModel]:
    """All light models, or the one called ``name`` (``squeezenet``, ``light_squeezenet``...)."""
    models = light_models()
    if not models:
        raise InvalidArgumentError("onnx's light models were not found in the onnx package")
    if name is None:
        return models
    key = _short(name)
    if key not in models:
        raise InvalidArgumentError(f"unknown demo model '{name}'; known: {', '.join(models)}")
    return {key: models[key]}


def _short(name: str) -> str:
    name = Path(name).stem if name.endswith(".onnx") else name
    for prefix in ("test_", "light_"):
        name = name.removeprefix(prefix)
    return name


# -- running -----------------------------------------------------------------------------------


def run_demo_model(
    model: LightModel,
    providers: Sequence[str] | None = None,
    vs_onnxruntime: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> DemoResult:
    """Load, time and check one light model; errors are reported in the result, not raised."""
    step = on_step or (lambda _text: None)
    result = DemoResult(model.name)
    path = model.path
    try:
        feeds, expected = light_case(model)
        proto = onnx.load(str(path))
        result.nodes = len(proto.graph.node)
        result.ops = len({(n.domain, n.op_type) for n in proto.graph.node})
        step("load")
        session, result.load_s = _timed_load(path, providers)
        result.fallback_nodes = sum(p.backend.startswith("onnx-reference")
                                    for p in session.get_placement())
        step("run")
        outputs, result.run_s = time_runs(lambda: session.run(None, feeds))
        _compare_into(result, expected, outputs)
        if vs_onnxruntime:
            step("onnxruntime")
            result.ort_s = onnxruntime_time(path, feeds)
    except Exception as exc:  # a failing model is a FAIL row, the demo goes on
        logger.debug("demo model %s failed", model.name, exc_info=True)
        result.ok = False
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return result


def _timed_load(path: Path, providers: Sequence[str] | None) -> tuple[Any, float]:
    from hetrix import InferenceSession

    start = time.perf_counter()
    session = InferenceSession(str(path), providers=providers)
    return session, time.perf_counter() - start


def time_runs(run: Callable[[], Any], repeats: int = TIMED_RUNS) -> tuple[Any, float]:
    """The last result of ``run`` and the median time of ``repeats`` calls after one warm-up."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        outputs = run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = run()
            times.append(time.perf_counter() - start)
    return outputs, statistics.median(times)


def _compare_into(result: DemoResult, expected: list[np.ndarray], actual: list[Any]) -> None:
    if len(actual) != len(expected):
        result.error = f"{len(actual)} outputs, expected {len(expected)}"
        return
    result.max_abs, result.max_rel, result.ok = 0.0, 0.0, True
    for want, got in zip(expected, actual, strict=True):
        problem, max_abs, max_rel = compare_output(want, got)
        result.max_abs = max(result.max_abs, max_abs)
        result.max_rel = max(result.max_rel, max_rel)
        if problem:
            result.ok = False
            result.error = result.error or problem


def compare_output(want: np.ndarray, got: Any) -> tuple[str, float, float]:
    """(problem or "", max abs error, max rel error) at rtol 1e-3, atol 1e-5.

    The relative error divides by ``max(|expected|, atol)`` so that near-zero references do not
    blow it up.
    """
    if not isinstance(got, np.ndarray):
        return f"output is {type(got).__name__}, not an ndarray", float("nan"), float("nan")
    if got.shape != want.shape:
        return f"shape {list(got.shape)}, expected {list(want.shape)}", float("nan"), float("nan")
    want64, got64 = want.astype(np.float64), got.astype(np.float64)
    diff = np.abs(got64 - want64)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(want64), ATOL)).max()) if diff.size else 0.0
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}", max_abs, max_rel
    if not np.allclose(got64, want64, rtol=RTOL, atol=ATOL, equal_nan=True):
        return f"values differ beyond rtol {RTOL}, atol {ATOL}", max_abs, max_rel
    return "", max_abs, max_rel


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnxruntime_time(path: Path, feeds: dict[str, np.ndarray]) -> float:
    """ONNX Runtime's median run time for the same model and feeds (CPU provider)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    _outputs, seconds = time_runs(lambda: session.run(None, feeds))
    return seconds
