"""The symbolic shape pass: Reshape/Expand to the input's own symbolic shape, partial folding.

Every model runs before and after optimization at two input shapes (the rewrite must hold for
every size of the symbolic dims), compared against numpy.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from conftest import make_model, optimize_and_run
from onnx import TensorProto, helper

from hetrix.passes import optimize

SHAPES = [(2, 6), (5, 6)]


def _own_shape_nodes(source: str, target: str) -> list:
    """``target`` = Concat(Unsqueeze(Gather(Shape(source), 0)), Unsqueeze(Gather(.., 1)))."""
    return [
        helper.make_node("Shape", [source], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["rows"], axis=0),
        helper.make_node("Gather", ["s", "one"], ["cols"], axis=0),
        helper.make_node("Unsqueeze", ["rows", "axis0"], ["rows1"]),
        helper.make_node("Unsqueeze", ["cols", "axis0"], ["cols1"]),
        helper.make_node("Concat", ["rows1", "cols1"], [target], axis=0),
    ]


INDICES = {
    "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axis0": np.array([0], np.int64)
}


def _x(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 7


def test_reshape_to_its_own_gathered_shape_is_removed_for_every_size() -> None:
    nodes = [*_own_shape_nodes("x", "dims"), helper.make_node("Reshape", ["x", "dims"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    model = make_model(nodes, {"x": ["n", "m"]}, ["y"], INDICES)
    for shape in SHAPES:
        result = optimize_and_run(model, {"x": _x(shape)}, level=1)
        assert result.report.count("Reshape to own shape") == 1
        assert result.ops() == {"Relu": 1}  # the shape arithmetic died with its reader
        np.testing.assert_array_equal(result.actual[0], np.maximum(_x(shape), 0))
        result.assert_close(rtol=0)


def test_reshape_of_a_same_shape_elementwise_result_is_removed() -> None:
    """Relu(x) + bias (a [6] constant on an [n, 6] tensor) provably has the shape of x."""
    nodes = [*_own_shape_nodes("x", "dims"), helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Add", ["a", "bias"], ["b"]),
             helper.make_node("Reshape", ["b", "dims"], ["y"])]
    model = make_model(nodes, {"x": ["n", 6]}, ["y"], {**INDICES, "bias": np.ones(6, np.float32)})
    for shape in SHAPES:
        result = optimize_and_run(model, {"x": _x(shape)}, level=1)
        assert result.report.count("Reshape to own shape") == 1
        result.assert_close(rtol=0)


def test_reshape_to_the_shape_of_another_input_stays() -> None:
    """Both inputs are declared ["n", "m"], but nothing makes a caller feed equal sizes."""
    nodes = [*_own_shape_nodes("z", "dims"), helper.make_node("Reshape", ["x", "dims"], ["y"])]
    model = make_model(nodes, {"x": ["n", "m"], "z": ["n", "m"]}, ["y"], INDICES)
    result = optimize_and_run(model, {"x": _x((2, 6)), "z": _x((3, 4))}, level=1)
    assert result.report.count("Reshape to own shape") == 0
    assert result.actual[0].shape == (3, 4)
    result.assert_close(rtol=0)


def test_minus_one_is_an_identity_only_beside_known_positive_dims() -> None:
    """[-1, 6] keeps an [n, 6] tensor; [-1, m] might meet m == 0 at run time, so it stays."""
    keeps = [helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(keeps, {"x": ["n", 6]}, ["y"], {"target": np.array([-1, 6], np.int64)})
    for shape in SHAPES:
        result = optimize_and_run(model, {"x": _x(shape)}, level=1)
        assert result.report.count("Reshape to own shape") == 1
        result.assert_close(rtol=0)
    symbolic = [*_own_shape_nodes("x", "dims"),
                helper.make_node("Slice", ["dims", "one_v", "two_v"], ["m"]),
                helper.make_node("Concat", ["minus_one", "m"], ["target"], axis=0),
                helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(symbolic, {"x": ["n", "m"]}, ["y"], {
        **INDICES, "one_v": np.array([1], np.int64), "two_v": np.array([2], np.int64),
        "minus_one": np.array([-1], np.int64)})
    result = optimize_and_run(model, {"x": _x((2, 6))}, level=1)
    assert result.report.count("Reshape to own shape") == 0
    result.assert_close(rtol=0)


def test_expand_to_own_shape_or_ones_is_removed() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Expand", ["x", "s"], ["e"]),
             helper.make_node("Expand", ["e", "ones"], ["y"])]
    model = make_model(nodes, {"x": ["n", "m"]}, ["y"], {"ones": np.array([1, 1], np.int64)})
    for shape in SHAPES:
        result = optimize_and_run(model, {"x": _x(shape)}, level=1)
        assert result.report.count("Expand to own shape") == 2
        result.assert_close(rtol=0)


def test_expand_that_adds_an_axis_stays() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Concat", ["two", "s"], ["t"], axis=0),
             helper.make_node("Expand", ["x", "t"], ["y"])]
    model = make_model(nodes, {"x": ["n", "m"]}, ["y"], {"two": np.array([2], np.int64)})
    result = optimize_and_run(model, {"x": _x((2, 6))}, level=1)
    assert result.report.count("Expand to own shape") == 0
    assert result.actual[0].shape == (2, 2, 6)
    result.assert_close(rtol=0)


def test_known_dims_of_a_partly_symbolic_shape_fold() -> None:
    """Gather(Shape(x), 1) of an [n, 6] tensor is the constant 6, whatever n is."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["cols"], axis=0),
             helper.make_node("Unsqueeze", ["cols", "axis0"], ["c1"]),
             helper.make_node("Concat", ["minus_one", "c1"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["flat"]),
             helper.make_node("Cast", ["cols"], ["y"], to=TensorProto.FLOAT)]
    model = make_model(nodes, {"x": ["n", 6]}, ["flat", "y"],
                       {**INDICES, "minus_one": np.array([-1], np.int64)})
    for shape in SHAPES:
        result = optimize_and_run(model, {"x": _x(shape)}, level=1)
        assert result.report.count("shape element folded") >= 1
        assert "Shape" not in result.ops() and "Gather" not in result.ops()
        np.testing.assert_array_equal(result.actual[1], np.float32(6))
        result.assert_close(rtol=0)


def test_reshape_with_allowzero_and_a_literal_zero_stays() -> None:
    """With allowzero, a 0 in the target means size 0, not "copy this dim"."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "one_v", "two_v"], ["m"]),
             helper.make_node("Concat", ["zero_v", "m"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"], allowzero=1)]
    model = make_model(nodes, {"x": ["n", "m"]}, ["y"], {
        "zero_v": np.array([0], np.int64), "one_v": np.array([1], np.int64),
        "two_v": np.array([2], np.int64)}, opset=18)
    ir_model = ir.serde.deserialize_model(model)
    report = optimize(ir_model, 1)
    assert report.count("Reshape to own shape") == 0
    assert "Reshape" in {n.op_type for n in ir_model.graph}

