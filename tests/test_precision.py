"""Reduced precision as an explicit choice: where it applies, and what it costs in accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import hetrix
from hetrix.testing.models import light_model_case, light_model_randomized

pytest.importorskip("torch")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_matrix_work_runs_reduced_and_the_difference_is_reported(precision: str) -> None:
    model = light_model_randomized("squeezenet", 0)[0]
    feeds, _ = light_model_case("squeezenet")
    if not _cpu_runs(precision):
        pytest.skip(f"{precision} convolutions are not available on this CPU "
                    "(the refusal is tested below)")
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision=precision))
    placement = session.get_placement()
    convs = [p for p in placement if "Conv" in p.op_type]
    assert convs and all(p.backend == f"{precision}:cpu" for p in convs)
    # the CNN ops between convolutions stay in the reduced type; the classifier's Softmax does not
    reduced_ops = {p.op_type for p in placement if p.backend == f"{precision}:cpu"}
    assert {"MaxPool", "Concat", "GlobalAveragePool"} <= reduced_ops
    assert {p.op_type: p.backend for p in placement}["Softmax"] == "numpy:cpu"
    report = session.compare_precision(feeds)
    assert [entry["output"] for entry in report] == [o.name for o in session.get_outputs()]
    for entry in report:
        assert entry["max_abs"] > 0, "a reduced-precision run that equals float32 did not reduce"
        # bf16 keeps 8 bits of mantissa: about 1% of the output's scale at most here
        assert entry["max_rel_to_max"] < 0.03, entry
    assert report[0]["argmax_agrees"]


def _cpu_runs(precision: str) -> bool:
    """Whether PyTorch's oneDNN convolves in ``precision`` here, asked directly of torch."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    try:
        x = torch.ones(1, 4, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.ops.mkldnn._reorder_convolution_weight(
            torch.ones(4, 4, 1, 1, dtype=dtype), [0, 0], [1, 1], [1, 1], 1, [1, 4, 3, 3])
        torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "none",
                                                [], "")
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_precision_the_cpu_lacks_is_refused_with_the_reason(precision: str) -> None:
    model = light_model_randomized("squeezenet", 0)[0]
    if _cpu_runs(precision):
        hetrix.InferenceSession(model, hetrix.SessionOptions(precision=precision))  # accepted
        return
    with pytest.raises(hetrix.InvalidArgumentError, match=f"precision='{precision}' is not "
                       "available on this CPU.*oneDNN refuses"):
        hetrix.InferenceSession(model, hetrix.SessionOptions(precision=precision))


def test_float32_default_is_exact_against_itself_and_refuses_comparison() -> None:
    model = light_model_randomized("squeezenet", 0)[0]
    session = hetrix.InferenceSession(model)
    assert all(p.backend == "numpy:cpu" for p in session.get_placement())
    with pytest.raises(hetrix.InvalidArgumentError, match="precision"):
        session.compare_precision(light_model_case("squeezenet")[0])


def test_unknown_precision_is_rejected() -> None:
    model = light_model_randomized("squeezenet", 0)[0]
    with pytest.raises(hetrix.InvalidArgumentError, match="precision must be one of"):
        hetrix.InferenceSession(model, hetrix.SessionOptions(precision="int3"))


def test_reduced_matmul_and_gemm_match_float32_closely() -> None:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Gemm", ["m2", "w2"], ["y"], transB=1, alpha=0.5),
         helper.make_node("Reshape", ["m", "shape"], ["m2"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [16, 8], w.ravel()),
         helper.make_tensor("w2", TensorProto.FLOAT, [4, 8], w[:4].ravel()),
         helper.make_tensor("shape", TensorProto.INT64, [2], [6, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    session = hetrix.InferenceSession(
        model, hetrix.SessionOptions(precision="bf16", graph_optimization_level=0))
    (y,) = session.run(None, {"x": x})
    expected = 0.5 * (x.reshape(6, 16) @ w) @ w[:4].T
    np.testing.assert_allclose(y, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())
    assert {p.op_type: p.backend for p in session.get_placement()}["Gemm"] == "bf16:cpu"


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "inception_v2", "shufflenet"])
def test_bf16_cnn_chain_stays_close_to_float32(name: str) -> None:
    """Residual FusedConv, BatchNorm, asymmetric pools and channel shuffles in bfloat16: every
    output within bf16's rounding of float32 (random weights, so errors are not hidden)."""
    model = light_model_randomized(name, 0)[0]
    feeds, _ = light_model_case(name)
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision="bf16"))
    assert sum(p.backend == "bf16:cpu" for p in session.get_placement()) > 10
    for entry in session.compare_precision(feeds):
        assert 0 < entry["max_rel_to_max"] < 0.05, entry


