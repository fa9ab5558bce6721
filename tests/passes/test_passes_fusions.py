"""Level-2+ rewrites: BatchNorm folding, MatMul+Add, activation fusion, LayerNorm/GELU/attention."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, optimize_and_run
from onnx import TensorProto, helper

import hetrix
from hetrix.passes import optimize

R = np.random.default_rng(0)


def _f32(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return R.uniform(low, high, shape).astype(np.float32)


def _bn_params(prefix: str, channels: int) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_scale": _f32(channels, low=0.5, high=1.5),
        f"{prefix}_bias": _f32(channels),
        f"{prefix}_mean": _f32(channels),
        f"{prefix}_var": _f32(channels, low=0.5, high=2),
    }


def _bn(x: str, y: str, prefix: str = "bn") -> object:
    names = [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], epsilon=1e-3)


def _rejected(report: object, stage: str, rule: str) -> list[str]:
    return [r.reason for r in report.rejections[stage] if r.rule == rule]  # type: ignore[attr-defined]


def _optimized_ops(model: object) -> set[str]:
    ir_model = ir.serde.deserialize_model(model)
    optimize(ir_model, 99)
    return {n.op_type for n in ir_model.graph}


IMAGE = {"x": _f32(1, 3, 6, 6)}
CONV = {"w": _f32(4, 3, 3, 3), "b": _f32(4)}


# --------------------------------------------------------------------------- BatchNorm folding


def test_conv_batchnorm_folds_into_the_conv() -> None:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), _bn("c", "y")]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], {**CONV, **_bn_params("bn", 4)})
    result = optimize_and_run(model, IMAGE)
    assert result.ops() == {"Conv": 1}
    assert result.report.count("Conv+BatchNormalization") == 1
    result.assert_close()


def test_batchnorm_with_variable_statistics_is_not_folded() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y")]
    params = _bn_params("bn", 4)
    del params["bn_mean"]
    model = make_model(nodes, {"x": [1, 3, 6, 6], "bn_mean": [4]}, ["y"], {**CONV, **params})
    ir_model = ir.serde.deserialize_model(model)
    report = optimize(ir_model, 99)
    assert report.count("Conv+BatchNormalization") == 0
    assert any(
        "constants" in r for r in _rejected(report, "batchnorm folding", "Conv+BatchNormalization")
    )


def test_conv_read_elsewhere_keeps_its_batchnorm() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y")]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y", "c"], {**CONV, **_bn_params("bn", 4)})
    result = optimize_and_run(model, IMAGE)
    assert result.ops() == {"Conv": 1, "BatchNormalization": 1}
    result.assert_close(rtol=0)


def test_gemm_batchnorm_folds_into_the_gemm() -> None:
    nodes = [helper.make_node("Gemm", ["a", "w", "c"], ["g"], transB=1, beta=0.5), _bn("g", "y")]
    init = {"w": _f32(4, 3), "c": _f32(4), **_bn_params("bn", 4)}
    result = optimize_and_run(make_model(nodes, {"a": [2, 3]}, ["y"], init), {"a": _f32(2, 3)})
    assert result.ops() == {"Gemm": 1}
    result.assert_close()


def test_gemm_with_variable_weights_keeps_its_batchnorm() -> None:
    nodes = [helper.make_node("Gemm", ["a", "w"], ["g"]), _bn("g", "y")]
    model = make_model(nodes, {"a": [2, 3], "w": [3, 4]}, ["y"], _bn_params("bn", 4))
    assert _optimized_ops(model) == {"Gemm", "BatchNormalization"}


def test_2d_matmul_batchnorm_becomes_a_gemm() -> None:
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"]), _bn("m", "y")]
    init = {"w": _f32(3, 4), **_bn_params("bn", 4)}
    result = optimize_and_run(make_model(nodes, {"a": [2, 3]}, ["y"], init), {"a": _f32(2, 3)})
    assert result.ops() == {"Gemm": 1}
    assert result.report.count("MatMul+BatchNormalization") == 1
    result.assert_close()


def test_3d_matmul_keeps_its_batchnorm() -> None:
    # BatchNormalization normalizes axis 1, not the MatMul's output columns
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"]), _bn("m", "y")]
    init = {"w": _f32(3, 4), **_bn_params("bn", 2)}
    result = optimize_and_run(
        make_model(nodes, {"a": [1, 2, 3]}, ["y"], init), {"a": _f32(1, 2, 3)}
    )
    assert "BatchNormalization" in result.ops()
    result.assert_close(rtol=0)


def test_conv_per_channel_mul_and_add_fold_into_the_conv() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["m"]),
        helper.make_node("Add", ["t", "m"], ["y"]),
    ]
    init = {**CONV, "s": _f32(4, 1, 1), "t": _f32(1, 4, 1, 1)}
    result = optimize_and_run(make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], init), IMAGE)
    assert result.ops() == {"Conv": 1}
    assert result.report.count("Conv+Mul/Add") == 2
    result.assert_close()


def test_conv_mul_by_a_spatial_constant_is_kept() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    init = {**CONV, "s": _f32(1, 1, 4, 4)}
    result = optimize_and_run(make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], init), IMAGE)
    assert result.ops() == {"Conv": 1, "Mul": 1}
    assert any(
        "per-channel" in r for r in _rejected(result.report, "batchnorm folding", "Conv+Mul/Add")
    )


def test_batchnorm_absorbs_a_per_channel_mul_and_add() -> None:
    nodes = [
        _bn("x", "n"),
        helper.make_node("Mul", ["n", "s"], ["m"]),
        helper.make_node("Add", ["m", "t"], ["y"]),
    ]
    init = {**_bn_params("bn", 3), "s": _f32(3, 1, 1), "t": _f32(3, 1, 1)}
    result = optimize_and_run(make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], init), IMAGE)
    assert result.ops() == {"BatchNormalization": 1}
    assert result.report.count("BatchNormalization+Mul/Add") == 2
    result.assert_close()


def test_batchnorm_keeps_an_add_of_a_variable() -> None:
    nodes = [_bn("x", "n"), helper.make_node("Add", ["n", "x"], ["y"])]
    result = optimize_and_run(
        make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], _bn_params("bn", 3)), IMAGE
    )
    assert result.ops() == {"BatchNormalization": 1, "Add": 1}


# --------------------------------------------------------------------------- MatMul + Add


def test_2d_matmul_add_becomes_gemm() -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Add", ["b", "m"], ["y"]),
    ]
    init = {"w": _f32(3, 4), "b": _f32(4)}
    result = optimize_and_run(make_model(nodes, {"a": [2, 3]}, ["y"], init), {"a": _f32(2, 3)})
    assert result.ops() == {"Gemm": 1}
    result.assert_close(rtol=0)


def test_3d_matmul_add_becomes_fused_matmul() -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    init = {"w": _f32(3, 4), "b": _f32(1, 1, 4)}
    result = optimize_and_run(
        make_model(nodes, {"a": ["n", 2, 3]}, ["y"], init), {"a": _f32(5, 2, 3)}
    )
    assert result.ops() == {"hetrix::FusedMatMul": 1}
    assert result.model.opset_imports["hetrix"] == 1
    result.assert_close(rtol=0)


def test_matmul_add_of_a_full_matrix_is_kept() -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    init = {"w": _f32(3, 4), "b": _f32(2, 4)}
    result = optimize_and_run(make_model(nodes, {"a": [2, 3]}, ["y"], init), {"a": _f32(2, 3)})
    assert result.ops() == {"MatMul": 1, "Add": 1}
    assert any(
        "per column" in r for r in _rejected(result.report, "matmul+add fusion", "MatMul+Add")
    )


# --------------------------------------------------------------------------- activation fusion

ACTIVATIONS = {
    "Relu": ([], {}),
    "LeakyRelu": ([], {"alpha": 0.2}),
    "Clip": (["lo", "hi"], {}),
    "Sigmoid": ([], {}),
    "HardSigmoid": ([], {"alpha": 0.3, "beta": 0.4}),
    "Tanh": ([], {}),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_conv_activation_becomes_fused_conv(activation: str) -> None:
    extra, attrs = ACTIVATIONS[activation]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(activation, ["c", *extra], ["y"], **attrs),
    ]
    init = {**CONV, "lo": np.array(-0.2, np.float32), "hi": np.array(0.3, np.float32)}
    result = optimize_and_run(make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], init), IMAGE)
    assert result.ops() == {"hetrix::FusedConv": 1}
    fused = next(iter(result.model.graph))
    assert fused.attributes["activation"].value == activation
    result.assert_close()


@pytest.mark.parametrize(("producer", "fused"), [("Gemm", "FusedGemm"), ("MatMul", "FusedMatMul")])
def test_linear_activation_becomes_fused_op(producer: str, fused: str) -> None:
    nodes = [helper.make_node(producer, ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    result = optimize_and_run(
        make_model(nodes, {"a": [2, 3]}, ["y"], {"w": _f32(3, 4)}), {"a": _f32(2, 3)}
    )
    assert result.ops() == {f"hetrix::{fused}": 1}
    result.assert_close(rtol=0)


@pytest.mark.parametrize("reshape", ["Reshape", "Flatten", "Unsqueeze"])
def test_activation_moves_across_a_reshape_into_the_product(reshape: str) -> None:
    """Gemm -> Reshape -> Gelu (GPT-2's MLP) becomes FusedGemm -> Reshape."""
    inputs = {"Reshape": ["m", "shape"], "Flatten": ["m"], "Unsqueeze": ["m", "axes"]}[reshape]
    nodes = [helper.make_node("Gemm", ["a", "w", "b"], ["m"]),
             helper.make_node(reshape, inputs, ["r"]),
             helper.make_node("Gelu", ["r"], ["y"], approximate="tanh")]
    init = {"w": _f32(3, 4), "b": _f32(4), "shape": np.array([1, 2, 4], np.int64),
            "axes": np.array([0], np.int64)}
    model = make_model(nodes, {"a": [2, 3]}, ["y"], init, opset=20)
    result = optimize_and_run(model, {"a": _f32(2, 3)})
    assert result.ops() == {"hetrix::FusedGemm": 1, reshape: 1}
    assert result.report.count("activation fusion") == 1
    fused, moved = list(result.model.graph)
    assert fused.attributes["activation"].value == "GeluTanh"
    assert moved.inputs[0] is fused.outputs[0]
    result.assert_close()


def test_conv_read_by_two_nodes_is_not_fused() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["c", "r"], ["y"]),
    ]
    result = optimize_and_run(make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], CONV), IMAGE)
    assert result.ops() == {"Conv": 1, "Relu": 1, "Add": 1}
    assert any(
        "other readers" in r
        for r in _rejected(result.report, "activation fusion", "activation fusion")
    )


