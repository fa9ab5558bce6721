"""Feeds for ``hetrix run``: ``.npy`` files, or random data shaped and typed like each input."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from hetrix.errors import InvalidArgumentError
from hetrix.runtime.session import NodeArg

_TENSOR_TYPE = re.compile(r"^tensor\((\w+)\)$")


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """``["a=1", "b=x.npy"]`` -> ``{"a": "1", "b": "x.npy"}`` (split at the first ``=``)."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise InvalidArgumentError(f"{option} expects NAME=VALUE, got '{pair}'")
        parsed[name] = value
    return parsed


def parse_dims(pairs: Sequence[str]) -> dict[str, int]:
    """``--dim batch=4`` values as integers."""
    dims: dict[str, int] = {}
    for name, value in parse_pairs(pairs, "--dim").items():
        if not value.isdigit():
            raise InvalidArgumentError(f"--dim {name}={value}: the value must be an integer >= 0")
        dims[name] = int(value)
    return dims


def numpy_dtype(type_str: str) -> np.dtype | None:
    """The numpy dtype of an ORT tensor type string (``tensor(float)`` -> float32), else None."""
    match = _TENSOR_TYPE.match(type_str)
    if not match:
        return None
    name = {"float": "FLOAT", "double": "DOUBLE"}.get(match.group(1), match.group(1).upper())
    try:
        return np.dtype(ir.DataType[name].numpy())
    except (KeyError, TypeError, ValueError, NotImplementedError):
        return None


def concrete_shape(arg: NodeArg, dims: dict[str, int]) -> tuple[int, ...]:
    """The input's shape with symbolic dims from ``dims`` (default 1) and unknown dims 1."""
    shape = []
    for dim in arg.shape:
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in dims:
            shape.append(dims[dim])
        else:
            shape.append(1)
    return tuple(shape)


def random_feed(arg: NodeArg, dims: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """Random data for one input: normal floats, small non-negative integers, booleans, text."""
    dtype = numpy_dtype(arg.type)
    if dtype is None:
        raise InvalidArgumentError(
            f"cannot make random data for input '{arg.name}' of type {arg.type}; "
            f"give it with --input {arg.name}=FILE.npy"
        )
    shape = concrete_shape(arg, dims)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if dtype.kind in "OSU":
        return np.array(["hetrix"] * math.prod(shape), dtype=object).reshape(shape)
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def load_npy(name: str, path: str) -> np.ndarray:
    """An input from a ``.npy`` file; the error names the input and the file."""
    file = Path(path)
    if not file.is_file():
        raise InvalidArgumentError(f"input '{name}': file '{file}' does not exist")
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"input '{name}': '{file}' is not a readable .npy file: {exc}"
        ) from exc


def build_feeds(
    inputs: Sequence[NodeArg],
    files: dict[str, str],
    random: bool,
    seed: int,
    dims: dict[str, int],
) -> dict[str, Any]:
    """Feeds for every input: from ``files`` where given, else random when ``random``."""
    names = [arg.name for arg in inputs]
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise InvalidArgumentError(f"--input names {unknown} are not inputs; inputs: {names}")
    missing = [n for n in names if n not in files]
    if missing and not random:
        raise InvalidArgumentError(
            f"no data for input(s) {missing}: give --input NAME=FILE.npy or --random"
        )
    rng = np.random.default_rng(seed)
    return {
        arg.name: load_npy(arg.name, files[arg.name]) if arg.name in files
        else random_feed(arg, dims, rng)
        for arg in inputs
    }


def output_stats(value: Any) -> dict[str, str]:
    """A few numbers about one output, formatted: min, max, mean, std, non-finite count."""
    if not isinstance(value, np.ndarray):
        return {"kind": type(value).__name__}
    if value.size == 0 or value.dtype.kind not in "biufc":
        return {}
    data = value.astype(np.complex128 if value.dtype.kind == "c" else np.float64)
    if value.dtype.kind == "c":
        data = np.abs(data)
    finite = data[np.isfinite(data)]
    stats = {"non-finite": str(int(data.size - finite.size))}
    if finite.size:
        stats.update(min=f"{finite.min():.6g}", max=f"{finite.max():.6g}",
                     mean=f"{finite.mean():.6g}", std=f"{finite.std():.6g}")
    return stats


def safe_filename(name: str) -> str:
    """An output name usable as a file name (``a/b:0`` -> ``a_b_0``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "output"
