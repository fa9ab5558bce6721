"""Layer products on a kept oneDNN matmul primitive (``_onednn.kept_linear``,
``_dnnl.Linear``): MatMul, Gemm and their fused forms on a constant weight, packed once in the
input's type (float32, or bfloat16 in the reduced-precision mode), the bias and the activation
inside the primitive.

What must hold: the products equal float64 NumPy's (float32 tolerance, or bfloat16's); a float32
weight the node alone reads is released once packed and every other path reads its exact
rebuild, never the released pages; the activation runs inside the primitive at any row count it
takes; the primitive is the node's direct call, which hands other layouts to the kernel; plans
join consecutive products into one replay; where oneDNN refuses, the other paths serve.
Skipped where the ``onednn`` extra is not installed.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _dnnl, _onednn, fused
from test_packed_products import ACTIVATIONS as PACKED_ACTIVATIONS  # tests/, beside this
from test_packed_products import layer_model as _layer  # file: the same one-layer
from test_packed_products import layer_weights  # models

pytestmark = pytest.mark.skipif(not _dnnl.available(), reason="the onednn extra is not installed")

K, N = 512, 384  # 768 KiB of float32 weights, released once packed; from 3 rows on, 2^19
# multiply-adds, a product large enough for oneDNN (linalg._GEMM_MIN_MACS)


def _session(path: Path, nodes: list, weights: dict[str, np.ndarray], shape: list,
             **options: object) -> hetrix.InferenceSession:
    """The model saved and loaded from ``path``, as users load theirs (its weights arrays of
    their own, which may be released)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, path / "model.onnx")
    return hetrix.InferenceSession(str(path / "model.onnx"), hetrix.SessionOptions(**options))


def _steps(session: hetrix.InferenceSession, op_type: str) -> list:
    specializer = session._specializer
    plans = [session._plan, *(specializer.plans() if specializer else [])]
    return [s for plan in plans for s in plan.steps if s.ctx.op_type == op_type]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, N)) / K**0.5).astype(np.float32)
    return w, rng.standard_normal(N).astype(np.float32), rng.standard_normal(
        (64, K)).astype(np.float32)


def _close(got: np.ndarray, want: np.ndarray, bf16: bool = False) -> None:
    scale = float(np.abs(want).max())
    tolerance = 2e-2 if bf16 else 1e-4  # bfloat16 rounds the input, weight and result
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tolerance,
                               atol=tolerance * scale)


@pytest.mark.parametrize("form", ["MatMul+Add", "Gemm transB", "Gemm"])
def test_float32_products_run_on_the_kept_primitive_and_release_the_weight(
        form: str, tmp_path: Path) -> None:
    session, op, w, rows_of, want = _layer(form, tmp_path)
    for rows in (64, 7, 3, 64, 1, 4):  # one row: dnnl_sgemm's, on the rebuilt weight
        (y,) = session.run(None, {"x": rows_of(rows)})
        _close(y.reshape(rows, N), want[:rows])
    caches = [s.ctx.cache for s in _steps(session, op)]
    assert caches and all(isinstance(linear, _dnnl.Linear)
                          for cache in caches for linear in cache["dnnl_linears"].values())
    cache = caches[0]
    assert {shape[-2] if len(shape) == 3 else shape[0]
            for shape, _, _ in cache["dnnl_linears"]} == {64, 7, 3, 4}
    assert "matmul" in cache["library_kernel"] and "linear" not in cache
    assert cache.get("linear_released") is not None  # the original's pages handed back
    np.testing.assert_array_equal(_onednn.linear_weight(cache, cache["linear_released"]), w)


def test_a_single_row_after_the_release_reads_the_rebuilt_weight(tmp_path: Path) -> None:
    """A float32 row of a wide layer (2^20 multiply-adds) goes to ``dnnl_sgemm`` on the plain
    weight, whose original the kept primitive released: that path must read the rebuild."""
    rng = np.random.default_rng(9)
    w = (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)
    session = _session(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w},
                       ["rows", 1024])
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    for rows in (8, 1, 1):
        (y,) = session.run(None, {"x": x[:rows]})
        _close(y, x[:rows].astype(np.float64) @ w)
    (step,) = _steps(session, "MatMul")
    assert step.ctx.cache.get("linear_released") is not None


@pytest.mark.parametrize("form", ["MatMul+Add", "Gemm transB"])
def test_bfloat16_products_run_on_the_kept_primitive(form: str, tmp_path: Path) -> None:
    session, op, w, rows_of, want = _layer(form, tmp_path, precision="bf16")
    for rows in (64, 1, 5):
        (y,) = session.run(None, {"x": rows_of(rows)})
        _close(y.reshape(rows, N), want[:rows], bf16=True)
    (step,) = _steps(session, op)
    linears = step.ctx.cache["dnnl_linears"]
    assert len(linears) == 3
    assert all(linear.dtype == ml_dtypes.bfloat16 for linear in linears.values())
    original = layer_weights()[0]  # bfloat16 packs a copy: the float32 weight stays whole
    np.testing.assert_array_equal(w, original.T if form == "Gemm transB" else original)


