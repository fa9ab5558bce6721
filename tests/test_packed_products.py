"""float32 matrix products on a layer's constant weight: oneDNN's GEMM on the plain (K, N)
weight (``_onednn.plain_gemm``), and oneDNN's inner product on a weight packed once
(``_onednn.packed_linear``, for products with a fused activation, and bfloat16).

What must hold: both compute what the plain product does (against float64 NumPy); a (K, N)
weight is read in place, a (N, K) one or a packed one is copied once for a weight the node
alone reads, whose original memory is then released; and nothing ever reads the released
original: other row counts, and a library that refuses the product later, are served from the
copy.

These are the paths a product takes where the kept oneDNN matmul primitive does not serve it
(a float32 single row, a weight other nodes read, the primitive switched off), so every test
here runs with ``_onednn.KEPT_LINEAR`` off; ``test_kept_linear.py`` tests that primitive.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _onednn, fused

pytestmark = pytest.mark.skipif(not _onednn.available(), reason="PyTorch is not installed")

@pytest.fixture(autouse=True)
def _without_the_kept_primitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_onednn, "KEPT_LINEAR", False)


K, N = 512, 384  # 196,608 weights, 768 KiB: packed from 6 rows on (2^20 multiply-adds)


def _session(path: Path, nodes, weights: dict[str, np.ndarray], shape: list | None = None,
             opset: int = 17, **options: object) -> hetrix.InferenceSession:
    """The model saved to ``path`` and loaded from there, as users load theirs: its weights are
    then arrays of their own (read from bytes they would be views, which are never released)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape or ["rows", K])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in nodes[-1].output],
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, path / "model.onnx")
    return hetrix.InferenceSession(str(path / "model.onnx"), hetrix.SessionOptions(**options))


def _caches(session: hetrix.InferenceSession, op_type: str) -> list[dict]:
    return [s.ctx.cache for s in session._plan.steps if s.ctx.op_type == op_type]


def layer_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32) / K**0.5
    return w, rng.standard_normal(N).astype(np.float32), rng.standard_normal((64, K)).astype(
        np.float32)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def layer_model(form: str, tmp_path: Path, **options: object) -> tuple:
    """A one-layer model of ``form`` (``MatMul+Add``, ``Gemm transB``, ``Gemm``): the session
    (with these ``SessionOptions``), the fused node's type, its weight, rows of input in the
    model's shape, and the float64 reference for 64 rows of input."""
    w, bias, x = layer_weights()
    shape = None
    if form == "MatMul+Add":  # 3-D, as in transformers: FusedMatMul with the bias (2-D: Gemm)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["y"])]
        weights, op, shape = {"w": w, "b": bias}, "FusedMatMul", [1, "rows", K]
    else:
        transposed = form == "Gemm transB"
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(transposed))]
        weights, op = {"w": np.ascontiguousarray(w.T) if transposed else w, "b": bias}, "Gemm"
    session = _session(tmp_path, nodes, weights, shape, **options)
    want = x.astype(np.float64) @ w.astype(np.float64) + bias
    return session, op, weights["w"], lambda rows: (x[:rows] if shape is None
                                                   else x[None, :rows]), want


@pytest.mark.parametrize("form", ["MatMul+Add", "Gemm transB", "Gemm"])
def test_layer_products_run_on_the_plain_weight(form: str, tmp_path: Path) -> None:
    if not _onednn._dnnl.available():
        pytest.skip("oneDNN (the onednn extra) is not installed")
    session, op, w, rows_of, want = layer_model(form, tmp_path)
    for rows in (64, 1, 7):
        (y,) = session.run(None, {"x": rows_of(rows)})
        _close(y.reshape(rows, N), want[:rows])
    (cache,) = _caches(session, op)
    assert "gemm_weight" in cache and "linear" not in cache
    kept = cache["gemm_weight"][1]
    if form == "Gemm transB":  # copied once as (K, N), the (N, K) original released
        assert "linear_released" in cache
        np.testing.assert_array_equal(_onednn.linear_weight(cache, cache["linear_released"]), w)
    else:  # read in place
        assert "linear_released" not in cache and np.shares_memory(kept, cache["gemm_weight"][0])
    np.testing.assert_array_equal(kept, w.T if form == "Gemm transB" else w)



