"""Joined direct calls: consecutive steps whose direct calls run kept oneDNN primitives become
one replay of the primitives' executions on fixed buffers (``plan.join_direct_calls``,
``kernels/_dnnl_chain.py``).

What must hold: the replay is made on real models and serves their runs (counted, so that the
test fails if it quietly stops); its results equal the steps' own bit for bit and ONNX
Runtime's within float tolerance, on new inputs each run; calls it was not made for (another
thread, another input layout, an input it would write while something else holds it) run the
steps instead, with the same results; a step whose work the trace cannot see whole splits the
run around it; and a replay whose check fails is not used.  Skipped where the ``onednn`` extra
is not installed.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _dnnl, _dnnl_chain, tensor
from hetrix.runtime import plan as plan_module
from hetrix.runtime.plan import Plan

pytestmark = pytest.mark.skipif(not _dnnl.available(), reason="the onednn extra is not installed")

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
RUNS = 7  # the replay is traced on the fifth run at the latest (see bench.runner.memory_runs)


def plans(session: hetrix.InferenceSession) -> list[Plan]:
    specializer = session._specializer
    return [session._plan, *(specializer._plans.values() if specializer else [])]


def chains(session: hetrix.InferenceSession) -> Iterator[_dnnl_chain._Chain]:
    """The joined calls of the session's plans, and those a split made of them."""
    def walk(entries: list[tuple]) -> Iterator[_dnnl_chain._Chain]:
        for entry in entries:
            chain = getattr(entry[0], "__self__", None)
            if isinstance(chain, _dnnl_chain._Chain):
                yield chain
                yield from walk(list(chain.parts or ()))
    for plan in plans(session):
        yield from walk(plan.lean_run or [])


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the replayed runs (the check's run aside)."""
    count = [0]
    run = _dnnl_chain._Replay.run

    def counted(self: _dnnl_chain._Replay, values: tuple) -> tuple | None:
        result = run(self, values)
        count[0] += result is not None
        return result

    monkeypatch.setattr(_dnnl_chain._Replay, "run", counted)
    return count


def ort_session(model: str | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, precision, joined_at_least", [
    ("squeezenet", "fp32", 40),  # all: the first layer, convolutions, poolings, the Softmax
    ("shufflenet", "fp32", 70),  # with its channel shuffles and Concats
    ("inception_v1", "fp32", 80),  # Concats of four branches, LRN
    # bfloat16 (AMX where the CPU has it), residuals added in place, the first layer's
    # convolution and pooling (on the image's cast, a step of its own) joined as one step
    ("resnet50", "bf16", 54),
    ("densenet121", "fp32", 245),  # all: its Concat chain's links as reorders in the replay
    ("densenet121", "bf16", 245),  # all but the image's cast to bfloat16
])
def test_models_replay_equal_to_their_steps_and_to_ort(
        name: str, precision: str, joined_at_least: int, replays: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(LIGHT / f"light_{name}.onnx")
    options = hetrix.SessionOptions(precision=precision)
    # float32 agrees with ORT to rounding; bfloat16 to its 8-bit mantissa, relative to the
    # largest output (random inputs, so errors are not hidden)
    reduced = precision != "fp32"
    joined = hetrix.InferenceSession(path, options)
    with monkeypatch.context() as patched:  # this session runs its steps one by one
        patched.setattr(plan_module, "JOIN_MIN_STEPS", 10**9)
        steps = hetrix.InferenceSession(path, options)  # (its warm-up binds its direct calls)
    reference = ort_session(path)
    feed_name = joined.get_inputs()[0].name
    shape = joined.get_inputs()[0].shape
    rng = np.random.default_rng(0)
    for run in range(RUNS):
        x = rng.standard_normal(shape).astype(np.float32)
        got = joined.run(None, {feed_name: x})[0]
        with monkeypatch.context() as patched:
            patched.setattr(plan_module, "JOIN_MIN_STEPS", 10**9)
            want = steps.run(None, {feed_name: x})[0]
        np.testing.assert_array_equal(got, want, err_msg=f"run {run}")
        expected = reference.run(None, {feed_name: x})[0]
        np.testing.assert_allclose(
            got, expected, rtol=0.0 if reduced else 1e-4,
            atol=0.05 * float(np.abs(expected).max()) if reduced else 1e-5, err_msg=f"run {run}")
    made = [c for c in chains(joined) if c.replay is not None]
    assert sum(len(c.links) for c in made) >= joined_at_least
    assert max(row["replayed_steps"] for row in joined.get_joined_calls()) >= joined_at_least
    assert not any(c.replay is not None for c in chains(steps))
    assert all(row["joined_calls"] == 0 for row in steps.get_joined_calls())
    assert replays[0] >= 2  # the last runs were replays, not the steps


def residual_model() -> onnx.ModelProto:
    """``x -> Conv a``, ``Conv m(x) * 2 -> Conv b + (Conv a's output) -> Relu -> Conv c``:
    after the passes a convolution that adds into its residual's memory (Conv b's), joined
    with Conv c; the residual comes from before the joined run (the Mul between is NumPy's)."""
    rng = np.random.default_rng(1)
    channels = 8
    weights = {
        "wa": rng.standard_normal((channels, channels, 3, 3)) * 0.2,
        "wm": rng.standard_normal((channels, channels, 1, 1)) * 0.3,
        "wb": rng.standard_normal((channels, channels, 1, 1)) * 0.3,
        "wc": rng.standard_normal((channels, channels, 3, 3)) * 0.2,
        "two": np.array(2.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wm"], ["c"]),
        helper.make_node("Mul", ["c", "two"], ["m"]),
        helper.make_node("Conv", ["m", "wb"], ["b"]),
        helper.make_node("Add", ["b", "a"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Conv", ["r", "wc"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "joined_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 12, 12])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def warmed(model: onnx.ModelProto) -> tuple[hetrix.InferenceSession, ort.InferenceSession,
                                            np.random.Generator]:
    session = hetrix.InferenceSession(model.SerializeToString())
    reference = ort_session(model.SerializeToString())
    rng = np.random.default_rng(2)
    for _ in range(RUNS):
        x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0],
                                   reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
    return session, reference, rng


def test_a_residual_from_before_the_run_is_added_into_in_place(replays: list[int]) -> None:
    session, reference, rng = warmed(residual_model())
    [chain] = [c for c in chains(session) if c.replay is not None]
    assert chain.replay.written_inputs  # Conv b adds into Conv a's output, an input of the run
    before = replays[0]
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)
    assert replays[0] == before + 1


def test_a_residual_held_elsewhere_is_not_written(replays: list[int]) -> None:
    """Called with a residual another array views, the joined call runs the steps, whose
    convolution then writes a new array: the residual keeps its values."""
    session, _, rng = warmed(residual_model())
    [chain] = [c for c in chains(session) if c.replay is not None]
    [written] = chain.replay.written_inputs
    values = [rng.standard_normal(layout[0]).astype(np.float32) for layout in chain.replay.layouts]

    def laid_out(index: int) -> np.ndarray:
        shape, strides, _ = chain.replay.layouts[index]
        order = np.argsort(strides)[::-1]  # the memory order the replay was made for
        buffer = np.ascontiguousarray(values[index].transpose(order))
        view = buffer.transpose(np.argsort(order))
        assert view.strides == strides
        return view

    free = [laid_out(i) for i in range(len(values))]
    want = chain.call(*free)  # a replay: the residual is free to be written
    held = [laid_out(i) for i in range(len(values))]
    other_view = held[written].base[:]  # noqa: F841 - keeps a second view of the residual
    kept = held[written].copy()
    before = replays[0]
    got = chain.call(*held)
    assert replays[0] == before  # not replayed
    np.testing.assert_array_equal(held[written], kept)
    for mine, theirs in zip(got, want, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_another_thread_runs_the_steps(replays: list[int]) -> None:
    session, reference, rng = warmed(residual_model())
    before = replays[0]
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    got: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: got.append(session.run(None, {"x": x})[0]))
    thread.start()
    thread.join()
    np.testing.assert_allclose(got[0], reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert replays[0] == before  # not the replay's call
    session.run(None, {"x": x})
    assert replays[0] == before + 1


def warmed_squeezenet(seed: int) -> tuple[hetrix.InferenceSession, ort.InferenceSession,
                                          np.random.Generator]:
    """SqueezeNet after enough runs on random images for its replay to serve, ORT beside it."""
    path = str(LIGHT / "light_squeezenet.onnx")
    session = hetrix.InferenceSession(path)
    rng = np.random.default_rng(seed)
    for _ in range(RUNS):
        session.run(None, {"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)})
    return session, ort_session(path), rng


def test_another_input_layout_runs_the_steps(replays: list[int]) -> None:
    """SqueezeNet's joined run starts at the model's input: a channels-last image is not the
    layout its first primitive was made for."""
    session, reference, rng = warmed_squeezenet(4)
    before = replays[0]
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(session.run(None, {"data_0": channels_last})[0],
                               reference.run(None, {"data_0": x})[0], rtol=1e-4, atol=1e-6)
    assert replays[0] == before
    session.run(None, {"data_0": x})
    assert replays[0] == before + 1


@pytest.mark.parametrize("wrapping", ["copies its input", "is not its primitive's call"])
def test_a_step_the_trace_cannot_see_splits_the_run(wrapping: str) -> None:
    """A step whose work the trace cannot account for is left out, and the steps before it and
    after it are joined on their own: one that copies its input in NumPy first (its primitive
    then reads memory no execution accounts for), or one whose call is not the direct call of
    the primitives it runs (it might do more than run them)."""
    path = str(LIGHT / "light_squeezenet.onnx")
    session = hetrix.InferenceSession(path, hetrix.SessionOptions(warm_up=False))
    reference = ort_session(path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    session.run(None, {"data_0": x})
    [chain] = list(chains(session))  # joined, not traced yet
    assert chain.replay is None and not chain.traced
    middle = len(chain.links) // 2
    call, reads, writes, frees = chain.links[middle]

    def copying(value: np.ndarray) -> np.ndarray:
        copy = np.empty_like(value)  # the same layout: the direct call serves it
        np.copyto(copy, value)
        return call(copy)

    def wrapped(value: np.ndarray) -> np.ndarray:
        return call(value)

    if wrapping == "copies its input":
        copying.primitive = call.primitive  # type: ignore[attr-defined]
        replaced = copying
    else:
        replaced = wrapped
    chain.links = (*chain.links[:middle], (replaced, reads, writes, frees),
                   *chain.links[middle + 1:])
    for _ in range(5):
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"data_0": x})[0],
                                   reference.run(None, {"data_0": x})[0], rtol=1e-4, atol=1e-6)
    assert chain.replay is None and chain.parts is not None
    parts = [getattr(part[0], "__self__", None) for part in chain.parts]
    assert parts[1] is None  # the step, alone
    assert parts[0].replay is not None
    # after it the steps are joined again; there a convolution adds into its residual, an
    # input of that run, so the Softmax, which tests its result, is left out in turn
    assert chain.replayed_steps() == len(chain.links) - 2


def chain_model() -> onnx.ModelProto:
    """A DenseNet-like Concat chain: each layer normalizes the chain's value so far
    (BatchNormalization + Relu, on its channel prefix), convolves it to 8 channels, and a
    Concat appends those; with a branch: two Concats extend the same prefix ``c2``, so the
    second finds the chain's buffer moved on and copies into a new one."""
    rng = np.random.default_rng(4)
    weights: dict[str, np.ndarray] = {
        "w0": rng.standard_normal((16, 8, 3, 3)) * 0.2,
        "w1": rng.standard_normal((8, 16, 3, 3)) * 0.2,
    }
    nodes = [helper.make_node("Conv", ["x", "w0"], ["f0"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["f0", "w1"], ["g1"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["f0", "g1"], ["c1"], axis=1)]  # the chain's start

    def layer(source: str, channels: int, name: str, concat: str) -> None:
        for part, values in (("scale", rng.uniform(0.5, 1.5, channels)),
                             ("bias", rng.standard_normal(channels) * 0.1),
                             ("mean", rng.standard_normal(channels) * 0.1),
                             ("var", rng.uniform(0.5, 1.5, channels))):
            weights[f"{name}_{part}"] = values
        weights[f"{name}_w"] = rng.standard_normal((8, channels, 3, 3)) * 0.2
        nodes.extend([
            helper.make_node("BatchNormalization", [source, *(f"{name}_{p}" for p in (
                "scale", "bias", "mean", "var"))], [f"{name}_n"]),
            helper.make_node("Relu", [f"{name}_n"], [f"{name}_r"]),
            helper.make_node("Conv", [f"{name}_r", f"{name}_w"], [f"{name}_g"], pads=[1, 1, 1, 1]),
            helper.make_node("Concat", [source, f"{name}_g"], [concat], axis=1)])

    layer("c1", 24, "l2", "c2")  # the chain's buffer made
    layer("c2", 32, "l3", "c3")  # extended in place
    layer("c2", 32, "lb", "cb")  # the branch: a new buffer
    graph = helper.make_graph(
        nodes, "concat_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("c3", TensorProto.FLOAT, [1, 40, 12, 12]),
         helper.make_tensor_value_info("cb", TensorProto.FLOAT, [1, 40, 12, 12])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _chain_links(session: hetrix.InferenceSession) -> list:
    return [s for s in session._plan.steps if s.ctx.op_type == "Concat"
            and s.ctx.direct is not None and s.ctx.direct.source is tensor._CHAIN_LINK]


@pytest.mark.parametrize("copies", ["reorders", "one copy no reorder makes"])
def test_a_concat_chain_replays_its_links(copies: str, replays: list[int],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A Concat chain's links (the buffer made, extended in place, a branch copied into a new
    one) are replayed with the normalizations and convolutions around them, each copy a kept
    reorder, and give the steps' results bit for bit, ORT's to rounding; the outputs, chain
    values, are views of a buffer the replay makes per call.  Where a copy would not go to a
    reorder, the trace declines that link and the run is split around it, same results."""
    model = chain_model().SerializeToString()
    if copies != "reorders":
        copy_into = _dnnl.copy_into

        def refusing(source: np.ndarray, target: np.ndarray) -> bool:
            # the branch's new channels (the last 8 of 40 in a new 80-channel buffer)
            root = target
            while root.base is not None:
                root = root.base
            if source.shape[1] == 8 and root.shape[3] == 80 and target.ctypes.data - \
                    root.ctypes.data == 32 * source.itemsize:
                return False
            return copy_into(source, target)

        monkeypatch.setattr(_dnnl, "copy_into", refusing)
    joined = hetrix.InferenceSession(model)
    with monkeypatch.context() as patched:  # its links stay on their kernel: never offered
        patched.setattr(tensor, "JOIN_CHAIN_LINKS", False)
        steps = hetrix.InferenceSession(model)
    reference = ort_session(model)
    rng = np.random.default_rng(5)
    for run in range(RUNS):
        x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
        got, expected = joined.run(None, {"x": x}), reference.run(None, {"x": x})
        with monkeypatch.context() as patched:
            patched.setattr(tensor, "JOIN_CHAIN_LINKS", False)
            want = steps.run(None, {"x": x})
        for mine, theirs, ort_value in zip(got, want, expected, strict=True):
            np.testing.assert_array_equal(mine, theirs, err_msg=f"run {run}")
            np.testing.assert_allclose(mine, ort_value, rtol=1e-4, atol=1e-4)
    assert len(_chain_links(joined)) == 3 and not _chain_links(steps)
    tops = [getattr(entry[0], "__self__", None) for plan in plans(joined)
            for entry in plan.lean_run or []]
    [made] = [c for c in tops if isinstance(c, _dnnl_chain._Chain) and len(c.links) >= 10]
    link_calls = {step.ctx.direct.call for step in _chain_links(joined)}
    assert link_calls <= {link[0] for link in made.links}
    if copies == "reorders":
        assert made.replay is not None and made.replayed_steps() == len(made.links)
        assert replays[0] >= 2
    else:
        assert made.replay is None and made.parts is not None
        assert 0 < made.replayed_steps() < len(made.links)


def test_a_replay_that_does_not_match_the_steps_is_not_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    execute = _dnnl_chain._Replay._execute

    def off_by_one(self: _dnnl_chain._Replay, values: list) -> tuple:
        return tuple(output + 1 for output in execute(self, values))

    monkeypatch.setattr(_dnnl_chain._Replay, "_execute", off_by_one)
    session, _, _ = warmed(residual_model())  # checks every run against ORT
    traced = [c for c in chains(session) if c.traced]
    assert traced and all(c.replay is None for c in traced)


def test_replays_of_two_sessions_share_the_thread_arena(replays: list[int]) -> None:
    """A replay made later with a larger arena grows the thread's one; a replay made before
    points its memory at the new one on its next call (it holds the old one until then, so
    its results are right either way; the old one's memory is what this saves).  The arena
    goes with the sessions.  On a thread of its own: its arena starts empty."""
    failures: list[BaseException] = []

    def body() -> None:
        small, reference, rng = warmed(residual_model())
        assert [c for c in chains(small) if c.replay is not None]
        grown_from = _dnnl_chain._ARENA.buffer.nbytes
        path = str(LIGHT / "light_squeezenet.onnx")
        large = hetrix.InferenceSession(path)
        for _ in range(RUNS):
            large.run(None, {"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)})
        assert _dnnl_chain._ARENA.buffer.nbytes > grown_from
        before = replays[0]
        for _ in range(2):
            x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
            np.testing.assert_allclose(small.run(None, {"x": x})[0],
                                       reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
        assert replays[0] == before + 2
        # and the old arena is no longer held: the small replay's memory is in the new one
        [replay] = [c.replay for c in chains(small) if c.replay is not None]
        assert replay.arena is _dnnl_chain._ARENA.buffer
        # the sessions hold the arena, the thread does not: it goes with them
        del small, large, replay
        gc.collect()
        assert _dnnl_chain._ARENA.buffer is None

    def guarded() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failures.append(exc)

    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def test_a_result_its_step_would_reject_sends_the_run_to_the_steps(replays: list[int]) -> None:
    """SqueezeNet's replay ends with its Softmax, whose direct call hands a result holding NaN
    to its kernel (ONNX defines those rows its own way): the replay tests its result the same
    way and, where the test fails, the call runs the steps.  A NaN reaches every
    score (an image of the largest float32 values: the first convolution overflows, and
    infinities make NaN); ORT's results either way."""
    session, reference, rng = warmed_squeezenet(5)
    [row] = [r for r in session.get_joined_calls() if r["replayed_steps"]]
    assert row["replayed_steps"] == row["steps"]  # the Softmax included
    before = replays[0]
    x = np.full((1, 3, 224, 224), np.finfo(np.float32).max, np.float32)
    got = session.run(None, {"data_0": x})[0]
    assert np.isnan(got).all()
    np.testing.assert_allclose(got, reference.run(None, {"data_0": x})[0])
    assert replays[0] == before  # the steps served it
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"data_0": x})[0],
                               reference.run(None, {"data_0": x})[0], rtol=1e-4, atol=1e-6)
    assert replays[0] == before + 1
