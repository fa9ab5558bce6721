"""The ONNX Runtime-compatible API: metadata, feed checks, outputs, providers, debugging."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import hetrix
from hetrix.errors import InvalidArgumentError, InvalidInputError


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    """y = relu(x @ w) with a symbolic batch dim; z = sum over the last axis."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.linspace(-1, 1, 12).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
            helper.make_node("Relu", ["xw"], ["y"], name="relu"),
            helper.make_node("ReduceSum", ["y", "axes"], ["z"], name="sum", keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch"]),
        ],
        [w, helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18)],
        producer_name="hetrix-tests",
        ir_version=9,
    )
    m.model_version = 7
    helper.set_model_props(m, {"purpose": "unit test"})
    return m


@pytest.fixture(scope="module")
def session(model: onnx.ModelProto) -> hetrix.InferenceSession:
    # Level 0 keeps the graph as written, so the structural checks below see its three nodes;
    # test_optimized_session_gives_the_same_outputs covers the default level.
    return hetrix.InferenceSession(
        model.SerializeToString(),
        hetrix.SessionOptions(graph_optimization_level=0),
        providers=["CPUExecutionProvider"],
    )


def test_inputs_and_outputs_match_onnxruntime(model, session) -> None:
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for ours, theirs in (
        (session.get_inputs(), reference.get_inputs()),
        (session.get_outputs(), reference.get_outputs()),
    ):
        assert [(a.name, a.type, a.shape) for a in ours] == [
            (b.name, b.type, b.shape) for b in theirs
        ]


def test_run_matches_onnxruntime(model, session) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for ours, theirs in zip(session.run(None, {"x": x}), reference.run(None, {"x": x})):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_output_selection_and_order(session) -> None:
    x = np.ones((2, 4), np.float32)
    z, y = session.run(["z", "y"], {"x": x})
    assert z.shape == (2,) and y.shape == (2, 3)
    np.testing.assert_allclose(z, y.sum(axis=1), rtol=1e-6)


def test_unknown_output_name(session) -> None:
    with pytest.raises(InvalidArgumentError, match="'nope' is not an output"):
        session.run(["nope"], {"x": np.ones((1, 4), np.float32)})


def test_metadata_and_providers(session) -> None:
    meta = session.get_modelmeta()
    assert meta.producer_name == "hetrix-tests"
    assert meta.version == 7
    assert meta.custom_metadata_map == {"purpose": "unit test"}
    meta.custom_metadata_map["purpose"] = "changed by the caller"
    assert session.get_modelmeta().custom_metadata_map == {"purpose": "unit test"}
    assert session.model_proto.producer_name == "hetrix-tests"
    assert session.get_providers() == ["numpy:cpu"]
    assert "numpy:cpu" in hetrix.get_available_providers()


@pytest.mark.parametrize(
    ("feed", "pattern"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.ones((1, 4), np.float32), "extra": np.ones(1)}, "'extra' is not an input"),
        ({"x": np.ones((1, 4), np.float64)}, "input 'x' has dtype float64, expected float32"),
        ({"x": np.ones((4,), np.float32)}, "input 'x' has rank 1"),
        ({"x": np.ones((1, 5), np.float32)}, "dimension 1 must be 4"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, "input 'x' must be a numpy.ndarray"),
    ],
)
def test_bad_feeds_name_the_input_and_expectation(session, feed, pattern) -> None:
    with pytest.raises(InvalidInputError, match=pattern):
        session.run(None, feed)


def test_feed_must_be_a_mapping(session) -> None:
    with pytest.raises(InvalidInputError, match="input_feed must be a dict"):
        session.run(None, [np.ones((1, 4), np.float32)])  # type: ignore[arg-type]


def test_unknown_provider_is_rejected(model) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown provider 'TPUMagicProvider'"):
        hetrix.InferenceSession(model, providers=["TPUMagicProvider"])


def test_provider_with_options_pair(model) -> None:
    session = hetrix.InferenceSession(model, providers=[("CPUExecutionProvider", {})])
    assert session.get_providers() == ["numpy:cpu"]


