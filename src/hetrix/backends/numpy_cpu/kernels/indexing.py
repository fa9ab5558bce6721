"""indexing kernels of the NumPy CPU backend.

Gathers, scatters, sorting-based selections and cumulative ops.  Index tensors may hold negative
values (counted from the end of their axis); out-of-range indices raise ValueError.  Scatters copy
their ``data`` input once and write into the copy; kernels never write into their inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

# --------------------------------------------------------------------------------------------------
# helpers


def _axis(axis: int, rank: int, op: str) -> int:
    """``axis`` made non-negative, or a ValueError naming ``op`` when it is out of range."""
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


def _scalar_int(value: Any, op: str, name: str) -> int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"{op}: input '{name}' must hold one element, got shape {arr.shape}")
    return int(arr.reshape(-1)[0])


def _checked(indices: np.ndarray, dim: int, op: str) -> np.ndarray:
    """``indices`` with negatives wrapped, or a ValueError when any is outside [-dim, dim)."""
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise ValueError(f"{op}: index out of range [-{dim}, {dim - 1}]")
    return np.where(indices < 0, indices + dim, indices) if indices.size else indices


def _element_index(indices: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """The fancy index of ``data[i0, .., indices[i], .., in]`` for every position i."""
    grids = list(np.ogrid[tuple(slice(0, d) for d in indices.shape)])
    grids[axis] = indices
    return tuple(grids)


_REDUCERS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_into(
    out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str, op: str
) -> None:
    """``out[index] (reduction)= updates``; duplicates accumulate through ``ufunc.at``."""
    if reduction == "none":
        # With duplicate indices numpy keeps the last update, as the spec's reference loop does.
        out[index] = updates
        return
    ufunc = _REDUCERS.get(reduction)
    if ufunc is None:
        raise ValueError(f"{op}: unknown reduction {reduction!r}")
    ufunc.at(out, index, updates)


# --------------------------------------------------------------------------------------------------
# gathers


@kernel("Gather", since=1)
def gather(ctx: NodeContext, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Entries of ``data`` along ``axis`` picked by ``indices`` (a view for a scalar index)."""
    axis = _axis(ctx.attrs.get("axis", 0), data.ndim, "Gather")
    dim = data.shape[axis]
    if indices.ndim == 0:
        # A scalar index selects one slab: a basic-indexing view, not a gathered copy.
        i = int(indices)
        if not -dim <= i < dim:
            raise ValueError(f"Gather: index {i} out of range [-{dim}, {dim - 1}]")
        i += dim if i < 0 else 0
        slab = data[(slice(None),) * axis + (slice(i, i + 1),)]
        return slab.reshape(data.shape[:axis] + data.shape[axis + 1 :])
    try:
        return np.take(data, indices, axis=axis)
    except IndexError:
        raise ValueError(f"Gather: index out of range [-{dim}, {dim - 1}]") from None


