"""Per-node placement over several backends: fallback is chosen, logged and explained."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from hetrix.backends.base import Backend
from hetrix.backends.numpy_cpu import NumpyBackend
from hetrix.backends.registry import Kernel, NodeContext
from hetrix.errors import UnsupportedOperatorError
from hetrix.placement.placer import PriorityPlacer
from hetrix.runtime.executor import SubgraphRunner, execute
from hetrix.runtime.plan import build_plan


class OnlyRelu(Backend):
    """A pretend accelerator that has a single kernel, and counts its calls."""

    name = "fake:accel"
    device = "accel"

    def __init__(self) -> None:
        self.calls = 0

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        if node.op_type != "Relu":
            return None

        def relu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            return np.maximum(x, 0)

        return relu


@pytest.fixture
def graph() -> ir.Graph:
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "x"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    ), opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(model).graph


def test_unsupported_node_falls_back_and_says_why(graph, caplog) -> None:
    accel = OnlyRelu()
    with caplog.at_level(logging.INFO, logger="hetrix.placement.placer"):
        plan = build_plan(graph, {"": 17}, PriorityPlacer([accel, NumpyBackend()]), SubgraphRunner)
    by_node = {p.node: p for p in plan.placements}
    assert by_node["relu"].backend == "fake:accel" and by_node["relu"].reason == ""
    assert by_node["add"].backend == "numpy:cpu"
    assert "fake:accel cannot run Add at opset 17" in by_node["add"].reason
    assert "falls back to numpy:cpu" in caplog.text
    x = np.array([-1.0, 2.0, -3.0], np.float32)
    (y,) = execute(plan, [x])
    np.testing.assert_array_equal(y, np.maximum(x, 0) + x)
    assert accel.calls == 1


def test_fallback_disabled_lists_unsupported_nodes(graph) -> None:
    placer = PriorityPlacer([OnlyRelu(), NumpyBackend()], allow_fallback=False)
    with pytest.raises(UnsupportedOperatorError) as info:
        build_plan(graph, {"": 17}, placer, SubgraphRunner)
    message = str(info.value)
    assert "1 node(s)" in message and "'add'" in message and "fake:accel" in message
