"""External data, read only from inside the model's own folder.

A model file may keep its large tensors in side files (``data_location = EXTERNAL`` with a
``location`` key).  The location comes from the file, so it is untrusted: onnx itself has shipped
several path-traversal bugs here.  The rules, checked before any file is opened:

* the location is a relative path with no ``..`` component and no drive or root;
* after resolving symlinks, the file lies inside the model's folder (also resolved);
* it is a regular file, and ``offset``/``length`` lie within it;
* for fixed-width dtypes, the byte count matches the tensor's shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from hetrix.errors import ModelLoadError, UnsafeExternalDataError


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, tensor attributes, subgraphs, functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model keeps its bytes in a side file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model))


def load_external_data(model: onnx.ModelProto, model_dir: Path | None, source: str) -> None:
    """Read every external tensor's bytes into the model, refusing any path that leaves model_dir.

    ``source`` names the model in error messages.  ``model_dir`` is None when the model came as
    bytes or a ModelProto: then external data cannot be resolved safely and is an error.
    """
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if model_dir is None:
            raise ModelLoadError(
                f"{source}: tensor '{tensor.name}' keeps its data in the external file "
                f"'{location}', but the model was not given as a path, so there is no folder to "
                "read it from; load the model from its file path instead"
            )
        path = resolve_inside(model_dir, location, tensor.name, source)
        tensor.raw_data = _read_range(path, info, tensor, source)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def resolve_inside(model_dir: Path, location: str, tensor_name: str, source: str) -> Path:
    """The real path of ``location`` under ``model_dir``; raises if it could lead outside."""
    where = f"{source}: external data of tensor '{tensor_name}' at location '{location}'"
    if not location or "\x00" in location:
        raise UnsafeExternalDataError(f"{where}: the location is empty or contains a NUL byte")
    parts = location.replace("\\", "/").split("/")
    if location.startswith(("/", "\\")) or os.path.isabs(location) or ":" in parts[0]:
        raise UnsafeExternalDataError(f"{where}: absolute paths are refused")
    if ".." in parts:
        raise UnsafeExternalDataError(f"{where}: '..' components are refused")
    root = Path(os.path.realpath(model_dir))
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if real != root and root not in real.parents:
        raise UnsafeExternalDataError(
            f"{where}: resolves to '{real}', outside the model's folder '{root}' (via a symlink)"
        )
    if not real.is_file():
        raise ModelLoadError(f"{where}: no such regular file in the model's folder '{root}'")
    return real


def _read_range(path: Path, info: dict[str, str], tensor: onnx.TensorProto, source: str) -> bytes:
    where = f"{source}: external data of tensor '{tensor.name}' in '{path.name}'"
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise ModelLoadError(f"{where}: offset/length are not integers") from exc
    size = path.stat().st_size
    if (
        offset < 0
        or offset > size
        or (length is not None and (length < 0 or offset + length > size))
    ):
        raise ModelLoadError(
            f"{where}: offset {offset} and length {length} lie outside the file of {size} bytes"
        )
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size - offset if length is None else length)
    expected = _expected_nbytes(tensor)
    if expected is not None and len(data) != expected:
        raise ModelLoadError(
            f"{where}: holds {len(data)} bytes but shape {list(tensor.dims)} needs {expected}"
        )
    return data


def _expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor of this dtype and shape needs, for fixed-width dtypes of >= 1 byte."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    bits = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    if tensor.data_type in bits or getattr(onnx.TensorProto, "FLOAT4E2M1", -1) == tensor.data_type:
        return None  # packed sub-byte types: the shape check is left to the tensor parser
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
