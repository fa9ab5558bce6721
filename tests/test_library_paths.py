"""Code paths that may use a vendor kernel (see numpy_cpu/kernels/_library.py), each run with the
vendor kernel and NumPy-only: every Conv path (depthwise, grouped, 1x1, strided, dilated) against
ONNX Runtime, and Gelu against float64."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import hetrix

CASES = {
    "depthwise_3x3_s1": ((1, 8, 9, 9), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),
    "depthwise_3x3_s2": ((2, 6, 10, 11), (6, 1, 3, 3), {"group": 6, "strides": [2, 2],
                                                         "pads": [1, 1, 1, 1]}),
    "depthwise_5x5_dilated": ((1, 4, 12, 12), (4, 1, 5, 5), {"group": 4, "dilations": [2, 2]}),
    "depthwise_1d": ((1, 5, 20), (5, 1, 3), {"group": 5, "pads": [1, 1]}),
    "depthwise_asymmetric_pads": ((1, 4, 8, 8), (4, 1, 3, 3), {"group": 4, "pads": [0, 1, 2, 1]}),
    "depthwise_same_upper_s2": ((1, 4, 9, 9), (4, 1, 3, 3), {"group": 4, "strides": [2, 2],
                                                             "auto_pad": "SAME_UPPER"}),
    "grouped_3": ((1, 6, 7, 7), (9, 2, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    "pointwise_strided": ((1, 16, 8, 8), (8, 16, 1, 1), {"strides": [2, 2]}),
    "plain_7x7_s2": ((1, 3, 32, 32), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
}


@pytest.fixture(params=["library", "numpy-only"])
def conv_library(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each case with PyTorch's kernel for depthwise Conv (when installed) and without."""
    from hetrix.backends.numpy_cpu.kernels import _library

    if request.param == "numpy-only":
        monkeypatch.setattr(_library, "_FUNCTIONAL", False)
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_matches_onnxruntime(name: str, conv_library: str) -> None:
    x_shape, w_shape, attrs = CASES[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w_shape, w.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, [w_shape[0]], b)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (ours,) = hetrix.InferenceSession(model).run(None, {"x": x})
    (theirs,) = ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_float64(approximate: str, conv_library: str) -> None:
    import math

    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    (ours,) = hetrix.InferenceSession(model).run(None, {"x": x})
    x64 = x.astype(np.float64)
    if approximate == "none":
        expected = 0.5 * x64 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
    else:
        expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    # float32 accuracy: within a few ulp of the exact value; in the deep negative tail, where
    # GELU is below 1e-6 in magnitude, PyTorch's kernel (like ORT's) is accurate in absolute,
    # not relative, terms.
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("size", [3, 5])  # ORT refuses even sizes
def test_lrn_after_a_conv_matches_onnxruntime(size: int, conv_library: str) -> None:
    """LRN through PyTorch (channels-last input from the conv) and NumPy-only, against ONNX
    Runtime (which refuses even sizes: those are checked against float64 below)."""
    rng = np.random.default_rng(size)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("LRN", ["c"], ["y"], size=size, alpha=1e-3, beta=0.75, bias=2.0)],
        "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = rng.standard_normal((2, 8, 7, 7)).astype(np.float32) * 5
    (ours,) = hetrix.InferenceSession(model).run(None, {"x": x})
    (theirs,) = ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_lrn_matches_float64_for_every_window_size(size: int, layout: str,
                                                   conv_library: str) -> None:
    """ONNX's window (floor((size-1)/2) channels before, the rest after) for odd and even sizes,
    against a float64 loop over the spec's formula."""
    rng = np.random.default_rng(size)
    x = (rng.standard_normal((2, 7, 4, 5)) * 3).astype(np.float32)
    if layout == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    alpha, beta, bias = 1e-2, 0.75, 1.5
    graph = helper.make_graph(
        [helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)],
        "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (ours,) = hetrix.InferenceSession(model).run(None, {"x": x})
    x64 = x.astype(np.float64)
    expected = np.empty_like(x64)
    low, high = (size - 1) // 2, size - 1 - (size - 1) // 2
    for c in range(x.shape[1]):
        window = x64[:, max(0, c - low):min(x.shape[1], c + high + 1)]
        expected[:, c] = x64[:, c] / (bias + alpha / size * (window**2).sum(axis=1)) ** beta
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_channel_shuffle_between_convs_matches_onnxruntime(conv_library: str) -> None:
    """ShuffleNet's Reshape -> Transpose -> Reshape on a channels-last conv output: the last
    Reshape writes channels-last (see tensor._merge_channels_last); values as ORT's."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((12, 4, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((12, 1, 3, 3)).astype(np.float32)
    init = [helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.ravel()),
            helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.ravel()),
            helper.make_tensor("split", TensorProto.INT64, [5], [2, 3, 4, 6, 5]),
            helper.make_tensor("merged", TensorProto.INT64, [4], [2, 12, 6, 5])]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c"]),
         helper.make_node("Reshape", ["c", "split"], ["r"]),
         helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
         helper.make_node("Reshape", ["t", "merged"], ["s"]),
         helper.make_node("Conv", ["s", "w2"], ["y"], group=12, pads=[1, 1, 1, 1])],
        "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    ours = hetrix.InferenceSession(model).run(None, {"x": x})
    theirs = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [2, 3, 4, 8])
@pytest.mark.parametrize("layout", ["pixel_blocks", "batch_slice", "strided_width",
                                    "height_slice"])
def test_channel_shuffle_merge_gives_numpy_values(groups: int, layout: str,
                                                  conv_library: str) -> None:
    """The last Reshape of a channel shuffle, on each layout a channels-last activation may have
    (whole pixel blocks one after another, or views of them: a batch slice, a strided width, a
    height slice).  Values as NumPy's reshape of the same array; laid out channels-last where
    PyTorch wrote it."""
    from hetrix.backends.numpy_cpu.kernels import tensor

    rng = np.random.default_rng(groups)
    n, c, h, w = (1 if groups == 8 else 3), 6 * groups, 5, 4
    nhwc = rng.standard_normal((n, h + 1, w * 2, c)).astype(np.float32)
    nhwc = {"pixel_blocks": nhwc[:, 1:, :w].copy(), "batch_slice": nhwc[:, 1:, :w].copy()[n // 2:],
            "strided_width": nhwc[:, 1:, ::2], "height_slice": nhwc[:, 1:, :w].copy()[:, 1:]
            }[layout]
    activation = nhwc.transpose(0, 3, 1, 2)  # NCHW shape, channels-last memory
    split = activation.reshape(activation.shape[0], groups, c // groups, *activation.shape[2:])
    shuffled = split.transpose(0, 2, 1, 3, 4)
    target = [activation.shape[0], c, activation.shape[2], w]
    ours = tensor._reshape(shuffled, target, False)
    np.testing.assert_array_equal(ours, np.ascontiguousarray(shuffled).reshape(target))
    if conv_library != "numpy-only" and _library_on():
        assert ours.strides[1] == ours.itemsize  # channels-last


def _library_on() -> bool:
    from hetrix.backends.numpy_cpu.kernels import _library

    return _library.torch_functional() is not None


@pytest.mark.parametrize("opset", [9, 13, 15])
def test_batchnorm_after_a_conv_matches_onnxruntime(opset: int, conv_library: str) -> None:
    """Inference BatchNormalization of each kernel version (1-13 and 14+) on a channels-last conv
    output, through torch's kernel and NumPy-only; the conv's output is read twice so that the BN
    cannot be folded into it."""
    rng = np.random.default_rng(opset)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    params = {"scale": rng.uniform(0.5, 1.5, 6), "bias": rng.standard_normal(6),
              "mean": rng.standard_normal(6), "var": rng.uniform(0.5, 2, 6)}
    init = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())] + [
        helper.make_tensor(k, TensorProto.FLOAT, [6], v.astype(np.float32))
        for k, v in params.items()]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"],
                          epsilon=1e-3),
         helper.make_node("Add", ["n", "c"], ["y"])],
        "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    (ours,) = hetrix.InferenceSession(model).run(None, {"x": x})
    (theirs,) = ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params_fed", [False, True])
def test_batchnorm_relu_over_runs_matches_onnxruntime(params_fed: bool, conv_library: str) -> None:
    """BatchNormalization + Relu (one FusedBatchNormalization at level 99) on a channels-last
    conv output, three runs.  Constant statistics are folded once into a multiplier and offset
    per channel and kept; statistics fed as inputs are folded anew each run, so new values
    take effect (the second run feeds different ones)."""
    rng = np.random.default_rng(11)
    c = 6
    w = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    stats = {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.standard_normal(c),
             "mean": rng.standard_normal(c), "var": rng.uniform(0.5, 2, c)}
    stats = {k: v.astype(np.float32) for k, v in stats.items()}
    init = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 6])]
    if params_fed:
        inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, [c]) for k in stats]
    else:
        init += [helper.make_tensor(k, TensorProto.FLOAT, [c], v) for k, v in stats.items()]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["cv"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["cv", *stats], ["n"], epsilon=1e-3),
         helper.make_node("Relu", ["n"], ["y"])],
        "bn_relu", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                            helper.make_tensor_value_info("cv", TensorProto.FLOAT, None)], init)
    # the conv's output is a graph output too, so that the BN cannot be folded into the conv
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    ours = hetrix.InferenceSession(model)
    assert "FusedBatchNormalization" in {p.op_type for p in ours.get_placement()}
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    for run in range(3):
        feeds = {"x": x}
        if params_fed:
            feeds.update({k: v * np.float32(1 + run % 2) for k, v in stats.items()})
        for a, b in zip(ours.run(None, feeds), theirs.run(None, feeds), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
