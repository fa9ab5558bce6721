"""Direct calls: once a plan has run, a step whose kernel keeps a oneDNN primitive calls that
primitive without the kernel's own layers (``NodeContext.direct``, ``plan.bind_direct_calls``).

What must hold, checked against ONNX Runtime (graph optimizations off): the switch happens (a
count of the switched steps, so that the test fails if it quietly stops); results stay the
model's on later runs, at another batch size and from another thread (the direct call hands
what it was not made for to the kernel); and a weight the caller may feed is never fixed into
a direct call.  Skipped where the ``onednn`` extra is not installed.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _dnnl
from hetrix.errors import ExecutionError
from hetrix.runtime.plan import Plan

pytestmark = pytest.mark.skipif(not _dnnl.available(), reason="the onednn extra is not installed")

CHANNELS = 8


def make_model(batch: int | str = 1, feedable_weight: bool = False) -> onnx.ModelProto:
    """Conv+Relu -> MaxPool -> Conv, + the pooled input, Relu -> GlobalAveragePool: after the
    graph passes a FusedConvPool (the first layer and its pooling), a FusedConv with its
    residual and a global pool."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((CHANNELS, 3, 3, 3)) * 0.3,
        "b1": rng.standard_normal(CHANNELS),
        "w2": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.2,
        "b2": rng.standard_normal(CHANNELS),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])]
    if feedable_weight:  # an initializer that is also a graph input: a feed may replace it
        inputs.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT,
                                                    [CHANNELS, CHANNELS, 3, 3]))
    graph = helper.make_graph(
        nodes, "direct_calls", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, CHANNELS, 1, 1])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def plans(session: hetrix.InferenceSession) -> list[Plan]:
    specializer = session._specializer
    return [session._plan, *(specializer._plans.values() if specializer else [])]


def switched(plan: Plan) -> list[str]:
    """The op types of the plan's steps that run their direct call."""
    return [lean[-1].ctx.op_type for lean in plan.lean_steps
            if lean[-1].ctx.direct is not None and lean[0] is lean[-1].ctx.direct.call]


def blocked_first_layers(plan: Plan) -> int:
    """The first layers that read the NCHW input as it is and hand the pooling oneDNN's blocked
    layout (``_dnnl.ConvPool``): where oneDNN has kernels for it, the FusedConvPool, which then
    takes a direct call too; elsewhere its convolution reads an NHWC copy and it does not."""
    return sum(1 for step in plan.steps if "dnnl_conv_pool" in step.ctx.cache)


def feeds_for(batch: int, seed: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)
    return {"x": x}


def test_steps_switch_after_the_first_run_and_keep_the_results() -> None:
    model = make_model()
    options = hetrix.SessionOptions()
    options.warm_up = False
    session = hetrix.InferenceSession(model.SerializeToString(), options)
    assert switched(session._plan) == []
    session.run(None, feeds_for(1, 0))
    assert blocked_first_layers(session._plan) in (0, 1)
    assert sorted(switched(session._plan)) == (
        ["FusedConv"] + ["FusedConvPool"] * blocked_first_layers(session._plan)
        + ["GlobalAveragePool"])
    for seed in range(1, 4):
        feeds = feeds_for(1, seed)
        np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                                   rtol=1e-4, atol=1e-5)


def test_other_batch_sizes_and_threads_reach_the_kernels() -> None:
    model = make_model(batch="N")
    session = hetrix.InferenceSession(model.SerializeToString())
    for _ in range(4):  # generic plan, then the batch-1 plan the specializer makes
        session.run(None, feeds_for(1, 0))
    assert all(len(switched(plan)) >= 3 for plan in plans(session) if plan.direct_calls_bound)
    for batch in (3, 1, 2):
        feeds = feeds_for(batch, batch)
        np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                                   rtol=1e-4, atol=1e-5)
    results: dict[int, np.ndarray] = {}

    def run(batch: int) -> None:
        results[batch] = session.run(None, feeds_for(batch, 10 + batch))[0]

    threads = [threading.Thread(target=run, args=(batch,)) for batch in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for batch, result in results.items():
        np.testing.assert_allclose(result, ort_run(model, feeds_for(batch, 10 + batch)),
                                   rtol=1e-4, atol=1e-5)


def test_a_weight_the_caller_may_feed_is_not_fixed() -> None:
    model = make_model(feedable_weight=True)
    session = hetrix.InferenceSession(model.SerializeToString())
    feeds = feeds_for(1, 0)
    session.run(None, feeds)
    session.run(None, feeds)
    # the second conv's weight is a graph input: only the first layer may switch
    assert "FusedConv" not in switched(session._plan)
    assert switched(session._plan).count("FusedConvPool") == \
        blocked_first_layers(session._plan)
    assert "GlobalAveragePool" in switched(session._plan)
    other = (np.random.default_rng(5).standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.2
             ).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {**feeds, "w2": other})[0],
                               ort_run(model, {**feeds, "w2": other}), rtol=1e-4, atol=1e-5)


