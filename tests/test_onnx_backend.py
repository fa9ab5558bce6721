"""Hetrix driven by onnx's own backend test-suite (light models, a few nodes) and run_node."""

from __future__ import annotations

import functools
import unittest
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import TensorProto, helper

from hetrix.onnx_backend import HetrixBackend, HetrixBackendRep, node_model, run_node

BACKEND_CASES = [
    "test_squeezenet_cpu",
    "test_resnet50_cpu",
    "test_relu_cpu",
    "test_add_bcast_cpu",
    "test_gemm_all_attributes_cpu",
]
PATTERN = "|".join(f"^{name}$" for name in BACKEND_CASES)
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


class _PerturbedRep(HetrixBackendRep):
    """Outputs scaled by 1.01: onnx's test-suite must notice."""

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        return tuple(np.asarray(out) * 1.01 for out in super().run(inputs, **kwargs))


class _PerturbedBackend(HetrixBackend):
    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> HetrixBackendRep:
        return _PerturbedRep(HetrixBackend.prepare(model, device, **kwargs).session)


@functools.cache
def _backend_cases(backend: type[HetrixBackend]) -> dict[str, type[unittest.TestCase]]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # generating the spec cases overflows on purpose
        suite = onnx.backend.test.BackendTest(backend, __name__)
    suite.include(PATTERN)
    return suite.test_cases


def _run_backend_case(backend: type[HetrixBackend], name: str) -> unittest.TestResult:
    cases = _backend_cases(backend)
    owner = next(cls for cls in cases.values() if hasattr(cls, name))
    result = unittest.TestResult()
    owner(name).run(result)
    return result


@pytest.fixture(autouse=True)
def _onnx_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The light-model tests write their input data under ONNX_HOME: keep it out of ~."""
    monkeypatch.setenv("ONNX_HOME", str(tmp_path_factory.getbasetemp() / "onnx_home"))
    monkeypatch.delenv("ONNX_MODELS", raising=False)


@pytest.mark.parametrize("name", BACKEND_CASES)
def test_onnx_backend_test_passes(name: str) -> None:
    result = _run_backend_case(HetrixBackend, name)
    problems = [text for _, text in result.failures + result.errors]
    assert not problems, problems[0][-2000:]
    assert not result.skipped, result.skipped
    assert result.testsRun == 1


def test_onnx_backend_test_catches_wrong_outputs() -> None:
    result = _run_backend_case(_PerturbedBackend, "test_squeezenet_cpu")
    assert len(result.failures) == 1, result.errors


def test_run_node_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal((5,)).astype(np.float32)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)
    out = HetrixBackend.run_node(node, [a, b, c])
    np.testing.assert_allclose(out[0], 0.5 * a @ b.T + 2.0 * c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["y"], out[0])


def test_run_node_broadcast_and_opset_version() -> None:
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    y = np.array([10, 20, 30], dtype=np.int64)
    (out,) = run_node(helper.make_node("Add", ["x", "y"], ["z"]), [x, y], opset_version=13)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, x + y)


def test_run_node_skips_empty_optional_inputs() -> None:
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    (out,) = run_node(node, [x, np.array(1.5, dtype=np.float32)])
    np.testing.assert_array_equal(out, np.minimum(x, 1.5))


def test_node_model_types_inputs_and_outputs() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    x = np.zeros((2, 3), np.float16)
    model = node_model(node, [x], [(np.dtype(np.float16), (2, 3))], opset_version=14)
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 3]
    assert model.opset_import[0].version == 14
    with pytest.raises(ValueError, match="1 inputs"):
        node_model(node, [x, x])


def test_prepare_accepts_path_and_named_or_positional_inputs() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])], "mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2], [3.0, 4.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rep = HetrixBackend.prepare(model)
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(rep.run([x])[0], [3.0, 8.0])
    np.testing.assert_array_equal(rep.run(x)[0], [3.0, 8.0])
    np.testing.assert_array_equal(rep.run({"x": x})["y"], [3.0, 8.0])
    w = np.array([-1.0, 0.5], np.float32)  # an initializer that is also an input, overridden
    np.testing.assert_array_equal(rep.run([x, w])[0], [-1.0, 1.0])
    path = LIGHT / "light_squeezenet.onnx"
    assert HetrixBackend.prepare(str(path)).session.get_inputs()[0].name == "data_0"


def test_supports_device() -> None:
    assert HetrixBackend.supports_device("CPU")
    assert HetrixBackend.supports_device("CPU:0")
    assert not HetrixBackend.supports_device("CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        HetrixBackend.prepare(onnx.ModelProto(), "CUDA")