def _bf16_rounded(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to bfloat16 and back, in float64: what a bf16 kernel multiplies."""
    import ml_dtypes

    return array.astype(ml_dtypes.bfloat16).astype(np.float64)


@pytest.mark.parametrize(
    ("case", "packed"),
    [
        ("gemm_transB_bias_N", True),
        ("gemm_bias_1xN", True),
        ("gemm_relu_fused", True),
        ("gemm_bias_MxN", False),  # a bias that varies by row: the general path
        ("gemm_alpha", False),  # alpha != 1: the general path
        ("matmul_3d", True),
        ("matmul_add_fused", True),
    ],
)
def test_bf16_products_on_packed_weights_match_float64(case: str, packed: bool) -> None:
    """Gemm/MatMul with constant weights run oneDNN's inner product on a weight packed once
    (the cache entry says so); the others keep the general path.  Both within bf16 rounding of
    a float64 product of the same bf16-rounded inputs."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    m, k, n = 5, 24, 12
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = {"gemm_bias_1xN": rng.standard_normal((1, n)),
            "gemm_bias_MxN": rng.standard_normal((m, n))}.get(case, rng.standard_normal(n))
    bias = bias.astype(np.float32)
    x_shape = [2, m, k] if case.startswith("matmul") else [m, k]
    x = rng.standard_normal(x_shape).astype(np.float32)
    xr, wr, br = _bf16_rounded(x), _bf16_rounded(w), _bf16_rounded(bias)
    weight, attrs, nodes = w, {}, []
    if case == "gemm_transB_bias_N":
        weight, attrs = w.T.copy(), {"transB": 1}
    if case == "gemm_alpha":
        attrs = {"alpha": 0.5}
    if case.startswith("gemm"):
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], **attrs)]
        expected = (0.5 if case == "gemm_alpha" else 1.0) * (xr @ wr) + br
    elif case == "matmul_3d":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["g"])]
        expected = xr @ wr
    else:  # MatMul + Add: the graph passes fuse them into FusedMatMul
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["g"])]
        expected = xr @ wr + br
    if case == "gemm_relu_fused":
        nodes.append(helper.make_node("Relu", ["g"], ["y"]))
        expected = np.maximum(expected, 0)
    else:
        nodes.append(helper.make_node("Identity", ["g"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *x_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision="bf16"))
    for rows in (x.shape[0], x.shape[0], 1):  # the weight packed on the first run serves all
        feed = x[:rows]
        if case == "gemm_bias_MxN" and rows != x.shape[0]:
            continue  # its bias fixes the row count
        (y,) = session.run(None, {"x": feed})
        # float32 accumulation of bf16 products, then one rounding of the result to bf16
        np.testing.assert_allclose(y, expected[:rows], rtol=1e-2,
                                   atol=1e-2 * np.abs(expected).max())
    products = [s for s in session._plan.steps if s.ctx.op_type in ("Gemm", "MatMul",
                                                                     "FusedGemm", "FusedMatMul")]
    assert len(products) == 1 and products[0].backend == "bf16:cpu"
    fused = {"gemm_relu_fused": "FusedGemm", "matmul_add_fused": "FusedMatMul"}
    assert products[0].ctx.op_type == fused.get(case, nodes[0].op_type)
    cache = products[0].ctx.cache  # packed: for the kept primitive, or PyTorch's product
    assert ("dnnl_linears" in cache or "linear" in cache) == packed


def test_bf16_layout_ops_and_lrn_follow_their_producer() -> None:
    """Reshape/ChannelShuffle/Transpose/LRN stay in bfloat16 after a bf16 node (no conversions
    inside ShuffleNet or around AlexNet's LRN) and stay float32 on a float32 value."""
    placement = hetrix.InferenceSession(
        light_model_randomized("shufflenet", 0)[0], hetrix.SessionOptions(precision="bf16")
    ).get_placement()
    by_op: dict[str, set[str]] = {}
    for p in placement:
        by_op.setdefault(p.op_type, set()).add(p.backend)
    # the shuffles are one ChannelShuffle each since the pattern recognition (no Transpose)
    assert by_op["Reshape"] == by_op["ChannelShuffle"] == {"bf16:cpu"}
    alexnet = hetrix.InferenceSession(
        light_model_randomized("bvlc_alexnet", 0)[0], hetrix.SessionOptions(precision="bf16"))
    assert {p.backend for p in alexnet.get_placement() if p.op_type == "LRN"} == {"bf16:cpu"}
    for entry in alexnet.compare_precision(light_model_case("bvlc_alexnet")[0]):
        assert 0 < entry["max_rel_to_max"] < 0.05, entry

    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("LRN", ["x"], ["l"], size=3),
         helper.make_node("Reshape", ["l", "shape"], ["r"]),
         helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [4, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision="bf16"))
    assert {p.backend for p in session.get_placement()} == {"numpy:cpu"}
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 3)).astype(np.float32)
    reference = hetrix.InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], reference)  # not rounded


