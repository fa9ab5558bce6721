"""Shape specialization: plans folded for the input shapes seen, never reused for other shapes.

Each model runs at several shapes, each shape several times and the shapes interleaved (so runs
go through the generic plan, the observing run and the specialized plan), against numpy or
onnxruntime and against the same model at ``graph_optimization_level=0``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix

RUNS_PER_SHAPE = 3  # generic plan, observing run, specialized plan


def _model(nodes: list, inputs: dict, outputs: list[str], inits: dict | None = None,
           opset: int = 18) -> bytes:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _interleaved(shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Each shape RUNS_PER_SHAPE times, then all again in reverse: a change between runs."""
    return [s for s in shapes for _ in range(RUNS_PER_SHAPE)] + shapes[::-1]


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- a value that depends on the shape: a plan reused for another shape would be wrong ----------

SHAPE_DEPENDENT = [
    helper.make_node("Shape", ["x"], ["s"]),
    helper.make_node("Gather", ["s", "zero"], ["rows"], axis=0),
    helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
    helper.make_node("Add", ["x", "rows_f"], ["shifted"]),
    helper.make_node("ReduceProd", ["s"], ["count"], keepdims=1),
    helper.make_node("Reshape", ["shifted", "count"], ["y"]),
]


def test_a_plan_specialized_to_one_shape_is_never_used_for_another() -> None:
    session = hetrix.InferenceSession(_model(SHAPE_DEPENDENT, {"x": ["n", 3]}, ["y"],
                                             {"zero": np.array(0, np.int64)}))
    for shape in _interleaved([(2, 3), (5, 3), (1, 3)]):
        x = _x(shape)
        (y,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(y, (x + np.float32(shape[0])).reshape(-1))
    made = session.get_shape_specializations()
    assert sorted(m.input_shapes["x"] for m in made) == [(1, 3), (2, 3), (5, 3)]
    assert all(m.steps_after < m.steps_before and m.folded >= 3 for m in made)


def test_a_shape_seen_once_runs_the_generic_plan() -> None:
    session = hetrix.InferenceSession(_model(SHAPE_DEPENDENT, {"x": ["n", 3]}, ["y"],
                                             {"zero": np.array(0, np.int64)}))
    for batch in range(1, 6):  # every run a new shape: nothing to specialize
        x = _x((batch, 3))
        np.testing.assert_array_equal(session.run(None, {"x": x})[0],
                                      (x + np.float32(batch)).reshape(-1))
    assert session.get_shape_specializations() == []


def test_the_cache_keeps_the_most_recently_used_shapes() -> None:
    options = hetrix.SessionOptions(shape_specialization_cache_size=2)
    session = hetrix.InferenceSession(_model(SHAPE_DEPENDENT, {"x": ["n", 3]}, ["y"],
                                             {"zero": np.array(0, np.int64)}), options)
    for shape in _interleaved([(1, 3), (2, 3), (3, 3), (4, 3)]):
        x = _x(shape)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0],
                                      (x + np.float32(shape[0])).reshape(-1))
    assert len(session.get_shape_specializations()) == 2


def test_specialization_is_off_on_request_and_at_level_0() -> None:
    model = _model(SHAPE_DEPENDENT, {"x": ["n", 3]}, ["y"], {"zero": np.array(0, np.int64)})
    for options in (hetrix.SessionOptions(enable_shape_specialization=False),
                    hetrix.SessionOptions(graph_optimization_level=0)):
        session = hetrix.InferenceSession(model, options)
        for _ in range(RUNS_PER_SHAPE):
            session.run(None, {"x": _x((2, 3))})
        assert session.get_shape_specializations() == []


