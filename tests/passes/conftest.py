"""Helpers for the graph-pass tests: tiny models from onnx.helper, run before and after."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
import hetrix.backends.numpy_cpu.kernels.fused  # noqa: F401 - until kernels/__init__ lists it
from hetrix.passes import OptimizationReport, optimize

FLOAT = TensorProto.FLOAT


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int | str | None]],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    dtype: int = FLOAT,
) -> onnx.ModelProto:
    """A one-graph model; inputs are float tensors of the given shapes, outputs of any shape."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(name, dtype, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in (initializers or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@dataclass
class Optimized:
    """A model optimized by the passes, with its report and the outputs before and after."""

    model: ir.Model
    report: OptimizationReport
    expected: list[np.ndarray]
    actual: list[np.ndarray]

    def ops(self) -> Counter[str]:
        """Op types of the optimized main graph (``domain::op`` outside the default domain)."""
        return Counter(
            f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in self.model.graph
        )

    def assert_close(self, rtol: float = 1e-5) -> None:
        for expected, actual in zip(self.expected, self.actual, strict=True):
            assert actual.shape == expected.shape and actual.dtype == expected.dtype
            scale = float(np.max(np.abs(expected))) if expected.size else 0.0
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def optimize_and_run(proto: onnx.ModelProto, feeds: dict[str, Any], level: int = 99) -> Optimized:
    """Optimize a copy of ``proto`` at ``level`` and run both versions on ``feeds``."""
    model = ir.serde.deserialize_model(proto)
    report = optimize(model, level)
    optimized = ir.serde.serialize_model(model)
    # the reference runs the model as given: a session at the default level would optimize it
    # with the same passes, and the comparison would prove nothing
    unoptimized = hetrix.SessionOptions(graph_optimization_level=0)
    expected = hetrix.InferenceSession(proto.SerializeToString(), unoptimized).run(None, feeds)
    actual = hetrix.InferenceSession(optimized.SerializeToString(), unoptimized).run(None, feeds)
    return Optimized(model, report, expected, actual)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
