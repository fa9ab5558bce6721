"""Provider names -> backends.

Users name where a session should run in three spellings, in priority order:
Hetrix device names (``"cpu"``, ``"cuda:0"``, ``"mps"``), backend-qualified names (``"numpy:cpu"``,
``"torch:cuda:0"``) and ONNX Runtime's provider names (``"CUDAExecutionProvider"``, also as
``(name, options)`` pairs).  Like ONNX Runtime, which always appends its CPU provider, the NumPy
CPU backend is added last to every session so an op the preferred device lacks falls back per node.

torch is optional: it is located with ``importlib.util.find_spec`` and imported only when a torch
provider is asked for (or when :func:`available_providers` probes the devices).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from hetrix.backends.base import Backend
from hetrix.backends.torch_setup import import_torch
from hetrix.errors import InvalidArgumentError

ProviderSpec = str | tuple[str, dict[str, Any]]

NUMPY_CPU = "numpy:cpu"

_ALIASES = {
    "cpu": NUMPY_CPU,
    "numpy": NUMPY_CPU,
    NUMPY_CPU: NUMPY_CPU,
    "CPUExecutionProvider": NUMPY_CPU,
    "torch": "torch:cpu",
}

_TORCH_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "npu")
_ORT_DEVICE_PROVIDERS = {
    "CUDAExecutionProvider": "cuda",
    "ROCMExecutionProvider": "cuda",  # ROCm builds of torch use the "cuda" device type
}


def torch_installed() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def _torch_devices() -> list[str]:
    """The torch devices usable here, accelerators first (imports torch)."""
    torch = import_torch()

    devices: list[str] = []
    if torch.cuda.is_available():
        devices += [f"torch:cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("torch:mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += [f"torch:xpu:{i}" for i in range(xpu.device_count())]
    if importlib.util.find_spec("torch_npu") is not None:
        devices += _npu_devices()
    devices.append("torch:cpu")
    return devices


def _npu_devices() -> list[str]:
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        npu = torch.npu  # type: ignore[attr-defined]
        return [f"torch:npu:{i}" for i in range(npu.device_count())] if npu.is_available() else []
    except Exception:  # a broken vendor plugin must not break provider listing
        return []


def available_providers() -> list[str]:
    """Backend names usable on this machine, best first; ``numpy:cpu`` is always last."""
    devices = _torch_devices() if torch_installed() else []
    return [*devices, NUMPY_CPU]


def canonical_name(spec: ProviderSpec) -> tuple[str, dict[str, Any]]:
    """``(backend name, options)`` for one provider entry; raises on unknown names."""
    name, options = (spec, {}) if isinstance(spec, str) else spec
    if not isinstance(name, str) or not isinstance(options, dict):
        raise InvalidArgumentError(f"a provider is a name or a (name, options dict) pair: {spec!r}")
    if name in _ALIASES:
        return _ALIASES[name], options
    if name in _ORT_DEVICE_PROVIDERS:
        device_id = int(options.get("device_id", 0))
        return f"torch:{_ORT_DEVICE_PROVIDERS[name]}:{device_id}", options
    device = name.removeprefix("torch:")
    kind, _, index = device.partition(":")
    if kind in _TORCH_DEVICE_TYPES and (not index or index.isdigit()):
        if kind in ("cpu", "mps"):
            device = kind  # a single device: "cpu:0" is "cpu"
        elif not index:
            device = f"{kind}:0"  # "cuda" means the first device, as in torch
        return f"torch:{device}", options
    known = ", ".join(sorted({*_ALIASES, *_ORT_DEVICE_PROVIDERS, "torch:<device>", "cuda:<n>"}))
    raise InvalidArgumentError(f"unknown provider '{name}'; known names: {known}")


def make_backends(providers: Sequence[ProviderSpec] | None) -> list[Backend]:
    """The session's backends in priority order (duplicates dropped, numpy:cpu appended last)."""
    from hetrix.backends.numpy_cpu import NumpyBackend

    specs = list(providers) if providers else [NUMPY_CPU]
    names: list[str] = []
    for spec in specs:
        name, _options = canonical_name(spec)
        if name not in names:
            names.append(name)
    if NUMPY_CPU not in names:
        names.append(NUMPY_CPU)
    return [NumpyBackend() if name == NUMPY_CPU else _torch_backend(name) for name in names]


def _torch_backend(name: str) -> Backend:
    """The TorchBackend for ``torch:<device>``; raises when the device does not exist here."""
    if not torch_installed():
        raise InvalidArgumentError(
            f"provider '{name}' needs PyTorch, which is not installed; available: "
            f"{', '.join(available_providers())}"
        )
    available = _torch_devices()
    if name not in available:
        raise InvalidArgumentError(
            f"provider '{name}' is not available on this machine; available: "
            f"{', '.join([*available, NUMPY_CPU])}"
        )
    import_torch()  # first, so that torch's OpenMP threads do not spin (see torch_setup)
    from hetrix.backends.torch_backend import TorchBackend

    return TorchBackend(name.removeprefix("torch:"))