@pytest.mark.parametrize("producer", ["Conv", "Gemm"])
def test_clip_with_crossed_bounds_is_not_fused_and_gives_max(producer: str) -> None:
    """Clip(min=1, max=-1) is -1 everywhere (ONNX: min(max(x, min), max)); oneDNN refuses such
    a post-op, so the pair stays unfused instead of failing at run time."""
    if producer == "Conv":
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
        inputs, feeds, init = {"x": [1, 3, 6, 6]}, IMAGE, dict(CONV)
    else:
        nodes = [helper.make_node("Gemm", ["a", "w", "b"], ["c"])]
        inputs, feeds = {"a": [2, 3]}, {"a": _f32(2, 3)}
        init = {"w": _f32(3, 4), "b": _f32(4)}
    nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    init.update(lo=np.array(1.0, np.float32), hi=np.array(-1.0, np.float32))
    model = make_model(nodes, inputs, ["y"], init)
    result = optimize_and_run(model, feeds)
    assert result.ops() == {producer: 1, "Clip": 1}
    assert any("min is above its max" in r
               for r in _rejected(result.report, "activation fusion", "activation fusion"))
    result.assert_close(rtol=0)
    session = hetrix.InferenceSession(model.SerializeToString())  # every pass, every kernel
    np.testing.assert_array_equal(session.run(None, feeds)[0], np.full_like(result.expected[0], -1))


