"""oneDNN's convolution and pooling primitives kept per node
(``hetrix.backends.numpy_cpu.kernels._dnnl``), called on their own, against float64 NumPy
convolution and pooling written here.

The model-level tests (``test_onednn_paths.py``) run the same path inside sessions against ONNX
Runtime; these pin down the module's own promises: every geometry and post-op computes the
convolution, a call that differs from the one a primitive was made for is refused (None), the
node's primitives share one packed weight, the packed weight gives its values back exactly, and
concurrent calls from several threads stay correct.  Skipped where the ``onednn`` extra is not
installed.
"""

from __future__ import annotations

import threading
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from hetrix.backends.numpy_cpu.kernels import _dnnl

pytestmark = pytest.mark.skipif(not _dnnl.available(),
                                reason="oneDNN (the onednn extra) is not installed")


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, strides: list[int],
              dilations: list[int], pads: list[int], group: int) -> np.ndarray:
    """Grouped, strided, dilated, padded 2-D convolution in float64."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[0]), (pads[1], pads[1])])
    k, cg, kh, kw = w.shape
    span = (dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1)
    windows = sliding_window_view(x, span, axis=(2, 3))[
        :, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    outputs = []
    for g in range(group):
        part = windows[:, g * cg:(g + 1) * cg]
        weight = w[g * (k // group):(g + 1) * (k // group)].astype(np.float64)
        outputs.append(np.einsum("nchwij,kcij->nkhw", part, weight))
    y = np.concatenate(outputs, axis=1)
    return y if b is None else y + b.astype(np.float64).reshape(1, -1, 1, 1)


ACTIVATIONS: dict[str, tuple[list[float], Any]] = {
    "": ([], lambda y: y),
    "Relu": ([], lambda y: np.maximum(y, 0)),
    "LeakyRelu": ([0.2], lambda y: np.where(y > 0, y, 0.2 * y)),
    "Clip": ([-0.5, 0.75], lambda y: np.clip(y, -0.5, 0.75)),
    "Sigmoid": ([], lambda y: 1 / (1 + np.exp(-y))),
    "Tanh": ([], np.tanh),
    "Gelu": ([], lambda y: 0.5 * y * (1 + np.vectorize(__import__("math").erf)(y / 2 ** 0.5))),
    "GeluTanh": ([], lambda y: 0.5 * y * (1 + np.tanh((2 / np.pi) ** 0.5
                                                       * (y + 0.044715 * y ** 3)))),
    "HardSwish": ([], lambda y: y * np.clip(y / 6 + 0.5, 0, 1)),
}

GEOMETRIES = {  # (N, C, H, W), (K, kernel), strides, dilations, pads, group
    "1x1": ((1, 16, 7, 7), (32, 1), [1, 1], [1, 1], [0, 0], 1),
    "3x3_pad": ((2, 8, 9, 9), (16, 3), [1, 1], [1, 1], [1, 1], 1),
    "3x3_stride2": ((1, 8, 11, 11), (8, 3), [2, 2], [1, 1], [1, 1], 1),
    "5x5_dilated": ((1, 4, 13, 13), (8, 5), [1, 1], [2, 2], [4, 4], 1),
    "grouped": ((1, 16, 8, 8), (24, 3), [1, 1], [1, 1], [1, 1], 4),
    "depthwise": ((1, 32, 10, 10), (32, 3), [1, 1], [1, 1], [1, 1], 32),
    "depthwise_stride2": ((2, 24, 12, 12), (24, 3), [2, 2], [1, 1], [1, 1], 24),
    "rect_stride": ((1, 8, 10, 14), (8, 3), [1, 2], [1, 1], [0, 1], 1),
}


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def constant(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # as the plan's weights are
    return array


def case(name: str, rng: np.random.Generator, dtype: Any = np.float32) -> tuple:
    shape, (k, size), strides, dilations, pads, group = GEOMETRIES[name]
    x = channels_last(rng.standard_normal(shape).astype(dtype))
    w = constant((rng.standard_normal((k, shape[1] // group, size, size)) * 0.3)
                 .astype(np.float32))
    b = constant(rng.standard_normal(k).astype(np.float32))
    geometry = dict(strides=strides, dilations=dilations, pads=pads, group=group)
    return x, w, b, geometry


def make(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: dict, *,
         activation: str = "", params: list[float] | None = None,
         residual: np.ndarray | None = None,
         weights: list[_dnnl.PackedWeights] | None = None) -> _dnnl.Conv2d:
    conv = _dnnl.create(x, w, w, b, activation=activation, activation_params=params or [],
                        residual=residual, weights=[] if weights is None else weights,
                        **geometry)
    assert conv is not None, "oneDNN refused the convolution"
    return conv


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_geometry_matches_float64(name: str) -> None:
    x, w, b, geometry = case(name, np.random.default_rng(0))
    conv = make(x, w, b, geometry)
    y = conv(x, w, b, None)
    assert y is not None and not conv.implementation.startswith("ref")
    want = reference(x, w, b, **geometry)
    assert y.shape == want.shape
    assert y.strides[1] == y.itemsize  # NHWC in memory, as the next conv wants it
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("with_residual", [False, True])
def test_post_ops_match_float64(activation: str, with_residual: bool) -> None:
    rng = np.random.default_rng(1)
    x, w, b, geometry = case("3x3_pad", rng)
    params, function = ACTIVATIONS[activation]
    plain = reference(x, w, b, **geometry)
    residual = channels_last(rng.standard_normal(plain.shape).astype(np.float32)) \
        if with_residual else None
    conv = make(x, w, b, geometry, activation=activation, params=params, residual=residual)
    y = conv(x, w, b, residual)
    want = function(plain + (0 if residual is None else residual))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_within_its_precision() -> None:
    rng = np.random.default_rng(2)
    x, w, b, geometry = case("grouped", rng, dtype=ml_dtypes.bfloat16)
    conv = make(x, w, b, geometry, activation="Relu")
    y = conv(x, w, b, None)
    assert y is not None and y.dtype == x.dtype
    want = np.maximum(reference(x.astype(np.float32), w, b, **geometry), 0)
    # bfloat16 keeps 8 bits of mantissa: the products' inputs are rounded to it
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_nchw_source_is_staged_through_a_blocked_layout(dtype: Any) -> None:
    """An NCHW source (a model's input image) is read as it is: the primitive writes a blocked
    layout that a reorder turns into the NHWC output, on every call and from a direct call,
    with the values of the NHWC path.  With a residual it is refused (the caller converts to
    NHWC first)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 32, 32)).astype(dtype)
    w = constant(rng.standard_normal((24, 3, 3, 3)).astype(np.float32))
    b = constant(rng.standard_normal(24).astype(np.float32))
    geometry = dict(strides=[2, 2], dilations=[1, 1], pads=[1, 1], group=1)
    staged = make(x, w, b, geometry, activation="Relu")
    assert staged.staged is not None and not staged.staged.implementation.startswith("ref")
    want = np.maximum(reference(x.astype(np.float32), w, b, **geometry), 0)
    tolerance = 1e-4 if dtype == np.float32 else 0.05
    for y in (staged(x, w, b, None), staged.direct(lambda *a: None)(x)):
        assert y.strides == np.empty((2, 16, 16, 24), dtype).transpose(0, 3, 1, 2).strides
        np.testing.assert_allclose(y.astype(np.float32), want, rtol=tolerance, atol=tolerance)
    nhwc = make(channels_last(x), w, b, geometry, activation="Relu")
    assert nhwc.staged is None
    if dtype == np.float32:
        np.testing.assert_allclose(staged(x, w, b, None), nhwc(channels_last(x), w, b, None),
                                   rtol=1e-5, atol=1e-5)
    residual = channels_last(np.ones((2, 24, 16, 16), dtype))
    assert _dnnl.create(x, w, w, None, activation="", activation_params=[], residual=residual,
                        weights=[], **geometry) is None


