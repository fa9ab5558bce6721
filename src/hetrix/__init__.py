"""Hetrix: run ONNX models on heterogeneous hardware behind one ONNX Runtime-compatible API."""

from __future__ import annotations

from hetrix.errors import (
    ExecutionError,
    HetrixError,
    InvalidArgumentError,
    InvalidInputError,
    ModelLoadError,
    UnsafeExternalDataError,
    UnsupportedOperatorError,
)
from hetrix.runtime.providers import available_providers as get_available_providers
from hetrix.runtime.session import (
    InferenceSession,
    ModelMetadata,
    NodeArg,
    RunOptions,
    SessionOptions,
)

__version__ = "0.1.0"

__all__ = [
    "ExecutionError",
    "HetrixError",
    "InferenceSession",
    "InvalidArgumentError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelMetadata",
    "NodeArg",
    "RunOptions",
    "SessionOptions",
    "UnsafeExternalDataError",
    "UnsupportedOperatorError",
    "get_available_providers",
]
