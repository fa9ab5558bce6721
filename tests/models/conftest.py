"""Fixtures of the real-model tier: onnxruntime as the reference and output comparison.

onnxruntime (CPU, default graph optimisations) is the only reference besides the expected outputs
onnx ships; ``onnx.reference`` is never used to produce expected values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import pytest

import hetrix

ModelArg = str | bytes | onnx.ModelProto

RTOL_VS_ORT = 1e-4
"""Relative tolerance against onnxruntime; ``atol`` is ``ATOL_SCALE * max|ort output|``."""
ATOL_SCALE = 1e-5


def _model_bytes(model: ModelArg) -> str | bytes:
    return model.SerializeToString() if isinstance(model, onnx.ModelProto) else model


@pytest.fixture(scope="session")
def ort_run() -> Callable[[ModelArg, Mapping[str, np.ndarray]], list[np.ndarray]]:
    """``ort_run(model, feeds)``: every output of ``model`` computed by onnxruntime on CPU."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference of these tests")

    def run(model: ModelArg, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initializers
        session = ort.InferenceSession(_model_bytes(model), options,
                                       providers=["CPUExecutionProvider"])
        return session.run(None, dict(feeds))

    return run


def fallback_ops(session: hetrix.InferenceSession) -> list[str]:
    """The operators of ``session`` that run on onnx's reference evaluator, not Hetrix kernels."""
    return sorted({p.op_type for p in session.get_placement()
                   if p.backend.startswith("onnx-reference")})


@pytest.fixture(scope="session")
def assert_native() -> Callable[[hetrix.InferenceSession], None]:
    """``assert_native(session)``: fails naming every operator that needed the fallback."""

    def check(session: hetrix.InferenceSession) -> None:
        ops = fallback_ops(session)
        assert not ops, f"operators without a Hetrix kernel (ran on onnx.reference): {ops}"

    return check


def assert_outputs_close(
    actual: Sequence[Any],
    expected: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    rtol: float = RTOL_VS_ORT,
    atol_scale: float = ATOL_SCALE,
    atol: float | None = None,
) -> None:
    """Each output has the expected dtype and shape and matches within tolerance.

    ``atol`` defaults to ``atol_scale * max|expected|`` (per output), so the check is relative to
    the output's magnitude; integer and bool outputs must be equal.
    """
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    names = list(names) if names is not None else [f"output {i}" for i in range(len(expected))]
    for name, got, want in zip(names, actual, expected):
        want = np.asarray(want)
        assert isinstance(got, np.ndarray), f"{name}: {type(got).__name__} is not an ndarray"
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
        assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
        if want.dtype.kind in "fc":
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            tol = atol if atol is not None else max(atol_scale * scale, 1e-30)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=tol, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.fixture(scope="session")
def assert_close() -> Callable[..., None]:
    """:func:`assert_outputs_close` as a fixture (test modules here are not importable)."""
    return assert_outputs_close