def test_channel_shuffle_merge_keeps_bfloat16_values() -> None:
    """The channels-last merge at the end of a channel shuffle moves bfloat16 as its bits."""
    import ml_dtypes

    from hetrix.backends.numpy_cpu.kernels.tensor import _reshape

    rng = np.random.default_rng(0)
    nhwc = rng.standard_normal((2, 5, 6, 3, 4)).astype(ml_dtypes.bfloat16)  # N H W C2 C1
    x = nhwc.transpose(0, 4, 3, 1, 2)  # (N, C1, C2, H, W) with the channels innermost
    y = _reshape(x, [2, 12, 5, 6], False)
    assert y.dtype == x.dtype and y.strides[1] == y.itemsize  # written channels-last
    np.testing.assert_array_equal(y.view(np.int16), np.ascontiguousarray(x).reshape(
        2, 12, 5, 6).view(np.int16))


@pytest.mark.parametrize("fed", [False, True])
def test_bf16_batch_norm_folds_constants_and_follows_fed_statistics(fed: bool) -> None:
    """Inference BatchNormalization (+Relu) in bfloat16 against float64, two runs; statistics
    fed at run time change between them and must not be served from the folded cache."""
    from onnx import TensorProto, helper

    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    c = 6
    stats = {"scale": rng.uniform(0.5, 2, c), "bias": rng.standard_normal(c),
             "mean": rng.standard_normal(c), "var": rng.uniform(0.5, 2, c)}
    w = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    names = list(stats)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]
    for name, value in stats.items():
        if fed:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [c]))
        else:
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [c], value))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["v"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["v", *names], ["b"], epsilon=1e-3),
         helper.make_node("Relu", ["b"], ["y"])], "g", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(
        precision="bf16", graph_optimization_level=0))
    assert {p.op_type: p.backend for p in session.get_placement()}[
        "BatchNormalization"] == "bf16:cpu"
    reference = ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    for run in range(2):
        if fed and run:
            stats = {k: v * rng.uniform(0.5, 1.5, c) for k, v in stats.items()}
        feeds = {"x": x, **({k: v.astype(np.float32) for k, v in stats.items()} if fed else {})}
        (y,) = session.run(None, feeds)
        ref = reference.run(None, feeds)[0]
        np.testing.assert_allclose(y, ref, rtol=0.03, atol=0.03 * np.abs(ref).max())


def test_bf16_add_joins_only_reduced_values() -> None:
    """An Add of two bfloat16 convolutions stays bfloat16; an Add that mixes one with a float32
    value (a graph input here, a transformer's residual stream in practice) is computed in
    float32, so the float32 side is not rounded."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"]),
         helper.make_node("Conv", ["x", "w"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["both_reduced"]),
         helper.make_node("Add", ["a", "x"], ["mixed"]),
         helper.make_node("Identity", ["both_reduced"], ["y1"]),
         helper.make_node("Identity", ["mixed"], ["y2"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2")],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(
        precision="bf16", graph_optimization_level=0))
    adds = [p.backend for p in session.get_placement() if p.op_type == "Add"]
    assert adds == ["bf16:cpu", "numpy:cpu"]
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    y1, y2 = session.run(None, {"x": x})
    conv = np.einsum("nchw,kc->nkhw", _bf16_rounded(x), _bf16_rounded(w[:, :, 0, 0]))
    np.testing.assert_allclose(y1, 2 * conv, rtol=2e-2, atol=2e-2 * np.abs(conv).max())
    # the float32 input is added unrounded: y2 - x gives back the bfloat16 convolution output
    # (to float32's rounding of the sum), which a bfloat16 Add of a rounded x would not
    np.testing.assert_allclose(y2 - x, conv, rtol=2e-2, atol=2e-2 * np.abs(conv).max())
    np.testing.assert_allclose(y2 - x, _bf16_rounded(y2 - x), rtol=1e-5, atol=1e-6)


def test_bf16_placement_of_a_long_chain_of_joins() -> None:
    """Each Add asks whether its producer is reduced; on a chain of 700 the answers are kept,
    not recomputed down the chain (which overflowed Python's stack)."""
    from onnx import TensorProto, helper

    n = 700
    nodes = [helper.make_node("Conv", ["x", "w"], ["y0"])]
    nodes += [helper.make_node("Add", [f"y{i - 1}", "c"], [f"y{i}"]) for i in range(1, n + 1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4).ravel()),
         helper.make_tensor("c", TensorProto.FLOAT, [1], [0.25])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(
        precision="bf16", graph_optimization_level=0))
    assert {p.backend for p in session.get_placement()} == {"bf16:cpu"}
    x = np.zeros((1, 4, 3, 3), np.float32)
    (y,) = session.run(None, {"x": x})
    # 0.25 added 700 times in bfloat16 stalls where 0.25 is below half an ulp: at 64
    assert y.min() == y.max() == 64.0