# the float64 references of the activations oneDNN applies as post-ops (Gelu tanh and
# HardSigmoid aside: the first is Gelu's other form, the second not a post-op)
ACTIVATIONS = {name: reference for name, reference in PACKED_ACTIVATIONS.items()
               if name in ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Gelu", "HardSwish")}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_activation_runs_inside_the_primitive_at_few_rows_too(
        activation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A product of 2-8 float32 rows kept its activation out of the GEMM on the plain weight;
    on the kept primitive it is a post-op at any row count it takes (from 2^19 multiply-adds:
    3 rows here): the kernel's own activation pass never runs."""
    attrs, extra, reference = ACTIVATIONS[activation]
    w, bias, x = _data(3)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["m"]),
             helper.make_node(activation, ["m", *extra], ["y"], **attrs)]
    weights = {"w": w, "b": bias, "lo": np.array(-0.5, np.float32),
               "hi": np.array(0.5, np.float32)}

    def unexpected(*args: object) -> None:
        raise AssertionError("the activation ran after the product, not inside it")

    monkeypatch.setattr(fused, "activate", unexpected)
    session = _session(tmp_path, nodes, weights, ["rows", K])
    for rows in (4, 64, 3):
        (y,) = session.run(None, {"x": x[:rows]})
        _close(y, reference(x[:rows].astype(np.float64) @ w + bias))
    (step,) = _steps(session, "FusedGemm")
    assert len(step.ctx.cache["dnnl_linears"]) == 3


def test_the_primitive_is_the_direct_call_and_other_layouts_reach_the_kernel(
        tmp_path: Path) -> None:
    session, op, _w, rows_of, want = _layer("Gemm", tmp_path)
    x = rows_of(16)
    for _ in range(4):  # the direct call is bound after the plan's first run
        (y,) = session.run(None, {"x": x})
        _close(y, want[:16])
    (step,) = _steps(session, op)
    assert isinstance(step.ctx.direct.source, _dnnl.Linear)
    fortran = np.asfortranarray(x)  # another layout: the kernel copies it to C order
    (y,) = session.run(None, {"x": fortran})
    _close(y, want[:16])
    (again,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(again, y)


def test_a_float32_weight_two_nodes_read_is_not_packed(tmp_path: Path) -> None:
    """Packing it as float32 would hold it twice: the original cannot be released while the
    other node reads it."""
    w, _, x = _data(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("MatMul", ["x", "w"], ["c"]),
             helper.make_node("Sub", ["a", "c"], ["y"])]
    session = _session(tmp_path, nodes, {"w": w}, [64, K], graph_optimization_level=0)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, np.zeros_like(y))
    assert all("dnnl_linears" not in step.ctx.cache for step in _steps(session, "MatMul"))


def test_consecutive_products_join_into_one_replayed_call(tmp_path: Path) -> None:
    """A two-layer MLP on 3-D input: both products are kept primitives, joined into one call
    whose replay gives the steps' results bit for bit."""
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((K, N)) / K**0.5).astype(np.float32)
    w2 = (rng.standard_normal((N, 256)) / N**0.5).astype(np.float32)
    b1 = rng.standard_normal(N).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]),
             helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    session = _session(tmp_path, nodes, {"w1": w1, "b1": b1, "w2": w2}, [1, 32, K])
    inputs = [rng.standard_normal((1, 32, K)).astype(np.float32) for _ in range(7)]
    first = session.run(None, {"x": inputs[0]})[0]  # the kernels' run
    for x in inputs[1:]:
        (y,) = session.run(None, {"x": x})
        hidden = np.maximum(x[0].astype(np.float64) @ w1 + b1, 0)
        _close(y[0], hidden @ w2)
    (row,) = session.get_joined_calls()
    assert row["joined_calls"] == 1 and row["joined_steps"] == 2 and row["replayed_steps"] == 2
    np.testing.assert_array_equal(session.run(None, {"x": inputs[0]})[0], first)


def test_a_refused_primitive_leaves_the_product_to_the_other_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dnnl, "create_linear", lambda *args, **kwargs: None)
    session, op, w, rows_of, want = _layer("Gemm transB", tmp_path)
    for rows in (64, 7):
        (y,) = session.run(None, {"x": rows_of(rows)})
        _close(y, want[:rows])
    (step,) = _steps(session, op)
    assert step.ctx.cache.get("dnnl_linear_refused") and "dnnl_linears" not in step.ctx.cache


def test_a_large_packed_weight_lies_in_pages_of_its_own(tmp_path: Path) -> None:
    """Packed on the first run among its activations, a weight from 1 MiB is mapped apart from
    the heap (``_dnnl.MAPPED_MIN_BYTES``), whose holes would otherwise grow; smaller ones stay
    on it.  Either way the product is right."""
    rng = np.random.default_rng(8)
    big = (rng.standard_normal((K, 1024)) / K**0.5).astype(np.float32)  # 2 MiB
    small = (rng.standard_normal((1024, 64)) / 32).astype(np.float32)  # 256 KiB
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"]),
             helper.make_node("MatMul", ["h", "small"], ["y"])]
    session = _session(tmp_path, nodes, {"big": big, "small": small}, [16, K],
                       graph_optimization_level=0)
    x = rng.standard_normal((16, K)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    _close(y, x.astype(np.float64) @ big @ small)
    packed = {step.ctx.cache["dnnl_linear_weights"][0].buffer.nbytes:
              step.ctx.cache["dnnl_linear_weights"][0] for step in _steps(session, "MatMul")}
    large, little = packed[max(packed)], packed[min(packed)]
    assert large.buffer.nbytes >= _dnnl.MAPPED_MIN_BYTES > little.buffer.nbytes
    assert _mapped(large.buffer) and large.address % mmap.PAGESIZE == 0
    assert not _mapped(little.buffer)


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is an anonymous mapping of its own (not the heap's)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(getattr(base, "obj", base), mmap.mmap)