@kernel("GatherElements", since=11)
def gather_elements(ctx: NodeContext, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``out[i..] = data[i.. with indices[i..] on axis]``; output has the shape of indices."""
    axis = _axis(ctx.attrs.get("axis", 0), data.ndim, "GatherElements")
    if indices.ndim != data.ndim or any(
        i > d for a, (i, d) in enumerate(zip(indices.shape, data.shape, strict=True)) if a != axis
    ):
        raise ValueError(f"GatherElements: indices {indices.shape} do not fit data {data.shape}")
    indices = _checked(indices, data.shape[axis], "GatherElements")
    return data[_element_index(indices, axis)]


@kernel("GatherND", since=11)
def gather_nd(ctx: NodeContext, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Slices of ``data`` addressed by the last dim of ``indices``, after ``batch_dims`` dims."""
    b = ctx.attrs.get("batch_dims", 0)
    k = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or b < 0 or b >= min(data.ndim, indices.ndim) or b + k > data.ndim:
        raise ValueError(f"GatherND: indices {indices.shape} do not fit data {data.shape}")
    if data.shape[:b] != indices.shape[:b]:
        raise ValueError(f"GatherND: batch dims differ, {data.shape[:b]} vs {indices.shape[:b]}")
    cols = [_checked(indices[..., j], data.shape[b + j], "GatherND") for j in range(k)]
    # Batch dims are indexed in lock-step with the index columns: their grids broadcast to the
    # index positions' shape, so data[(*batch, *cols)] has shape lead + data.shape[b + k:].
    lead = indices.shape[:-1]
    batch = list(np.ogrid[tuple(slice(0, d) for d in lead[:b])]) if b else []
    extra = (1,) * (len(lead) - b)
    index = [np.broadcast_to(g.reshape(g.shape + extra), lead) for g in batch] + cols
    if not index:  # k == 0 and no batch dims: every index position takes the whole of data
        return np.broadcast_to(data, lead + data.shape).copy()
    return data[tuple(index)]


# --------------------------------------------------------------------------------------------------
# scatters


def _scatter_elements(
    ctx: NodeContext, data: np.ndarray, indices: np.ndarray, updates: np.ndarray, op: str
) -> np.ndarray:
    axis = _axis(ctx.attrs.get("axis", 0), data.ndim, op)
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise ValueError(
            f"{op}: indices {indices.shape} and updates {updates.shape} must share a shape of "
            f"the rank of data {data.shape}"
        )
    if any(
        i > d for a, (i, d) in enumerate(zip(indices.shape, data.shape, strict=True)) if a != axis
    ):
        raise ValueError(f"{op}: indices {indices.shape} do not fit data {data.shape}")
    index = _element_index(_checked(indices, data.shape[axis], op), axis)
    out = data.copy()
    _scatter_into(out, index, updates, ctx.attrs.get("reduction", "none"), op)
    return out


@kernel("Scatter", since=9)
def scatter(
    ctx: NodeContext, data: np.ndarray, indices: np.ndarray, updates: np.ndarray
) -> np.ndarray:
    """Deprecated alias of ScatterElements without reduction."""
    return _scatter_elements(ctx, data, indices, updates, "Scatter")


@kernel("ScatterElements", since=11)
def scatter_elements(
    ctx: NodeContext, data: np.ndarray, indices: np.ndarray, updates: np.ndarray
) -> np.ndarray:
    """A copy of ``data`` with ``updates`` written (or reduced) at ``indices`` along ``axis``."""
    return _scatter_elements(ctx, data, indices, updates, "ScatterElements")


@kernel("ScatterND", since=11)
def scatter_nd(
    ctx: NodeContext, data: np.ndarray, indices: np.ndarray, updates: np.ndarray
) -> np.ndarray:
    """A copy of ``data`` with slices addressed by the rows of ``indices`` set from ``updates``."""
    k = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or k > data.ndim:
        raise ValueError(f"ScatterND: indices {indices.shape} do not fit data {data.shape}")
    expected = indices.shape[:-1] + data.shape[k:]
    if updates.shape != expected:
        raise ValueError(f"ScatterND: updates have shape {updates.shape}, expected {expected}")
    index = tuple(_checked(indices[..., j], data.shape[j], "ScatterND") for j in range(k))
    out = data.copy()
    _scatter_into(out, index, updates, ctx.attrs.get("reduction", "none"), "ScatterND")
    return out


@kernel("TensorScatter", since=24)
def tensor_scatter(
    ctx: NodeContext,
    past_cache: np.ndarray,
    update: np.ndarray,
    write_indices: np.ndarray | None = None,
) -> np.ndarray:
    """The KV cache with ``update`` written at each batch entry's write index along ``axis``."""
    axis = _axis(ctx.attrs.get("axis", -2), past_cache.ndim, "TensorScatter")
    if axis == 0:
        raise ValueError("TensorScatter: axis cannot be the batch axis 0")
    cache_rest = past_cache.shape[:axis] + past_cache.shape[axis + 1 :]
    if (
        update.ndim != past_cache.ndim
        or update.shape[:axis] + update.shape[axis + 1 :] != cache_rest
    ):
        raise ValueError(
            f"TensorScatter: update {update.shape} does not fit cache {past_cache.shape}"
        )
    batch, capacity, steps = past_cache.shape[0], past_cache.shape[axis], update.shape[axis]
    if steps > capacity:
        raise ValueError(f"TensorScatter: {steps} updates exceed the cache length {capacity}")
    start = (
        np.zeros(batch, dtype=np.int64)
        if write_indices is None
        else np.asarray(write_indices, dtype=np.int64).reshape(-1)
    )
    if start.shape != (batch,):
        raise ValueError(f"TensorScatter: write_indices must have shape ({batch},)")
    pos = start[:, None] + np.arange(steps)  # (batch, steps)
    if ctx.attrs.get("mode", "linear") == "circular":
        pos %= capacity
    elif np.any(start < 0) or np.any(pos >= capacity):
        raise ValueError("TensorScatter: write_indices + sequence length exceed the cache length")
    out = past_cache.copy()
    # With the sequence axis moved next to batch, (batch, pos) index two adjacent dims.
    np.moveaxis(out, axis, 1)[np.arange(batch)[:, None], pos] = np.moveaxis(update, axis, 1)
    return out


# --------------------------------------------------------------------------------------------------
# sorting-based selections


@kernel("Unique", since=11)
def unique(ctx: NodeContext, x: np.ndarray) -> Any:
    """Unique values (or sub-tensors along ``axis``), first indices, inverse and counts."""
    axis = ctx.attrs.get("axis")
    if axis is None:
        x_ = x.reshape(-1)
        axis_ = 0
        y, first, inverse, counts = np.unique(
            x_, return_index=True, return_inverse=True, return_counts=True
        )
    else:
        axis_ = _axis(axis, x.ndim, "Unique")
        y, first, inverse, counts = np.unique(
            x, return_index=True, return_inverse=True, return_counts=True, axis=axis_
        )
    inverse = inverse.reshape(-1)
    if not ctx.attrs.get("sorted", 1):
        # Reorder the sorted uniques by first occurrence, and remap inverse to the new order.
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=axis_)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    outs = (
        y,
        first.astype(np.int64, copy=False),
        inverse.astype(np.int64, copy=False),
        counts.astype(np.int64, copy=False),
    )
    return outs[0] if ctx.num_outputs == 1 else outs[: ctx.num_outputs]


