"""Level-1 passes: constant folding, no-op and identity removal, CSE, DCE; levels and report."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, optimize_and_run
from onnx import TensorProto, helper

from hetrix.passes import optimize
from hetrix.passes.constant_folding import ConstantFoldingPass

X = np.arange(12, dtype=np.float32).reshape(3, 4) / 12


# --------------------------------------------------------------------------- constant folding


def test_constant_subgraph_folds_into_an_initializer() -> None:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Mul", ["c", "b"], ["d"]),
        helper.make_node("Add", ["x", "d"], ["y"]),
    ]
    model = make_model(
        nodes, {"x": [3, 4]}, ["y"], {"a": np.ones(4, np.float32), "b": np.full(4, 2, np.float32)}
    )
    result = optimize_and_run(model, {"x": X}, level=1)
    assert result.ops() == {"Add": 1}
    assert result.report.count("fold Add") == 1 and result.report.count("fold Mul") == 1
    result.assert_close(rtol=0)


def test_shape_of_a_static_value_folds_but_not_of_a_dynamic_one() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
        helper.make_node("Shape", ["z"], ["t"]),
        # of another value: Reshape(z, Shape(z)) would be a provable no-op (symbolic shapes)
        helper.make_node("Reshape", ["v", "t"], ["w"]),
    ]
    model = make_model(nodes, {"x": [3, 4], "z": ["n", 4], "v": [12]}, ["y", "w"])
    result = optimize_and_run(model, {"x": X, "z": X, "v": X.reshape(-1)}, level=1)
    assert result.report.count("fold Shape") == 1
    # Reshape(x, shape(x)) is then a no-op: an Identity, since it maps input x to output y
    assert result.ops() == {"Identity": 1, "Shape": 1, "Reshape": 1}
    result.assert_close(rtol=0)


def test_random_ops_are_not_folded() -> None:
    nodes = [
        helper.make_node("RandomUniformLike", ["c"], ["r"], seed=1.0),
        helper.make_node("Add", ["x", "r"], ["y"]),
    ]
    model = make_model(nodes, {"x": [3, 4]}, ["y"], {"c": np.zeros((3, 4), np.float32)})
    ir_model = ir.serde.deserialize_model(model)
    report = optimize(ir_model, 1)
    assert "RandomUniformLike" in {n.op_type for n in ir_model.graph}
    assert not any(rule.startswith("fold") for rule in report.rewrites())
    assert any(r.reason == "random op" for r in report.rejections["constant folding"])


def test_outputs_over_the_size_limit_are_not_folded() -> None:
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    model = make_model(nodes, {"x": [3, 4]}, ["y"], {"shape": np.array([3, 4], np.int64)})
    ir_model = ir.serde.deserialize_model(model)
    folding = ConstantFoldingPass(size_limit=16)
    assert not folding(ir_model).modified
    assert "over the" in folding.stats.rejections[0].reason
    assert ConstantFoldingPass(size_limit=1024)(ir_model).modified


def test_overridable_initializers_are_not_constants() -> None:
    nodes = [helper.make_node("Neg", ["a"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])]
    model = make_model(nodes, {"x": [3, 4], "a": [4]}, ["y"], {"a": np.ones(4, np.float32)})
    ir_model = ir.serde.deserialize_model(model)
    optimize(ir_model, 1)
    assert "Neg" in {n.op_type for n in ir_model.graph}


def test_folding_a_graph_output_keeps_its_name() -> None:
    nodes = [helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    model = make_model(nodes, {"x": [3, 4]}, ["y", "z"], {"a": np.ones(4, np.float32)})
    result = optimize_and_run(model, {"x": X}, level=1)
    assert [v.name for v in result.model.graph.outputs] == ["y", "z"]
    result.assert_close(rtol=0)


# --------------------------------------------------------------------------- no-op removal

NOOPS = {
    "Dropout": ([helper.make_node("Dropout", ["x"], ["n"])], {}),
    "Cast to same type": ([helper.make_node("Cast", ["x"], ["n"], to=TensorProto.FLOAT)], {}),
    "Reshape to same shape": (
        [helper.make_node("Reshape", ["x", "s"], ["n"])],
        {"s": np.array([3, -1], np.int64)},
    ),
    "Transpose identity": ([helper.make_node("Transpose", ["x"], ["n"], perm=[0, 1])], {}),
    "Expand to same shape": (
        [helper.make_node("Expand", ["x", "s"], ["n"])],
        {"s": np.array([1, 4], np.int64)},
    ),
    "Concat of one input": ([helper.make_node("Concat", ["x"], ["n"], axis=0)], {}),
    "Pad by zero": ([helper.make_node("Pad", ["x", "p"], ["n"])], {"p": np.zeros(4, np.int64)}),
    "Arithmetic with neutral element": (
        [helper.make_node("Mul", ["one", "x"], ["n"])],
        {"one": np.ones(4, np.float32)},
    ),
}

NOT_NOOPS = {
    "Dropout": (
        [helper.make_node("Dropout", ["x", "r", "t"], ["n"])],
        {"r": np.array(0.5, np.float32), "t": np.array(True)},
    ),
    "Cast to same type": (
        [
            helper.make_node("Cast", ["x"], ["n"], to=TensorProto.DOUBLE),
            helper.make_node("Cast", ["n"], ["m"], to=TensorProto.FLOAT),
        ],
        {},
    ),
    "Reshape to same shape": (
        [helper.make_node("Reshape", ["x", "s"], ["n"])],
        {"s": np.array([4, 3], np.int64)},
    ),
    "Transpose identity": ([helper.make_node("Transpose", ["x"], ["n"], perm=[1, 0])], {}),
    "Expand to same shape": (
        [helper.make_node("Expand", ["x", "s"], ["n"])],
        {"s": np.array([2, 3, 4], np.int64)},
    ),
    "Concat of one input": ([helper.make_node("Concat", ["x", "x"], ["n"], axis=0)], {}),
    "Pad by zero": (
        [helper.make_node("Pad", ["x", "p"], ["n"])],
        {"p": np.array([0, 1, 0, 0], np.int64)},
    ),
    "Arithmetic with neutral element": (
        [helper.make_node("Mul", ["one", "x"], ["n"])],
        {"one": np.ones((2, 1, 1), np.float32)},
    ),
}


def _noop_model(nodes: list, initializers: dict) -> object:
    last = nodes[-1].output[0]
    return make_model(
        [*nodes, helper.make_node("Relu", [last], ["y"])], {"x": [3, 4]}, ["y"], initializers
    )


@pytest.mark.parametrize("rule", sorted(NOOPS))
def test_noop_is_removed(rule: str) -> None:
    nodes, initializers = NOOPS[rule]
    result = optimize_and_run(_noop_model(nodes, initializers), {"x": X}, level=1)
    assert result.report.count(rule) == 1
    assert result.ops() == {"Relu": 1}
    result.assert_close(rtol=0)


@pytest.mark.parametrize("rule", sorted(NOT_NOOPS))
def test_op_that_changes_its_input_is_kept(rule: str) -> None:
    nodes, initializers = NOT_NOOPS[rule]
    model = _noop_model(nodes, initializers)
    ir_model = ir.serde.deserialize_model(model)
    report = optimize(ir_model, 1)
    assert report.count(rule) == 0
    assert any(r.rule == rule for r in report.rejections["no-op elimination"])
    assert len(ir_model.graph) == len(nodes) + 1


def test_noop_feeding_a_graph_output_from_an_input_becomes_identity() -> None:
    model = make_model([helper.make_node("Dropout", ["x"], ["y"])], {"x": [3, 4]}, ["y"])
    result = optimize_and_run(model, {"x": X}, level=1)
    assert result.ops() == {"Identity": 1}
    assert result.model.graph.outputs[0].name == "y"
    result.assert_close(rtol=0)


# --------------------------------------------------------------------------- identity, CSE, DCE


def test_identity_chain_is_removed() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Identity", ["b"], ["y"]),
    ]
    result = optimize_and_run(make_model(nodes, {"x": [3, 4]}, ["y"]), {"x": X}, level=1)
    assert result.ops() == {"Relu": 1}
    assert result.report.count("identity elimination") == 2
    result.assert_close(rtol=0)


def test_common_subexpressions_are_merged() -> None:
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Exp", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    result = optimize_and_run(make_model(nodes, {"x": [3, 4]}, ["y"]), {"x": X}, level=1)
    assert result.ops() == {"Exp": 1, "Add": 1}
    result.assert_close(rtol=0)


def test_different_subexpressions_are_kept() -> None:
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    result = optimize_and_run(make_model(nodes, {"x": [3, 4]}, ["y"]), {"x": X}, level=1)
    assert result.ops() == {"Exp": 1, "Neg": 1, "Add": 1}


def test_dead_nodes_are_removed_and_live_ones_kept() -> None:
    nodes = [helper.make_node("Exp", ["x"], ["dead"]), helper.make_node("Relu", ["x"], ["y"])]
    result = optimize_and_run(make_model(nodes, {"x": [3, 4]}, ["y"]), {"x": X}, level=1)
    assert result.ops() == {"Relu": 1}
    assert result.report.count("dead code elimination") == 1


# --------------------------------------------------------------------------- levels and report


def test_level_0_changes_nothing() -> None:
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    ir_model = ir.serde.deserialize_model(make_model(nodes, {"x": [3, 4]}, ["y"]))
    report = optimize(ir_model, 0)
    assert len(ir_model.graph) == 2 and not report.runs
    assert report.nodes_before == report.nodes_after == 2


def test_level_1_introduces_no_hetrix_op() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, {"x": [1, 1, 4, 4]}, ["y"], {"w": np.ones((2, 1, 1, 1), np.float32)})
    ir_model = ir.serde.deserialize_model(model)
    optimize(ir_model, 1)
    assert {n.op_type for n in ir_model.graph} == {"Conv", "Relu"}
    assert "hetrix" not in ir_model.opset_imports


@pytest.mark.parametrize("level", [-1, "fast", None])
def test_bad_level_is_refused(level: object) -> None:
    ir_model = ir.serde.deserialize_model(make_model([], {"x": [1]}, ["x"]))
    with pytest.raises(ValueError, match="level"):
        optimize(ir_model, level)  # type: ignore[arg-type]


def test_report_table_lists_passes_rules_and_node_counts() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    ir_model = ir.serde.deserialize_model(make_model(nodes, {"x": [3, 4]}, ["y"]))
    report = optimize(ir_model, 99)
    table = str(report)
    assert "3 -> 1 nodes" in table
    assert "no-op elimination" in table and "Dropout" in table
    assert report.by_pass()["identity elimination"]["identity elimination"] == 1
    assert all(run.nodes_before >= run.nodes_after for run in report.runs)


def test_identity_of_outer_value_in_subgraph_is_kept() -> None:
    """onnx-ir's own pass fails here (the branch output would become an outer-scope value)."""
    import numpy as np
    from onnx import TensorProto, helper

    import hetrix

    branch = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["out"])], "branch", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Constant", [], ["flag"], value_int=1),
         helper.make_node("Cast", ["flag"], ["cond"], to=TensorProto.BOOL),
         helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model)
    assert session.get_optimization_report().level == 99
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))


def test_shape_inference_copies_do_not_outlive_their_pass() -> None:
    """onnx-ir's shape inference builds a second IR of the whole model, which dies in reference
    cycles; the pipeline collects it at once, so the load's peak memory holds one copy, not one
    per fixpoint iteration."""
    import gc

    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(20)]
    ir_model = ir.serde.deserialize_model(make_model(nodes, {"v0": [2, 3]}, ["v20"]))
    gc.collect()
    existing = {id(o) for o in gc.get_objects() if type(o) is ir.Graph}
    enabled = gc.isenabled()
    gc.disable()  # only the pipeline's own collection may free the copies
    try:
        optimize(ir_model, 1)
        graphs = [o for o in gc.get_objects() if type(o) is ir.Graph]
    finally:
        if enabled:
            gc.enable()
    assert [g for g in graphs if id(g) not in existing and g is not ir_model.graph] == []
