"""The transformer kernels that run on PyTorch's CPU kernels when it is installed (see
numpy_cpu/kernels/_library.py): MatMul, Gemm, Softmax, LogSoftmax, LayerNormalization and the
fused hetrix Attention.  Each case runs with the vendor kernel and NumPy-only and is compared
against a float64 NumPy reference, so both paths are held to the same independent answer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _library, linalg
from hetrix.backends.numpy_cpu.kernels.attention import scaled_dot_product
from hetrix.backends.registry import NodeContext

RTOL = 1e-5


@pytest.fixture(params=["library", "numpy-only"])
def library(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each case with PyTorch's kernels (when installed) and without."""
    if request.param == "numpy-only":
        monkeypatch.setattr(_library, "_FUNCTIONAL", False)
    elif _library.torch_functional() is None:
        pytest.skip("PyTorch is not installed")
    else:
        # small test products would stay on NumPy: send every float32 product to torch
        monkeypatch.setattr(linalg, "_TORCH_MIN_MACS", 1)
    return request.param


def _run(node: helper.NodeProto, inputs: dict[str, np.ndarray],
         weights: dict[str, np.ndarray] | None = None, opset: int = 17,
         outputs: int = 1) -> list[np.ndarray]:
    """Run one node: ``inputs`` are fed, ``weights`` become (read-only) initializers."""
    weights = weights or {}
    graph = helper.make_graph(
        [node], "case",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
         for k, v in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
         for name in node.output[:outputs]],
        [helper.make_tensor(k, TensorProto.FLOAT, list(v.shape), v.ravel())
         for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning on read-only weights must not leak
        return hetrix.InferenceSession(model).run(None, inputs)


def _assert_close(ours: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    assert ours.dtype == np.float32
    scale = float(np.nanmax(np.abs(expected))) if expected.size else 1.0
    np.testing.assert_allclose(ours, expected, rtol=rtol, atol=rtol * scale)


def _randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


# --- MatMul, Gemm ---------------------------------------------------------------------------

MATMUL_CASES = {
    "2d": ((64, 96), (96, 80)),
    "3d_by_2d": ((2, 32, 96), (96, 80)),
    "batched_broadcast": ((2, 3, 32, 48), (3, 48, 40)),
    "vector_rhs": ((64, 512), (512,)),
    "tiny": ((2, 3), (3, 4)),
    "one_row": ((1, 1, 96), (96, 80)),  # a classifier at batch 1: NumPy's GEMV, not oneDNN
}


@pytest.mark.parametrize("weight", [False, True], ids=["fed", "initializer"])
@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_matmul_matches_float64(name: str, weight: bool, library: str) -> None:
    a_shape, b_shape = MATMUL_CASES[name]
    a, b = _randn(*a_shape), _randn(*b_shape, seed=1)
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    if weight:
        (ours,) = _run(node, {"a": a}, {"b": b})
    else:
        (ours,) = _run(node, {"a": a, "b": b})
    _assert_close(ours, np.matmul(a.astype(np.float64), b))


def test_matmul_of_transposed_view(library: str) -> None:
    # A strided operand (the transpose a Transpose kernel hands on as a view) and a weight.
    a = _randn(96, 2, 40).transpose(1, 2, 0)
    b = _randn(96, 72, seed=1)
    matmul = linalg.matmul
    _assert_close(matmul(a, b), np.matmul(a.astype(np.float64), b))
    _assert_close(matmul(a[:, ::-1], b), np.matmul(a[:, ::-1].astype(np.float64), b))


def test_matmul_rejects_mismatched_batches(library: str) -> None:
    with pytest.raises(ValueError, match="incompatible input shapes"):
        linalg.matmul(_randn(2, 64, 32), _randn(3, 32, 64))


@pytest.mark.parametrize(("a_shape", "bias_size"), [((2, 16, 96), 80), ((16, 96), 1),
                                                    ((3, 2, 8, 96), 80)])
def test_matmul_bias_matches_float64(a_shape: tuple[int, ...], bias_size: int,
                                     library: str) -> None:
    a, b, bias = _randn(*a_shape), _randn(96, 80, seed=1), _randn(bias_size, seed=2)
    b.flags.writeable = False  # a weight
    expected = np.matmul(a.astype(np.float64), b) + bias
    _assert_close(linalg.matmul_bias(a, b, bias), expected)
    strided = a.swapaxes(0, -2).copy().swapaxes(0, -2)  # same values, not C-contiguous
    _assert_close(linalg.matmul_bias(strided, b, bias), expected)


def test_matmul_bias_rejects_a_bias_of_the_wrong_size(library: str) -> None:
    with pytest.raises(ValueError, match="bias"):
        linalg.matmul_bias(_randn(16, 96), _randn(96, 80), _randn(79))
    with pytest.raises(ValueError, match="bias"):
        linalg.matmul_bias(_randn(16, 96), _randn(96, 80), _randn(2, 80))


GEMM_CASES = {
    "plain": ({}, (64,)),
    "trans_b_bias": ({"transB": 1}, (64,)),
    "trans_a_alpha_beta": ({"transA": 1, "alpha": 0.5, "beta": 2.0}, (48, 64)),
    "column_bias": ({"transA": 1, "transB": 1}, (48, 1)),
    "scalar_bias": ({"beta": -1.5}, ()),
    "no_bias": ({"alpha": 3.0}, None),
    "zero_beta": ({"beta": 0.0}, (64,)),
    "row_bias": ({"transB": 1}, (1, 64)),  # oneDNN's inner product, bias as one row
}


@pytest.mark.parametrize("name", sorted(GEMM_CASES))
def test_gemm_matches_float64(name: str, library: str) -> None:
    attrs, c_shape = GEMM_CASES[name]
    m, k, n = 48, 80, 64
    a = _randn(*((k, m) if attrs.get("transA") else (m, k)))
    b = _randn(*((n, k) if attrs.get("transB") else (k, n)), seed=1)
    weights = {"b": b}
    if c_shape is not None:
        weights["c"] = _randn(*c_shape, seed=2) if c_shape else np.array(0.7, np.float32)
    node = helper.make_node("Gemm", ["a", *weights], ["y"], **attrs)
    (ours,) = _run(node, {"a": a}, weights)
    a64 = a.astype(np.float64).T if attrs.get("transA") else a.astype(np.float64)
    b64 = b.astype(np.float64).T if attrs.get("transB") else b.astype(np.float64)
    expected = attrs.get("alpha", 1.0) * (a64 @ b64)
    if c_shape is not None:
        expected = expected + attrs.get("beta", 1.0) * weights["c"]
    _assert_close(ours, expected)


def test_gemm_rejects_a_bias_that_does_not_broadcast(library: str) -> None:
    ctx = NodeContext("Gemm", "", "g", 13, {}, 3, 1)
    with pytest.raises(ValueError, match="does not broadcast"):
        linalg.gemm(ctx, _randn(48, 80), _randn(80, 64), _randn(48))


# --- Softmax, LogSoftmax --------------------------------------------------------------------


def _softmax64(x: np.ndarray, axis: int) -> np.ndarray:
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize(("opset", "axis"), [(13, -1), (13, 1), (11, 1)])
def test_softmax_matches_float64(op: str, opset: int, axis: int, library: str) -> None:
    x = _randn(2, 12, 16, 33) * 4
    x[0, 0, 0, :5] = -np.inf  # masked keys
    (ours,) = _run(helper.make_node(op, ["x"], ["y"], axis=axis), {"x": x}, opset=opset)
    if opset < 13:  # coerced to 2-D at axis: one softmax over all the trailing dims
        expected = _softmax64(x.reshape(2, -1), 1).reshape(x.shape)
    else:
        expected = _softmax64(x, axis)
    if op == "LogSoftmax":
        with np.errstate(divide="ignore"):
            expected = np.log(expected)
        finite = np.isfinite(expected)
        assert np.array_equal(ours[~finite], expected[~finite])  # -inf where probability is 0
        _assert_close(ours[finite], expected[finite])
    else:
        _assert_close(ours, expected)


def test_softmax_of_fully_masked_row_is_nan_like_onnx(library: str) -> None:
    x = _randn(4, 8)
    x[1] = -np.inf
    with np.errstate(invalid="ignore"):
        (ours,) = _run(helper.make_node("Softmax", ["x"], ["y"]), {"x": x}, opset=13)
    assert np.isnan(ours[1]).all() and np.isfinite(np.delete(ours, 1, axis=0)).all()


# --- LayerNormalization ---------------------------------------------------------------------

LAYER_NORM_CASES = {
    "last_axis": (-1, (2, 16, 96), (96,), True),
    "two_axes": (1, (4, 6, 20), (6, 20), True),
    "scale_broadcast": (-2, (3, 5, 8), (8,), False),
    "no_bias": (-1, (7, 64), (64,), False),
}


@pytest.mark.parametrize("name", sorted(LAYER_NORM_CASES))
def test_layer_norm_matches_float64(name: str, library: str) -> None:
    axis, x_shape, p_shape, with_bias = LAYER_NORM_CASES[name]
    x = _randn(*x_shape) * 3 + 5  # a mean far from 0 checks the variance's cancellation
    weights = {"scale": _randn(*p_shape, seed=1)}
    if with_bias:
        weights["bias"] = _randn(*p_shape, seed=2)
    node = helper.make_node("LayerNormalization", ["x", *weights], ["y", "mean", "inv_std"],
                            axis=axis, epsilon=1e-5)
    y, mean, inv_std = _run(node, {"x": x}, weights, outputs=3)

    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=axes, keepdims=True)
    inv_std64 = 1 / np.sqrt(((x64 - mean64) ** 2).mean(axis=axes, keepdims=True) + 1e-5)
    expected = (x64 - mean64) * inv_std64 * weights["scale"] + weights.get("bias", 0.0)
    _assert_close(y, expected, rtol=1e-4)  # normalized values lose ~ulp(mean) / std
    _assert_close(mean, mean64)
    _assert_close(inv_std, inv_std64, rtol=1e-4)


def _layer_norm_session(nodes: list, x_shape: tuple[int, ...],
                        weights: dict[str, np.ndarray], fed: dict[str, np.ndarray] | None = None,
                        opset: int = 17) -> hetrix.InferenceSession:
    fed = fed or {}
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
        + [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
           for k, v in fed.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor(k, TensorProto.FLOAT, list(v.shape), v.ravel())
         for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=9)
    return hetrix.InferenceSession(model)


def _layer_norm64(x: np.ndarray, axis: int, scale: np.ndarray,
                  bias: np.ndarray | None) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=axes, keepdims=True)
    normed = centred / np.sqrt((centred ** 2).mean(axis=axes, keepdims=True) + 1e-5)
    return normed * scale + (0.0 if bias is None else bias)