def test_clip_with_variable_bounds_is_not_fused() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Clip", ["c", "lo"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 6, 6], "lo": []}, ["y"], CONV)
    assert _optimized_ops(model) == {"Conv", "Clip"}


# --------------------------------------------------------------------------- LayerNorm


def _layernorm_nodes(axes_var: list[int], opset: int) -> list:
    def mean(x: str, y: str, axes: list[int]) -> object:
        if opset >= 18:
            return helper.make_node("ReduceMean", [x, f"axes_{y}"], [y])
        return helper.make_node("ReduceMean", [x], [y], axes=axes)

    return [
        mean("x", "mu", [-1]),
        helper.make_node("Sub", ["x", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        mean("d2", "var", axes_var),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("Mul", ["n", "g"], ["s"]),
        helper.make_node("Add", ["s", "b"], ["y"]),
    ]


def _layernorm_model(axes_var: list[int], opset: int) -> object:
    init = {
        "two": np.array(2, np.float32),
        "eps": np.array(1e-5, np.float32),
        "g": _f32(8),
        "b": _f32(8),
        "axes_mu": np.array([-1]),
        "axes_var": np.array(axes_var),
    }
    return make_model(
        _layernorm_nodes(axes_var, opset), {"x": ["n", 5, 8]}, ["y"], init, opset=opset
    )


@pytest.mark.parametrize(
    ("opset", "op"),
    [(14, "hetrix::LayerNormalization"), (17, "LayerNormalization"), (18, "LayerNormalization")],
)
def test_layernorm_formula_becomes_layernormalization(opset: int, op: str) -> None:
    result = optimize_and_run(_layernorm_model([-1], opset), {"x": _f32(2, 5, 8, low=-3, high=3)})
    assert result.ops() == {op: 1}
    assert result.report.count("LayerNormalization") == 1
    result.assert_close()


def test_layernorm_formula_over_other_axes_is_kept() -> None:
    result = optimize_and_run(_layernorm_model([-2], 17), {"x": _f32(2, 5, 8)})
    assert result.report.count("LayerNormalization") == 0
    assert "LayerNormalization" not in result.ops()
    result.assert_close(rtol=0)


# --------------------------------------------------------------------------- GELU

_GELU_ERF = {
    "(x * b) * 0.5": [
        helper.make_node("Mul", ["x", "b"], ["xb"]),
        helper.make_node("Mul", ["xb", "half"], ["y"]),
    ],
    "x * (b * 0.5)": [
        helper.make_node("Mul", ["b", "half"], ["bh"]),
        helper.make_node("Mul", ["x", "bh"], ["y"]),
    ],
    "(0.5 * x) * b": [
        helper.make_node("Mul", ["half", "x"], ["hx"]),
        helper.make_node("Mul", ["hx", "b"], ["y"]),
    ],
}


def _gelu_erf_model(grouping: str, root2: float = math.sqrt(2), opset: int = 17) -> object:
    nodes = [
        helper.make_node("Div", ["x", "root2"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["b"]),
        *_GELU_ERF[grouping],
    ]
    init = {
        "root2": np.array(root2, np.float32),
        "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
    }
    return make_model(nodes, {"x": [2, 8]}, ["y"], init, opset=opset)


@pytest.mark.parametrize("grouping", sorted(_GELU_ERF))
def test_gelu_erf_formula_becomes_gelu(grouping: str) -> None:
    result = optimize_and_run(_gelu_erf_model(grouping), {"x": _f32(2, 8, low=-4, high=4)})
    assert result.ops() == {"hetrix::Gelu": 1}
    result.assert_close()


def test_gelu_at_opset_20_is_the_standard_op() -> None:
    result = optimize_and_run(_gelu_erf_model("(x * b) * 0.5", opset=20), {"x": _f32(2, 8)})
    assert result.ops() == {"Gelu": 1}
    result.assert_close()


def test_gelu_tanh_formula_becomes_gelu_tanh() -> None:
    nodes = [
        helper.make_node("Pow", ["x", "three"], ["x3"]),
        helper.make_node("Mul", ["c", "x3"], ["cx3"]),
        helper.make_node("Add", ["x", "cx3"], ["inner"]),
        helper.make_node("Mul", ["inner", "k"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["b"]),
        helper.make_node("Mul", ["half", "x"], ["hx"]),
        helper.make_node("Mul", ["hx", "b"], ["y"]),
    ]
    init = {
        "three": np.array(3, np.float32),
        "c": np.array(0.044715, np.float32),
        "k": np.array(math.sqrt(2 / math.pi), np.float32),
        "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
    }
    result = optimize_and_run(
        make_model(nodes, {"x": [2, 8]}, ["y"], init), {"x": _f32(2, 8, low=-4, high=4)}
    )
    assert result.ops() == {"hetrix::Gelu": 1}
    assert next(iter(result.model.graph)).attributes["approximate"].value == "tanh"
    result.assert_close()


def test_erf_of_another_scaling_is_not_gelu() -> None:
    result = optimize_and_run(_gelu_erf_model("(x * b) * 0.5", root2=2.0), {"x": _f32(2, 8)})
    assert "hetrix::Gelu" not in result.ops() and "Erf" in result.ops()
    assert any(
        "sqrt(2)" in r or "constant" in r
        for r in _rejected(result.report, "pattern recognition", "Gelu")
    )


def test_matmul_add_gelu_becomes_one_fused_matmul() -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["x"]),
        *[n for n in _gelu_erf_model("(x * b) * 0.5").graph.node],
    ]
    init = {
        "w": _f32(3, 8),
        "bias": _f32(8),
        "root2": np.array(math.sqrt(2), np.float32),
        "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
    }
    result = optimize_and_run(
        make_model(nodes, {"a": [1, 2, 3]}, ["y"], init), {"a": _f32(1, 2, 3, low=-3, high=3)}
    )
    assert result.ops() == {"hetrix::FusedMatMul": 1}
    assert next(iter(result.model.graph)).attributes["activation"].value == "Gelu"
    result.assert_close()


# --------------------------------------------------------------------------- attention


def _attention_model(axis: int = -1) -> object:
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=axis),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    return make_model(
        nodes,
        {"q": [1, 2, 4, 8], "kt": [1, 2, 8, 4], "v": [1, 2, 4, 8], "mask": [1, 1, 1, 4]},
        ["y"],
        {"scale": np.array(0.35, np.float32)},
    )


def _attention_feeds() -> dict[str, np.ndarray]:
    mask = np.zeros((1, 1, 1, 4), np.float32)
    mask[..., -1] = -1e4
    return {"q": _f32(1, 2, 4, 8), "kt": _f32(1, 2, 8, 4), "v": _f32(1, 2, 4, 8), "mask": mask}


def test_attention_pattern_becomes_attention() -> None:
    result = optimize_and_run(_attention_model(), _attention_feeds())
    assert result.ops() == {"hetrix::Attention": 1}
    result.assert_close()


def test_softmax_over_another_axis_is_not_attention() -> None:
    result = optimize_and_run(_attention_model(axis=2), _attention_feeds())
    assert "hetrix::Attention" not in result.ops()
    result.assert_close(rtol=0)


def test_attention_is_only_fused_at_the_all_level() -> None:
    ir_model = ir.serde.deserialize_model(_attention_model())
    optimize(ir_model, 2)
    assert "Attention" not in {n.op_type for n in ir_model.graph}


# --------------------------------------------------------------------------- BatchNorm + activation


def _bn_reference(x: np.ndarray, params: dict[str, np.ndarray], eps: float = 1e-3) -> np.ndarray:
    """Inference BatchNormalization in float64 (independent of every Hetrix kernel)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    p = {k.split("_", 1)[1]: v.astype(np.float64).reshape(shape) for k, v in params.items()}
    return (x - p["mean"]) / np.sqrt(p["var"] + eps) * p["scale"] + p["bias"]


@pytest.mark.parametrize(("activation", "reference"), [
    ("Relu", lambda y: np.maximum(y, 0)),
    ("LeakyRelu", lambda y: np.where(y < 0, 0.01 * y, y)),
    ("Sigmoid", lambda y: 1 / (1 + np.exp(-y))),
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_batchnorm_activation_becomes_fused_batchnorm(activation: str, reference: object,
                                                      layout: str) -> None:
    # DenseNet's pre-activation: BN over a concatenation, then the activation
    params = _bn_params("bn", 8)
    nodes = [helper.make_node("Concat", ["x", "x2"], ["c"], axis=1), _bn("c", "n"),
             helper.make_node(activation, ["n"], ["y"])]
    model = make_model(nodes, {"x": [2, 4, 5, 7], "x2": [2, 4, 5, 7]}, ["y"], params)
    x, x2 = _f32(2, 4, 5, 7, low=-3, high=3), _f32(2, 4, 5, 7, low=-3, high=3)
    if layout == "channels_last":  # as convolution outputs arrive on the oneDNN path
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    result = optimize_and_run(model, {"x": x, "x2": x2})
    assert result.ops() == {"Concat": 1, "hetrix::FusedBatchNormalization": 1}
    fused = [n for n in result.model.graph if n.op_type == "FusedBatchNormalization"][0]
    assert fused.attributes["activation"].value == activation
    expected = reference(_bn_reference(np.concatenate([x, x2], axis=1).astype(np.float64), params))
    np.testing.assert_allclose(result.actual[0], expected, rtol=1e-5, atol=1e-5)
    result.assert_close()


def test_training_mode_batchnorm_is_not_fused() -> None:
    node = helper.make_node("BatchNormalization", ["x", "bn_scale", "bn_bias", "bn_mean",
                                                   "bn_var"], ["n"], training_mode=1)
    nodes = [node, helper.make_node("Relu", ["n"], ["y"])]
    model = make_model(nodes, {"x": [2, 4, 3, 3]}, ["y"], _bn_params("bn", 4), opset=15)
    assert _optimized_ops(model) == {"BatchNormalization", "Relu"}


def test_batchnorm_read_by_two_nodes_keeps_its_activation_apart() -> None:
    nodes = [_bn("x", "n"), helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Add", ["n", "r"], ["y"])]
    model = make_model(nodes, {"x": [1, 4, 3, 3]}, ["y"], _bn_params("bn", 4))
    assert _optimized_ops(model) == {"BatchNormalization", "Relu", "Add"}


# --------------------------------------------------------------------------- concat + activation


def _channels_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize(("activation", "reference"), [
    ("Relu", lambda y: np.maximum(y, 0)),
    ("Clip", lambda y: np.clip(y, -0.5, 0.5)),
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channels_last_large"])
def test_concat_activation_becomes_fused_concat(activation: str, reference: object,
                                                layout: str) -> None:
    # ShuffleNet's downsampling unit ends in Concat(pooled shortcut, branch) then Relu; a Relu
    # over channels-last inputs is applied in the copy (NumPy's slices, or torch.cat above 2 MiB)
    shape = [1, 160, 64, 32] if layout == "channels_last_large" else [2, 4, 5, 7]
    extra = {"min": -0.5, "max": 0.5} if activation == "Clip" else {}
    nodes = [helper.make_node("Concat", ["x", "x2"], ["c"], axis=1),
             helper.make_node(activation, ["c"], ["y"], **extra)]
    model = make_model(nodes, {"x": shape, "x2": shape}, ["y"], opset=6 if extra else 17)
    x, x2 = _f32(*shape, low=-3, high=3), _f32(*shape, low=-3, high=3)
    x[0, 0, 0, :2] = [np.nan, -np.inf]  # Relu and Clip keep NaN; -inf goes to 0 / the bound
    if layout != "nchw":  # as convolution outputs arrive on the oneDNN path
        x, x2 = _channels_last(x), _channels_last(x2)
    result = optimize_and_run(model, {"x": x, "x2": x2})
    assert result.ops() == {"hetrix::FusedConcat": 1}
    expected = reference(np.concatenate([x, x2], axis=1).astype(np.float64))
    np.testing.assert_allclose(result.actual[0], expected, rtol=1e-6, atol=0)
    assert np.isnan(result.actual[0][0, 0, 0, 0])
    np.testing.assert_array_equal(x[0, 0, 0, :2], [np.nan, -np.inf])  # its inputs untouched


def test_concat_read_elsewhere_keeps_its_activation_apart() -> None:
    nodes = [helper.make_node("Concat", ["x", "x2"], ["c"], axis=1),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["c", "r"], ["y"])]
    model = make_model(nodes, {"x": [1, 4, 3, 3], "x2": [1, 4, 3, 3]}, ["y"])
    assert _optimized_ops(model) == {"Concat", "Relu", "Add"}


def test_fused_concat_of_one_input_does_not_write_into_it() -> None:
    # the passes drop a one-input Concat; the kernel, called on one, must still copy it
    from hetrix.backends.numpy_cpu.kernels import fused
    from hetrix.backends.registry import NodeContext

    ctx = NodeContext("FusedConcat", "hetrix", "c", 1, {"axis": 1, "activation": "Relu",
                                                      "activation_params": []}, 1, 1)
    x = _channels_last(_f32(1, 4, 3, 3, low=-3, high=3))
    before = x.copy()
    y = fused.fused_concat(ctx, x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(y, np.maximum(before, 0))


# --------------------------------------------------------------------------- channel shuffle


def _shuffle_nodes(perm: list[int] | None = None) -> list:
    return [helper.make_node("Reshape", ["x", "grouped_shape"], ["g"]),
            helper.make_node("Transpose", ["g"], ["t"], perm=perm or [0, 2, 1, 3, 4]),
            helper.make_node("Reshape", ["t", "shape"], ["y"])]


SHUFFLE_SHAPES = {"grouped_shape": np.array([1, 3, -1, 5, 4], np.int64),
                  "shape": np.array([1, 12, 5, 4], np.int64)}


def test_channel_shuffle_becomes_one_op() -> None:
    model = make_model(_shuffle_nodes(), {"x": [1, 12, 5, 4]}, ["y"], SHUFFLE_SHAPES)
    x = _f32(1, 12, 5, 4)
    result = optimize_and_run(model, {"x": x})
    assert result.ops() == {"hetrix::ChannelShuffle": 1}
    assert next(iter(result.model.graph)).attributes["groups"].value == 3
    result.assert_close(rtol=0)
    # channel i * 3 + j of the output is channel j * 4 + i of the input
    (y,) = result.actual
    np.testing.assert_array_equal(y[0, 1 * 3 + 2], x[0, 2 * 4 + 1])


def test_channel_shuffle_with_a_symbolic_batch_is_recognized() -> None:
    """As torch.onnx writes ``view(b, g, -1, h, w)`` for a dynamic batch: the reshape targets
    come from Shape -> Gather -> Concat, and shape inference leaves the -1 dims unknown; the
    element count gives them."""
    def int64(*values: int) -> np.ndarray:
        return np.array(values, np.int64)

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "grouped_tail"], ["grouped_shape"], axis=0),
             helper.make_node("Concat", ["n1", "tail"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "grouped_shape"], ["g"]),
             helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    init = {"zero": np.array(0, np.int64), "axes": int64(0),
            "grouped_tail": int64(3, -1, 5, 4), "tail": int64(-1, 5, 4)}
    model = make_model(nodes, {"x": ["N", 12, 5, 4]}, ["y"], init)
    x = _f32(2, 12, 5, 4)
    result = optimize_and_run(model, {"x": x})
    assert result.ops() == {"hetrix::ChannelShuffle": 1}
    result.assert_close(rtol=0)
    np.testing.assert_array_equal(result.actual[0][:, 1 * 3 + 2], x[:, 2 * 4 + 1])


def test_other_transposes_are_not_channel_shuffles() -> None:
    model = make_model(_shuffle_nodes([0, 1, 2, 4, 3]), {"x": [1, 12, 5, 4]}, ["y"],
                       {**SHUFFLE_SHAPES, "shape": np.array([1, 12, 4, 5], np.int64)})
    result = optimize_and_run(model, {"x": _f32(1, 12, 5, 4)})
    assert "hetrix::ChannelShuffle" not in result.ops()
    assert any("swap axes 1 and 2" in r
               for r in _rejected(result.report, "pattern recognition", "ChannelShuffle"))
    result.assert_close(rtol=0)


def test_a_shuffle_whose_grouped_value_is_read_elsewhere_stays() -> None:
    nodes = [*_shuffle_nodes(), helper.make_node("ReduceSum", ["g"], ["s"], keepdims=0)]
    model = make_model(nodes, {"x": [1, 12, 5, 4]}, ["y", "s"], SHUFFLE_SHAPES)
    result = optimize_and_run(model, {"x": _f32(1, 12, 5, 4)})
    assert "hetrix::ChannelShuffle" not in result.ops()
    result.assert_close(rtol=0)


# --------------------------------------------------------------------------- conv+pool fusion


def _first_layer(pool: str = "MaxPool", activation: bool = True, **pool_attrs: object) -> list:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if activation:
        nodes.append(helper.make_node("Relu", ["c"], ["a"]))
    nodes.append(helper.make_node(pool, ["a" if activation else "c"], ["y"],
                                  kernel_shape=[2, 2], **pool_attrs))
    return nodes


@pytest.mark.parametrize(("pool", "activation", "attrs"), [
    ("MaxPool", True, {"strides": [2, 2]}),
    ("MaxPool", False, {"strides": [1, 1], "ceil_mode": 1}),
    ("AveragePool", True, {"strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
])
def test_first_conv_and_its_pooling_become_fused_conv_pool(pool: str, activation: bool,
                                                           attrs: dict) -> None:
    model = make_model(_first_layer(pool, activation, **attrs), {"x": [1, 3, 6, 6]}, ["y"], CONV)
    result = optimize_and_run(model, IMAGE)
    assert result.ops() == {"hetrix::FusedConvPool": 1}
    assert result.report.count("conv+pool fusion") == 1
    (fused,) = result.model.graph
    assert fused.attributes["activation"].value == ("Relu" if activation else "")
    assert fused.attributes["pool_op_type"].value == pool
    assert list(fused.attributes["pool_kernel_shape"].value) == [2, 2]
    for name, value in attrs.items():
        got = fused.attributes[f"pool_{name}"].value
        assert (list(got) if isinstance(value, list) else got) == value
    # the schema's defaults travel too: the kernel reads the pooling as its node would
    assert fused.attributes["pool_auto_pad"].value == "NOTSET"
    result.assert_close()


def test_conv_pool_fusion_keeps_to_the_first_layer() -> None:
    """Not fused: a conv of a computed value, of a many-channel input, one whose output is read
    twice, and a MaxPool whose Indices output is read."""
    hidden = [helper.make_node("Relu", ["x"], ["r"]),
              helper.make_node("Conv", ["r", "w", "b"], ["c"]),
              helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2])]
    wide = [helper.make_node("Conv", ["x", "w8", "b"], ["c"]),
            helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2])]
    shared = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
              helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2]),
              helper.make_node("ReduceMean", ["c"], ["m"], keepdims=1),
              helper.make_node("Add", ["p", "m"], ["y"])]
    indices = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
               helper.make_node("MaxPool", ["c"], ["p", "i"], kernel_shape=[2, 2]),
               helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
               helper.make_node("Add", ["p", "f"], ["y"])]
    init = {**CONV, "w8": _f32(4, 8, 3, 3)}
    cases = [(hidden, {"x": [1, 3, 6, 6]}, IMAGE, ["y"], "4-D graph input"),
             (wide, {"x": [1, 8, 6, 6]}, {"x": _f32(1, 8, 6, 6)}, ["y"], "more than 4"),
             (shared, {"x": [1, 3, 6, 6]}, IMAGE, ["y"], "other readers"),
             (indices, {"x": [1, 3, 6, 6]}, IMAGE, ["y"], "Indices")]
    for nodes, inputs, feeds, outputs, reason in cases:
        result = optimize_and_run(make_model(nodes, inputs, outputs, init), feeds)
        assert "hetrix::FusedConvPool" not in result.ops()
        assert any(reason in r for r in _rejected(result.report, "conv+pool fusion",
                                                  "conv+pool fusion")), reason
        result.assert_close()


# --------------------------------------------------------------------------- Conv of a Concat


def _concat_conv(parts: int, out_channels: int = 4, **conv_attrs: object) -> list:
    names = [f"x{i}" for i in range(parts)]
    return [helper.make_node("Concat", names, ["c"], axis=1),
            helper.make_node("Conv", ["c", "w", "b"], ["v"], **conv_attrs),
            helper.make_node("Relu", ["v"], ["y"])]


@pytest.mark.parametrize(("parts", "attrs"), [
    (2, {"pads": [1, 1, 1, 1]}),
    (3, {"strides": [2, 2], "dilations": [2, 2]}),
])
def test_conv_of_a_concat_becomes_one_conv_per_part(parts: int, attrs: dict) -> None:
    """Each part convolves with its slice of the weight; the later ones add into the sum so
    far (FusedConv's residual), the last with the bias and the Relu after it."""
    channels = [3, 5, 4][:parts]
    inputs = {f"x{i}": [1, c, 9, 9] for i, c in enumerate(channels)}
    feeds = {name: _f32(*shape) for name, shape in inputs.items()}
    init = {"w": _f32(4, sum(channels), 3, 3), "b": _f32(4)}
    result = optimize_and_run(make_model(_concat_conv(parts, **attrs), inputs, ["y"], init),
                              feeds)
    assert result.ops() == {"Conv": 1, "hetrix::FusedConv": parts - 1}
    assert result.report.count("Conv of Concat") == 1
    nodes = list(result.model.graph)
    assert [list(n.inputs[1].shape) for n in nodes] == [[4, c, 3, 3] for c in channels]
    assert nodes[-1].inputs[2] is not None and nodes[-1].inputs[2].name == "b"
    assert all(n.inputs[2] is None for n in nodes[1:-1])
    assert nodes[-1].attributes["activation"].value == "Relu"
    assert "w" not in result.model.graph.initializers  # the whole weight is not kept as well
    result.assert_close()


def test_conv_of_a_concat_is_kept_where_splitting_does_not_pay_or_apply() -> None:
    """Not split: a Concat read twice, a grouped conv, a concatenation along another axis, a
    weight the caller feeds, and partial sums larger than the concatenation."""
    two = {"x0": [1, 4, 6, 6], "x1": [1, 4, 6, 6]}
    feeds = {"x0": _f32(1, 4, 6, 6), "x1": _f32(1, 4, 6, 6)}
    shared = [helper.make_node("Concat", ["x0", "x1"], ["c"], axis=1),
              helper.make_node("Conv", ["c", "w"], ["v"]),
              helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=1),
              helper.make_node("Add", ["v", "m"], ["y"])]
    grouped = [helper.make_node("Concat", ["x0", "x1"], ["c"], axis=1),
               helper.make_node("Conv", ["c", "wg"], ["y"], group=2)]
    spatial = [helper.make_node("Concat", ["x0", "x1"], ["c"], axis=2),
               helper.make_node("Conv", ["c", "wg"], ["y"])]
    wide = [helper.make_node("Concat", ["x0", "x1"], ["c"], axis=1),
            helper.make_node("Conv", ["c", "ww"], ["y"])]
    init = {"w": _f32(2, 8, 1, 1), "wg": _f32(2, 4, 1, 1), "ww": _f32(16, 8, 1, 1)}
    cases = [(shared, init, {}, "other readers"), (grouped, init, {}, "grouped"),
             (spatial, init, {}, "not a concatenation of channels"),
             (wide, init, {}, "outweigh"),
             (_concat_conv(2, 2)[:2], {"b": _f32(2)}, {"w": _f32(2, 8, 1, 1)},
              "not a constant")]
    for nodes, weights, fed, reason in cases:
        outputs = ["y"] if nodes[-1].output[0] == "y" else ["v"]
        model = make_model(nodes, {**two, **{k: list(v.shape) for k, v in fed.items()}},
                           outputs, weights)
        result = optimize_and_run(model, {**feeds, **fed})
        assert "Concat" in result.ops(), reason
        assert any(reason in r for r in _rejected(result.report, "concat+conv split",
                                                  "Conv of Concat")), reason
        result.assert_close()


# --------------------------------------------------------------------------- Pool of a Concat


@pytest.mark.parametrize(("pool", "attrs"), [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1],
                     "count_include_pad": 1}),
])
def test_pool_of_a_concat_pools_each_part(pool: str, attrs: dict) -> None:
    """Pooling never mixes channels: each part is pooled where it is and the (smaller) pooled
    parts are concatenated; a convolution after that then reads the parts (Conv of Concat)."""
    inputs = {"x0": [1, 3, 9, 9], "x1": [1, 5, 9, 9]}
    feeds = {name: _f32(*shape) for name, shape in inputs.items()}
    nodes = [helper.make_node("Concat", ["x0", "x1"], ["c"], axis=1),
             helper.make_node(pool, ["c"], ["y"], **attrs)]
    result = optimize_and_run(make_model(nodes, inputs, ["y"]), feeds)
    assert result.ops() == {pool: 2, "Concat": 1}
    assert result.report.count("Pool of Concat") == 1
    result.assert_close(rtol=0)

    nodes.append(helper.make_node("Conv", ["y", "w"], ["z"]))
    result = optimize_and_run(make_model(nodes, inputs, ["z"], {"w": _f32(4, 8, 1, 1)}), feeds)
    assert result.ops() == {pool: 2, "Conv": 1, "hetrix::FusedConv": 1}
    result.assert_close()


