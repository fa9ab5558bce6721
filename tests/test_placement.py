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
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Relu", ["x"], ["r"], name="relu"),
                helper.make_node("Add", ["r", "x"], ["y"], name="add"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
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


class Boxed:
    """A value living in the pretend device's memory."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


class FakeDevice(Backend):
    """A pretend accelerator with its own memory space: values are Boxed, not numpy arrays."""

    name = "fake:device"
    device = "fake:0"
    memory = "fake:0"

    def __init__(self) -> None:
        self.uploads = 0

    def from_host(self, value):
        self.uploads += 1
        return Boxed(np.asarray(value))

    def to_host(self, value):
        assert isinstance(value, Boxed), "only device values come back to the host"
        return value.array

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        def matmul(ctx, a, b):
            assert isinstance(a, Boxed) and isinstance(b, Boxed)
            return Boxed(a.array @ b.array)

        def relu(ctx, a):
            assert isinstance(a, Boxed)
            return Boxed(np.maximum(a.array, 0))

        return {"MatMul": matmul, "Relu": relu}.get(node.op_type)


def test_values_are_copied_once_where_they_cross_devices() -> None:
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3).ravel().tolist())
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                helper.make_node("Relu", ["m"], ["r"], name="relu"),
                helper.make_node("Add", ["r", "x"], ["y"], name="add"),
                helper.make_node("Mul", ["r", "r"], ["z"], name="mul"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
            ],
            [w],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    device = FakeDevice()
    plan = build_plan(
        ir.serde.deserialize_model(model).graph,
        {"": 17},
        PriorityPlacer([device, NumpyBackend()]),
        SubgraphRunner,
    )
    assert device.uploads == 1, "the weight moves to the device once, at plan time"
    copies = [s.ctx.name for s in plan.steps if s.ctx.op_type == "Copy"]
    assert copies == ["copy:x@fake:0", "copy:r@host"], "x goes up once; r comes down once"
    assert [p.backend for p in plan.placements] == ["fake:device"] * 2 + ["numpy:cpu"] * 2
    x = np.array([[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0]], np.float32)
    y, z = execute(plan, [x])
    np.testing.assert_array_equal(y, np.maximum(x, 0) + x)
    np.testing.assert_array_equal(z, np.maximum(x, 0) ** 2)
    assert device.uploads == 2


class EverythingDevice(FakeDevice):
    """A pretend accelerator that runs every op (NumPy kernels on Boxed values)."""

    name = "fake:all"

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        inner = NumpyBackend().kernel_for(node, opset)
        if inner is None:
            return None

        def on_device(ctx, *args):
            result = inner(ctx, *[a.array if isinstance(a, Boxed) else a for a in args])
            assert not any(isinstance(a, np.ndarray) and a.size > 8 for a in args), (
                "large host arrays must have been copied to the device"
            )
            return Boxed(result)

        return on_device


def test_shape_arithmetic_stays_on_the_cpu() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat feeds Reshape: only Reshape/Relu use the device."""
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Relu", ["x"], ["r"], name="relu"),
                helper.make_node("Shape", ["r"], ["s"], name="shape"),
                helper.make_node(
                    "Constant",
                    [],
                    ["i"],
                    name="index",
                    value=helper.make_tensor("i", TensorProto.INT64, [], [0]),
                ),
                helper.make_node("Gather", ["s", "i"], ["b"], name="gather"),
                helper.make_node("Unsqueeze", ["b", "zero"], ["b1"], name="unsqueeze"),
                helper.make_node("Concat", ["b1", "minus_one"], ["target"], name="concat", axis=0),
                helper.make_node("Reshape", ["r", "target"], ["y"], name="reshape"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12])],
            [
                helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    plan = build_plan(
        ir.serde.deserialize_model(model).graph,
        {"": 17},
        PriorityPlacer([EverythingDevice(), NumpyBackend()]),
        SubgraphRunner,
    )
    where = {p.node: p for p in plan.placements}
    assert where["relu"].backend == "fake:all" and where["reshape"].backend == "fake:all"
    for name in ("shape", "index", "gather", "unsqueeze", "concat"):
        assert where[name].backend == "numpy:cpu", name
        assert where[name].reason == "shape arithmetic stays on the CPU"
    copies = [s.ctx.name for s in plan.steps if s.ctx.op_type == "Copy"]
    assert copies == ["copy:x@fake:0"], (
        "Shape reads the device tensor's shape without copying it; Reshape's target stays on host"
    )
    assert plan.output_memory == ["fake:0"], "outputs stay where computed; the session decides"
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12
    (y,) = execute(plan, [x])
    np.testing.assert_array_equal(y.array, np.maximum(x, 0).reshape(2, 12))