def test_bf16_convolutions_repeat_their_prepared_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """After its first run a bf16 conv node repeats its oneDNN call directly (as float32 ones
    do, ``_onednn.PreparedConv``): the same outputs, within bf16 rounding of float32."""
    from onnx import TensorProto, helper

    from hetrix.backends.numpy_cpu.kernels import _onednn

    full_path: list[bool] = []  # a conv that took the general path (deciding, packing)
    conv2d = _onednn.conv2d

    def counted(*args: Any, **kwargs: Any) -> Any:
        full_path.append(True)
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(_onednn, "conv2d", counted)
    rng = np.random.default_rng(4)
    wa, wb = (rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2 for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "wb"], ["b"], pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["b", "r"], ["s"]),
         helper.make_node("Relu", ["s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor(n, TensorProto.FLOAT, w.shape, w.ravel())
         for n, w in (("wa", wa), ("wb", wb))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision="bf16",
                                                                   warm_up=False))
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    outputs = []
    for run in range(3):
        full_path.clear()
        outputs.append(session.run(None, {"x": x})[0])
        # both convs decide on the first run, then repeat their prepared call (PyTorch's, or
        # the kept oneDNN primitive where the onednn extra is installed)
        assert full_path == ([True, True] if run == 0 else [])
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_array_equal(outputs[2], outputs[0])
    reference = hetrix.InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(outputs[0], reference, rtol=0.03,
                               atol=0.03 * np.abs(reference).max())