def test_run_with_intermediates_returns_every_value(session) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
    values = session.run_with_intermediates({"x": x})
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(values["xw"], x @ w, rtol=1e-6)
    np.testing.assert_allclose(values["y"], np.maximum(x @ w, 0), rtol=1e-6)
    assert set(values) >= {"xw", "y", "z"}


def test_placement_lists_every_node(session) -> None:
    placement = session.get_placement()
    assert [(p.node, p.op_type, p.backend) for p in placement] == [
        ("matmul", "MatMul", "numpy:cpu"),
        ("relu", "Relu", "numpy:cpu"),
        ("sum", "ReduceSum", "numpy:cpu"),
    ]
    assert all(p.reason == "" for p in placement)


def test_intermediates_are_freed_after_last_reader(session) -> None:
    """The plan drops 'xw' right after Relu, its only reader; outputs are never freed."""
    plan = session._plan
    names = plan.slot_names
    freed_by = {names[s]: step.ctx.name for step in plan.steps for s in step.frees}
    assert freed_by.get("xw") == "relu"
    assert "y" not in freed_by and "z" not in freed_by


def test_overridable_initializer_can_be_fed() -> None:
    """Old-style models list weights as inputs too: feeding them overrides the stored value."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("b", TensorProto.FLOAT, [2], [10.0, 20.0])],
    )
    session = hetrix.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    )
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [i.name for i in session.get_overridable_initializers()] == ["b"]
    x = np.ones(2, np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], [11.0, 21.0])
    b = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x, "b": b})[0], [2.0, 3.0])


def test_kernel_failure_names_the_node() -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    session = hetrix.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    )
    with pytest.raises(hetrix.ExecutionError, match="bad_reshape.*Reshape"):
        session.run(None, {"x": np.ones(6, np.float32), "s": np.array([4, 4], np.int64)})


def test_torch_tensor_feeds_are_accepted_and_checked(session) -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    ours = session.run(None, {"x": torch.from_numpy(x)})
    expected = session.run(None, {"x": x})
    for a, b in zip(ours, expected):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidInputError, match="dtype torch.float64, expected float32"):
        session.run(None, {"x": torch.zeros((2, 4), dtype=torch.float64)})
    with pytest.raises(InvalidInputError, match="dimension 1 must be 4"):
        session.run(None, {"x": torch.zeros((2, 5))})


def test_profiling_records_every_node(model, tmp_path) -> None:
    options = hetrix.SessionOptions(enable_profiling=True, graph_optimization_level=0,
                                    profile_file_prefix=str(tmp_path / "trace"))
    profiled = hetrix.InferenceSession(model, options)
    for _ in range(2):
        profiled.run(None, {"x": np.ones((3, 4), np.float32)})
    summary = {op: calls for op, _backend, calls, _seconds in profiled.profile_summary()}
    assert summary == {"MatMul": 2, "Relu": 2, "ReduceSum": 2}
    import json

    events = json.loads(open(profiled.end_profiling()).read())
    assert [e["args"]["op_type"] for e in events] == ["MatMul", "Relu", "ReduceSum"] * 2
    assert all(e["dur"] >= 0 for e in events)


def test_optimized_session_gives_the_same_outputs(model, session) -> None:
    optimized = hetrix.InferenceSession(model)  # default level: all passes
    report = optimized.get_optimization_report()
    assert report.nodes_after <= report.nodes_before
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    for a, b in zip(optimized.run(None, {"x": x}), session.run(None, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_cpu_arena_option_configures_the_allocator_once() -> None:
    import platform

    from hetrix.runtime.memory import retain_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the retaining allocator is configured on glibc only")
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # idempotent


# -- the warm-up run at load ---------------------------------------------------------------------


def _counted_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record one entry per walk of a plan (a run of the model), with its step count."""
    from hetrix.runtime import executor

    walks: list[int] = []
    walk = executor._walk_lean

    def counted(plan, slots):
        walks.append(len(plan.steps))
        return walk(plan, slots)

    monkeypatch.setattr(executor, "_walk_lean", counted)
    return walks