def test_a_transposed_weight_is_read_in_place_for_few_rows_and_copied_for_many(
        tmp_path: Path) -> None:
    """A CNN classifier at a small batch: the (N, K) weight stays as it is, read as the
    transpose (faster for a few rows); the first call with 16 rows or more copies it to (K, N),
    keeping the original (a run on another thread may be reading it), and every call computes
    the same product.  (8 rows: the fewest that come to the GEMM for this layer's size.)"""
    if not _onednn._dnnl.available():
        pytest.skip("oneDNN (the onednn extra) is not installed")
    session, op, w, rows_of, want = layer_model("Gemm transB", tmp_path)
    (cache,) = _caches(session, op)
    for rows, read_in_place in ((8, True), (7, True), (64, False), (8, False)):
        (y,) = session.run(None, {"x": rows_of(rows)})
        _close(y.reshape(rows, N), want[:rows])
        b, kept, read_transposed = cache["gemm_weight"]
        assert read_transposed is read_in_place and (kept is b) is read_in_place
        assert "linear_released" not in cache
    np.testing.assert_array_equal(kept, w.T)  # the (K, N) copy of the model's (N, K) weight
    np.testing.assert_array_equal(b, w)  # and the original, intact


@pytest.mark.parametrize("form", ["MatMul+Add", "Gemm transB", "Gemm"])
def test_layer_products_run_packed_and_release_the_original(
        form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_onednn, "PLAIN_GEMM", False)  # as without the onednn extra
    session, op, w, rows_of, want = layer_model(form, tmp_path)
    for rows in (64, 1, 7):  # packed for 64 rows, then other row counts on the same packing
        (y,) = session.run(None, {"x": rows_of(rows)})
        _close(y.reshape(rows, N), want[:rows])
    (cache,) = _caches(session, op)
    assert "linear" in cache and "linear_released" in cache
    stored = _onednn.linear_weight(cache, cache["linear_released"])
    np.testing.assert_array_equal(stored, w)  # rebuilt exactly from the packed copy


def test_a_weight_two_nodes_read_is_not_packed(tmp_path: Path) -> None:
    """Packing it would hold it twice: the original cannot be released while another reads it."""
    w, _, x = layer_weights(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("MatMul", ["x", "w"], ["c"]),
             helper.make_node("Sub", ["a", "c"], ["y"])]
    session = _session(tmp_path, nodes, {"w": w}, graph_optimization_level=0)  # no CSE merging

    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, np.zeros_like(y))
    assert all("linear" not in cache for cache in _caches(session, "MatMul"))


