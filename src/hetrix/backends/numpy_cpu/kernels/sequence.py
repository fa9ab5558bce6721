"""Sequence and Optional kernels of the NumPy CPU backend.

A Sequence value is a Python ``list`` of arrays and an empty Optional is ``None``.  Kernels never
mutate an input list in place: the same list may be read by other nodes, so they build a new one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


def _as_list(seq: Any, op: str) -> list[np.ndarray]:
    if not isinstance(seq, list):
        raise ValueError(f"{op}: expected a sequence input, got {type(seq).__name__}")
    return seq


def _position(pos: np.ndarray | None, n: int, default: int, upper: int, op: str) -> int:
    """A scalar position input normalised to [0, upper]; negative counts from the back."""
    if pos is None:
        return default
    arr = np.asarray(pos)
    if arr.size != 1:
        raise ValueError(f"{op}: position must be a scalar, got shape {arr.shape}")
    p = int(arr.reshape(()))
    if not -n <= p <= upper:
        raise ValueError(f"{op}: position {p} out of range [{-n}, {upper}]")
    return p + n if p < 0 else p


@kernel("SequenceEmpty", since=11)
def sequence_empty(ctx: NodeContext) -> list[np.ndarray]:
    """An empty sequence (the element dtype attribute only matters to type inference)."""
    return []


@kernel("SequenceConstruct", since=11)
def sequence_construct(ctx: NodeContext, *tensors: np.ndarray) -> list[np.ndarray]:
    """A sequence holding the inputs in order."""
    if tensors and len({t.dtype for t in tensors}) > 1:
        raise ValueError("SequenceConstruct: all inputs must have the same dtype")
    return list(tensors)


@kernel("SequenceInsert", since=11)
def sequence_insert(
    ctx: NodeContext, seq: list, tensor: np.ndarray, position: np.ndarray | None = None
) -> list[np.ndarray]:
    """A copy of the sequence with ``tensor`` inserted at ``position`` (default: the end)."""
    seq = _as_list(seq, "SequenceInsert")
    if seq and seq[0].dtype != tensor.dtype:
        raise ValueError(
            f"SequenceInsert: tensor dtype {tensor.dtype} differs from sequence {seq[0].dtype}"
        )
    n = len(seq)
    p = _position(position, n, n, n, "SequenceInsert")
    return [*seq[:p], tensor, *seq[p:]]


@kernel("SequenceAt", since=11)
def sequence_at(ctx: NodeContext, seq: list, position: np.ndarray) -> np.ndarray:
    """The element at ``position`` (negative counts from the back)."""
    seq = _as_list(seq, "SequenceAt")
    n = len(seq)
    return seq[_position(position, n, 0, n - 1, "SequenceAt")]


@kernel("SequenceErase", since=11)
def sequence_erase(
    ctx: NodeContext, seq: list, position: np.ndarray | None = None
) -> list[np.ndarray]:
    """A copy of the sequence without the element at ``position`` (default: the last)."""
    seq = _as_list(seq, "SequenceErase")
    n = len(seq)
    if n == 0:
        raise ValueError("SequenceErase: cannot erase from an empty sequence")
    p = _position(position, n, n - 1, n - 1, "SequenceErase")
    return seq[:p] + seq[p + 1 :]


@kernel("SequenceLength", since=11)
def sequence_length(ctx: NodeContext, seq: list) -> np.ndarray:
    """The number of elements, as an int64 scalar."""
    return np.asarray(len(_as_list(seq, "SequenceLength")), dtype=np.int64)


@kernel("ConcatFromSequence", since=11)
def concat_from_sequence(ctx: NodeContext, seq: list) -> np.ndarray:
    """Concatenate (or stack, with ``new_axis=1``) the sequence's tensors along ``axis``."""
    seq = _as_list(seq, "ConcatFromSequence")
    if not seq:
        raise ValueError("ConcatFromSequence: the input sequence is empty")
    axis = ctx.attrs.get("axis")
    if axis is None:
        raise ValueError("ConcatFromSequence: attribute 'axis' is required")
    rank = seq[0].ndim
    new_axis = bool(ctx.attrs.get("new_axis", 0))
    hi = rank if new_axis else rank - 1
    if not -hi - 1 <= axis <= hi:
        raise ValueError(f"ConcatFromSequence: axis {axis} out of range for rank {rank}")
    try:
        return np.stack(seq, axis=axis) if new_axis else np.concatenate(seq, axis=axis)
    except ValueError as exc:
        raise ValueError(f"ConcatFromSequence: incompatible tensor shapes: {exc}") from exc


@kernel("SplitToSequence", since=11)
def split_to_sequence(
    ctx: NodeContext, x: np.ndarray, split: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split ``x`` along ``axis`` into chunks of the given lengths (default 1, squeezable)."""
    axis = int(ctx.attrs.get("axis", 0))
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"SplitToSequence: axis {axis} out of range for rank {x.ndim}")
    axis %= x.ndim
    dim = x.shape[axis]
    if split is None:
        parts = np.split(x, dim, axis=axis) if dim else []
        if not ctx.attrs.get("keepdims", 1):
            parts = [np.squeeze(p, axis=axis) for p in parts]
        return parts
    split = np.asarray(split)
    if split.ndim == 0:
        size = int(split)
        if size <= 0:
            raise ValueError(f"SplitToSequence: split must be positive, got {size}")
        bounds = list(range(size, dim, size))
    else:
        sizes = split.astype(np.int64)
        if (sizes < 0).any() or sizes.sum() != dim:
            raise ValueError(
                f"SplitToSequence: split {sizes.tolist()} does not partition axis of size {dim}"
            )
        bounds = np.cumsum(sizes)[:-1].tolist()
    return np.split(x, bounds, axis=axis)


@kernel("Optional", since=15)
def optional(ctx: NodeContext, value: Any = None) -> Any:
    """An optional holding the input, or an empty optional (None) when it is omitted."""
    return value


@kernel("OptionalGetElement", since=15)
def optional_get_element(ctx: NodeContext, value: Any = None) -> Any:
    """The element of a non-empty optional (tensors and sequences pass through)."""
    if value is None:
        raise ValueError("OptionalGetElement: the optional input is empty")
    return value


@kernel("OptionalHasElement", since=15)
def optional_has_element(ctx: NodeContext, value: Any = None) -> np.ndarray:
    """Whether the optional holds a value (an omitted input counts as empty)."""
    return np.asarray(value is not None)
