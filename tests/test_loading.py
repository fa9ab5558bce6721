"""Model loading: malformed files, opsets, external data that must stay in the model folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.errors import ModelLoadError, UnsafeExternalDataError, UnsupportedOperatorError


def _add_model(weight: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    """y = x + w, with w an initializer (so it can be made external)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(weight.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(weight.shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _externalize(
    model: onnx.ModelProto, location: str, offset: int = 0, length: int | None = None
) -> onnx.ModelProto:
    """Point initializer 'w' at ``location`` without writing any data."""
    tensor = model.graph.initializer[0]
    nbytes = len(tensor.raw_data) if tensor.raw_data else tensor.ByteSize()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {
        "location": location,
        "offset": str(offset),
        "length": str(nbytes if length is None else length),
    }
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return model


@pytest.fixture
def weight() -> np.ndarray:
    return np.arange(6, dtype=np.float32).reshape(2, 3)


def test_external_data_inside_folder_loads(tmp_path: Path, weight: np.ndarray) -> None:
    model = _add_model(weight)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"PAD!" + weight.tobytes())
    path = tmp_path / "model.onnx"
    onnx.save(_externalize(model, "weights/w.bin", offset=4), path)
    x = np.ones((2, 3), np.float32)
    (y,) = hetrix.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_array_equal(y, x + weight)


def test_external_data_through_inner_symlink_loads(tmp_path: Path, weight: np.ndarray) -> None:
    (tmp_path / "real.bin").write_bytes(weight.tobytes())
    os.symlink(tmp_path / "real.bin", tmp_path / "link.bin")
    path = tmp_path / "model.onnx"
    onnx.save(_externalize(_add_model(weight), "link.bin"), path)
    (y,) = hetrix.InferenceSession(path).run(None, {"x": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(y, weight)


@pytest.mark.parametrize(
    "location",
    [
        "/etc/passwd",
        "../secret.bin",
        "weights/../../secret.bin",
        "..\\secret.bin",
        "C:\\Windows\\secret.bin",
        "\\\\server\\share\\secret.bin",
        "./../secret.bin",
    ],
)
def test_external_data_escaping_folder_is_refused(
    tmp_path: Path, weight: np.ndarray, location: str
) -> None:
    model_dir = tmp_path / "model"
    (model_dir / "weights").mkdir(parents=True)
    (tmp_path / "secret.bin").write_bytes(weight.tobytes())
    path = model_dir / "model.onnx"
    onnx.save(_externalize(_add_model(weight), location), path)
    with pytest.raises(UnsafeExternalDataError, match="tensor 'w'"):
        hetrix.InferenceSession(str(path))


def test_absolute_path_into_own_folder_is_still_refused(tmp_path: Path, weight: np.ndarray) -> None:
    (tmp_path / "w.bin").write_bytes(weight.tobytes())
    path = tmp_path / "model.onnx"
    onnx.save(_externalize(_add_model(weight), str(tmp_path / "w.bin")), path)
    with pytest.raises(UnsafeExternalDataError, match="absolute"):
        hetrix.InferenceSession(path)


def test_symlink_leading_outside_is_refused(tmp_path: Path, weight: np.ndarray) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(weight.tobytes())
    os.symlink(tmp_path / "secret.bin", model_dir / "w.bin")
    path = model_dir / "model.onnx"
    onnx.save(_externalize(_add_model(weight), "w.bin"), path)
    with pytest.raises(UnsafeExternalDataError, match="outside the model's folder"):
        hetrix.InferenceSession(path)


def test_symlinked_directory_leading_outside_is_refused(tmp_path: Path, weight: np.ndarray) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.bin").write_bytes(weight.tobytes())
    os.symlink(tmp_path / "elsewhere", model_dir / "data")
    path = model_dir / "model.onnx"
    onnx.save(_externalize(_add_model(weight), "data/w.bin"), path)
    with pytest.raises(UnsafeExternalDataError):
        hetrix.InferenceSession(path)


def test_external_data_in_subgraph_constant_is_checked(tmp_path: Path) -> None:
    """A Constant inside an If branch with an escaping location is refused too."""
    value = numpy_helper.from_array(np.ones(3, np.float32), "c")
    value.ClearField("raw_data")
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../../etc/passwd")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=value)],
        "then",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [3])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UnsafeExternalDataError, match="'..' components"):
        hetrix.InferenceSession(path)


def test_external_data_without_folder_is_refused(weight: np.ndarray) -> None:
    model = _externalize(_add_model(weight), "w.bin")
    with pytest.raises(ModelLoadError, match="not given as a path"):
        hetrix.InferenceSession(model.SerializeToString())


@pytest.mark.parametrize(("offset", "length"), [(0, 4), (100, None), (-1, None), (0, 10_000)])
def test_external_data_bad_range_is_refused(
    tmp_path: Path, weight: np.ndarray, offset: int, length: int | None
) -> None:
    (tmp_path / "w.bin").write_bytes(weight.tobytes())
    path = tmp_path / "model.onnx"
    onnx.save(_externalize(_add_model(weight), "w.bin", offset, length), path)
    with pytest.raises(ModelLoadError, match="tensor 'w'"):
        hetrix.InferenceSession(path)


def test_missing_external_file_is_reported(tmp_path: Path, weight: np.ndarray) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_externalize(_add_model(weight), "absent.bin"), path)
    with pytest.raises(ModelLoadError, match="absent.bin"):
        hetrix.InferenceSession(path)


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nothere.onnx"):
        hetrix.InferenceSession(str(tmp_path / "nothere.onnx"))


def test_truncated_model_is_a_clear_error(tmp_path: Path, weight: np.ndarray) -> None:
    data = _add_model(weight).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        hetrix.InferenceSession(path)


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage\xff" * 7, b"not a model at all"])
def test_garbage_bytes_are_a_clear_error(data: bytes) -> None:
    with pytest.raises(ModelLoadError):
        hetrix.InferenceSession(data)


def test_wrong_argument_type() -> None:
    with pytest.raises(TypeError, match="file path, bytes or onnx.ModelProto"):
        hetrix.InferenceSession(12345)  # type: ignore[arg-type]


def test_opset_newer_than_onnx_is_refused(weight: np.ndarray) -> None:
    model = _add_model(weight, opset=onnx.defs.onnx_opset_version() + 5)
    with pytest.raises(ModelLoadError, match="opset"):
        hetrix.InferenceSession(model)


def test_unknown_operator_names_op_domain_opset_and_node() -> None:
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], name="the_node", domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 3)]
    )
    with pytest.raises(UnsupportedOperatorError) as info:
        hetrix.InferenceSession(model)
    message = str(info.value)
    for part in ("FancyOp", "com.example", "opset 3", "the_node", "numpy:cpu"):
        assert part in message


def test_undefined_value_is_reported() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["ghost"], ["y"], name="r")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="'ghost'"):
        hetrix.InferenceSession(model)


def test_unsorted_graph_is_planned_in_dependency_order() -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["t"], ["y"]), helper.make_node("Relu", ["x"], ["t"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    (y,) = hetrix.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_array_equal(y, -np.maximum(x, 0))


def test_caller_model_proto_is_not_modified(weight: np.ndarray) -> None:
    model = _add_model(weight)
    before = model.SerializeToString()
    hetrix.InferenceSession(model)
    assert model.SerializeToString() == before
