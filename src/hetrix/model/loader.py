"""Model loading: a path, bytes or ModelProto in, a checked and normalised ModelProto out.

The steps, each of which raises :class:`~hetrix.errors.ModelLoadError` naming the model:
read and parse; refuse opsets newer than the installed onnx knows; check external data (inside
the model's folder only); fill attribute defaults; inline functions.  :func:`to_ir` converts the
result to onnx-ir for the session, reading the weights.

Memory: a model given as a file path is parsed without its large weights, which become
references into the file (:mod:`hetrix.model.inline_weights`), and every external tensor is read
only by :func:`to_ir`, straight into its array.  So loading holds one copy of the weights, not
the three (file bytes, protobuf, arrays) of a plain parse; and inlining functions, which
serializes the whole model, copies only its structure.  Models given as bytes or a ModelProto
are parsed whole (their bytes are the caller's to keep or free).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import google.protobuf.message
import onnx
import onnx_ir as ir
from onnx import defs

from hetrix.errors import ModelLoadError
from hetrix.model.external_data import (
    FileIdentity,
    check_external_data,
    has_external_data,
    read_external_tensors,
)
from hetrix.model.functions import CanRun, expand_function_ops, fill_attribute_defaults, opset_map
from hetrix.model.inline_weights import WireFormatError, split_weights

ModelSource = str | os.PathLike | bytes | onnx.ModelProto

OLDEST_SUPPORTED_OPSET = 1

DEFER_WEIGHTS_FROM_BYTES = 1024
"""Weights inside a model file of at least this size are read by :func:`to_ir`, not parsed;
smaller ones (shapes, scalars) stay in the protobuf, where they cost nothing."""


@dataclass
class LoadedModel:
    """A parsed model and where it came from (``source`` names it in messages).

    Tensors whose data lies in files (external data, and the large weights of a model read from
    a path) are references in ``proto``, checked; ``external_files`` holds the files they name.
    """

    proto: onnx.ModelProto
    source: str
    model_dir: Path | None
    functions_expanded: int = 0
    external_files: dict[Path, FileIdentity] = field(default_factory=dict)


def read_model(model: ModelSource) -> LoadedModel:
    """Parse the model and resolve its external data, without changing its graph."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # never mutate the caller's object
        loaded = LoadedModel(proto, "<ModelProto>", None)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        loaded = LoadedModel(_parse(bytes(model), "<bytes>"), "<bytes>", None)
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model file '{path}' does not exist or is not a file")
        real = path.resolve()
        proto, identity = _parse_file(real, str(path))
        # the file as parsed: its weights are read from it later, at the offsets parsed
        loaded = LoadedModel(proto, str(path), real.parent, external_files={real: identity})
    else:
        raise TypeError(
            f"a model must be a file path, bytes or onnx.ModelProto, not {type(model).__name__}"
        )
    _check_opsets(loaded)
    if has_external_data(loaded.proto):
        check_external_data(loaded.proto, loaded.model_dir, loaded.source, loaded.external_files)
    return loaded


def load_model(model: ModelSource, can_run: CanRun) -> LoadedModel:
    """Read the model and normalise it for planning (defaults filled, functions expanded)."""
    loaded = read_model(model)
    fill_attribute_defaults(loaded.proto)
    try:
        loaded.functions_expanded = expand_function_ops(loaded.proto, can_run)
    except Exception as exc:  # onnx's inliner raises plain C++ errors on malformed functions
        raise ModelLoadError(f"{loaded.source}: cannot inline its functions: {exc}") from exc
    return loaded


def to_ir(loaded: LoadedModel) -> ir.Model:
    """The model in onnx-ir, every tensor in memory (external ones read here, one at a time)."""
    try:
        model = ir.serde.deserialize_model(loaded.proto)
    except Exception as exc:
        raise ModelLoadError(f"model {loaded.source} cannot be read as ONNX: {exc}") from exc
    if loaded.external_files:
        read_external_tensors(model, loaded.model_dir, loaded.external_files, loaded.source)
    return model


def _parse_file(path: Path, source: str) -> tuple[onnx.ModelProto, FileIdentity]:
    """Parse the model file at the real path ``path`` with its large weights left in the file
    (see :mod:`hetrix.model.inline_weights`); also returns the identity of the file parsed."""
    try:
        with open(path, "rb") as handle:
            identity = FileIdentity.of(os.fstat(handle.fileno()))
            if identity.size == 0:
                raise ModelLoadError(f"model {source} is empty (0 bytes)")
            structure = _split_file(handle, f"./{path.name}")
            if structure is None:  # not mappable, or malformed: protobuf's parse reports it
                handle.seek(0)
                structure = handle.read()
    except OSError as exc:
        raise ModelLoadError(f"model file '{source}' cannot be read: {exc}") from exc
    return _parse(structure, source), identity


def _split_file(handle: BinaryIO, location: str) -> bytes | None:
    """The file's ModelProto without its large weights (see ``split_weights``), or None when the
    file cannot be memory-mapped or is not well-formed protobuf."""
    try:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        with memoryview(mapped) as view:
            return split_weights(view, location, DEFER_WEIGHTS_FROM_BYTES)
    except WireFormatError:
        return None
    finally:
        mapped.close()


def _parse(data: bytes, source: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"model {source} is empty (0 bytes)")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"model {source} is not a valid ONNX protobuf (truncated or corrupt file?): {exc}"
        ) from exc
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"model {source} has no graph or no opset_import: not an ONNX model")
    return proto


def _check_opsets(loaded: LoadedModel) -> None:
    newest = defs.onnx_opset_version()
    version = opset_map(loaded.proto).get("")
    if version is not None and not OLDEST_SUPPORTED_OPSET <= version <= newest:
        raise ModelLoadError(
            f"model {loaded.source} imports default-domain opset {version}; this installation "
            f"supports opsets {OLDEST_SUPPORTED_OPSET} to {newest} (onnx {onnx.__version__})"
        )
