"""Outputs in C order: a convolution's channels-last result is copied into the layout callers
expect (``backends.numpy_cpu.layout.c_order_copy``), through oneDNN's reorder or NumPy blocks.

Checked against NumPy's own copy of the same view (the values, C order, no memory shared with
the source) for float32 and bfloat16, odd sizes and batches, by both paths; and a model whose
output is a convolution's, against ONNX Runtime.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.backends.numpy_cpu import layout
from hetrix.backends.numpy_cpu.kernels import _dnnl

SHAPES = [(1, 64, 112, 112), (3, 5, 7, 9), (2, 24, 1, 130), (1, 2048, 7, 7)]


def channels_last(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    n, c, h, w = shape
    values = np.random.default_rng(0).standard_normal((n, h, w, c)).astype(dtype)
    return values.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("library", [True, False], ids=["onednn", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_channels_last_view_is_copied_into_c_order(
        monkeypatch: pytest.MonkeyPatch, library: bool, dtype: np.dtype,
        shape: tuple[int, ...]) -> None:
    if library and not _dnnl.available():
        pytest.skip("the onednn extra is not installed")
    if not library:
        monkeypatch.setattr(_dnnl, "c_order_copy", lambda array: None)
    view = channels_last(shape, np.dtype(dtype))
    copied = layout.c_order_copy(view)
    assert copied.flags.c_contiguous and copied.flags.owndata and copied.dtype == view.dtype
    assert not np.shares_memory(copied, view)
    np.testing.assert_array_equal(copied, np.ascontiguousarray(view))


def test_other_layouts_are_copied_as_numpy_does() -> None:
    values = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    for view in (values[:, ::2], values.transpose(3, 2, 1, 0), values[..., 1:]):
        copied = layout.c_order_copy(view)
        assert copied.flags.c_contiguous
        np.testing.assert_array_equal(copied, view)


def test_a_convolution_output_reaches_the_caller_in_c_order() -> None:
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((16, 3, 7, 7)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[3, 3, 3, 3], strides=[2, 2]),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv_output", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 40, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8).SerializeToString()
    x = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)
    session = hetrix.InferenceSession(model)
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    for _ in range(3):
        [y] = session.run(None, {"x": x})
        assert y.flags.c_contiguous and y.flags.owndata
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_an_input_image_enters_bfloat16_channels_last_as_pytorch_rounds_it() -> None:
    """The reduced-precision backend converts a 4-D float32 value by oneDNN's reorder
    (``_dnnl.channels_last_cast``): the same bfloat16 values as PyTorch's cast (round to
    nearest even; NaN, infinities and overflow kept), channels-last, for any source layout,
    except that float32 subnormals may become zero (oneDNN's vectorised reorder flushes them,
    its reorder of strided sources keeps them; the matrix units that compute in bfloat16 read
    them as zero anyway); types oneDNN does not have here (float16) are left to PyTorch."""
    torch = pytest.importorskip("torch")
    if not _dnnl.available():
        pytest.skip("the onednn extra is not installed")
    from hetrix.backends.reduced_precision import ReducedPrecisionBackend

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 9, 11)).astype(np.float32) * 100
    flat = x.reshape(-1)
    flat[:8] = [np.nan, np.inf, -np.inf, 1e-40, -1e-42, 3.4e38, 1.00390625, 1.01171875]
    backend = ReducedPrecisionBackend("bf16")
    for source in (x, x[:, :, ::2], np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                   .transpose(0, 3, 1, 2)):
        ours = backend.from_host(source)
        want = torch.from_numpy(np.ascontiguousarray(source)).to(torch.bfloat16).float().numpy()
        assert ours.dtype == ml_dtypes.bfloat16 and ours.shape == source.shape
        assert ours.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last memory
        got = ours.astype(np.float32)
        subnormal = np.abs(source) < np.finfo(np.float32).tiny
        np.testing.assert_array_equal(got[~subnormal], want[~subnormal])
        assert np.all((got[subnormal] == 0) | (got[subnormal] == want[subnormal]))
    assert _dnnl.channels_last_cast(x, np.float16) is None
    assert _dnnl.channels_last_cast(x[0], ml_dtypes.bfloat16) is None