def _descending_order(x: np.ndarray, axis: int) -> np.ndarray:
    """Indices sorting ``x`` descending along ``axis``, ties in ascending index order."""
    # A stable ascending sort of the flipped array, flipped back, orders ties by descending
    # flipped index = ascending original index; unlike negation it works for unsigned and bool.
    n = x.shape[axis]
    order = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return (n - 1) - np.flip(order, axis)


def _select_k(rows: np.ndarray, k: int, largest: bool) -> np.ndarray | None:
    """Ascending indices of each row's top ``k`` (lower index wins ties), in O(n); None if NaN."""
    if rows.dtype.kind == "f" and np.isnan(rows).any():
        return None  # NaN breaks the threshold comparisons below: take the sorting path
    n = rows.shape[1]
    kth = n - k if largest else k - 1
    threshold = np.partition(rows, kth, axis=1)[:, kth : kth + 1]
    better = rows > threshold if largest else rows < threshold
    # The rows' values equal to the threshold fill the remaining slots, earliest first.
    ties = rows == threshold
    room = k - better.sum(axis=1, keepdims=True)
    keep = better | (ties & (np.cumsum(ties, axis=1) <= room))
    return np.nonzero(keep)[1].reshape(rows.shape[0], k)


def _top_k(ctx: NodeContext, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    axis = _axis(ctx.attrs.get("axis", -1), x.ndim, "TopK")
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise ValueError(f"TopK: k={k} is not within [0, {n}] for axis {axis} of {x.shape}")
    largest = bool(ctx.attrs.get("largest", 1))
    picked = None
    if 0 < k * 8 <= n and x.dtype.kind in "fiu":
        # Few of many: select the k winners by partition, then sort only those.
        rows = np.moveaxis(x, axis, -1).reshape(-1, n)
        picked = _select_k(rows, k, largest)
    if picked is not None:
        vals = np.take_along_axis(rows, picked, axis=1)
        order = _descending_order(vals, 1) if largest else np.argsort(vals, 1, kind="stable")
        idx = np.take_along_axis(picked, order, axis=1).astype(np.int64, copy=False)
        idx = np.moveaxis(idx.reshape(np.moveaxis(x, axis, -1).shape[:-1] + (k,)), -1, axis)
    else:
        order = _descending_order(x, axis) if largest else np.argsort(x, axis, kind="stable")
        idx = np.take(order, np.arange(k), axis=axis).astype(np.int64, copy=False)
    return np.take_along_axis(x, idx, axis=axis), idx


@kernel("TopK", since=1)
def top_k_v1(ctx: NodeContext, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` (attribute) largest values along ``axis`` and their int64 indices."""
    return _top_k(ctx, x, ctx.attrs["k"])


@kernel("TopK", since=10)
def top_k(ctx: NodeContext, x: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (or smallest) values along ``axis``, sorted, and their int64 indices."""
    return _top_k(ctx, x, _scalar_int(k, "TopK", "K"))


def _arg_reduce(ctx: NodeContext, x: np.ndarray, fn: Any, op: str) -> np.ndarray:
    axis = _axis(ctx.attrs.get("axis", 0), x.ndim, op)
    if x.shape[axis] == 0:
        raise ValueError(f"{op}: cannot reduce the empty axis {axis} of {x.shape}")
    keepdims = bool(ctx.attrs.get("keepdims", 1))
    if ctx.attrs.get("select_last_index", 0):
        # The first extreme of the flipped axis is the last one of the original axis.
        idx = (x.shape[axis] - 1) - fn(np.flip(x, axis), axis=axis, keepdims=keepdims)
    else:
        idx = fn(x, axis=axis, keepdims=keepdims)
    return np.asarray(idx, dtype=np.int64)


@kernel("ArgMax", since=1)
def arg_max(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """int64 index of the largest element along ``axis`` (last with select_last_index)."""
    return _arg_reduce(ctx, x, np.argmax, "ArgMax")


@kernel("ArgMin", since=1)
def arg_min(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """int64 index of the smallest element along ``axis`` (last with select_last_index)."""
    return _arg_reduce(ctx, x, np.argmin, "ArgMin")


# --------------------------------------------------------------------------------------------------
# cumulative ops


def _cumulative(
    ctx: NodeContext, x: np.ndarray, axis: Any, ufunc: np.ufunc, identity: int, op: str
) -> np.ndarray:
    """Inclusive/exclusive, forward/reverse ``ufunc.accumulate`` along the ``axis`` input."""
    ax = _axis(_scalar_int(axis, op, "axis"), x.ndim, op)
    reverse = bool(ctx.attrs.get("reverse", 0))
    src = np.flip(x, ax) if reverse else x
    if ctx.attrs.get("exclusive", 0):
        # Shift by one: out[0] = identity, out[i] = acc(x[:i]).
        out = np.empty_like(src)
        head = [slice(None)] * x.ndim
        head[ax] = slice(0, 1)
        out[tuple(head)] = identity
        body, tail = list(head), list(head)
        body[ax], tail[ax] = slice(1, None), slice(0, -1)
        ufunc.accumulate(src[tuple(tail)], axis=ax, dtype=x.dtype, out=out[tuple(body)])
    else:
        # dtype=x.dtype stops numpy from widening small integers to int64.
        out = ufunc.accumulate(src, axis=ax, dtype=x.dtype)
    return np.flip(out, ax) if reverse else out


@kernel("CumSum", since=11)
def cum_sum(ctx: NodeContext, x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Cumulative sum along the ``axis`` input (``exclusive``, ``reverse``)."""
    return _cumulative(ctx, x, axis, np.add, 0, "CumSum")


@kernel("CumProd", since=26)
def cum_prod(ctx: NodeContext, x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Cumulative product along the ``axis`` input (``exclusive``, ``reverse``)."""
    return _cumulative(ctx, x, axis, np.multiply, 1, "CumProd")