def test_a_different_call_is_refused() -> None:
    """The primitive serves exactly the call it was made for; anything else returns None, so
    that the caller takes its general path (and never gets a wrong answer)."""
    rng = np.random.default_rng(4)
    x, w, b, geometry = case("3x3_pad", rng)
    conv = make(x, w, b, geometry)
    other_w = constant(w.copy())
    residual = channels_last(np.ones((2, 16, 9, 9), np.float32))
    assert conv(x, other_w, b, None) is None  # another weight object
    assert conv(x, w, None, None) is None  # bias dropped
    assert conv(x[:1], w, b, None) is None  # another batch
    assert conv(np.ascontiguousarray(x), w, b, None) is None  # NCHW strides
    assert conv(x.astype(np.float64), w, b, None) is None
    assert conv(x, w, b, residual) is None  # made without a residual
    assert conv(x, w, b, None) is not None


def test_layouts_share_one_packed_weight_that_unpacks_exactly() -> None:
    rng = np.random.default_rng(5)
    x, w, b, geometry = case("3x3_pad", rng)
    shared: list[_dnnl.PackedWeights] = []
    first = make(x, w, b, geometry, weights=shared)
    one = channels_last(np.asarray(x[:1]))
    second = make(one, w, b, geometry, weights=shared)
    # another batch size asks for the same blocked layout here: the weight is packed once
    assert len(shared) == 1 and first.weights is second.weights
    assert np.array_equal(first.unpack(), w)
    np.testing.assert_allclose(second(one, w, b, None),
                               reference(x[:1], w, b, **geometry), rtol=1e-4, atol=1e-4)


