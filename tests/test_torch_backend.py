"""The device-generic PyTorch backend, exercised on torch's CPU device.

* a table of per-op records, each run as a one-node model on ``torch:cpu`` and on ``numpy:cpu``
  (and against a float64 NumPy formula where one is cheap), with the node placed on torch;
* fallback: a node torch cannot run (a float8 Cast, a string op) goes to numpy:cpu, with a reason;
* the light model zoo's squeezenet and resnet50 give the numpy backend's outputs;
* the backend's memory boundary (numpy <-> tensors, bfloat16, sequences) and the provider names.

GPU-only checks are marked ``gpu`` and skip where ``torch.cuda.is_available()`` is False.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

import hetrix  # noqa: E402
import hetrix.backends.registry  # noqa: E402
from hetrix.backends.torch_backend import TorchBackend  # noqa: E402
from hetrix.errors import InvalidArgumentError  # noqa: E402
from hetrix.runtime import providers  # noqa: E402
from hetrix.testing.models import light_model_case, light_model_randomized  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32, I64 = np.float32, np.int64
TORCH = "torch:cpu"


@dataclass
class OpCase:
    """One single-node model: op, attributes, inputs (arrays), optional float64 reference."""

    op: str
    inputs: list[np.ndarray | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    opset: int = 21
    ref: Callable[..., np.ndarray] | None = None
    const_inputs: tuple[int, ...] = ()
    """Inputs given as initializers (shape arguments, weights)."""
    tol: float = 1e-5
    placed: str = TORCH
    """Where the placer puts the node (shape arithmetic stays on the CPU backend)."""

    @property
    def id(self) -> str:
        return f"{self.op}-{'-'.join(f'{k}' for k in self.attrs)}-o{self.opset}"


def _rand(*shape: int, seed: int = 0, dtype: Any = F32) -> np.ndarray:
    return np.random.default_rng(seed + len(shape)).standard_normal(shape).astype(dtype)


def _ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=I64)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


X34 = _rand(3, 4)
X4D = _rand(2, 3, 5, 6)

CASES: list[OpCase] = [
    OpCase("Add", [X34, _rand(4, seed=1)], ref=lambda a, b: a + b),
    OpCase("Div", [_ints(7, -7, 9), _ints(2, 2, -4)], ref=lambda a, b: np.trunc(a / b)),
    OpCase("Mod", [_ints(7, -7, 9), _ints(2, 3, -4)], ref=np.mod),
    OpCase("Pow", [np.abs(X34), _rand(3, 4, seed=2)], ref=np.power, tol=1e-4),
    OpCase("Sqrt", [np.abs(X34)], ref=np.sqrt),
    OpCase("Erf", [X34]),
    OpCase("Sigmoid", [X34], ref=lambda x: 1 / (1 + np.exp(-x))),
    OpCase("Gelu", [X34], {"approximate": "tanh"}),
    OpCase("LeakyRelu", [X34], {"alpha": 0.2}, ref=lambda x: np.where(x < 0, 0.2 * x, x)),
    OpCase("HardSwish", [X34]),
    OpCase("Clip", [X34, np.array(-0.5, F32), np.array(0.5, F32)], ref=lambda x, a, b:
           np.clip(x, a, b)),
    OpCase("Less", [X34, _rand(3, 4, seed=5)], ref=np.less),
    OpCase("Where", [X34 > 0, X34, -X34], ref=np.where),
    OpCase("Cast", [X34], {"to": TensorProto.INT32}, ref=lambda x: x.astype(np.int32)),
    OpCase("Cast", [X34], {"to": TensorProto.FLOAT16}),
    OpCase("MatMul", [_rand(2, 3, 4), _rand(4, 5, seed=3)], ref=np.matmul),
    OpCase("Gemm", [_rand(4, 3), _rand(5, 4, seed=4), _rand(5, seed=2)],
           {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
           ref=lambda a, b, c: 0.5 * a.T @ b.T + 2 * c),
    OpCase("Einsum", [_rand(2, 3, 4), _rand(2, 4, 5, seed=3)], {"equation": "bij,bjk->bik"},
           ref=np.matmul),
    OpCase("Conv", [X4D, _rand(4, 3, 3, 3, seed=7), _rand(4, seed=8)],
           {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}, const_inputs=(1, 2),
           tol=1e-4),
    OpCase("Conv", [X4D, _rand(6, 1, 3, 3, seed=7)], {"group": 3, "auto_pad": "SAME_UPPER",
                                                      "strides": [2, 2]}, tol=1e-4),
    OpCase("Conv", [_rand(1, 2, 7), _rand(3, 2, 2, seed=3)], {"auto_pad": "SAME_LOWER"},
           tol=1e-4),
    OpCase("ConvTranspose", [X4D, _rand(3, 2, 3, 3, seed=9)],
           {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 1]}, tol=1e-4),
    OpCase("MaxPool", [X4D], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                              "pads": [1, 1, 0, 0]}, outputs=2),
    OpCase("AveragePool", [X4D], {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1],
                                  "count_include_pad": 0}),
    OpCase("AveragePool", [X4D], {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER",
                                  "count_include_pad": 1}),
    OpCase("GlobalAveragePool", [X4D], ref=lambda x: x.mean(axis=(2, 3), keepdims=True)),
    OpCase("GlobalMaxPool", [X4D], ref=lambda x: x.max(axis=(2, 3), keepdims=True)),
    OpCase("BatchNormalization", [X4D, _rand(3, seed=1), _rand(3, seed=2), _rand(3, seed=3),
                                  np.abs(_rand(3, seed=4)) + 0.5], const_inputs=(1, 2, 3, 4)),
    OpCase("InstanceNormalization", [X4D, _rand(3, seed=1), _rand(3, seed=2)], tol=1e-4),
    OpCase("LayerNormalization", [X4D, _rand(5, 6, seed=1), _rand(5, 6, seed=2)],
           {"axis": 2}, outputs=3, tol=1e-4),
    OpCase("GroupNormalization", [_rand(2, 4, 3), _rand(4, seed=1), _rand(4, seed=2)],
           {"num_groups": 2}, tol=1e-4),
    OpCase("RMSNormalization", [X34, _rand(4, seed=1)], opset=23, tol=1e-4),
    OpCase("Softmax", [X4D], {"axis": 1}, ref=lambda x: _softmax(x, 1)),
    OpCase("Softmax", [X4D], {"axis": 2}, opset=11,
           ref=lambda x: _softmax(x.reshape(6, 30), 1).reshape(x.shape)),
    OpCase("LogSoftmax", [X34], ref=lambda x: np.log(_softmax(x))),
    OpCase("ReduceMean", [X4D, _ints(1, -1)], {"keepdims": 0},
           ref=lambda x, a: x.mean(axis=(1, 3))),
    OpCase("ReduceSum", [X4D], {"axes": [2], "keepdims": 1}, opset=11,
           ref=lambda x: x.sum(axis=2, keepdims=True)),
    OpCase("ReduceMax", [X4D, _ints(0)], ref=lambda x, a: x.max(axis=0, keepdims=True)),
    OpCase("ReduceLogSumExp", [X34, _ints(1)], tol=1e-4),
    OpCase("ArgMax", [X34], {"axis": 1, "select_last_index": 1}),
    OpCase("TopK", [X34, _ints(2)], {"axis": 1, "largest": 0}, outputs=2),
    OpCase("CumSum", [X34, np.array(1, I64)], {"exclusive": 1, "reverse": 1}),
    OpCase("Reshape", [X4D, _ints(0, -1, 6)], ref=lambda x, s: x.reshape(2, 15, 6)),
    OpCase("Flatten", [X4D], {"axis": 2}, ref=lambda x: x.reshape(6, 30)),
    OpCase("Squeeze", [_rand(1, 3, 1), _ints(0)], ref=lambda x, a: x.reshape(3, 1)),
    OpCase("Unsqueeze", [X34, _ints(0, 3)], ref=lambda x, a: x.reshape(1, 3, 4, 1)),
    OpCase("Transpose", [X4D], {"perm": [0, 2, 3, 1]}, ref=lambda x: x.transpose(0, 2, 3, 1)),
    OpCase("Concat", [X34, X34 * 2], {"axis": -1}, ref=lambda a, b: np.concatenate([a, b], -1)),
    OpCase("Split", [_rand(7, 2), _ints(3, 4)], outputs=2),
    OpCase("Split", [_rand(7, 2)], {"num_outputs": 3}, outputs=3, opset=18),
    OpCase("Slice", [X4D, _ints(-1, 1), _ints(-100, 5), _ints(3, 2), _ints(-2, 2)],
           ref=lambda x, *_: x[:, :, 1:5:2, ::-2]),
    OpCase("Expand", [_rand(3, 1), _ints(2, 1, 4)], ref=lambda x, s: np.broadcast_to(x, (2, 3, 4))),
    OpCase("Tile", [X34, _ints(2, 1)], ref=lambda x, r: np.tile(x, (2, 1))),
    OpCase("Pad", [X34, _ints(1, 2, 0, 1)], {"mode": "reflect"},
           ref=lambda x, p: np.pad(x, ((1, 0), (2, 1)), mode="reflect")),
    OpCase("Pad", [X34, _ints(1, -1, 0, 2), np.array(3.0, F32)],
           ref=lambda x, p, v: np.pad(x[:, 1:], ((1, 0), (0, 2)), constant_values=3.0)),
    OpCase("Pad", [X34, _ints(2, 1, 1, 3)], {"mode": "wrap"}, opset=19),
    OpCase("Gather", [X34, _ints(2, -1, 0).reshape(3, 1)], {"axis": 0},
           ref=lambda x, i: x[np.where(i < 0, i + 3, i)]),
    OpCase("GatherElements", [X34, np.array([[0, 3], [1, -1], [2, 2]], I64)], {"axis": 1}),
    OpCase("GatherND", [X4D, np.array([[0, 1], [1, 2]], I64)], ref=lambda x, i: x[[0, 1], [1, 2]]),
    OpCase("GatherND", [_rand(2, 3, 4), np.array([[1], [2]], I64)], {"batch_dims": 1}),
    OpCase("ScatterElements", [X34, np.array([[0, 1], [2, 1], [1, 1]], I64),
                               _rand(3, 2, seed=3)], {"axis": 1, "reduction": "add"}),
    OpCase("ScatterND", [X34, np.array([[1], [0]], I64), _rand(2, 4, seed=3)],
           {"reduction": "max"}),
    OpCase("Range", [np.array(1.0, F32), np.array(3.1, F32), np.array(0.5, F32)],
           ref=lambda a, b, c: np.array([1.0, 1.5, 2.0, 2.5, 3.0], F32)),
    OpCase("ConstantOfShape", [_ints(2, 3)], {"value": np.array([7], np.int32)}),
    OpCase("Shape", [X4D], {"start": 1, "end": -1}, ref=lambda x: _ints(3, 5), placed="numpy:cpu"),
    OpCase("Size", [X4D], ref=lambda x: np.array(180, I64), placed="numpy:cpu"),
    OpCase("Identity", [X34], ref=lambda x: x),
    OpCase("Dropout", [X34], outputs=2),
    OpCase("Trilu", [X4D, np.array(1, I64)], {"upper": 0}, ref=lambda x, k: np.tril(x, 1)),
    OpCase("Resize", [X4D, None, np.array([1, 1, 2, 1.5], F32)], {"mode": "linear"}),
    OpCase("Resize", [X4D, None, None, _ints(2, 3, 4, 9)],
           {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "ceil"}),
    OpCase("Resize", [X4D, None, np.array([1, 1, 0.6, 0.5], F32)],
           {"mode": "cubic", "exclude_outside": 1}, tol=1e-4),
    OpCase("Attention", [_rand(2, 3, 4, 8), _rand(2, 1, 6, 8, seed=1), _rand(2, 1, 6, 8, seed=2)],
           {"is_causal": 1}, opset=23, tol=1e-4),
    OpCase("Attention", [_rand(2, 4, 16), _rand(2, 5, 8, seed=1), _rand(2, 5, 8, seed=2),
                         np.tril(np.ones((4, 5), bool))],
           {"q_num_heads": 4, "kv_num_heads": 2}, opset=23, tol=1e-4),
]


def _model(case: OpCase) -> Any:
    names = [f"in{i}" if value is not None else "" for i, value in enumerate(case.inputs)]
    graph_inputs, initializers = [], []
    for i, (name, value) in enumerate(zip(names, case.inputs)):
        if value is None:
            continue
        if i in case.const_inputs:
            initializers.append(helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(
                value.dtype), value.shape, value.reshape(-1).tolist()))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    outputs = [f"out{i}" for i in range(case.outputs)]
    attrs = {k: (helper.make_tensor("v", helper.np_dtype_to_tensor_dtype(v.dtype), v.shape,
                                    v.tolist()) if isinstance(v, np.ndarray) else v)
             for k, v in case.attrs.items()}
    node = helper.make_node(case.op, names, outputs, name="node", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_value_info(o, helper.TypeProto()) for o in outputs],
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])


def _run(case: OpCase, provider: str) -> tuple[list[np.ndarray], hetrix.InferenceSession]:
    # Level 0: each record tests one kernel, which constant folding would otherwise precompute.
    unoptimized = hetrix.SessionOptions(graph_optimization_level=0)
    session = hetrix.InferenceSession(
        _model(case).SerializeToString(), unoptimized, providers=[provider]
    )
    feeds = {f"in{i}": v for i, v in enumerate(case.inputs)
             if v is not None and i not in case.const_inputs}
    return session.run(None, feeds), session


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    if got.dtype.kind in "fc":
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                                   atol=tol)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_matches_numpy_backend_and_runs_on_torch(case: OpCase) -> None:
    got, session = _run(case, TORCH)
    want, _ = _run(case, "numpy:cpu")
    placement = {p.node: p for p in session.get_placement()}["node"]
    assert placement.backend == case.placed, placement.reason
    for g, w in zip(got, want):
        _close(g, w, case.tol)
    if case.ref is not None:
        ref = np.asarray(case.ref(*[v.astype(np.float64) if v is not None and v.dtype == F32
                                    else v for v in case.inputs]))
        np.testing.assert_allclose(got[0].astype(np.float64), ref.astype(np.float64),
                                   rtol=max(case.tol, 1e-5), atol=max(case.tol, 1e-5))


def test_half_precision_and_bfloat16_round_trip() -> None:
    import ml_dtypes

    x = _rand(3, 4).astype(ml_dtypes.bfloat16)
    case = OpCase("Relu", [x])
    got, session = _run(case, TORCH)
    assert got[0].dtype == x.dtype
    np.testing.assert_array_equal(got[0].astype(F32), np.maximum(x.astype(F32), 0))
    h = _rand(3, 4).astype(np.float16)
    got, _ = _run(OpCase("Exp", [h]), TORCH)
    np.testing.assert_allclose(got[0], np.exp(h.astype(F32)).astype(np.float16), rtol=1e-3)


# -- fallback -------------------------------------------------------------------------------------


def test_unsupported_dtype_falls_back_per_node_with_a_reason() -> None:
    """Relu runs on torch; a float8 Cast and a string Equal go to numpy:cpu and say why."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["f8"], name="to_f8", to=TensorProto.FLOAT8E4M3FN),
        helper.make_node("Cast", ["f8"], ["y"], name="back", to=TensorProto.FLOAT),
        helper.make_node("Equal", ["s", "t"], ["eq"], name="strings"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("s", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("t", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("eq", TensorProto.BOOL, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    session = hetrix.InferenceSession(model.SerializeToString(), providers=[TORCH])
    where = {p.node: p for p in session.get_placement()}
    assert where["relu"].backend == TORCH
    for name in ("to_f8", "back", "strings"):
        assert where[name].backend == "numpy:cpu"
        assert "torch:cpu cannot run" in where[name].reason
    x = np.array([-1.0, 0.5, 2.0, 448.0], F32)
    y, eq = session.run(None, {"x": x, "s": np.array(["a", "b"], object),
                               "t": np.array(["a", "c"], object)})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(eq, [True, False])


def test_shape_kernels_read_any_memory() -> None:
    """Shape/Size placed on torch read a host array's shape without copying it."""
    import onnx_ir as ir

    backend = TorchBackend("cpu")
    for op, want in (("Shape", [2, 3]), ("Size", 6)):
        node = ir.Node("", op, [ir.Value(name="x")])
        kernel = backend.kernel_for(node, 21)
        ctx = hetrix.backends.registry.NodeContext(op, "", "n", 21, {"start": 0}, 1, 1)
        result = kernel(ctx, np.zeros((2, 3), F32))
        assert isinstance(result, torch.Tensor) and result.tolist() == want


def test_backend_explains_why_it_refuses() -> None:
    import onnx_ir as ir

    node = ir.Node("", "Cast", [ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))],
                   attributes=[ir.AttrInt64("to", TensorProto.FLOAT8E5M2)])
    backend = TorchBackend("cpu")
    assert backend.kernel_for(node, 21) is None
    assert "FLOAT8E5M2" in backend.last_rejection
    resize = ir.Node("", "Resize", [ir.Value(name="x")],
                     attributes=[ir.AttrString("coordinate_transformation_mode",
                                               "tf_crop_and_resize")])
    assert backend.kernel_for(resize, 19) is None
    assert "tf_crop_and_resize" in backend.last_rejection


# -- light models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_light_model_matches_numpy_backend(name: str) -> None:
    feeds, expected = light_model_case(name)
    from hetrix.testing.models import light_model_paths

    path = light_model_paths()[name]
    on_torch = hetrix.InferenceSession(path, providers=[TORCH])
    got = on_torch.run(None, feeds)
    want = hetrix.InferenceSession(path, providers=["numpy:cpu"]).run(None, feeds)
    for g, w, e in zip(got, want, expected):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-7)
    heavy = [p for p in on_torch.get_placement() if p.op_type in ("Conv", "MaxPool", "Relu")]
    assert heavy and all(p.backend == TORCH for p in heavy)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_light_model_with_random_weights_matches_numpy_backend(name: str) -> None:
    model, feeds = light_model_randomized(name)
    data = model.SerializeToString()
    got = hetrix.InferenceSession(data, providers=[TORCH]).run(None, feeds)
    want = hetrix.InferenceSession(data, providers=["numpy:cpu"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


# -- memory boundary ------------------------------------------------------------------------------


def test_host_round_trip_keeps_dtype_and_values() -> None:
    import ml_dtypes

    backend = TorchBackend("cpu")
    for array in (np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]),
                  np.arange(4, dtype=np.float16),
                  np.arange(3, dtype=F32).astype(ml_dtypes.bfloat16),
                  np.arange(8, dtype=F32)[::-2], np.float64(2.5)):
        tensor = backend.from_host(array)
        assert isinstance(tensor, torch.Tensor)
        back = backend.to_host(tensor)
        assert back.dtype == np.asarray(array).dtype
        np.testing.assert_array_equal(back, array)


def test_read_only_arrays_are_copied_and_sequences_map_elementwise() -> None:
    backend = TorchBackend("cpu")
    weights = np.ones(3, F32)
    weights.setflags(write=False)
    tensor = backend.from_host(weights)
    tensor += 1  # must not reach the read-only weights
    assert weights[0] == 1.0
    values = backend.from_host([np.zeros(2, F32), None])
    assert isinstance(values, list) and values[1] is None
    assert backend.to_host(values)[0].dtype == F32
    other = TorchBackend("cpu")
    moved = other.copy_from(values, backend)
    assert isinstance(moved[0], torch.Tensor) and moved[1] is None


def test_strings_cannot_enter_torch_memory() -> None:
    with pytest.raises(TypeError, match="torch cannot hold"):
        TorchBackend("cpu").from_host(np.array(["a"], object))


# -- providers ------------------------------------------------------------------------------------


def test_available_providers_lists_torch_cpu_and_numpy_last() -> None:
    names = hetrix.get_available_providers() if hasattr(hetrix, "get_available_providers") \
        else providers.available_providers()
    assert "torch:cpu" in names and names[-1] == "numpy:cpu"


@pytest.mark.parametrize("spec, name", [
    ("torch:cpu", "torch:cpu"), ("torch", "torch:cpu"), ("cuda", "torch:cuda:0"),
    ("cuda:1", "torch:cuda:1"), ("torch:cuda:0", "torch:cuda:0"), ("mps", "torch:mps"),
    ("xpu", "torch:xpu:0"), ("npu", "torch:npu:0"), ("CPUExecutionProvider", "numpy:cpu"),
    ("CUDAExecutionProvider", "torch:cuda:0"), (("CUDAExecutionProvider", {"device_id": 1}),
                                                "torch:cuda:1"),
    ("ROCMExecutionProvider", "torch:cuda:0"),
])
def test_provider_names(spec: Any, name: str) -> None:
    assert providers.canonical_name(spec)[0] == name


def test_numpy_cpu_is_appended_as_the_last_fallback() -> None:
    names = [b.name for b in providers.make_backends([TORCH])]
    assert names == [TORCH, "numpy:cpu"]


def test_unavailable_device_names_the_devices_that_exist(monkeypatch) -> None:
    monkeypatch.setattr(providers, "_torch_devices", lambda: ["torch:cpu"])
    with pytest.raises(InvalidArgumentError, match="available: torch:cpu, numpy:cpu"):
        providers.make_backends(["cuda:0"])


def test_numpy_only_install_still_works(monkeypatch) -> None:
    monkeypatch.setattr(providers, "torch_installed", lambda: False)
    assert providers.available_providers() == ["numpy:cpu"]
    assert [b.name for b in providers.make_backends(None)] == ["numpy:cpu"]
    with pytest.raises(InvalidArgumentError, match="needs PyTorch"):
        providers.make_backends(["torch:cpu"])


def test_importing_hetrix_does_not_import_torch() -> None:
    code = ("import sys, numpy as np, hetrix; from onnx import helper, TensorProto as T\n"
            "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',"
            " [helper.make_tensor_value_info('x', T.FLOAT, [2])],"
            " [helper.make_tensor_value_info('y', T.FLOAT, [2])])\n"
            "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
            "hetrix.InferenceSession(m.SerializeToString()).run(None, {'x': np.ones(2, 'f')})\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for case in CASES:
        got, session = _run(case, "cuda")
        want, _ = _run(case, TORCH)
        for g, w in zip(got, want):
            _close(g, w, max(case.tol, 1e-3))  # cuDNN may use TF32 convolutions