def test_reduced_precision_convolutions_switch_too() -> None:
    pytest.importorskip("torch")
    from hetrix.errors import HetrixError

    model = make_model()
    options = hetrix.SessionOptions(precision="bf16")
    options.warm_up = False
    try:
        session = hetrix.InferenceSession(model.SerializeToString(), options)
    except HetrixError as exc:  # a CPU without bfloat16 convolutions
        pytest.skip(str(exc))
    session.run(None, feeds_for(1, 0))
    assert "FusedConv" in switched(session._plan)
    for seed in (1, 2):
        feeds = feeds_for(1, seed)
        expected = ort_run(model, feeds)
        np.testing.assert_allclose(session.run(None, feeds)[0].astype(np.float32), expected,
                                   rtol=0.05, atol=0.05 * np.abs(expected).max())


def test_profiled_runs_time_the_direct_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile times what a run makes: the switched steps' direct calls, not their kernels
    (only a first layer whose convolution reads an NHWC copy of the NCHW input goes through
    the general oneDNN path)."""
    from hetrix.backends.numpy_cpu.kernels import _onednn

    model = make_model()
    options = hetrix.SessionOptions(enable_profiling=True)
    options.warm_up = False
    session = hetrix.InferenceSession(model.SerializeToString(), options)
    session.run(None, feeds_for(1, 0))
    blocked = blocked_first_layers(session._plan)
    assert sorted(switched(session._plan)) == (
        ["FusedConv"] + ["FusedConvPool"] * blocked + ["GlobalAveragePool"])
    general_calls = []
    conv2d = _onednn.conv2d

    def counted(*args: object, **kwargs: object) -> object:
        general_calls.append(1)
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(_onednn, "conv2d", counted)
    session._timings.clear()
    feeds = feeds_for(1, 1)
    np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                               rtol=1e-4, atol=1e-5)
    assert len(general_calls) == 1 - blocked
    assert {row["op_type"] for row in session.profile_nodes()} == {
        "FusedConvPool", "FusedConv", "GlobalAveragePool"}


def test_slices_with_constant_bounds_switch_and_follow_the_input_size() -> None:
    """Slice's direct call indexes with the bounds the kernel resolved once: negative starts,
    ends past the end and steps must give ORT's answer at every input size."""
    consts = {"starts": [-3, 1], "ends": [100, -1], "axes": [1, 2], "steps": [1, 2]}
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"]),
             helper.make_node("Slice", ["s", "starts", "ends", "axes", "steps"], ["y"])]
    graph = helper.make_graph(
        nodes, "slices", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = hetrix.SessionOptions(enable_shape_specialization=False)
    session = hetrix.InferenceSession(model.SerializeToString(), options)
    rng = np.random.default_rng(3)
    for shape in [(2, 9, 11), (2, 9, 11), (1, 4, 30), (3, 2, 5)]:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        np.testing.assert_array_equal(session.run(None, feeds)[0], ort_run(model, feeds))
    assert switched(session._plan) == ["Slice", "Slice"]


def test_concats_of_vectors_switch_and_report_bad_inputs_by_name() -> None:
    nodes = [helper.make_node("Concat", ["a", "b", "c"], ["y"], axis=0)]
    graph = helper.make_graph(
        nodes, "concat", [helper.make_tensor_value_info(n, TensorProto.INT64, None)
                          for n in "abc"],  # no declared shapes: the kernel checks them
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = hetrix.SessionOptions(enable_shape_specialization=False)
    session = hetrix.InferenceSession(model.SerializeToString(), options)
    for p, q in [(3, 1), (3, 1), (0, 5), (7, 2)]:
        feeds = {"a": np.arange(p), "b": np.arange(q) * 10, "c": np.array([-1, -2])}
        np.testing.assert_array_equal(session.run(None, feeds)[0], ort_run(model, feeds))
    assert switched(session._plan) == ["Concat"]
    with pytest.raises(ExecutionError, match=r"b: int64\[2, 2\].*differ in type or rank"):
        # the kernel's message, reached through the direct call's fallback
        session.run(None, {"a": np.arange(2), "b": np.ones((2, 2), np.int64),
                           "c": np.array([-1, -2])})


def test_arithmetic_ops_switch_and_broadcast_as_the_kernel_does() -> None:
    nodes = [helper.make_node("Add", ["x", "c"], ["s"]), helper.make_node("Mul", ["s", "x"], ["m"]),
             helper.make_node("Sub", ["c", "m"], ["d"]), helper.make_node("Div", ["d", "c"], ["y"])]
    for dtype, onnx_type in ((np.float32, TensorProto.FLOAT), (np.int64, TensorProto.INT64)):
        graph = helper.make_graph(
            nodes, "arithmetic", [helper.make_tensor_value_info("x", onnx_type, None)],
            [helper.make_tensor_value_info("y", onnx_type, None)],
            [numpy_helper.from_array(np.array([3, -2, 5], dtype), "c")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8)
        options = hetrix.SessionOptions(enable_shape_specialization=False)
        session = hetrix.InferenceSession(model.SerializeToString(), options)
        rng = np.random.default_rng(4)
        for shape in [(2, 3), (2, 3), (3,), (4, 1, 3), ()]:
            feeds = {"x": np.asarray(rng.standard_normal(shape) * 10, dtype)}
            result = session.run(None, feeds)[0]
            expected = ort_run(model, feeds)
            assert result.dtype == expected.dtype and result.shape == expected.shape
            np.testing.assert_allclose(result, expected, rtol=1e-6)
        assert sorted(switched(session._plan)) == ["Add", "Div", "Mul", "Sub"]
        with pytest.raises(ExecutionError, match=r"x: .*\[2, 4\]"):  # through the fallback
            session.run(None, {"x": np.ones((2, 4), dtype)})


def test_channel_concats_switch_to_their_kept_primitive_and_chains_keep_appending() -> None:
    """A Concat of two convolutions' channels-last outputs runs its kept oneDNN concatenation
    directly after the first run; a Concat that extends that output (DenseNet's chain) runs
    its kernel's path, which appends into a buffer with room, as a direct call the plan joins
    with the kept primitives around it (``tests/test_joined_calls.py`` tests the replay).
    Results are ORT's on later runs and at other batch sizes (the direct call hands other
    layouts to the kernel)."""
    from hetrix.backends.numpy_cpu.kernels import tensor

    rng = np.random.default_rng(1)
    weights = {"wa": rng.standard_normal((8, 3, 3, 3)) * 0.3,
               "wb": rng.standard_normal((6, 3, 3, 3)) * 0.3,
               "wd": rng.standard_normal((4, 14, 3, 3)) * 0.2}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "wd"], ["d"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["c", "d"], ["e"], axis=1),  # extends c: a chain's link
        helper.make_node("Abs", ["e"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "channel_concats",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 18, 16, 16])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = hetrix.SessionOptions(enable_shape_specialization=False)
    session = hetrix.InferenceSession(model.SerializeToString(), options)
    appended = []
    append = tensor._appended

    def counted_append(inputs: tuple[np.ndarray, ...]) -> np.ndarray | None:
        result = append(inputs)
        appended.append((tensor._chained(inputs[0]), result is not None))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tensor, "_appended", counted_append)
        for batch in (1, 1, 1, 2, 1):
            feeds = {"x": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)}
            np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                                       rtol=1e-4, atol=1e-5)
    concats = [lean[-1].ctx for lean in session._plan.lean_steps
               if lean[-1].ctx.op_type == "Concat"]
    assert [type(ctx.direct.source) for ctx in concats] == [_dnnl.Concat, tensor._ChainLink]
    # the link appends whenever it runs one by one (the first Concat's output, direct or not,
    # starts a chain); replayed, it makes the same copies as reorders
    links = [made for chained, made in appended if chained]
    assert links and all(links)
    assert max(row["replayed_steps"] for row in session.get_joined_calls()) >= 4


