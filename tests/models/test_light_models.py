"""The nine model-zoo architectures onnx ships in ``onnx/backend/test/data/light``.

Each runs through Hetrix three ways:

* on onnx's own test input against the shipped ``light_<name>_output_0.pb``, at onnx's model-test
  tolerance (``rtol=1e-3``, ``atol=1e-7``, from ``onnx.backend.test.loader``);
* on the same input against onnxruntime at ``rtol=1e-4``, ``atol=1e-5 * max|ort|``;
* with seeded random weights and a random input against onnxruntime (same tolerance).  The shipped
  models fill every weight with 0.02, so their outputs are nearly uniform (a softmax of equal
  logits is 0.001 everywhere) and would not notice a kernel that mixes up channels or positions.

Plus: every node must run on a Hetrix kernel, not on the onnx.reference fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import hetrix
from hetrix.testing.models import (
    LIGHT_MODEL_NAMES,
    light_model_case,
    light_model_paths,
    light_model_randomized,
)

SHIPPED_RTOL = 1e-3
SHIPPED_ATOL = 1e-7
ORT_RTOL = 1e-4
ORT_ATOL_SCALE = 1e-5


def test_all_nine_light_models_are_found() -> None:
    assert sorted(light_model_paths()) == sorted(LIGHT_MODEL_NAMES)


@pytest.mark.parametrize("name", LIGHT_MODEL_NAMES)
def test_matches_shipped_output(name: str, assert_close: Callable[..., None]) -> None:
    feeds, expected = light_model_case(name)
    session = hetrix.InferenceSession(light_model_paths()[name])
    outputs = session.run(None, feeds)
    assert_close(outputs, expected, [o.name for o in session.get_outputs()],
                 rtol=SHIPPED_RTOL, atol=SHIPPED_ATOL)


@pytest.mark.parametrize("name", LIGHT_MODEL_NAMES)
def test_matches_onnxruntime(
    name: str, ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None]
) -> None:
    feeds, _ = light_model_case(name)
    path = light_model_paths()[name]
    outputs = hetrix.InferenceSession(path).run(None, feeds)
    assert_close(outputs, ort_run(path, feeds), rtol=ORT_RTOL, atol_scale=ORT_ATOL_SCALE)


@pytest.mark.parametrize("name", LIGHT_MODEL_NAMES)
def test_random_weights_match_onnxruntime(
    name: str, ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None]
) -> None:
    model, feeds = light_model_randomized(name, seed=1)
    session = hetrix.InferenceSession(model)
    outputs = session.run(None, feeds)
    expected = ort_run(model, feeds)
    # The random weights give an output that is not nearly constant, so the check means something.
    assert float(np.std(expected[-1])) > 1e-3 * float(np.max(np.abs(expected[-1])))
    assert_close(outputs, expected, [o.name for o in session.get_outputs()],
                 rtol=ORT_RTOL, atol_scale=ORT_ATOL_SCALE)


@pytest.mark.parametrize("name", LIGHT_MODEL_NAMES)
def test_runs_on_hetrix_kernels(name: str, assert_native: Callable[..., None]) -> None:
    assert_native(hetrix.InferenceSession(light_model_paths()[name]))
