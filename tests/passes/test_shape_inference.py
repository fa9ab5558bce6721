"""Hetrix's shape inference pass gives every value the type and shape onnx-ir's own pass gives
it (the reference: the same C++ inference, merged through a second IR), subgraphs included."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
import pytest
from conftest import make_model
from onnx import helper

from hetrix.passes.shape_inference import ShapeInferencePass
from hetrix.testing.models import (
    light_model_paths,
    make_control_flow_model,
    make_dynamic_shape_model,
)


def _types(model: ir.Model) -> dict[str, tuple]:
    """Every named value of every graph -> (dtype, shape as a tuple of dims, or None)."""
    found: dict[str, tuple] = {}
    for graph in model.graphs():
        values = [*graph.inputs, *graph.initializers.values()]
        values += [out for node in graph for out in node.outputs]
        for value in values:
            if value.name:
                shape = None if value.shape is None else tuple(
                    d if isinstance(d, int) else str(d) for d in value.shape)
                found[value.name] = (value.dtype, shape)
    return found


def _both(proto: onnx.ModelProto) -> tuple[ir.Model, ir.Model, bool]:
    ours, reference = ir.serde.deserialize_model(proto), ir.serde.deserialize_model(proto)
    modified = ShapeInferencePass()(ours).modified
    common.ShapeInferencePass(strict_mode=False)(reference)
    return ours, reference, modified


def _without_value_info(proto: onnx.ModelProto) -> onnx.ModelProto:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    del stripped.graph.value_info[:]
    return stripped


def _squeezenet() -> onnx.ModelProto:
    return onnx.load(light_model_paths()["squeezenet"])


def _sequence_model() -> onnx.ModelProto:
    """Values of sequence type beside tensors (the merge's non-tensor types)."""
    nodes = [helper.make_node("SequenceConstruct", ["x", "y"], ["seq"]),
             helper.make_node("SequenceAt", ["seq", "index"], ["item"]),
             helper.make_node("Relu", ["item"], ["out"])]
    model = make_model(nodes, {"x": ["n", 4], "y": ["n", 4]}, ["out"])
    model.graph.input.append(helper.make_tensor_value_info("index", onnx.TensorProto.INT64, []))
    return model


@pytest.mark.parametrize("make", [make_control_flow_model, make_dynamic_shape_model, _squeezenet,
                                  _sequence_model],
                         ids=["control_flow", "dynamic_shapes", "squeezenet", "sequence"])
def test_types_and_shapes_match_onnx_irs_pass(make) -> None:
    proto = _without_value_info(make())
    ours, reference, modified = _both(proto)
    got = _types(ours)
    assert modified and got == _types(reference)
    before = _types(ir.serde.deserialize_model(proto))
    assert sum(s is not None for _, s in got.values()) > sum(
        s is not None for _, s in before.values())


def test_subgraph_values_get_their_shapes() -> None:
    proto = _without_value_info(make_control_flow_model())
    ours, _, _ = _both(proto)
    got, before = _types(ours), _types(ir.serde.deserialize_model(proto))
    inside = [out.name for graph in list(ours.graphs())[1:] for node in graph
              for out in node.outputs]
    assert sum(got[n][1] is not None for n in inside) > sum(before[n][1] is not None
                                                            for n in inside)


def test_a_model_inference_rejects_is_left_unchanged() -> None:
    # Add of [3, 4] and [5]: inference reports the broadcast error; the pass must not raise
    proto = make_model([helper.make_node("Add", ["x", "b"], ["y"])], {"x": [3, 4], "b": [5]},
                       ["y"])
    model = ir.serde.deserialize_model(proto)
    before = _types(model)
    result = ShapeInferencePass()(model)
    assert not result.modified and _types(model) == before


@pytest.mark.parametrize("make", [make_control_flow_model, make_dynamic_shape_model, _squeezenet],
                         ids=["control_flow", "dynamic_shapes", "squeezenet"])
def test_inference_read_from_the_source_protobuf_gives_the_same_types(make, monkeypatch) -> None:
    """A model read from a protobuf infers from that protobuf once, without serializing the IR
    (the first inference of a session), and gives every value the type and shape that
    inference on the IR gives; the next inference serializes the IR again."""
    from hetrix.passes import shape_inference

    proto = _without_value_info(make())
    reference = ir.serde.deserialize_model(proto)
    ShapeInferencePass()(reference)
    model = ir.serde.deserialize_model(proto)
    shape_inference.read_from(model, proto)
    serialized = []
    real = shape_inference.call_onnx_api
    monkeypatch.setattr(shape_inference, "call_onnx_api",
                        lambda fn, m: serialized.append(m) or real(fn, m))
    assert ShapeInferencePass()(model).modified
    assert serialized == [] and _types(model) == _types(reference)
    assert shape_inference.SOURCE_KEY not in model.meta
    ShapeInferencePass()(model)  # the graph may have changed since: the IR is serialized
    assert serialized == [model]


def test_a_source_protobuf_holding_large_weights_is_not_serialized(monkeypatch) -> None:
    from hetrix.passes import shape_inference

    proto = _without_value_info(_squeezenet())
    model = ir.serde.deserialize_model(proto)
    shape_inference.read_from(model, proto)
    monkeypatch.setattr(shape_inference, "SOURCE_MAX_BYTES", proto.ByteSize() - 1)
    serialized = []
    real = shape_inference.call_onnx_api
    monkeypatch.setattr(shape_inference, "call_onnx_api",
                        lambda fn, m: serialized.append(m) or real(fn, m))
    ShapeInferencePass()(model)
    assert serialized == [model]


def test_a_session_infers_its_first_shapes_from_the_file_it_parsed(monkeypatch) -> None:
    import hetrix
    from hetrix.passes import shape_inference

    calls = []
    real = shape_inference.call_onnx_api
    monkeypatch.setattr(shape_inference, "call_onnx_api",
                        lambda fn, m: calls.append(m) or real(fn, m))
    path = light_model_paths()["squeezenet"]
    session = hetrix.InferenceSession(path)
    report = session.get_optimization_report()
    inferences = sum(1 for run in report.runs if run.name == "shape inference")
    assert inferences >= 2 and len(calls) == inferences - 1