@pytest.mark.parametrize(("op", "opset", "axis", "shape"), [
    ("Softmax", 11, 1, ["N", 10, 1, 1]),  # a classifier's, coerced to 2-D at axis 1
    ("Softmax", 13, -1, ["N", 3, 7]),
    ("LogSoftmax", 11, 2, ["N", 3, 4, 5]),
    ("LogSoftmax", 13, 1, ["N", 6, 2]),
])
def test_softmax_switches_and_follows_other_shapes(op: str, opset: int, axis: int,
                                                   shape: list) -> None:
    """Softmax's direct call is the node's kept oneDNN primitive for the shape it saw: ORT's
    results on later runs, at another batch size (the kernel serves it), and a NaN spreading
    over its whole row as in ONNX, and a +inf too (oneDNN's own answer would not: the call
    hands it back)."""
    pytest.importorskip("torch")
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], axis=axis)], "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    options = hetrix.SessionOptions(enable_shape_specialization=False)
    session = hetrix.InferenceSession(model.SerializeToString(), options)
    rng = np.random.default_rng(6)
    for run, batch in enumerate((1, 1, 1, 2, 1)):
        x = (rng.standard_normal([batch, *shape[1:]]) * 5).astype(np.float32)
        if run in (2, 4):  # after the first run, which switched the step
            x.reshape(-1)[3] = np.nan
        elif run == 3:  # the batch-2 primitive's first call (not a direct one): +inf
            x.reshape(-1)[-2] = np.inf
        feeds = {"x": x}
        np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                                   rtol=1e-4, atol=1e-5)
        if run == 2:  # (the batch-2 call makes the node a primitive of its own, which it
            # offers anew: the plan keeps the first one)
            (step,) = session._plan.steps
            innermost = (opset < 13 or axis in (-1, len(shape) - 1))
            # oneDNN's kernels serve the innermost axis; another one may only have its
            # reference kernel, which is refused, and the kernel's path serves the node
            assert switched(session._plan) == ([op] if innermost
                                               or "dnnl_softmax" in step.ctx.cache else [])
            assert innermost <= ("dnnl_softmax" in step.ctx.cache)


