"""Attribute defaults, model-local functions and schema-function expansion at load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import hetrix
from hetrix.model.loader import load_model


def _model(nodes, inputs, outputs, opset=18, functions=(), extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=9)


def test_schema_defaults_are_filled_once_at_load() -> None:
    model = _model(
        [helper.make_node("LeakyRelu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    loaded = load_model(model, lambda domain, op, opset: True)
    (node,) = loaded.proto.graph.node
    alpha = {a.name: a for a in node.attribute}["alpha"]
    assert abs(alpha.f - 0.01) < 1e-9
    x = np.array([-2.0, 0.0, 3.0], np.float32)
    (y,) = hetrix.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.01 * x), rtol=1e-6)


def test_model_local_function_is_inlined_with_attribute_reference() -> None:
    """scale_add(x, b) = x * alpha + b, alpha from the call site."""
    alpha_ref = helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT)
    alpha_ref.name = "value_float"
    alpha_ref.ref_attr_name = "alpha"
    constant = helper.make_node("Constant", [], ["a"])
    constant.attribute.append(alpha_ref)
    function = helper.make_function(
        "local",
        "scale_add",
        ["x", "b"],
        ["y"],
        [
            constant,
            helper.make_node("Mul", ["x", "a"], ["xa"]),
            helper.make_node("Add", ["xa", "b"], ["y"]),
        ],
        [helper.make_opsetid("", 18)],
        attributes=["alpha"],
    )
    model = _model(
        [helper.make_node("scale_add", ["x", "b"], ["y"], domain="local", alpha=3.0)],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        functions=[function],
        extra_opsets=[helper.make_opsetid("local", 1)],
    )
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(graph_optimization_level=0))
    assert {p.op_type for p in session.get_placement()} == {"Constant", "Mul", "Add"}
    x, b = np.array([1.0, 2.0], np.float32), np.array([0.5, -1.0], np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x, "b": b})[0], x * 3 + b, rtol=1e-6)


def test_function_op_without_kernel_is_expanded_and_matches_onnxruntime() -> None:
    """With LayerNormalization declared unavailable, its schema body runs instead."""
    model = _model(
        [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [5]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        opset=17,
    )
    loaded = load_model(model, lambda domain, op, opset: op != "LayerNormalization")
    ops = {n.op_type for n in loaded.proto.graph.node}
    assert "LayerNormalization" not in ops and loaded.functions_expanded == 1
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.standard_normal((2, 5)).astype(np.float32),
        "s": rng.standard_normal(5).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    (ours,) = hetrix.InferenceSession(loaded.proto).run(None, feeds)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours, reference.run(None, feeds)[0], rtol=1e-4, atol=1e-5)
