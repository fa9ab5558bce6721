"""Seeded random feeds shaped and typed like a model's inputs, the same for every runtime.

Symbolic dimensions are resolved in this order: a ``--dim NAME=V`` value, then the batch size for
axis 0, then a default chosen from the dimension's name (:data:`DEFAULT_DIMS`), else 1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from hetrix.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

DEFAULT_DIMS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("seq", "len", "token", "time", "step", "position"), 128),
    (("height", "width"), 224),
)
"""(name fragments, value) for symbolic dims other than the batch: ``sequence`` -> 128."""

INT_HIGH = 10
"""Random integer inputs are drawn from ``[0, INT_HIGH)``: valid ids for any vocabulary."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input a caller must feed: name, numpy dtype, dims (int, name or None)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]


def model_inputs(path: str | Path) -> list[InputSpec]:
    """The inputs of the model at ``path`` that have no initializer (weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise InvalidArgumentError(f"input '{value.name}' is not a tensor: cannot benchmark")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = tuple(_dim(d) for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or None


def has_symbolic_batch(specs: list[InputSpec]) -> bool:
    """Whether axis 0 of some input is symbolic (so ``--batch`` changes it)."""
    return any(s.dims and not isinstance(s.dims[0], int) for s in specs)


def resolve_shape(spec: InputSpec, batch: int, dims: Mapping[str, int]) -> tuple[int, ...]:
    """The concrete shape of one input for this batch size and these ``--dim`` values."""
    shape = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif dim is not None and dim in dims:
            shape.append(dims[dim])
        elif axis == 0:
            shape.append(batch)
        else:
            shape.append(default_dim(dim))
    return tuple(shape)


def default_dim(name: str | None) -> int:
    """The default size of a symbolic dim that is not the batch, chosen from its name."""
    lowered = (name or "").lower()
    for fragments, value in DEFAULT_DIMS:
        if any(f in lowered for f in fragments):
            return value
    logger.info("symbolic dim %r set to 1 (use --dim %s=V)", name, name or "NAME")
    return 1


def random_input(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random data for one input; integer inputs named like masks, token types or positions get
    ones, zeros and ``arange`` so that embedding lookups stay in range."""
    name = spec.name.lower()
    if spec.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if spec.dtype.kind in "iu":
        if "mask" in name:
            return np.ones(shape, dtype=spec.dtype)
        if "type" in name or "segment" in name:
            return np.zeros(shape, dtype=spec.dtype)
        if "position" in name and shape:
            return np.broadcast_to(np.arange(shape[-1], dtype=spec.dtype), shape).copy()
        return rng.integers(0, INT_HIGH, size=shape).astype(spec.dtype)
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    raise InvalidArgumentError(
        f"cannot make random data for input '{spec.name}' of dtype {spec.dtype}"
    )


def make_feeds(
    specs: list[InputSpec], batch: int, dims: Mapping[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """One seeded random array per input."""
    unknown = set(dims) - {d for s in specs for d in s.dims if isinstance(d, str)}
    if unknown:
        logger.warning("--dim names %s are not symbolic dims of the model", sorted(unknown))
    rng = np.random.default_rng(seed)
    return {s.name: random_input(s, resolve_shape(s, batch, dims), rng) for s in specs}


def effective_batch(specs: list[InputSpec], feeds: Mapping[str, np.ndarray]) -> int:
    """The batch size actually run: axis 0 of the first input with at least one axis."""
    for spec in specs:
        value = feeds[spec.name]
        if value.ndim:
            return int(value.shape[0])
    return 1