def test_shapes_that_depend_on_data_are_not_folded() -> None:
    """Shape(NonZero(x)) changes with the values of x at one input shape: it must stay computed."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Shape", ["nz"], ["s"]),
             helper.make_node("Shape", ["x"], ["t"]),
             helper.make_node("Concat", ["s", "t"], ["y"], axis=0)]
    session = hetrix.InferenceSession(_model(nodes, {"x": ["n"]}, ["y"]))
    for ones in [1, 2, 3, 4, 0, 4]:
        x = np.zeros(4, np.float32)
        x[:ones] = 1
        (y,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(y, [1, ones, 4])
    (made,) = session.get_shape_specializations()
    assert made.folded == 1  # Shape(x) alone


def test_an_overridable_initializer_is_never_folded() -> None:
    """Old-style models list weights as inputs: a fed value replaces the stored one, so values
    computed from it stay computed even when its shape does not change."""
    nodes = [helper.make_node("ReduceSum", ["b"], ["total"], keepdims=0),
             helper.make_node("Size", ["x"], ["size"]),
             helper.make_node("Cast", ["size"], ["size_f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["total", "size_f"], ["shift"]),
             helper.make_node("Add", ["x", "shift"], ["y"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.ones(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    session = hetrix.InferenceSession(model.SerializeToString())
    x = np.zeros(3, np.float32)
    for value in [1.0, 2.0, 3.0, 4.0]:
        b = np.full(2, value, np.float32)
        np.testing.assert_array_equal(session.run(None, {"x": x, "b": b})[0], x + 2 * value + 3)
    for _ in range(RUNS_PER_SHAPE):
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + 2 + 3)
    folded = sorted(m.folded for m in session.get_shape_specializations())
    assert folded == [2, 2]  # Size and Cast at each signature (b fed, b not fed); never b's sum


def test_a_folded_output_is_the_callers_to_modify() -> None:
    session = hetrix.InferenceSession(_model([helper.make_node("Shape", ["x"], ["y"])],
                                             {"x": ["n", 3]}, ["y"]))
    for _ in range(RUNS_PER_SHAPE + 1):
        (y,) = session.run(None, {"x": _x((2, 3))})
        np.testing.assert_array_equal(y, [2, 3])
        y[0] = 99  # must not change what the next run returns


def test_identity_reshapes_are_bypassed_at_a_known_shape() -> None:
    """Reshape(x, [Shape(z)[0], 3]): an identity for x of z's shape, a real reshape otherwise."""
    nodes = [helper.make_node("Shape", ["z"], ["s"]),
             helper.make_node("Slice", ["s", "start", "stop"], ["rows"]),
             helper.make_node("Concat", ["rows", "three"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Neg", ["r"], ["y"])]
    session = hetrix.InferenceSession(_model(nodes, {"x": ["a", "b"], "z": ["c", 3]}, ["y"], {
        "start": np.array([0], np.int64), "stop": np.array([1], np.int64),
        "three": np.array([3], np.int64)}))
    for x_shape, z_shape in _interleaved([((2, 3), (2, 3)), ((3, 2), (2, 3))]):
        x = _x(x_shape)
        (y,) = session.run(None, {"x": x, "z": _x(z_shape)})
        np.testing.assert_array_equal(y, -x.reshape(z_shape[0], 3))
    bypassed = {m.input_shapes["x"]: m.identities for m in session.get_shape_specializations()}
    assert bypassed == {(2, 3): 1, (3, 2): 0}


# -- the suite's models -------------------------------------------------------------------------


def _small_ops_model(blocks: int) -> onnx.ModelProto:
    """The benchmark suite's "many small ops" graph (benchmarks/suite_models.py)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_models.py"
    spec = importlib.util.spec_from_file_location("suite_models", path)
    if spec is None or spec.loader is None:
        pytest.skip("benchmarks/suite_models.py is not next to the tests")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_small_ops_model(blocks)


def _compare(model: bytes | str, feeds_at: list[dict[str, np.ndarray]],
             rtol: float = 1e-4) -> hetrix.InferenceSession:
    """Run ``model`` optimized, unoptimized and on onnxruntime on every feed; all must agree."""
    ort = pytest.importorskip("onnxruntime")
    optimized = hetrix.InferenceSession(model)
    plain = hetrix.InferenceSession(model, hetrix.SessionOptions(graph_optimization_level=0))
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for feeds in feeds_at:
        expected = reference.run(None, feeds)
        for session in (optimized, plain):
            for got, want in zip(session.run(None, feeds), expected, strict=True):
                assert got.shape == want.shape and got.dtype == want.dtype
                scale = float(np.abs(want).max()) if want.size else 0.0
                np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5 * scale)
    return optimized


def test_small_ops_matches_onnxruntime_at_every_batch() -> None:
    blocks = 10
    model = _small_ops_model(blocks).SerializeToString()
    feeds = [{"x": _x(shape, seed=shape[0])} for shape in _interleaved([(1, 64), (8, 64)])]
    session = _compare(model, feeds)
    report = session.get_optimization_report()
    # The graph passes prove each block's Reshape an identity for every batch size ...
    assert report.count("Reshape to own shape") == blocks
    assert report.count("shape element folded") == 2 * blocks
    assert len(session._plan.steps) == 5 * blocks  # Slice, Slice, Concat, Add, Mul
    # ... so the shapes leave nothing more to specialize
    assert session.get_shape_specializations() == []


@pytest.fixture(scope="module")
def transformers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return tmp_path_factory.mktemp("specialization")


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_transformers_match_onnxruntime_across_shape_changes(name: str,
                                                             transformers_dir: Path) -> None:
    from hetrix.testing.models import BERT_SIZES, GPT2_SIZES, export_bert, export_gpt2, token_feeds

    export, sizes = (export_bert, BERT_SIZES) if name == "bert" else (export_gpt2, GPT2_SIZES)
    exported = export(transformers_dir / f"{name}.onnx", size="tiny")
    vocab = sizes["tiny"]["vocab_size"]
    feeds = [token_feeds(exported.input_names, batch, sequence, vocab, seed=batch + sequence)
             for batch, sequence in _interleaved([(1, 7), (3, 16)])]
    session = _compare(exported.path, feeds)
    made = session.get_shape_specializations()
    shapes = sorted(m.input_shapes["input_ids"] for m in made)
    assert shapes == [(1, 7), (3, 16)]
    # Tiny BERT: 132 steps -> 51 (80 folded); tiny GPT-2: 209 -> 58 (149 folded, after the
    # graph passes already folded 27 known dims of its partly symbolic shapes).
    for m in made:
        assert m.folded >= (60 if name == "bert" else 120), m
        assert m.steps_after <= 0.5 * m.steps_before, m
    if name == "gpt2":
        assert session.get_optimization_report().count("shape element folded") >= 20
