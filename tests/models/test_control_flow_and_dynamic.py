"""``If``/``Loop`` with outer-scope values, and symbolic batch/sequence shape arithmetic.

Both models come from :mod:`hetrix.testing.models`; one Hetrix session per model serves every
size (so a plan that caches a shape would fail here), compared with onnxruntime at
``rtol=1e-4``, ``atol=1e-5 * max|ort|``.  ``run_with_intermediates`` is checked against an
onnxruntime run of the same model with every node output promoted to a graph output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

import hetrix
from hetrix.testing.models import (
    control_flow_feeds,
    dynamic_shape_feeds,
    make_control_flow_model,
    make_dynamic_shape_model,
    with_all_outputs,
)

RTOL = 1e-4
ATOL_SCALE = 1e-5
CONTROL_FLOW_OUTPUTS = ["branch", "acc", "total", "trace", "iterations"]
DYNAMIC_OUTPUTS = ["y", "flat", "shifted", "shape"]


@pytest.fixture(scope="module")
def control_flow_model() -> onnx.ModelProto:
    return make_control_flow_model()


@pytest.fixture(scope="module")
def dynamic_model() -> onnx.ModelProto:
    return make_dynamic_shape_model()


@pytest.fixture(scope="module")
def control_flow_session(control_flow_model: onnx.ModelProto) -> hetrix.InferenceSession:
    return hetrix.InferenceSession(control_flow_model)


@pytest.fixture(scope="module")
def dynamic_session(dynamic_model: onnx.ModelProto) -> hetrix.InferenceSession:
    return hetrix.InferenceSession(dynamic_model)


# -- If / Loop -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "steps", "limit", "sign"),
    [
        (1, 1, 1e9, 1.0),  # then-branch, one iteration
        (3, 4, 1e9, -1.0),  # else-branch
        (8, 7, 1e9, 1.0),  # odd and even iterations (nested If both ways)
        (5, 6, 1.0, 1.0),  # early exit: the Loop's condition turns false before `steps`
        (2, 5, 1.0, -1.0),
    ],
)
def test_control_flow_matches_onnxruntime(
    batch: int, steps: int, limit: float, sign: float,
    control_flow_model: onnx.ModelProto, control_flow_session: hetrix.InferenceSession,
    ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None],
) -> None:
    feeds = control_flow_feeds(batch, steps, limit=limit, sign=sign)
    expected = ort_run(control_flow_model, feeds)
    outputs = control_flow_session.run(None, feeds)
    assert_close(outputs, expected, CONTROL_FLOW_OUTPUTS, rtol=RTOL, atol_scale=ATOL_SCALE)
    iterations = int(expected[4])
    assert outputs[3].shape == (iterations, batch)
    if limit < 1e9:
        assert iterations < steps, "the early-exit case must stop early to test anything"


def test_control_flow_zero_iterations(
    control_flow_model: onnx.ModelProto, control_flow_session: hetrix.InferenceSession,
    ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None],
) -> None:
    """A trip count of 0: loop-carried values come back unchanged (the empty scan output's shape
    is left unchecked: onnxruntime guesses ``[0]`` for it)."""
    feeds = control_flow_feeds(3, 0)
    expected = ort_run(control_flow_model, feeds)
    branch, acc, total, trace, iterations = control_flow_session.run(None, feeds)
    assert_close([branch, acc, total, iterations], [expected[i] for i in (0, 1, 2, 4)],
                 ["branch", "acc", "total", "iterations"], rtol=RTOL, atol_scale=ATOL_SCALE)
    np.testing.assert_array_equal(acc, branch)
    assert trace.size == 0 and int(iterations) == 0


def test_control_flow_runs_on_hetrix_kernels(
    control_flow_session: hetrix.InferenceSession, assert_native: Callable[..., None]
) -> None:
    assert_native(control_flow_session)
    placed = {p.op_type for p in control_flow_session.get_placement()}
    assert {"If", "Loop"} <= placed


# -- dynamic shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "sequence"), [(1, 1), (2, 5), (3, 9), (1, 32), (4, 3)])
def test_dynamic_shapes_match_onnxruntime(
    batch: int, sequence: int,
    dynamic_model: onnx.ModelProto, dynamic_session: hetrix.InferenceSession,
    ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None],
) -> None:
    feeds = dynamic_shape_feeds(batch, sequence)
    outputs = dynamic_session.run(None, feeds)
    assert_close(outputs, ort_run(dynamic_model, feeds), DYNAMIC_OUTPUTS,
                 rtol=RTOL, atol_scale=ATOL_SCALE)
    y, flat, shifted, shape = outputs
    assert y.shape == (batch, sequence, 16) and flat.shape == (batch * sequence, 16)
    assert shifted.shape == (batch, sequence - 1, 16)
    assert shape.tolist() == [batch, sequence, 16]


def test_dynamic_model_is_causal(dynamic_session: hetrix.InferenceSession) -> None:
    """The mask built from the run-time length hides later positions from earlier ones."""
    feeds = dynamic_shape_feeds(2, 6)
    changed = {"x": feeds["x"].copy()}
    changed["x"][:, -1] += 1.0
    before = dynamic_session.run(["y"], feeds)[0]
    after = dynamic_session.run(["y"], changed)[0]
    np.testing.assert_allclose(after[:, :-1], before[:, :-1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(after[:, -1], before[:, -1])


def test_dynamic_model_reports_symbolic_dims(dynamic_session: hetrix.InferenceSession) -> None:
    (x,) = dynamic_session.get_inputs()
    assert (x.name, x.type, x.shape) == ("x", "tensor(float)", ["batch", "sequence", 16])
    outputs = {o.name: o.shape for o in dynamic_session.get_outputs()}
    assert outputs["y"] == ["batch", "sequence", 16]
    assert outputs["flat"] == ["batch_x_sequence", 16]
    assert outputs["shape"] == [3]


def test_dynamic_model_runs_on_hetrix_kernels(
    dynamic_session: hetrix.InferenceSession, assert_native: Callable[..., None]
) -> None:
    assert_native(dynamic_session)


# -- run_with_intermediates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "feeds"),
    [
        ("dynamic", dynamic_shape_feeds(3, 7)),
        ("control_flow", control_flow_feeds(4, 5, sign=-1.0)),
    ],
    ids=["dynamic", "control_flow"],
)
def test_run_with_intermediates_matches_onnxruntime(
    model_name: str, feeds: dict[str, np.ndarray],
    control_flow_model: onnx.ModelProto, dynamic_model: onnx.ModelProto,
    ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None],
) -> None:
    model = dynamic_model if model_name == "dynamic" else control_flow_model
    # Level 0: optimization folds and fuses values away; debugging wants the graph as written.
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(graph_optimization_level=0))
    values = session.run_with_intermediates(feeds)

    # Every value the main graph computes is there, the outputs equal a plain run's.
    node_outputs = [name for node in model.graph.node for name in node.output if name]
    missing = [name for name in node_outputs if name not in values]
    assert not missing, f"run_with_intermediates lacks {missing}"
    outputs = session.run(None, feeds)
    for output, value in zip(model.graph.output, outputs):
        np.testing.assert_array_equal(values[output.name], value, err_msg=output.name)

    everything = with_all_outputs(model)
    names = [o.name for o in everything.graph.output]
    expected = ort_run(everything, feeds)
    assert_close([values[name] for name in names], expected, names,
                 rtol=RTOL, atol_scale=ATOL_SCALE)