def test_pool_of_a_concat_is_kept_where_it_would_not_shrink_or_is_read_twice() -> None:
    inputs = {"x0": [1, 3, 8, 8], "x1": [1, 5, 8, 8]}
    feeds = {name: _f32(*shape) for name, shape in inputs.items()}
    concat = helper.make_node("Concat", ["x0", "x1"], ["c"], axis=1)
    same_size = [concat, helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1])]
    read_twice = [concat, helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2],
                                           strides=[2, 2]),
                  helper.make_node("ReduceMax", ["c"], ["m"], axes=[2, 3], keepdims=1),
                  helper.make_node("Add", ["p", "m"], ["y"])]
    for nodes, reason in ((same_size, "does not shrink"), (read_twice, "other readers")):
        result = optimize_and_run(make_model(nodes, inputs, ["y"]), feeds)
        assert result.ops()["Concat"] == 1
        assert any(reason in r for r in _rejected(result.report, "pool of concat",
                                                  "Pool of Concat")), reason
        result.assert_close(rtol=0)


# --------------------------------------------------------------------------- Relu of a Concat


def _downsampling_unit(pool: str = "AveragePool") -> list:
    """ShuffleNet's downsampling unit: Concat(a conv branch, a pooling of the Relu'd input),
    then Relu."""
    return [helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Conv", ["r", "w", "b"], ["branch"], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node(pool, ["r"], ["short"], kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Concat", ["branch", "short"], ["c"], axis=1),
            helper.make_node("Relu", ["c"], ["y"])]


