"""External data, read only from inside the model's own folder, one tensor at a time.

A model file may keep its large tensors in side files (``data_location = EXTERNAL`` with a
``location`` key).  The location comes from the file, so it is untrusted: onnx itself has shipped
several path-traversal bugs here.  The rules, checked by :func:`check_external_data` when the
model is read, before any data is:

* the location is a relative path with no ``..`` component and no drive or root;
* after resolving symlinks, the file lies inside the model's folder (also resolved);
* it is a regular file, and ``offset``/``length`` lie within it;
* for fixed-width dtypes, the byte count matches the tensor's shape.

The bytes themselves are read later, when the model is converted to onnx-ir
(:func:`read_external_tensors`): each tensor straight into its own NumPy array, so no second copy
of the weights (a protobuf holding them) ever exists.  The loader uses the same path for the
weights inside the model file itself (:mod:`hetrix.model.inline_weights`).  Each file is checked
again when it is opened (same path rules, same file as when checked).  Tensors of sparse
tensors are the exception: onnx-ir keeps those as protobufs, so their bytes are read into the
protobuf at check time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from hetrix.errors import ModelLoadError, UnsafeExternalDataError

_SUB_BYTE_OR_STRING = (ir.DataType.STRING, ir.DataType.UNDEFINED)


@dataclass(frozen=True)
class FileIdentity:
    """What identifies a file's contents cheaply: a file replaced or rewritten after the model
    was checked is refused instead of read at stale offsets."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileIdentity:
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, tensor attributes, subgraphs, functions."""
    for tensor, _sparse in _tensor_sites(model):
        yield tensor


def _tensor_sites(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, bool]]:
    """Every TensorProto with whether it is part of a sparse tensor."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, bool]]:
    for tensor in graph.initializer:
        yield tensor, False
    for sparse in graph.sparse_initializer:
        yield sparse.values, True
        yield sparse.indices, True
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[onnx.TensorProto, bool]]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t, False
        for tensor in attr.tensors:
            yield tensor, False
        sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for sparse in [*sparse_tensors, *attr.sparse_tensors]:
            yield sparse.values, True
            yield sparse.indices, True
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model keeps its bytes in a side file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model))


def check_external_data(
    model: onnx.ModelProto, model_dir: Path | None, source: str,
    files: dict[Path, FileIdentity],
) -> None:
    """Check every external reference against the rules above, without reading the tensors;
    adds the files they name to ``files`` with their identity, for
    :func:`read_external_tensors` (a file already there must still have that identity).

    ``source`` names the model in error messages.  ``model_dir`` is None when the model came as
    bytes or a ModelProto: then external data cannot be resolved safely and is an error.
    """
    resolved: dict[str, Path] = {}
    for tensor, sparse in _tensor_sites(model):
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
        if location not in resolved:
            path = resolve_inside(model_dir, location, tensor.name, source)
            current = FileIdentity.of(path.stat())
            if files.setdefault(path, current) != current:
                raise ModelLoadError(f"{source}: the file '{path}' changed while it was read")
            resolved[location] = path
        path = resolved[location]
        identity = files[path]
        offset, length = _checked_range(path, identity.size, info, tensor, source)
        if sparse:  # onnx-ir has no lazy form for these: read now, into the protobuf
            tensor.raw_data = _read_bytes(path, offset, length, identity, tensor.name, source)
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


def _checked_range(
    path: Path, size: int, info: dict[str, str], tensor: onnx.TensorProto, source: str
) -> tuple[int, int]:
    """``(offset, length)`` of the tensor's bytes, checked against the file and the shape."""
    where = f"{source}: external data of tensor '{tensor.name}' in '{path.name}'"
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise ModelLoadError(f"{where}: offset/length are not integers") from exc
    if (
        offset < 0
        or offset > size
        or (length is not None and (length < 0 or offset + length > size))
    ):
        raise ModelLoadError(
            f"{where}: offset {offset} and length {length} lie outside the file of {size} bytes"
        )
    length = size - offset if length is None else length
    expected = _expected_nbytes(tensor)
    if expected is not None and length != expected:
        raise ModelLoadError(
            f"{where}: holds {length} bytes but shape {list(tensor.dims)} needs {expected}"
        )
    return offset, length


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


# -- reading -------------------------------------------------------------------------------------


def read_external_tensors(
    model: ir.Model, model_dir: Path | None, files: dict[Path, FileIdentity], source: str
) -> int:
    """Replace every external tensor of ``model`` (initializers and tensor attributes, in every
    graph, subgraph and function) by an in-memory tensor read from its checked file; returns
    how many.  ``files`` is what :func:`check_external_data` filled in for this model."""
    reader = _TensorReader(model_dir, files, source)
    try:
        return reader.replace_all(model)
    finally:
        reader.close()