def test_bf16_product_falls_back_when_onednn_refuses_the_inner_product(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where oneDNN has no inner product for the reduced type (the session's probe tries a
    convolution only), the node computes with torch.matmul instead, from then on.  (Without
    the kept matmul primitive, which serves such products first: test_kept_linear.py.)"""
    from hetrix.backends.numpy_cpu.kernels import _onednn

    monkeypatch.setattr(_onednn, "KEPT_LINEAR", False)
    calls: list[int] = []

    def refuse(*args: object) -> None:
        calls.append(1)
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(_onednn, "_inner_product", refuse)
    from onnx import TensorProto, helper

    rng = np.random.default_rng(6)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision="bf16"))
    x = rng.standard_normal((4, 16)).astype(np.float32)
    expected = _bf16_rounded(x) @ _bf16_rounded(w)
    for _ in range(2):
        (y,) = session.run(None, {"x": x})
        np.testing.assert_allclose(y, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())
    assert calls == [1]  # refused once, not asked again


@pytest.mark.parametrize("form", ["Gemm transB + Relu", "Gemm", "MatMul"])
def test_bfloat16_single_rows_on_the_bfloat16_gemm(form: str, tmp_path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the kept matmul primitive (which serves both first: test_kept_linear.py), a
    one-row layer product in bf16 runs on oneDNN's bfloat16 GEMM (a copy of the weight in
    bfloat16), more rows on the packed product; both within bfloat16's precision of float64,
    the activation applied before the one rounding."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hetrix.backends.numpy_cpu.kernels import _dnnl, _onednn

    monkeypatch.setattr(_onednn, "KEPT_LINEAR", False)

    if not _dnnl.available() or not _cpu_runs("bf16"):
        pytest.skip("needs the onednn extra and a CPU with bfloat16")
    rng = np.random.default_rng(9)
    k, n = 512, 2048  # 2^20 multiply-adds per row: a layer product
    w = (rng.standard_normal((k, n)) / k**0.5).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    transposed = form.startswith("Gemm transB")
    if form == "MatMul":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        weights = {"w": w}
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=int(transposed)),
                 helper.make_node("Relu" if "Relu" in form else "Identity", ["g"], ["y"])]
        weights = {"w": np.ascontiguousarray(w.T) if transposed else w, "b": bias}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, name) for name, v in weights.items()])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.standard_normal((16, k)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64) + (0 if form == "MatMul" else bias)
    if "Relu" in form:
        want = np.maximum(want, 0)
    for rows, path_key in ((1, "gemm_weight_bf16"), (16, "linear")):
        session = hetrix.InferenceSession(str(path), hetrix.SessionOptions(precision="bf16"))
        (y,) = session.run(None, {"x": x[:rows]})
        np.testing.assert_allclose(y, want[:rows], rtol=0,
                                   atol=0.02 * float(np.abs(want).max()))
        caches = [s.ctx.cache for s in session._plan.steps if "Gemm" in s.ctx.op_type
                  or "MatMul" in s.ctx.op_type]
        assert len(caches) == 1 and path_key in caches[0], (rows, list(caches[0]))


@pytest.mark.parametrize("size", [1, 1000, 1 << 14, (1 << 14) + 1, 1 << 16])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_values_leave_the_reduced_space_as_exact_float32(size: int, dtype_name: str) -> None:
    """Small values leave by NumPy's cast, large ones by PyTorch's: either way the float32
    result is the exact widening of every element (NaN, infinities, -0, subnormals included),
    C-ordered in the value's shape, whatever the source's memory order."""
    import ml_dtypes

    from hetrix.backends.reduced_precision import ReducedPrecisionBackend

    if not _cpu_runs("bf16"):
        pytest.skip("bf16 is not available on this CPU")
    backend = ReducedPrecisionBackend("bf16")
    dtype = np.dtype(getattr(ml_dtypes, dtype_name, None) or dtype_name)
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    values = np.random.default_rng(size).standard_normal(size) * 100
    values[: min(size, 6)] = [np.nan, np.inf, -np.inf, -0.0, tiny, -3 * tiny][: min(size, 6)]
    reduced = values.astype(dtype)
    expected = reduced.astype(np.float64)
    channels = 4 if size % 4 == 0 else 1
    layouts = [reduced, reduced.reshape(1, channels, -1, 1)]
    if channels == 4:  # an NCHW view of NHWC memory, as oneDNN's convolutions write
        layouts.append(np.ascontiguousarray(reduced.reshape(1, 4, -1, 1).transpose(0, 2, 3, 1))
                       .transpose(0, 3, 1, 2))
    for source in layouts:
        host = backend.to_host(source)
        assert host.dtype == np.float32 and host.flags.c_contiguous
        assert host.shape == source.shape
        np.testing.assert_array_equal(host.astype(np.float64), expected.reshape(source.shape))
        assert np.array_equal(np.signbit(host), np.signbit(source.astype(np.float32)))
    scalar = backend.to_host(reduced[-1:].reshape(()))
    assert scalar.shape == () and scalar.dtype == np.float32
    np.testing.assert_array_equal(scalar, expected[-1])


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", [(1, 48, 7, 5), (2, 32, 6, 6)])
def test_normalization_of_a_channel_prefix_on_the_kept_primitive(relu: bool, shape) -> None:
    """``x * multiplier + offset`` (then Relu) of bfloat16 channels that are a prefix of a wider
    NHWC buffer, copied dense then computed in place by oneDNN's binary primitive: within one
    bfloat16 rounding of float64, infinities as float64 gives them, NaN as the kept
    normalization treats it; another layout is declined."""
    import ml_dtypes

    from hetrix.backends.numpy_cpu.kernels import _dnnl

    if not _dnnl.available() or not _cpu_runs("bf16"):
        pytest.skip("needs oneDNN's library and bfloat16")
    rng = np.random.default_rng(5)
    n, c, h, w = shape
    buffer = rng.standard_normal((n, h, w, 2 * c + 16)).astype(ml_dtypes.bfloat16)
    x = buffer[..., :c].transpose(0, 3, 1, 2)  # a Concat chain's prefix: strided channels
    x[0, :4, 0, 0] = [np.nan, np.inf, -np.inf, -3.0]
    multiplier, offset = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    kept = _dnnl.create_scale_shift(x, multiplier, offset, relu)
    assert kept is not None and "jit" in kept.implementation
    y = kept(x)
    assert y.dtype == x.dtype and y.shape == x.shape and y.strides[1] == y.itemsize
    wide = x.astype(np.float64) * multiplier[:, None, None] + offset[:, None, None]
    want = np.maximum(wide, 0) if relu else wide
    finite = np.isfinite(want)
    got = y.astype(np.float64)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2 ** -8, atol=1e-6)
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    if relu:  # oneDNN's fused Relu, as the kept BatchNormalization's: NaN becomes 0
        dense = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        ones = np.ones(c, np.float32)
        norm = _dnnl.create_batch_norm(dense, ones, np.zeros(c, np.float32),
                                       np.zeros(c, np.float32), ones, epsilon=0.0, relu=True)
        assert norm is not None
        assert got[0, 0, 0, 0] == norm(dense).astype(np.float64)[0, 0, 0, 0]
    else:
        assert np.isnan(got[0, 0, 0, 0])
    assert kept(np.ascontiguousarray(x)) is None  # C order: another layout
    assert _dnnl.create_scale_shift(np.ascontiguousarray(x), multiplier, offset, relu) is None


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_normalizations_of_a_concat_chain_take_the_kept_primitive_and_join(
        precision: str) -> None:
    """DenseNet's pattern in small: each layer's Concat extends the previous one, and the
    BatchNormalization + Relu of the chain reads a strided channel prefix; the kept
    copy-and-binary primitive serves it as the node's direct call, which the plan joins with
    the convolution after it; the output stays within bfloat16's rounding (float32's) of ONNX
    Runtime's float32, and the replayed runs equal the first run's steps bit for bit."""
    from onnx import TensorProto, helper, numpy_helper

    from hetrix.backends.numpy_cpu.kernels import _dnnl, _dnnl_chain

    ort = pytest.importorskip("onnxruntime")
    if not _dnnl.available() or (precision == "bf16" and not _cpu_runs("bf16")):
        pytest.skip("needs oneDNN's library (and bfloat16)")
    rng = np.random.default_rng(7)
    nodes, inits, last, channels = [], [], "x", 16
    for layer in range(4):  # from the third, the chain's strided prefixes
        names = {k: f"{k}{layer}" for k in ("scale", "bias", "mean", "var", "w")}
        stats = {"scale": rng.uniform(0.5, 1.5, channels), "bias": rng.standard_normal(channels),
                 "mean": rng.standard_normal(channels) * 0.1, "var": rng.uniform(0.5, 2, channels)}
        inits += [numpy_helper.from_array(v.astype(np.float32), names[k]) for k, v in stats.items()]
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((16, channels, 3, 3)) * 0.2).astype(np.float32), names["w"]))
        nodes += [helper.make_node("BatchNormalization", [last, *(names[k] for k in stats)],
                                   [f"bn{layer}"], epsilon=1e-5),
                  helper.make_node("Relu", [f"bn{layer}"], [f"r{layer}"]),
                  helper.make_node("Conv", [f"r{layer}", names["w"]], [f"c{layer}"],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Concat", [last, f"c{layer}"], [f"cat{layer}"], axis=1)]
        last, channels = f"cat{layer}", channels + 16
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w_in"], ["x"], pads=[1, 1, 1, 1]), *nodes],
        "chain", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)],
        [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32),
                                 "w_in"), *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision=precision))
    feeds = {"image": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)}
    (y,) = session.run(None, feeds)
    kernels = [step.ctx.cache.get("library_kernel") or "" for step in session._plan.steps
               if step.ctx.op_type == "FusedBatchNormalization"]
    assert sum("scale and shift" in k for k in kernels) >= 2, kernels  # the strided prefixes
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    tolerance = 0.03 if precision == "bf16" else 1e-4
    np.testing.assert_allclose(y, ref, rtol=tolerance, atol=tolerance * np.abs(ref).max())
    for _ in range(6):  # direct calls from the second run, the joined calls traced after
        (again,) = session.run(None, feeds)
        np.testing.assert_array_equal(again, y)
    replayed = [link[0].primitive for entry in session._plan.lean_run or []
                if isinstance(chain := getattr(entry[0], "__self__", None), _dnnl_chain._Chain)
                and chain.replay is not None for link in chain.links]
    assert sum(isinstance(p, _dnnl.ScaleShift) for p in replayed) >= 2, replayed
