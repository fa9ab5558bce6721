"""Weights read from the model file one tensor at a time (hetrix.model.inline_weights).

A model loaded from a path is parsed without its large tensors, which become references into
the file and are read straight into arrays when the model is converted to onnx-ir.  These tests
check that the values are exactly those of a plain ``onnx.load``, that outputs match ONNX
Runtime, that the references obey the external-data rules, and that a file changed under the
loader is refused rather than read at stale offsets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.errors import ModelLoadError
from hetrix.model.inline_weights import WireFormatError, split_weights
from hetrix.model.loader import DEFER_WEIGHTS_FROM_BYTES, read_model, to_ir

RNG = np.random.default_rng(0)


def _branch(name: str, value: np.ndarray) -> onnx.GraphProto:
    """A subgraph returning a large Constant."""
    return helper.make_graph(
        [helper.make_node("Constant", [], [f"{name}_out"],
                          value=numpy_helper.from_array(value, f"{name}_value"))],
        name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [64, 16])],
    )


def _model() -> onnx.ModelProto:
    """``y = (x @ w + b) * scale + If(flag, then_c, else_c)`` with weights of several sizes, a
    large Constant node in the main graph and large Constants inside both If branches."""
    w = RNG.standard_normal((32, 16)).astype(np.float32)  # 2 KiB: read from the file
    b = RNG.standard_normal(16).astype(np.float32)  # 64 bytes: stays in the protobuf
    scale = RNG.standard_normal((64, 16)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["h"]),
        helper.make_node("Constant", [], ["scale"],
                         value=numpy_helper.from_array(scale, "scale_value")),
        helper.make_node("Mul", ["h", "scale"], ["hs"]),
        helper.make_node("If", ["flag"], ["c"],
                         then_branch=_branch("then", RNG.standard_normal((64, 16)).astype(
                             np.float32)),
                         else_branch=_branch("else", RNG.standard_normal((64, 16)).astype(
                             np.float32))),
        helper.make_node("Add", ["hs", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 32]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(_model(), path)
    return path


def _feeds(flag: bool) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((64, 32)).astype(np.float32), "flag": np.array(flag)}


def _arrays(model: ir.Model) -> dict[str, np.ndarray]:
    """Every initializer and tensor attribute of the model (subgraphs included), by name."""
    found = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                found[attr.value.name] = attr.value.numpy()
    return found


def test_large_tensors_become_references_into_the_file(saved: Path) -> None:
    loaded = read_model(saved)
    deferred = {t.name for t in _all_tensors(loaded.proto)
                if t.data_location == TensorProto.EXTERNAL}
    assert deferred == {"w", "scale_value", "then_value", "else_value"}
    for tensor in _all_tensors(loaded.proto):
        if tensor.name in deferred:
            entries = {e.key: e.value for e in tensor.external_data}
            assert entries["location"] == "./model.onnx" and not tensor.raw_data
    assert loaded.proto.ByteSize() < saved.stat().st_size / 4  # the structure only


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from hetrix.model.external_data import iter_tensors

    return list(iter_tensors(model))


def test_values_equal_a_plain_parse(saved: Path) -> None:
    ours = _arrays(to_ir(read_model(saved)))
    reference = _arrays(ir.serde.deserialize_model(onnx.load(saved)))
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
        assert not ours[name].flags.writeable  # weights are shared by every run


@pytest.mark.parametrize("flag", [True, False])
def test_outputs_match_onnxruntime(saved: Path, flag: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    feeds = _feeds(flag)
    (expected,) = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"]).run(
        None, feeds)
    (got,) = hetrix.InferenceSession(saved).run(None, feeds)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT64,
                                   TensorProto.BOOL, TensorProto.INT4, TensorProto.DOUBLE])
def test_every_dtype_reads_back_exactly(tmp_path: Path, dtype: int) -> None:
    values = RNG.integers(-8, 8, size=(64, 64))  # >= 1 KiB even as 4-bit
    if dtype == TensorProto.BOOL:
        values = values > 0
    ir_dtype = ir.DataType(dtype)
    tensor = ir.serde.serialize_tensor(  # raw_data, the form of large weights in files
        ir.Tensor(values.astype(ir_dtype.numpy()), dtype=ir_dtype, name="t"))
    graph = helper.make_graph([helper.make_node("Identity", ["t"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", dtype, list(values.shape))],
                              [tensor])
    path = tmp_path / "typed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    loaded = read_model(path)
    assert loaded.proto.graph.initializer[0].data_location == TensorProto.EXTERNAL
    ours = to_ir(loaded).graph.initializers["t"].const_value.numpy()
    reference = ir.serde.deserialize_model(onnx.load(path)).graph.initializers["t"]
    np.testing.assert_array_equal(ours, reference.const_value.numpy())
    assert ours.dtype == reference.const_value.numpy().dtype


def test_model_reached_through_a_symlink_reads_its_own_file(saved: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "links"
    elsewhere.mkdir()
    os.symlink(saved, elsewhere / "alias.onnx")
    feeds = _feeds(True)
    (expected,) = hetrix.InferenceSession(saved).run(None, feeds)
    (got,) = hetrix.InferenceSession(elsewhere / "alias.onnx").run(None, feeds)
    np.testing.assert_array_equal(got, expected)


def test_file_rewritten_after_reading_is_refused(saved: Path) -> None:
    loaded = read_model(saved)
    data = saved.read_bytes()
    saved.write_bytes(data + b"\0")  # a different file now: offsets may no longer hold
    with pytest.raises(ModelLoadError, match="changed after the model was read"):
        to_ir(loaded)


def test_external_file_rewritten_after_reading_is_refused(tmp_path: Path) -> None:
    model = _model()
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    loaded = read_model(tmp_path / "model.onnx")
    (tmp_path / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes()[::-1])
    with pytest.raises(ModelLoadError, match="changed after the model was read"):
        to_ir(loaded)


def test_external_data_is_read_lazily_and_equals_a_plain_parse(tmp_path: Path) -> None:
    onnx.save(_model(), tmp_path / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    loaded = read_model(tmp_path / "model.onnx")
    assert not any(t.raw_data for t in _all_tensors(loaded.proto))  # nothing read yet
    reference = _arrays(ir.serde.deserialize_model(onnx.load(tmp_path / "model.onnx")))
    ours = _arrays(to_ir(loaded))
    for name, value in reference.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_bytes_and_proto_sources_are_parsed_whole(saved: Path) -> None:
    feeds = _feeds(False)
    (from_path,) = hetrix.InferenceSession(saved).run(None, feeds)
    for source in (saved.read_bytes(), onnx.load(saved)):
        (got,) = hetrix.InferenceSession(source).run(None, feeds)
        np.testing.assert_array_equal(got, from_path)


def test_split_then_reinline_gives_back_the_model(saved: Path) -> None:
    """split_weights changes nothing but the large raw_data fields."""
    data = saved.read_bytes()
    structure = onnx.ModelProto.FromString(
        split_weights(memoryview(data), "./model.onnx", DEFER_WEIGHTS_FROM_BYTES))
    for tensor in _all_tensors(structure):
        if tensor.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            offset, length = int(entries["offset"]), int(entries["length"])
            tensor.raw_data = data[offset:offset + length]
            tensor.ClearField("data_location")
            tensor.ClearField("external_data")
    assert structure == onnx.ModelProto.FromString(data)


@pytest.mark.parametrize("data", [b"\x0a\xff\xff\xff\xff\x0f", b"\x3a\x05abc", b"\x0b\x00",
                                  b"\x00\x01"])
def test_split_refuses_malformed_input(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        split_weights(memoryview(data), "./m.onnx", 0)


def test_truncated_file_falls_back_to_protobuf_error(saved: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        hetrix.InferenceSession(cut)


def test_weight_returned_as_output_is_the_callers_copy(tmp_path: Path) -> None:
    w = RNG.standard_normal((32, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 32])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    session = hetrix.InferenceSession(path)
    (first,) = session.run(None, {})
    first[...] = 0  # the caller owns its output
    (second,) = session.run(None, {})
    np.testing.assert_array_equal(second, w)


def test_session_model_proto_keeps_structure_without_file_references(saved: Path) -> None:
    proto = hetrix.InferenceSession(saved).model_proto
    weight = next(t for t in proto.graph.initializer if t.name == "w")
    assert list(weight.dims) == [32, 16] and weight.data_type == TensorProto.FLOAT
    assert weight.data_location == TensorProto.DEFAULT and not weight.external_data
    assert not weight.raw_data
