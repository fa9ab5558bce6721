"""Writing a result into a dead input's memory: a residual convolution adds its result into its
residual (``NodeContext.reusable_inputs``, ``runtime.memory.sole_view``).

What must hold: the plan allows it only for a value the run computed that nothing reads
afterwards, directly or through an array that may share its memory (a Reshape's view, an
Identity), never for a graph input or output; where it is allowed the oneDNN path does it (a
count, so that the test fails if it quietly stops); the results are the model's (ONNX Runtime
with its optimizations off) on every run, from two threads at once, and when the caller asks
for the intermediates, which must then be the values the model computed, not overwritten.
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
from hetrix.runtime.memory import intermediates_held, sole_view
from hetrix.runtime.plan import Plan

CHANNELS = 8
SIZE = 12


def make_model(extra: str = "") -> onnx.ModelProto:
    """x -> Conv -> a -> Conv -> c, Conv(c) + a -> Relu -> y: after the graph passes the last
    convolution is a FusedConv whose residual ``a`` nothing reads afterwards.  ``extra`` adds a
    reader that keeps ``a`` alive: "output" (``a`` is a graph output too), "later" (a Conv of
    ``a`` after the sum), "view" (a Reshape of ``a`` before the sum, read after it),
    "input" (the residual is the graph input itself), "twice" (the residual is the last
    convolution's input too)."""
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.2 for i in range(3)}
    weights.update({f"b{i}": rng.standard_normal(CHANNELS) for i in range(3)})
    residual = "x" if extra == "input" else "a"
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a" if extra == "twice" else "c", "w2", "b2"], ["d"],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["d", residual], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    value = [CHANNELS, CHANNELS, SIZE, SIZE]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, value)]
    if extra == "output":
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, value))
    if extra == "later":  # a convolution: its output shares no memory with ``a``
        nodes.append(helper.make_node("Conv", ["a", "w2", "b2"], ["later"], pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("later", TensorProto.FLOAT, value))
    if extra == "view":
        weights["flat"] = np.array([CHANNELS, -1])
        nodes.insert(1, helper.make_node("Reshape", ["a", "flat"], ["viewed"]))
        nodes.append(helper.make_node("Relu", ["viewed"], ["later"]))
        outputs.append(helper.make_tensor_value_info("later", TensorProto.FLOAT,
                                                     [CHANNELS, CHANNELS * SIZE * SIZE]))
    initializers = [numpy_helper.from_array(v.astype(np.int64 if k == "flat" else np.float32), k)
                    for k, v in weights.items()]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, value)],
        outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((CHANNELS, CHANNELS, SIZE, SIZE))
    return {"x": x.astype(np.float32)}


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def residual_step_reuses(plan: Plan) -> bool:
    """Whether the plan lets its FusedConv with a residual overwrite that residual."""
    [step] = [s for s in plan.steps if s.ctx.op_type == "FusedConv" and s.ctx.num_inputs == 4]
    return 3 in step.ctx.reusable_inputs


def accumulating_convs(session: hetrix.InferenceSession) -> int:
    return sum(1 for step in session._plan.steps
               for conv in step.ctx.cache.get("dnnl_convs", {}).values() if conv.accumulates)


def check_runs(model: onnx.ModelProto, session: hetrix.InferenceSession) -> None:
    for seed in range(4):  # the first run calls the kernels, the later ones the direct calls
        inputs = feeds(seed)
        for ours, theirs in zip(session.run(None, inputs), ort_run(model, inputs), strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_residual_nothing_reads_afterwards_may_be_overwritten() -> None:
    model = make_model()
    session = hetrix.InferenceSession(model.SerializeToString())
    assert residual_step_reuses(session._plan)
    check_runs(model, session)


@pytest.mark.parametrize("extra", ["output", "later", "view", "input", "twice"])
def test_a_residual_read_afterwards_or_not_computed_by_the_run_is_kept(extra: str) -> None:
    model = make_model(extra)
    session = hetrix.InferenceSession(model.SerializeToString())
    assert not residual_step_reuses(session._plan)
    check_runs(model, session)
    if extra == "input":  # the caller's array is never written
        inputs = feeds(7)
        before = inputs["x"].copy()
        session.run(None, inputs)
        np.testing.assert_array_equal(inputs["x"], before)


@pytest.mark.skipif(not _dnnl.available(), reason="the onednn extra is not installed")
def test_the_kept_primitive_adds_into_the_residual_in_place() -> None:
    model = make_model()
    session = hetrix.InferenceSession(model.SerializeToString())
    check_runs(model, session)
    assert accumulating_convs(session) == 1
    switched = [lean[0] for lean in session._plan.lean_steps]
    assert any(getattr(call, "__name__", "") == "call_accumulating" for call in switched)


@pytest.mark.skipif(not _dnnl.available(), reason="the onednn extra is not installed")
def test_runs_from_two_threads_keep_their_own_residuals() -> None:
    model = make_model()
    session = hetrix.InferenceSession(model.SerializeToString())
    expected = {seed: ort_run(model, feeds(seed))[0] for seed in range(2)}
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(20):
                np.testing.assert_allclose(session.run(None, feeds(seed))[0], expected[seed],
                                           rtol=1e-4, atol=1e-4)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]


def test_intermediates_asked_for_are_not_overwritten() -> None:
    """``run_with_intermediates`` hands out the residual: it must hold the first convolution's
    output, as a model that returns it computes."""
    session = hetrix.InferenceSession(make_model().SerializeToString())
    session.run(None, feeds())  # the plan's direct calls are bound by now
    recorded = session.run_with_intermediates(feeds(3))
    [a] = ort_run(make_model("output"), feeds(3))[1:]
    np.testing.assert_allclose(recorded["a"], a, rtol=1e-4, atol=1e-4)


def test_only_the_sole_view_of_a_buffer_is_writable() -> None:
    owner = np.zeros((2, 3), np.float32)
    view = owner.T
    assert not sole_view(view)  # the owner is still referenced here
    del owner
    assert sole_view(view)
    other = view.base.T
    assert not sole_view(view)  # a second view
    del other
    assert sole_view(view)
    with intermediates_held():
        assert not sole_view(view)
    assert not sole_view(np.zeros(3))  # an array that owns its memory: who views it is unknown
    view.setflags(write=False)
    assert not sole_view(view)