def _relu_model(shape: list) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_model_of_fixed_shapes_runs_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    walks = _counted_walks(monkeypatch)
    session = hetrix.InferenceSession(_relu_model([2, 3]))
    assert walks == [1]  # set-up done in the constructor
    x = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert walks == [1, 1]


@pytest.mark.parametrize("options", [hetrix.SessionOptions(warm_up=False), None],
                         ids=["turned off", "symbolic dims"])
def test_no_run_at_load_when_off_or_shapes_are_symbolic(monkeypatch: pytest.MonkeyPatch,
                                                        options) -> None:
    walks = _counted_walks(monkeypatch)
    shape = [2, 3] if options is not None else ["batch", 3]
    hetrix.InferenceSession(_relu_model(shape), options)
    assert walks == []


def test_a_model_that_fails_on_zeros_still_loads_and_runs(caplog: pytest.LogCaptureFixture) -> None:
    """Reshape with allowzero=1 to a shape fed at run time: zeros ask for an empty tensor, which
    the data cannot become; the load goes on and the real run uses the real shape."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with caplog.at_level("INFO", logger="hetrix.runtime.session"):
        session = hetrix.InferenceSession(model.SerializeToString())
    assert "warm-up run on zeros failed" in caplog.text
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = session.run(None, {"x": x, "shape": np.array([3, 2], np.int64)})
    np.testing.assert_array_equal(y, x.reshape(3, 2))


_ENDLESS_ON_ZEROS = """
import numpy as np, hetrix
from onnx import TensorProto as T, helper as h
# while (s < 10) s += step: with step fed as 0 (a warm-up's zeros) the loop never ends
body = h.make_graph(
    [h.make_node("Add", ["s_in", "step"], ["s_out"]),
     h.make_node("Less", ["s_out", "ten"], ["cond_out"])], "body",
    [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
     h.make_tensor_value_info("s_in", T.FLOAT, [1])],
    [h.make_tensor_value_info("cond_out", T.BOOL, []),
     h.make_tensor_value_info("s_out", T.FLOAT, [1])],
    [h.make_tensor("ten", T.FLOAT, [1], [10.0])])
graph = h.make_graph(
    [h.make_node("Loop", ["", "go", "start"], ["s"], body=body)], "g",
    [h.make_tensor_value_info("step", T.FLOAT, [1]),
     h.make_tensor_value_info("start", T.FLOAT, [1])],
    [h.make_tensor_value_info("s", T.FLOAT, [1])], [h.make_tensor("go", T.BOOL, [], [True])])
model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
session = hetrix.InferenceSession(model.SerializeToString())
feeds = {"step": np.array([3.0], np.float32), "start": np.array([0.0], np.float32)}
(s,) = session.run(None, feeds)
print(float(s[0]))
"""


def test_control_flow_is_not_run_at_load() -> None:
    """A Loop whose condition comes from the inputs may never end on zeros: the load must not
    run it (in a child process, so that a regression fails on the timeout instead of hanging)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _ENDLESS_ON_ZEROS], capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.split()[-1] == "12.0"  # 3, 6, 9, 12


def test_large_buffers_are_recycled_only_when_free() -> None:
    """``recycled_empty`` hands the last large array back once nothing else holds it, and a new
    one while a caller still does (a view, a kept output); small arrays are always new."""
    from hetrix.runtime.memory import RECYCLE_MIN_BYTES, recycled_empty

    spare: list[np.ndarray] = []
    small = recycled_empty(spare, (4, 4), np.dtype(np.float32))
    assert not spare and small.shape == (4, 4)
    shape = (RECYCLE_MIN_BYTES // 4 + 1024,)
    first = recycled_empty(spare, shape, np.dtype(np.float32))
    view = first[::2]  # a consumer still reading the first output
    second = recycled_empty(spare, shape, np.dtype(np.float32))
    assert second is not first and not np.shares_memory(second, view)
    address = second.ctypes.data
    del first, view, second
    third = recycled_empty(spare, shape, np.dtype(np.float32))
    assert third.ctypes.data == address  # the free one, handed back
    other = recycled_empty(spare, (RECYCLE_MIN_BYTES // 2 + 1024,), np.dtype(np.float64))
    assert other.dtype == np.float64 and not np.shares_memory(other, third)
