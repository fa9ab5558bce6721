"""Shared helpers of the torch kernels: registration, dtype tables, host reads of shape inputs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hetrix.backends.registry import Kernel, NodeContext, register

kernel = functools.partial(register, "torch")
"""``@kernel("Relu", since=6)`` registers a torch kernel (see :mod:`hetrix.backends.registry`)."""

NEEDS_DEVICE: set[Kernel] = set()
"""Kernels that create tensors without a tensor input; the backend binds ``device=`` for them."""


def needs_device(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a kernel as taking the backend's ``device`` keyword (apply under ``@kernel``)."""
    NEEDS_DEVICE.add(fn)
    return fn


# ONNX TensorProto element type -> torch dtype, for the types this backend computes with.
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}

_NUMPY_TO_TORCH: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}


def numpy_to_torch_dtype(dtype: np.dtype) -> torch.dtype | None:
    """The torch dtype holding numpy ``dtype``, or None when torch has none (strings, uint32...)."""
    return _NUMPY_TO_TORCH.get(np.dtype(dtype).name)


def torch_to_numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (bfloat16 is ml_dtypes')."""
    if dtype == torch.bfloat16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(str(dtype).removeprefix("torch."))


def onnx_dtype(elem_type: int) -> torch.dtype:
    """torch dtype of an ONNX element type (the support check ruled out the others)."""
    return ONNX_TO_TORCH[int(elem_type)]


def host_ints(value: torch.Tensor | np.ndarray | Sequence[int] | None) -> list[int]:
    """A shape-like input read on the host as Python ints (cheap: these tensors are tiny)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(value).reshape(-1).tolist()]


def host_scalar(value: torch.Tensor | np.ndarray | None, default: Any = None) -> Any:
    """A scalar input (tensor or host array) as a Python number; None/empty gives ``default``."""
    if value is None:
        return default
    flat = value.reshape(-1)
    if flat.shape[0] == 0:
        return default
    return flat[0].item()


def host_size(value: torch.Tensor | np.ndarray | None) -> int:
    """Element count of an optional input held on the host or the device."""
    if value is None:
        return 0
    return int(np.prod(value.shape)) if not isinstance(value, torch.Tensor) else value.numel()


def as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` (an attribute: numpy array or number) as a tensor on ``like``'s device."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device)
    array = np.asarray(value)
    dtype = numpy_to_torch_dtype(array.dtype)
    return torch.as_tensor(array.copy(), dtype=dtype, device=like.device)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype math runs in: half types in float32 on CPU (its half kernels are few and slow)."""
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
        return torch.float32
    return x.dtype


def normalize_axis(axis: int, rank: int) -> int:
    """A possibly negative ONNX axis as a non-negative one."""
    return axis + rank if axis < 0 else axis


__all__ = [
    "NEEDS_DEVICE",
    "NodeContext",
    "as_tensor",
    "compute_dtype",
    "host_ints",
    "host_scalar",
    "host_size",
    "kernel",
    "needs_device",
    "normalize_axis",
    "onnx_dtype",
]


AttrCheck = Callable[[Any, str], str]
"""``check(node, device_type) -> reason`` for an onnx-ir node; empty when torch supports it."""

ATTR_CHECKS: dict[str, AttrCheck] = {}
"""Per-op checks run at plan time, so that unsupported modes fall back to another backend."""


def attr_check(*op_types: str) -> Callable[[AttrCheck], AttrCheck]:
    """Register ``check(node, device_type) -> reason`` for ``op_types`` (empty: supported)."""

    def decorate(fn: AttrCheck) -> AttrCheck:
        for op_type in op_types:
            ATTR_CHECKS[op_type] = fn
        return fn

    return decorate


def node_attr(node: Any, name: str, default: Any = None) -> Any:
    """An attribute of an onnx-ir node as a Python value (``default`` when absent)."""
    attr = node.attributes.get(name)
    if attr is None:
        return default
    value = attr.value
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