class _TensorReader:
    """Reads external tensors, keeping each file open while the model is being read."""

    def __init__(self, model_dir: Path | None, files: dict[Path, FileIdentity],
                 source: str) -> None:
        self._model_dir = model_dir
        self._files = files
        self._source = source
        self._handles: dict[Path, Any] = {}

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def replace_all(self, model: ir.Model) -> int:
        graphs: list[Any] = []
        containers: list[Any] = [model.graph, *model.functions.values()]
        nodes = [
            node
            for container in containers
            for node in ir.traversal.RecursiveGraphIterator(container, enter_graph=graphs.append)
        ]
        count = 0
        for graph in graphs:
            for value in getattr(graph, "initializers", {}).values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    value.const_value = self.read(value.const_value)
                    count += 1
        for node in nodes:
            for name, attr in list(node.attributes.items()):
                if attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value,
                                                                       ir.ExternalTensor):
                    node.attributes[name] = ir.AttrTensor(name, self.read(attr.value),
                                                          doc_string=attr.doc_string)
                    count += 1
                elif attr.type == ir.AttributeType.TENSORS and any(
                    isinstance(t, ir.ExternalTensor) for t in attr.value
                ):
                    tensors = [self.read(t) if isinstance(t, ir.ExternalTensor) else t
                               for t in attr.value]
                    node.attributes[name] = ir.AttrTensors(name, tensors,
                                                           doc_string=attr.doc_string)
                    count += len(tensors)
        return count

    def read(self, tensor: ir.ExternalTensor) -> ir.TensorProtocol:
        """The tensor's values, read from its file into a new read-only array."""
        name = tensor.name or ""
        if self._model_dir is None:  # check_external_data refuses these; never read blindly
            raise ModelLoadError(f"{self._source}: tensor '{name}' has external data but no "
                                 "model folder to read it from")
        path = resolve_inside(self._model_dir, str(tensor.location), name, self._source)
        if path not in self._files:
            raise ModelLoadError(f"{self._source}: tensor '{name}' names the file '{path}', "
                                 "which was not checked when the model was read")
        offset = tensor.offset or 0
        length = tensor.length if tensor.length is not None else self._files[path].size - offset
        dtype = tensor.dtype
        if dtype in _SUB_BYTE_OR_STRING or dtype.bitwidth % 8:
            return self._read_via_proto(tensor, path, offset, length)
        array = np.empty(tensor.shape.numpy(), dtype=np.dtype(dtype.numpy()).newbyteorder("<"))
        if array.nbytes != length:
            raise ModelLoadError(f"{self._source}: external data of tensor '{name}' holds "
                                 f"{length} bytes but its shape needs {array.nbytes}")
        self._read_into(path, offset, array.reshape(-1).view(np.uint8), name)
        array.flags.writeable = False  # weights are shared by every run: never written
        return ir.Tensor(array, dtype=dtype, name=tensor.name, doc_string=tensor.doc_string)

    def _read_via_proto(self, tensor: ir.ExternalTensor, path: Path, offset: int,
                        length: int) -> ir.TensorProtocol:
        """Packed sub-byte and string tensors: the bytes through onnx-ir's own decoding."""
        proto = onnx.TensorProto(name=tensor.name or "", data_type=int(tensor.dtype),
                                 dims=list(tensor.shape.numpy()))
        proto.raw_data = _read_bytes(path, offset, length, self._files[path], proto.name,
                                     self._source)
        return ir.serde.deserialize_tensor(proto)

    def _handle(self, path: Path, name: str) -> Any:
        if path not in self._handles:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
            if FileIdentity.of(os.fstat(handle.fileno())) != self._files[path]:
                handle.close()
                raise ModelLoadError(f"{self._source}: the file '{path}' holding tensor "
                                     f"'{name}' changed after the model was read")
            self._handles[path] = handle
        return self._handles[path]

    def _read_into(self, path: Path, offset: int, target: np.ndarray, name: str) -> None:
        handle = self._handle(path, name)
        handle.seek(offset)
        view, done = target.data, 0
        while done < len(view):  # one read() returns at most ~2 GiB on Linux
            count = handle.readinto(view[done:])
            if not count:
                raise ModelLoadError(f"{self._source}: the file '{path}' ended inside tensor "
                                     f"'{name}' (truncated after the model was read?)")
            done += count


def _read_bytes(path: Path, offset: int, length: int, identity: FileIdentity, name: str,
                source: str) -> bytes:
    with open(path, "rb") as handle:
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            raise ModelLoadError(f"{source}: the file '{path}' holding tensor '{name}' changed "
                                 "after the model was read")
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise ModelLoadError(f"{source}: the file '{path}' ended inside tensor '{name}'")
    return data