def _kept_layer_norms(session: hetrix.InferenceSession) -> list[object]:
    return [step.ctx.cache.get("dnnl_layer_norm") for step in session._plan.steps
            if step.ctx.op_type == "LayerNormalization"]


def _on_onednn(library: str) -> bool:
    from hetrix.backends.numpy_cpu.kernels import _dnnl

    return library == "library" and _dnnl.available()


@pytest.mark.parametrize("name", sorted(LAYER_NORM_CASES))
def test_layer_norm_of_one_output_on_its_kept_primitive(name: str, library: str) -> None:
    """Y alone, as transformers use it: oneDNN's primitive the node keeps (where the ``onednn``
    extra is installed) gives the float64 answer, on the first run and on the direct calls
    after it; a row of equal values normalizes to the bias."""
    axis, x_shape, p_shape, with_bias = LAYER_NORM_CASES[name]
    weights = {"scale": _randn(*p_shape, seed=1)}
    if with_bias:
        weights["bias"] = _randn(*p_shape, seed=2)
    node = helper.make_node("LayerNormalization", ["x", *weights], ["y"], axis=axis,
                            epsilon=1e-5)
    session = _layer_norm_session([node], x_shape, weights)
    for seed in range(3):
        x = _randn(*x_shape, seed=seed) * 3 + 5
        x[0] = 7.0  # one whole normalized block constant: variance 0
        (y,) = session.run(None, {"x": x})
        _assert_close(y, _layer_norm64(x, axis, weights["scale"], weights.get("bias")),
                      rtol=1e-4)
    (kept,) = _kept_layer_norms(session)
    assert (kept is not None) == _on_onednn(library)


