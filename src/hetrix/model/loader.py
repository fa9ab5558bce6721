"""Model loading: a path, bytes or ModelProto in, a checked and normalised ModelProto out.

The steps, each of which raises :class:`~hetrix.errors.ModelLoadError` naming the model:
read and parse; refuse opsets newer than the installed onnx knows; read external data from inside
the model's folder only; fill attribute defaults; inline functions.  The result is converted to
onnx-ir by the session, which plans it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import google.protobuf.message
import onnx
from onnx import defs

from hetrix.errors import ModelLoadError
from hetrix.model.external_data import has_external_data, load_external_data
from hetrix.model.functions import CanRun, expand_function_ops, fill_attribute_defaults, opset_map

ModelSource = str | os.PathLike | bytes | onnx.ModelProto

OLDEST_SUPPORTED_OPSET = 1


@dataclass
class LoadedModel:
    """A parsed model and where it came from (``source`` names it in messages)."""

    proto: onnx.ModelProto
    source: str
    model_dir: Path | None
    functions_expanded: int = 0


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
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"model file '{path}' cannot be read: {exc}") from exc
        loaded = LoadedModel(_parse(data, str(path)), str(path), path.resolve().parent)
    else:
        raise TypeError(
            f"a model must be a file path, bytes or onnx.ModelProto, not {type(model).__name__}"
        )
    _check_opsets(loaded)
    if has_external_data(loaded.proto):
        load_external_data(loaded.proto, loaded.model_dir, loaded.source)
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
