"""Measured figures cached on disk, keyed by a fingerprint of the device and its software.

A device's figures live in ``<cache dir>/devices/<kind>-<index>-<key>.json`` where ``key`` hashes
the fingerprint: what the device is (name, cores and ISA features, memory, compute capability,
driver and runtime versions) and what drives it (NumPy and its BLAS, torch, JAX, Python).  Any
change gives a new key, so stale figures are simply not found and the device is measured again;
files of other configurations stay (switching back to an environment finds its figures again).

The cache directory is ``platformdirs.user_cache_dir("hetrix")``, or ``$HETRIX_CACHE_DIR``.
A file that cannot be read or parsed is ignored with a warning in the log.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from hetrix.devices.base import Device
from hetrix.devices.measure import DeviceFigures, MeasureConfig, measure_device

logger = logging.getLogger(__name__)

ENV_CACHE_DIR = "HETRIX_CACHE_DIR"
CACHE_FORMAT = 1
METHOD_VERSION = 1
"""Bumped when the microbenchmark changes, so figures measured the old way are re-measured."""
LIBRARIES = ("numpy", "torch", "torch_npu", "jax", "jaxlib")


def cache_dir() -> Path:
    """Hetrix's cache directory: ``$HETRIX_CACHE_DIR`` or the platform's user cache dir."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("hetrix"))


def figures_dir() -> Path:
    """Where device figures are cached."""
    return cache_dir() / "devices"


# -- fingerprint -------------------------------------------------------------------------------


def fingerprint(device: Device) -> dict[str, Any]:
    """The facts the device's figures depend on, as plain JSON types (nothing is imported)."""
    facts: dict[str, Any] = {
        "method_version": METHOD_VERSION,
        "kind": device.kind,
        "index": device.index,
        "name": device.name,
        "python": ".".join(platform.python_version_tuple()[:2]),
        "libraries": library_versions(),
    }
    facts.update(_cpu_facts(device) if device.kind == "cpu" else _accelerator_facts(device))
    return json.loads(json.dumps(facts, sort_keys=True))


def fingerprint_key(facts: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint."""
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that run the benchmarks (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_facts(cpu: Any) -> dict[str, Any]:
    blas = getattr(cpu, "blas", None)
    return {
        "arch": getattr(cpu, "arch", ""),
        "logical_cores": getattr(cpu, "logical_cores", None),
        "physical_cores": getattr(cpu, "physical_cores", None),
        "usable_cores": getattr(cpu, "usable_cores", None),
        "features": list(getattr(cpu, "features", ())),
        "blas": " ".join(x for x in (getattr(blas, "name", ""), getattr(blas, "version", "")) if x),
        "blas_config": getattr(blas, "config", ""),
    }


def _accelerator_facts(device: Any) -> dict[str, Any]:
    return {key: getattr(device, key, None) for key in (
        "memory_bytes", "backend", "library_device", "compute_capability", "driver_version",
        "runtime_version", "library_version", "compute_units")}


# -- files -------------------------------------------------------------------------------------


def cache_file(device: Device, facts: dict[str, Any] | None = None) -> Path:
    """The file holding ``device``'s figures for its current fingerprint."""
    key = fingerprint_key(facts if facts is not None else fingerprint(device))
    return figures_dir() / f"{device.kind}-{device.index}-{key}.json"


def load_figures(device: Device) -> DeviceFigures | None:
    """The cached figures of ``device`` in its current configuration, or None.

    A missing file, or one written for another fingerprint, gives None; an unreadable or
    malformed one too, with a warning.
    """
    facts = fingerprint(device)
    path = cache_file(device, facts)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("ignoring unreadable device figures cache %s: %s", path, exc)
        return None
    try:
        return _parse(text, facts, device)
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("ignoring corrupt device figures cache %s: %s", path, exc)
        return None


def _parse(text: str, facts: dict[str, Any], device: Device) -> DeviceFigures | None:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError(f"not a format {CACHE_FORMAT} figures file")
    if data.get("fingerprint") != facts:
        logger.info("cached figures of %s are for another configuration", device.id)
        return None
    figures = DeviceFigures.from_dict(data["figures"])
    if figures.device_id != device.id:
        raise ValueError(f"figures of {figures.device_id}, not {device.id}")
    return figures


def store_figures(device: Device, figures: DeviceFigures) -> Path:
    """Write ``figures`` as the cache entry of ``device``'s current fingerprint (atomically)."""
    facts = fingerprint(device)
    path = cache_file(device, facts)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": CACHE_FORMAT, "fingerprint": facts, "device": device.to_dict(),
                "figures": figures.to_dict()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def get_figures(device: Device, *, remeasure: bool = False, measure_missing: bool = True,
                config: MeasureConfig | None = None) -> DeviceFigures | None:
    """The device's figures: cached ones when its fingerprint matches, else freshly measured.

    ``remeasure`` measures even when cached figures exist; with ``measure_missing=False`` a
    cache miss returns None instead of measuring.  Fresh figures are stored; a cache that
    cannot be written is logged, and the figures are still returned.
    """
    if not remeasure:
        cached = load_figures(device)
        if cached is not None or not measure_missing:
            return cached
    figures = measure_device(device, config)
    try:
        store_figures(device, figures)
    except OSError as exc:
        logger.warning("could not cache the figures of %s: %s", device.id, exc)
    return figures
