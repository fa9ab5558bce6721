"""Provider names -> backends.

Users name where a session should run in three spellings, in priority order:
Hetrix device names (``"cpu"``), backend-qualified names (``"numpy:cpu"``) and ONNX Runtime's
provider names (``"CPUExecutionProvider"``, also as ``(name, options)`` pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hetrix.backends.base import Backend
from hetrix.errors import InvalidArgumentError

ProviderSpec = str | tuple[str, dict[str, Any]]

_ALIASES = {
    "cpu": "numpy:cpu",
    "numpy": "numpy:cpu",
    "numpy:cpu": "numpy:cpu",
    "CPUExecutionProvider": "numpy:cpu",
}


def available_providers() -> list[str]:
    """Backend names usable on this machine, best first (no device runtime is initialised)."""
    return ["numpy:cpu"]


def canonical_name(spec: ProviderSpec) -> tuple[str, dict[str, Any]]:
    """``(backend name, options)`` for one provider entry; raises on unknown names."""
    name, options = (spec, {}) if isinstance(spec, str) else spec
    if not isinstance(name, str) or not isinstance(options, dict):
        raise InvalidArgumentError(f"a provider is a name or a (name, options dict) pair: {spec!r}")
    if name not in _ALIASES:
        known = ", ".join(sorted(_ALIASES))
        raise InvalidArgumentError(f"unknown provider '{name}'; known here: {known}")
    return _ALIASES[name], options


def make_backends(providers: Sequence[ProviderSpec] | None) -> list[Backend]:
    """The session's backends in priority order (duplicates dropped)."""
    from hetrix.backends.numpy_cpu import NumpyBackend

    specs = list(providers) if providers else ["numpy:cpu"]
    backends: list[Backend] = []
    for spec in specs:
        name, _options = canonical_name(spec)
        if any(b.name == name for b in backends):
            continue
        backends.append(NumpyBackend())
    return backends
