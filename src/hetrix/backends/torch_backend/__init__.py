"""The device-generic PyTorch backend: one code path for cpu, cuda (and ROCm), mps, xpu and npu.

Values are ``torch.Tensor`` objects on the backend's device (Python lists for sequences, None for
empty optionals).  Kernels are written with device-agnostic torch ops, so CI exercises the same code
on torch's CPU device that runs on an accelerator.

This package imports torch; :mod:`hetrix.runtime.providers` imports it only when a torch provider
is asked for, so a numpy-only install never needs torch.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from hetrix.backends.base import Backend, RegistryBackend
from hetrix.backends.registry import Kernel
from hetrix.backends.torch_backend import kernels  # noqa: F401  (registers the kernels)
from hetrix.backends.torch_backend.kernels._common import (
    NEEDS_DEVICE,
    numpy_to_torch_dtype,
    torch_to_numpy_dtype,
)
from hetrix.backends.torch_backend.support import unsupported_reason


class TorchBackend(RegistryBackend):
    """Torch kernels on one torch device, e.g. ``TorchBackend("cuda:0")``."""

    registry_name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.torch_device = torch.device(device)
        self.name = f"torch:{device}"
        self.memory = f"torch:{device}"
        self.last_rejection = ""
        """Why the last :meth:`kernel_for` returned None for a node torch has a kernel for."""

    # -- placement -----------------------------------------------------------------------------

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        """The registered torch kernel, or None when a dtype or attribute rules this device out."""
        self.last_rejection = ""
        fn = super().kernel_for(node, opset)
        if fn is None:
            return None
        reason = unsupported_reason(node, self.torch_device.type)
        if reason:
            self.last_rejection = reason
            return None
        if fn in NEEDS_DEVICE:  # kernels that create tensors from nothing (Constant, ...)
            return functools.partial(fn, device=self.torch_device)
        return fn

    # -- memory --------------------------------------------------------------------------------

    def from_host(self, value: Any) -> Any:
        """numpy -> tensor on this device (pinned, non-blocking copies to a CUDA device)."""
        if value is None:
            return None
        if isinstance(value, list):
            return [self.from_host(item) for item in value]
        if isinstance(value, torch.Tensor):  # a torch feed handed straight to the copy step
            return value.to(self.torch_device)
        tensor = _tensor_from_numpy(np.asarray(value))
        if self.torch_device.type == "cpu":
            return tensor
        if self.torch_device.type == "cuda":
            return tensor.pin_memory().to(self.torch_device, non_blocking=True)
        return tensor.to(self.torch_device)

    def to_host(self, value: Any) -> Any:
        """tensor -> numpy array (bfloat16 through an ml_dtypes view)."""
        if value is None:
            return None
        if isinstance(value, list):
            return [self.to_host(item) for item in value]
        if not isinstance(value, torch.Tensor):
            return value
        return _tensor_to_numpy(value)

    def copy_from(self, value: Any, source: Backend) -> Any:
        """A direct ``tensor.to(device)`` between torch backends, through the host otherwise."""
        if isinstance(source, TorchBackend):
            return _to_device(value, self.torch_device)
        return self.from_host(source.to_host(value))


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _tensor_from_numpy(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing memory with ``array`` where torch allows it, else a copy."""
    dtype = array.dtype
    if dtype.name == "bfloat16":
        # ascontiguousarray turns a 0-d array into shape (1,): restore the shape
        bits = np.ascontiguousarray(array).view(np.int16).reshape(array.shape)
        return _tensor_from_numpy(bits).view(torch.bfloat16)
    if numpy_to_torch_dtype(dtype) is None:
        raise TypeError(f"torch cannot hold a {dtype} tensor")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    # torch.from_numpy rejects negative strides and warns on read-only memory: copy those
    if not array.flags.writeable or any(s < 0 for s in array.strides):
        array = np.array(array, copy=True, order="C")
    return torch.from_numpy(array)


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(torch_to_numpy_dtype(torch.bfloat16))
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    return tensor.numpy()


__all__ = ["TorchBackend"]