def test_batch_norm_with_relu_switches_to_its_kept_primitive() -> None:
    """A BatchNormalization + Relu the passes cannot fold into a convolution (it follows a
    Concat, as DenseNet's) runs on a kept oneDNN primitive, called directly after the first
    run; one whose statistics the caller may feed stays on its kernel.  ORT's results."""
    rng = np.random.default_rng(2)
    weights = {"wa": rng.standard_normal((8, 3, 3, 3)) * 0.3,
               "wb": rng.standard_normal((8, 3, 3, 3)) * 0.3,
               "scale": rng.standard_normal(16), "bias": rng.standard_normal(16),
               "mean": rng.standard_normal(16) * 0.1, "var": rng.random(16) + 0.5}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    for feedable in (False, True):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])]
        if feedable:  # an initializer that is also a graph input
            inputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [16]))
        graph = helper.make_graph(
            nodes, "batch_norm", inputs,
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
            [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)],
                                  ir_version=8)
        session = hetrix.InferenceSession(model.SerializeToString())
        for _ in range(3):
            feeds = {"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)}
            np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                                       rtol=1e-4, atol=1e-5)
        assert ("FusedBatchNormalization" in switched(session._plan)) == (not feedable)
        if feedable:
            mean = (rng.standard_normal(16)).astype(np.float32)
            feeds = {"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32), "mean": mean}
            np.testing.assert_allclose(session.run(None, feeds)[0], ort_run(model, feeds),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lrn_switches_to_its_kept_primitive(precision: str) -> None:
    """An LRN after a convolution (AlexNet's, Inception v1's) runs on a kept oneDNN primitive,
    called directly after the first run, in float32 and in bfloat16; ORT's float32 results
    (bfloat16 to its precision)."""
    if precision == "bf16":
        pytest.importorskip("torch")
    from hetrix.errors import HetrixError

    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("LRN", ["r"], ["y"], size=5, alpha=1e-3, beta=0.75, bias=1.0)]
    graph = helper.make_graph(
        nodes, "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
        [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 2).astype(np.float32),
                                 "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = hetrix.InferenceSession(model.SerializeToString(),
                                          hetrix.SessionOptions(precision=precision))
    except HetrixError as exc:  # a CPU without bfloat16 convolutions
        pytest.skip(str(exc))
    for _ in range(3):
        feeds = {"x": (rng.standard_normal((1, 3, 12, 12)) * 3).astype(np.float32)}
        expected = ort_run(model, feeds)
        got = session.run(None, feeds)[0].astype(np.float32)
        if precision == "fp32":
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(got, expected, rtol=0.05,
                                       atol=0.05 * np.abs(expected).max())
    assert "LRN" in switched(session._plan)