def test_layer_norm_of_a_strided_input_or_a_fed_scale_is_not_kept(library: str) -> None:
    """A transposed input (oneDNN's primitive reads rows in C order) and a scale the caller
    feeds (it may change between runs) take the other paths, with the float64 answer."""
    scale, bias = _randn(96, seed=1), _randn(96, seed=2)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("LayerNormalization", ["t", "scale", "bias"], ["y"])]
    session = _layer_norm_session(nodes, (16, 2, 96), {"scale": scale, "bias": bias})
    x = _randn(16, 2, 96)
    (y,) = session.run(None, {"x": x})
    _assert_close(y, _layer_norm64(x.transpose(1, 0, 2), -1, scale, bias), rtol=1e-4)
    assert _kept_layer_norms(session) == [None]

    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"])
    session = _layer_norm_session([node], (2, 16, 96), {"bias": bias}, fed={"scale": scale})
    x = _randn(2, 16, 96)
    for fed_scale in (scale, scale * 2):
        (y,) = session.run(None, {"x": x, "scale": fed_scale})
        _assert_close(y, _layer_norm64(x, -1, fed_scale, bias), rtol=1e-4)
    assert _kept_layer_norms(session) == [None]


def test_layer_norm_recognized_below_opset_17_is_kept_too(library: str) -> None:
    """The formula PyTorch exports below opset 17 becomes ``hetrix.LayerNormalization``, whose
    kernel keeps the same primitive."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
             helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["n", "scale"], ["s"]),
             helper.make_node("Add", ["s", "bias"], ["y"])]
    scale, bias = _randn(64, seed=1), _randn(64, seed=2)
    weights = {"two": np.array(2, np.float32), "eps": np.array(1e-5, np.float32),
               "scale": scale, "bias": bias}
    session = _layer_norm_session(nodes, (2, 8, 64), weights, opset=14)
    assert [s.ctx.domain for s in session._plan.steps] == ["hetrix"]
    for seed in range(3):
        x = _randn(2, 8, 64, seed=seed)
        (y,) = session.run(None, {"x": x})
        _assert_close(y, _layer_norm64(x, -1, scale, bias), rtol=1e-4)
    (kept,) = _kept_layer_norms(session)
    assert (kept is not None) == _on_onednn(library)


# --- hetrix.Attention -----------------------------------------------------------------------


def _attention64(q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                 scale: float) -> np.ndarray:
    scores = q.astype(np.float64) @ kt * scale
    if mask is not None:
        scores = scores + mask
    with np.errstate(invalid="ignore"):
        return _softmax64(scores, -1) @ v


def _qkv(batch: int, heads: int, q_len: int, kv_len: int, head: int) -> tuple[np.ndarray, ...]:
    # Q and V as the head-splitting Transpose leaves them: strided views of [B, S, H, D]
    q = _randn(batch, q_len, heads, head).transpose(0, 2, 1, 3)
    kt = _randn(batch, kv_len, heads, head, seed=1).transpose(0, 2, 3, 1)
    v = _randn(batch, kv_len, heads, head, seed=2).transpose(0, 2, 1, 3)
    return q, kt, v


def _causal(batch: int, q_len: int, kv_len: int, fill: float) -> np.ndarray:
    mask = np.triu(np.full((q_len, kv_len), fill, np.float32), 1)
    return np.broadcast_to(mask, (batch, 1, q_len, kv_len)).copy()


ATTENTION_CASES = {
    "no_mask": ((2, 4, 16, 16, 8), None),
    "padding_mask": ((2, 4, 16, 16, 8), "padding"),
    "causal_finfo_min": ((1, 3, 12, 12, 16), "causal_min"),
    "causal_neg_inf": ((1, 3, 12, 12, 16), "causal_inf"),
    "fully_masked_row": ((1, 2, 6, 6, 8), "full_row"),
    "cross_lengths": ((1, 2, 5, 9, 8), "padding"),
}


@pytest.mark.parametrize("name", sorted(ATTENTION_CASES))
def test_hetrix_attention_matches_float64(name: str, library: str) -> None:
    (batch, heads, q_len, kv_len, head), kind = ATTENTION_CASES[name]
    q, kt, v = _qkv(batch, heads, q_len, kv_len, head)
    mask = None
    if kind == "padding":  # [B, 1, 1, S] additive, the last keys of batch 0 padded
        mask = np.zeros((batch, 1, 1, kv_len), np.float32)
        mask[0, ..., kv_len - 3:] = np.finfo(np.float32).min
    elif kind in ("causal_min", "causal_inf"):
        fill = np.finfo(np.float32).min if kind == "causal_min" else -np.inf
        mask = _causal(batch, q_len, kv_len, fill)
    elif kind == "full_row":  # softmax of a row of -inf is NaN, as in the unfused graph
        mask = _causal(batch, q_len, kv_len, -np.inf)
        mask[0, 0, 2] = -np.inf
    scale = 1 / np.sqrt(head)
    ctx = NodeContext("Attention", "hetrix", "att", 1, {"scale": scale}, 4, 1)
    with np.errstate(invalid="ignore"):
        ours = scaled_dot_product(ctx, q, kt, v, mask)
    expected = _attention64(q, kt, v, mask, scale)
    assert np.array_equal(np.isnan(ours), np.isnan(expected))
    keep = ~np.isnan(expected)
    _assert_close(ours[keep], expected[keep])


def test_hetrix_attention_broadcast_batch_falls_back(library: str) -> None:
    # K and V shared across the batch (broadcast): outside SDPA's contract, same answer.
    q, kt, v = _qkv(2, 2, 8, 8, 4)
    kt, v = kt[:1], v[:1]
    ctx = NodeContext("Attention", "hetrix", "att", 1, {"scale": 0.5}, 3, 1)
    _assert_close(scaled_dot_product(ctx, q, kt, v), _attention64(q, kt, v, None, 0.5))


def test_attention_remembers_its_path_only_for_a_constant_mask(
        library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node keeps the SDPA check's answer for the same read-only mask (a constant of the
    plan) and shapes; a writable mask, which may change between runs, is checked every call, and
    another mask with a fully masked row still takes the NaN-keeping path."""
    from hetrix.backends.numpy_cpu.kernels import attention

    checks: list[bool] = []
    check = attention.sdpa_fits

    def counted(*args: object, **kwargs: object) -> bool:
        checks.append(check(*args, **kwargs))  # type: ignore[arg-type]
        return checks[-1]

    monkeypatch.setattr(attention, "sdpa_fits", counted)
    q, kt, v = _qkv(1, 2, 6, 6, 8)
    ctx = NodeContext("Attention", "hetrix", "att", 1, {"scale": 0.5}, 4, 1)
    constant = _causal(1, 6, 6, np.finfo(np.float32).min)
    constant.setflags(write=False)
    for _ in range(3):
        _assert_close(scaled_dot_product(ctx, q, kt, v, constant),
                      _attention64(q, kt, v, constant, 0.5))
    assert len(checks) == 1
    writable = _causal(1, 6, 6, np.finfo(np.float32).min)
    for _ in range(2):
        scaled_dot_product(ctx, q, kt, v, writable)
    assert len(checks) == 3
    masked_row = _causal(1, 6, 6, -np.inf)
    masked_row[0, 0, 2] = -np.inf
    masked_row.setflags(write=False)
    with np.errstate(invalid="ignore"):
        ours = scaled_dot_product(ctx, q, kt, v, masked_row)
    assert np.isnan(ours[0, :, 2]).all() and not np.isnan(ours[0, :, :2]).any()
    assert checks[-1] is False  # checked again: a new mask object


# --- Gelu over a fused kernel's output ------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_in_place_matches_float64(approximate: str, library: str) -> None:
    import math

    from hetrix.backends.numpy_cpu.kernels.activations import gelu_in_place

    x = np.linspace(-8, 8, 4002, dtype=np.float32).reshape(3, -1)
    x64 = x.astype(np.float64)
    if approximate == "none":
        expected = 0.5 * x64 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
    else:
        expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    y = x.copy()
    out = gelu_in_place(y, approximate)
    if library == "library":
        assert out is y  # overwritten, no new array
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)
    readonly = x.copy()
    readonly.flags.writeable = False
    np.testing.assert_allclose(gelu_in_place(readonly, approximate), expected,
                               rtol=2e-6, atol=1e-6)
    assert np.array_equal(readonly, x)  # a read-only input is left alone