@pytest.mark.parametrize("pool", ["AveragePool", "MaxPool"])
def test_relu_of_a_concat_moves_into_the_parts(pool: str) -> None:
    """The Relu goes into the convolution (a fused activation) and is dropped on the pooling
    of Relu'd values, which cannot be negative: what is left is a plain Concat."""
    inputs = {"x": [1, 4, 9, 9]}
    x = _f32(1, 4, 9, 9, low=-3, high=3)  # no NaN: a fused Relu's NaN is the library's choice
    weights = {"w": _f32(6, 4, 3, 3), "b": _f32(6)}
    result = optimize_and_run(make_model(_downsampling_unit(pool), inputs, ["y"], weights),
                              {"x": x})
    assert result.report.count("Relu of Concat") == 1
    assert result.ops() == {"Relu": 1, pool: 1, "Concat": 1, "hetrix::FusedConv": 1}
    fused = next(n for n in result.model.graph if n.op_type == "FusedConv")
    assert fused.attributes["activation"].value == "Relu"
    assert (result.actual[0] >= 0).all() and (result.actual[0] > 0).any()
    result.assert_close()
    # the reference is ONNX Runtime on the model as written
    import onnxruntime as ort

    proto = make_model(_downsampling_unit(pool), inputs, ["y"], weights)
    expected = ort.InferenceSession(proto.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(result.actual[0], expected, rtol=1e-5, atol=1e-6)


def test_relu_of_a_concat_stays_where_a_part_may_be_negative_and_cannot_take_it() -> None:
    from hetrix.passes.fusion import ReluOfConcatPass

    inputs = {"x": [1, 4, 9, 9]}
    weights = {"w": _f32(6, 4, 3, 3), "b": _f32(6)}
    feeds = {"x": _f32(1, 4, 9, 9, low=-3, high=3)}
    unrelued = _downsampling_unit()[1:]  # the pooling reads the raw input: may be negative
    unrelued[0].input[0] = unrelued[1].input[0] = "x"
    branch_read_twice = [*_downsampling_unit()[:-1], helper.make_node("Relu", ["c"], ["y0"]),
                         helper.make_node("Add", ["y0", "branch_sum"], ["y"]),
                         helper.make_node("ReduceSum", ["branch"], ["branch_sum"], keepdims=1)]
    for nodes, reason in ((unrelued, "producer takes no activation"),
                          (branch_read_twice, "other readers")):
        proto = make_model(nodes, inputs, ["y"], weights)
        alone = ReluOfConcatPass()  # the report keeps a pass's last run: the Relu is fused by then
        alone(ir.serde.deserialize_model(proto))
        assert any(reason in r.reason for r in alone.stats.rejections), reason
        result = optimize_and_run(proto, feeds)
        assert result.report.count("Relu of Concat") == 0
        assert result.ops().get("hetrix::FusedConcat") == 1, reason
        result.assert_close()


def test_non_negative_follows_relus_through_poolings_reshapes_and_concats() -> None:
    from hetrix.passes.fusion import non_negative

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Concat", ["r", "x"], ["mixed"], axis=1),
             helper.make_node("Concat", ["r", "r"], ["both"], axis=1),
             helper.make_node("Neg", ["r"], ["n"]),
             helper.make_node("Conv", ["x", "w"], ["conv"])]
    model = ir.serde.deserialize_model(make_model(
        nodes, {"x": [1, 2, 4, 4]}, ["p", "f", "mixed", "both", "n", "conv"],
        {"w": _f32(2, 2, 1, 1)}))
    values = {v.name: v for v in model.graph.outputs}
    assert [non_negative(values[n]) for n in ("p", "f", "mixed", "both", "n", "conv")] == \
        [True, True, False, True, False, False]
    assert not non_negative(model.graph.inputs[0])