def test_a_library_refusing_later_is_served_from_the_packed_copy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The original's memory is gone once packed: the fallback must read the packed copy, not
    the released pages (which read as zeros)."""
    monkeypatch.setattr(_onednn, "PLAIN_GEMM", False)  # products without activation: packed too
    w, _, x = layer_weights(2)
    session = _session(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w},
                       [64, K])
    want = x.astype(np.float64) @ w.astype(np.float64)
    (cache,) = _caches(session, "MatMul")
    assert "linear_released" in cache  # the run at load packed it
    _close(session.run(None, {"x": x})[0], want)

    def refuse(*args: object) -> None:
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(_onednn, "_inner_product", refuse)
    for _ in range(2):
        _close(session.run(None, {"x": x})[0], want)
    assert cache.get("linear_refused")


_erf = np.vectorize(math.erf)
ACTIVATIONS = {  # ONNX node attributes and extra inputs, float64 reference
    "Relu": ({}, [], lambda v: np.maximum(v, 0)),
    "LeakyRelu": ({"alpha": 0.1}, [], lambda v: np.where(v < 0, 0.1 * v, v)),
    "Clip": ({}, ["lo", "hi"], lambda v: np.clip(v, -0.5, 0.5)),
    "Sigmoid": ({}, [], lambda v: 1 / (1 + np.exp(-v))),
    "Tanh": ({}, [], np.tanh),
    "Gelu": ({}, [], lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)))),
    "Gelu tanh": ({"approximate": "tanh"}, [], lambda v: 0.5 * v * (
        1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, [], lambda v: np.clip(0.3 * v + 0.4, 0, 1)),
    "HardSwish": ({}, [], lambda v: v * np.clip(v / 6 + 0.5, 0, 1)),
}


@pytest.mark.parametrize("producer", ["Gemm", "MatMul"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_after_a_reshape_runs_inside_the_packed_product(
        producer: str, activation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2's MLP: a 2-D product, a Reshape back to 3-D, then Gelu.  The activation moves
    before the Reshape into the fused node and, where oneDNN has it as a post-op, runs inside
    the packed product: the kernel's own activation pass is never called for it."""
    attrs, extra, reference = ACTIVATIONS[activation]
    w, bias, x = layer_weights(3)
    nodes = [helper.make_node(producer, ["x", "w"], ["m"]) if producer == "MatMul" else
             helper.make_node("Gemm", ["x", "w", "b"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["r"]),
             helper.make_node(activation.split()[0], ["r", *extra], ["y"], **attrs)]
    weights = {"w": w, "b": bias, "shape": np.array([1, -1, N], np.int64),
               "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}
    post_op = _onednn.linear_fuses(activation.replace("Gelu tanh", "GeluTanh"))
    if post_op:
        def unexpected(*args: object) -> None:
            raise AssertionError("the activation ran after the product, not inside it")

        monkeypatch.setattr(fused, "activate", unexpected)
    session = _session(tmp_path, nodes, weights, [64, K], opset=20)

    (y,) = session.run(None, {"x": x})
    product = x.astype(np.float64) @ w.astype(np.float64)
    want = reference(product + bias if producer == "Gemm" else product)
    assert y.shape == (1, 64, N)
    _close(y[0], want)
    steps = [s.ctx.op_type for s in session._plan.steps]
    assert steps.count("Fused" + producer) == 1 and activation.split()[0] not in steps
    (cache,) = _caches(session, "Fused" + producer)
    # with a post-op: the packed product; without, the product on either path, then the pass
    assert "linear" in cache if post_op else ("linear" in cache or "gemm_weight" in cache)


def test_an_activation_is_not_moved_across_a_reshape_others_read(tmp_path: Path) -> None:
    """The Reshape's output read twice: moving the Relu before it would change what the second
    reader sees."""
    w, _, x = layer_weights(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["a"]),
             helper.make_node("Sub", ["a", "r"], ["y"])]
    session = _session(tmp_path, nodes, {"w": w, "shape": np.array([1, -1, N], np.int64)},
                       [64, K])
    (y,) = session.run(None, {"x": x})
    product = x.astype(np.float64) @ w.astype(np.float64)
    _close(y[0], np.maximum(product, 0) - product)
    assert "Relu" in [s.ctx.op_type for s in session._plan.steps]


def test_a_large_product_reuses_its_output_only_when_free(tmp_path: Path) -> None:
    """GPT-2's logits at batch 8 are 206 MB: from 32 MiB up the node reuses its last output
    (no fresh pages to fault in each run), never while the caller still holds it."""
    if not _onednn._dnnl.available():
        pytest.skip("oneDNN (the onednn extra) is not installed")
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 8200)) / 8).astype(np.float32)
    session = _session(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w},
                       ["rows", 64])
    x1, x2 = (rng.standard_normal((1024, 64)).astype(np.float32) for _ in range(2))
    (first,) = session.run(None, {"x": x1})
    assert first.nbytes >= 32 << 20
    (second,) = session.run(None, {"x": x2})  # ``first`` still held: a new buffer
    assert not np.shares_memory(first, second)
    _close(first, x1.astype(np.float64) @ w)
    _close(second, x2.astype(np.float64) @ w)
    address = second.ctypes.data
    del first, second
    (third,) = session.run(None, {"x": x1})
    assert third.ctypes.data == address
    _close(third, x1.astype(np.float64) @ w)