def test_concurrent_calls_from_threads() -> None:
    """Each thread binds its own memory objects and scratchpad: four threads running one
    primitive at once on different inputs each get their own answer."""
    rng = np.random.default_rng(6)
    x, w, b, geometry = case("depthwise", rng)
    conv = make(x, w, b, geometry, activation="Relu")
    inputs = [channels_last(rng.standard_normal(x.shape).astype(np.float32)) for _ in range(4)]
    wants = [np.maximum(reference(i, w, b, **geometry), 0) for i in inputs]
    failures: list[str] = []
    start = threading.Barrier(len(inputs))

    def work(index: int) -> None:
        start.wait()
        for _ in range(50):
            y = conv(inputs[index], w, b, None)
            if y is None or not np.allclose(y, wants[index], rtol=1e-4, atol=1e-4):
                failures.append(f"thread {index}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_primitives_of_a_thread_share_one_scratchpad_that_grows() -> None:
    """Kept primitives run on one thread use one scratchpad buffer; when one needs more, the
    buffer grows and a primitive bound to the old one moves to it on its next call, still
    computing the convolution (a stale binding would write into a freed buffer)."""
    rng = np.random.default_rng(8)
    x1, w1, b1, g1 = case("1x1", rng)
    x2, w2, b2, g2 = case("depthwise", rng)
    first, second = make(x1, w1, b1, g1), make(x2, w2, b2, g2)
    assert first.scratchpad_bytes > 0 and second.scratchpad_bytes > 0
    assert first(x1, w1, b1, None) is not None and second(x2, w2, b2, None) is not None
    shared = _dnnl._SCRATCHPAD.buffer
    assert first._local.bindings.scratchpad is shared
    assert second._local.bindings.scratchpad is shared
    assert shared is not None and shared.nbytes >= max(first.scratchpad_bytes,
                                                       second.scratchpad_bytes)
    _dnnl._SCRATCHPAD.fit(_dnnl._SCRATCHPAD.nbytes + (1 << 16))  # as a larger primitive would
    grown = _dnnl._SCRATCHPAD.buffer
    assert grown is not shared
    y = first(x1, w1, b1, None)
    assert first._local.bindings.scratchpad is grown
    np.testing.assert_allclose(y, reference(x1, w1, b1, **g1), rtol=1e-4, atol=1e-4)


def test_switched_off_or_missing_library(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """``HETRIX_DNNL=0`` turns the path off; a ``HETRIX_DNNL_LIBRARY`` that cannot be loaded
    is reported in the log and leaves the path off (PyTorch's call then serves convs)."""
    monkeypatch.setattr(_dnnl, "_LOADED", False)
    monkeypatch.setattr(_dnnl, "_LIBRARY", None)
    monkeypatch.setenv("HETRIX_DNNL", "0")
    assert not _dnnl.available()
    monkeypatch.setattr(_dnnl, "_LOADED", False)
    monkeypatch.delenv("HETRIX_DNNL")
    monkeypatch.setenv("HETRIX_DNNL_LIBRARY", "/nonexistent/libdnnl.so.3")
    with caplog.at_level("WARNING"):
        assert not _dnnl.available()
    assert "/nonexistent/libdnnl.so.3" in caplog.text


# --- pooling ------------------------------------------------------------------------------------


def pool_reference(x: np.ndarray, kind: str, kernel: list[int], strides: list[int],
                   dilations: list[int], begin: list[int], end: list[int]) -> np.ndarray:
    """Max / mean over the input's taps / mean with the pads counted, in float64."""
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (begin[0], end[0]),
                                           (begin[1], end[1])], constant_values=np.nan)
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = sliding_window_view(padded, span, axis=(2, 3))[
        :, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    if kind == "max":
        return np.nanmax(windows, axis=(-2, -1))
    if kind == "average":
        return np.nanmean(windows, axis=(-2, -1))
    return np.nansum(windows, axis=(-2, -1)) / (kernel[0] * kernel[1])  # pads count


POOLS = {  # kind, kernel, strides, dilations, pads begin, pads end
    "max_k3_s2": ("max", [3, 3], [2, 2], [1, 1], [0, 0], [0, 0]),
    "max_k3_s2_end_pad": ("max", [3, 3], [2, 2], [1, 1], [0, 0], [1, 1]),  # ceil mode's shape
    "max_dilated": ("max", [3, 3], [1, 1], [2, 2], [1, 1], [1, 1]),
    "average_k3_p1": ("average", [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
    "average_with_pads_k3_s2": ("average_with_pads", [3, 3], [2, 2], [1, 1], [1, 1], [1, 1]),
    "average_global": ("average", [9, 11], [1, 1], [1, 1], [0, 0], [0, 0]),
}


REFERENCE_KERNEL_ONLY = {("max_dilated", "nhwc"), ("max_dilated", "nchw")}
"""Cases where oneDNN 3.2 has only its reference kernel, which the module refuses."""


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_matches_float64(name: str, layout: str) -> None:
    kind, kernel, strides, dilations, begin, end = POOLS[name]
    x = np.random.default_rng(7).standard_normal((2, 16, 9, 11)).astype(np.float32)
    if layout == "nhwc":
        x = channels_last(x)
    want = pool_reference(x, kind, kernel, strides, dilations, begin, end)
    pool = _dnnl.create_pool(x, kind=kind, kernel=kernel, strides=strides, dilations=dilations,
                             pads_begin=begin, pads_end=end, out=list(want.shape[2:]))
    if (name, layout) in REFERENCE_KERNEL_ONLY:
        assert pool is None  # refused: the caller's other paths serve it
        return
    assert pool is not None, "oneDNN refused the pooling"
    y = pool(x)
    assert y is not None and y.shape == want.shape
    if want.shape[2] * want.shape[3] > 1:  # (a 1x1 image has both layouts' strides)
        assert (y.strides[1] == y.itemsize) == (layout == "nhwc")  # the input's layout is kept
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert pool(np.ascontiguousarray(x[:1])) is None  # another shape: refused, not wrong


def test_pool_in_bfloat16() -> None:
    x = channels_last(np.random.default_rng(8).standard_normal((1, 32, 8, 8))
                      .astype(ml_dtypes.bfloat16))
    pool = _dnnl.create_pool(x, kind="max", kernel=[2, 2], strides=[2, 2], dilations=[1, 1],
                             pads_begin=[0, 0], pads_end=[0, 0], out=[4, 4])
    assert pool is not None
    y = pool(x)
    assert y is not None and y.dtype == x.dtype
    # a max picks one of the inputs: exact in any type
    want = pool_reference(x.astype(np.float32), "max", [2, 2], [2, 2], [1, 1], [0, 0], [0, 0])
    np.testing.assert_array_equal(y.astype(np.float32), want)


def test_profile_names_the_kept_primitives() -> None:
    """``profile_nodes`` says which library kernel each conv and pool ran, so that a user can
    see the kept primitives at work (``hetrix profile`` shows the same column)."""
    from onnx import TensorProto, helper, numpy_helper

    import hetrix
    from hetrix.backends.numpy_cpu.kernels import _library

    if _library.torch_functional() is None:
        pytest.skip("the oneDNN paths run with PyTorch installed")
    w = np.random.default_rng(10).standard_normal((8, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["c", "w"], ["d"], pads=[1, 1, 1, 1]),
         helper.make_node("AveragePool", ["d"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = hetrix.InferenceSession(model.SerializeToString(),
                                      hetrix.SessionOptions(enable_profiling=True))
    session.run(None, {"x": np.zeros((1, 8, 12, 12), np.float32)})
    kernels = {row["op_type"]: row["kernel"] for row in session.profile_nodes()}
    assert kernels["Conv"].startswith("oneDNN convolution ")
    assert kernels["AveragePool"].startswith("oneDNN pooling ")
    assert all(kernel.endswith("kept primitive") for kernel in kernels.values())


def test_large_output_reused_only_when_free() -> None:
    """An output from 32 MiB up is kept for the next call (no fresh mapping to fault in each
    run), but never while the caller still holds the previous one: both stay correct."""
    rng = np.random.default_rng(8)
    x = channels_last(rng.standard_normal((1, 8, 1040, 1024)).astype(np.float32))
    w = constant((rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32))
    b = constant(rng.standard_normal(8).astype(np.float32))
    geometry = dict(strides=[1, 1], dilations=[1, 1], pads=[0, 0, 0, 0], group=1)
    conv = make(x, w, b, geometry)
    want = np.einsum("nchw,kc->nkhw", x.astype(np.float64), w[:, :, 0, 0]) + b[:, None, None]
    first = conv(x, w, b, None)
    assert first is not None and first.nbytes >= 32 << 20
    x2 = channels_last(rng.standard_normal(x.shape).astype(np.float32))
    second = conv(x2, w, b, None)  # ``first`` is still held: a new buffer
    assert second is not None and not np.shares_memory(first, second)
    np.testing.assert_allclose(first, want, rtol=1e-4, atol=1e-4)
    want2 = np.einsum("nchw,kc->nkhw", x2.astype(np.float64), w[:, :, 0, 0]) + b[:, None, None]
    np.testing.assert_allclose(second, want2, rtol=1e-4, atol=1e-4)
    address = second.ctypes.data
    del first, second
    third = conv(x, w, b, None)
    assert third is not None and third.ctypes.data == address
    np.testing.assert_allclose(third, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["plain", "read-only", "flipped", "bfloat16"])
def test_channels_last_copy_of_a_first_conv_input(kind: str) -> None:
    """A model's NCHW input is copied to NHWC memory before its first convolution (PyTorch's
    copy where it can take the array, NumPy's otherwise): the same values, NHWC strides."""
    from hetrix.backends.numpy_cpu.kernels import _onednn

    x = np.random.default_rng(11).standard_normal((2, 3, 9, 7)).astype(
        ml_dtypes.bfloat16 if kind == "bfloat16" else np.float32)
    if kind == "read-only":
        x.setflags(write=False)
    if kind == "flipped":
        x = x[:, :, ::-1]
    y = _onednn._channels_last_copy(x)
    assert y.shape == x.shape and y.strides[1] == y.itemsize and y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)


def _shuffled(x: np.ndarray, groups: int) -> np.ndarray:
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhwc_strided_width"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("groups", [3, 4])
def test_channel_shuffle_matches_numpy(layout: str, dtype: Any, groups: int) -> None:
    rng = np.random.default_rng(groups)
    if layout == "nchw":
        x = rng.standard_normal((2, 24, 5, 7)).astype(dtype)
    else:
        nhwc = rng.standard_normal((2, 5, 14, 24)).astype(dtype)
        x = (nhwc[:, :, ::2] if layout == "nhwc_strided_width" else nhwc).transpose(0, 3, 1, 2)
    shuffle = _dnnl.create_shuffle(x, groups)
    assert shuffle is not None and not shuffle.implementation.startswith("ref")
    y = shuffle(x)
    np.testing.assert_array_equal(y, _shuffled(x, groups))  # a copy: exact in every type
    assert y.dtype == x.dtype
    # the input's memory order kept (a dense copy of a strided view)
    order = (0, 1, 2, 3) if layout == "nchw" else (0, 2, 3, 1)
    dense = np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))
    assert y.strides == dense.strides
    assert shuffle(x[:1]) is None  # another shape: refused, the caller's path serves it


def test_channel_shuffle_refuses_what_it_does_not_serve() -> None:
    x = np.zeros((1, 6, 2, 2), np.float32)
    assert _dnnl.create_shuffle(x, 4) is None  # 6 channels do not form 4 groups
    assert _dnnl.create_shuffle(x[0], 2) is None  # not 4-D
    assert _dnnl.create_shuffle(np.broadcast_to(x[:, :, :1], (1, 6, 2, 2)), 2) is None


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("layouts", [("nhwc", "nhwc", "nhwc"), ("nhwc", "nhwc_strided", "nhwc")])
def test_channel_concatenation_matches_numpy(dtype: Any, layouts: tuple[str, ...]) -> None:
    """Channels-last sources (a strided view among them) joined along the channels into an
    NHWC array with NumPy's values; another layout is refused."""
    rng = np.random.default_rng(7)
    arrays = []
    for channels, layout in zip((8, 24, 5), layouts, strict=True):
        nhwc = rng.standard_normal((2, 5, 12, channels)).astype(dtype)
        view = nhwc[:, :, ::2] if layout == "nhwc_strided" else nhwc[:, :, :6]
        arrays.append(view.transpose(0, 3, 1, 2))
    concat = _dnnl.create_concat(arrays)
    assert concat is not None and not concat.implementation.startswith("ref")
    y = concat(arrays)
    np.testing.assert_array_equal(y, np.concatenate(arrays, axis=1))  # a copy: exact
    assert y.dtype == arrays[0].dtype and y.shape == (2, 37, 5, 6)
    assert y.strides == np.empty((2, 5, 6, 37), dtype).transpose(0, 3, 1, 2).strides
    assert concat([a[:1] for a in arrays]) is None  # another batch: refused
    assert concat(arrays[:2]) is None


def test_channel_concatenation_refuses_what_it_does_not_serve() -> None:
    a = np.zeros((1, 4, 3, 3), np.float32)
    assert _dnnl.create_concat([a, np.zeros((1, 4, 3, 2), np.float32)]) is None  # spatial sizes
    assert _dnnl.create_concat([a, np.zeros((2, 4, 3, 3), np.float32)]) is None  # batch
    assert _dnnl.create_concat([a, a.astype(np.float64)]) is None  # types
    assert _dnnl.create_concat([a[0], a[0]]) is None  # not 4-D


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_matches_float64(layout: str, dtype: Any, relu: bool) -> None:
    """Inference BatchNormalization (and its fused Relu) with ONNX's formula, the input's memory
    order kept; another layout is refused, as are statistics of another length."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 24, 5, 6)).astype(dtype)
    if layout == "nhwc":
        x = channels_last(x)
    scale, bias, mean = (rng.standard_normal(24).astype(np.float32) for _ in range(3))
    var = (rng.random(24) + 0.2).astype(np.float32)
    norm = _dnnl.create_batch_norm(x, scale, bias, mean, var, epsilon=1e-3, relu=relu)
    assert norm is not None and not norm.implementation.startswith("ref")
    y = norm(x)
    c = (slice(None), None, None)
    want = ((x.astype(np.float64) - mean[c]) / np.sqrt(var[c].astype(np.float64) + 1e-3)
            * scale[c] + bias[c])
    if relu:
        want = np.maximum(want, 0)
    tolerance = 1e-5 if dtype == np.float32 else 0.02 * np.abs(want).max()
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=1e-5, atol=tolerance)
    assert y.dtype == x.dtype and y.strides == x.strides
    assert norm(x[:1]) is None  # another shape: the caller's path serves it
    assert _dnnl.create_batch_norm(x, scale[:4], bias, mean, var, epsilon=1e-3,
                                   relu=relu) is None


def _lrn_reference(x: np.ndarray, size: int, alpha: float, beta: float,
                   bias: float) -> np.ndarray:
    """ONNX's LRN in float64: the window [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    x = x.astype(np.float64)
    before = (size - 1) // 2
    squares = np.pad(x * x, [(0, 0), (before, size - 1 - before), (0, 0), (0, 0)])
    total = sum(squares[:, k:k + x.shape[1]] for k in range(size))
    return x / (bias + alpha / size * total) ** beta


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("size", [3, 5])
def test_lrn_matches_float64(dtype: Any, size: int) -> None:
    """LRN across channels with ONNX's window and formula (odd sizes) on the channels-last
    arrays convolutions write, the layout kept; an even size is refused (ONNX's window is then
    not centred).  (For NCHW sources oneDNN has generated kernels for some cases only; the
    others get its reference kernel, which is refused, and PyTorch's path serves them.)"""
    x = channels_last(
        (np.random.default_rng(size).standard_normal((2, 16, 5, 7)) * 4).astype(dtype))
    norm = _dnnl.create_lrn(x, size, alpha=2e-2, beta=0.75, bias=2.0)
    assert norm is not None and not norm.implementation.startswith("ref")
    y = norm(x)
    want = _lrn_reference(x, size, 2e-2, 0.75, 2.0)
    tolerance = 1e-5 if dtype == np.float32 else 0.02 * np.abs(want).max()
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=1e-5, atol=tolerance)
    assert y.dtype == x.dtype and y.strides == x.strides
    assert norm(x[:1]) is None
    assert _dnnl.create_lrn(x, 4, alpha=2e-2, beta=0.75, bias=2.0) is None
