"""tensor kernels of the NumPy CPU backend.

Creation, shape and layout operators.  The ones on every transformer's hot path (Reshape, Shape,
Squeeze, Unsqueeze, Flatten, Transpose, Slice, Identity) return views of their input rather than
copies; kernels never write into their inputs, so sharing memory is safe.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from hetrix.backends.numpy_cpu.kernels import _dnnl, _library, _onednn
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.layout import memory_order
from hetrix.backends.registry import offer_direct

# --------------------------------------------------------------------------------------------------
# helpers


def _axis(axis: int, rank: int, op: str) -> int:
    """``axis`` made non-negative, or a ValueError naming ``op`` when it is out of range."""
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


def _axes(axes: Any, rank: int, op: str) -> list[int]:
    """A list of distinct non-negative axes from an INTS attribute or an int tensor."""
    out = [_axis(int(a), rank, op) for a in _ints(axes)]
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {out}")
    return out


def _ints(values: Any) -> list[int]:
    """A 1-D int64 tensor (or a Python list / scalar) as a list of Python ints."""
    if isinstance(values, (list, tuple)):
        return [int(v) for v in values]
    return np.asarray(values).reshape(-1).tolist()


def _scalar(value: Any, op: str, name: str) -> Any:
    """The single element of a scalar or one-element tensor input."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"{op}: input '{name}' must hold one element, got shape {arr.shape}")
    return arr.reshape(-1)[0]


def _readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view of ``arr``: a cached value handed out on every run must not be changed."""
    view = arr.view()
    view.flags.writeable = False
    return view


# --------------------------------------------------------------------------------------------------
# constants and identities


def _string_array(value: Any) -> np.ndarray:
    """An object array of ``str`` from a str/bytes value or a list of them."""

    def as_str(v: Any) -> str:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)

    if isinstance(value, (list, tuple)):
        out = np.empty(len(value), dtype=object)
        out[:] = [as_str(v) for v in value]
        return out
    return np.array(as_str(value), dtype=object)


def _constant_value(attrs: dict[str, Any]) -> np.ndarray:
    """The tensor a Constant node's single set attribute describes."""
    if attrs.get("value") is not None:
        return np.asarray(attrs["value"])
    if attrs.get("sparse_value") is not None:
        return np.asarray(attrs["sparse_value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)
    if "value_string" in attrs:
        return _string_array(attrs["value_string"])
    if "value_strings" in attrs:
        return _string_array(list(attrs["value_strings"]))
    raise ValueError("Constant: the node sets none of the value attributes")


@kernel("Constant", since=1)
def constant(ctx: NodeContext) -> np.ndarray:
    """The constant tensor held in the node's attributes (read-only, built once)."""
    value = ctx.cache.get("value")
    if value is None:
        value = ctx.cache["value"] = _readonly(_constant_value(ctx.attrs))
    return value


@kernel("ConstantOfShape", since=9)
def constant_of_shape(ctx: NodeContext, shape: np.ndarray) -> np.ndarray:
    """A tensor of the given shape filled with the one-element ``value`` (default float32 0)."""
    dims = _ints(shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"ConstantOfShape: negative dimension in shape {dims}")
    value = ctx.attrs.get("value")
    if value is None:
        return np.zeros(dims, dtype=np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"ConstantOfShape: 'value' must hold one element, got {value.shape}")
    return np.full(dims, value.reshape(-1)[0], dtype=value.dtype)


@kernel("Identity", since=1)
def identity(ctx: NodeContext, x: Any) -> Any:
    """The input itself (tensors, sequences and optionals alike)."""
    return x


@kernel("Shape", since=1)
def shape(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """The input's shape as int64, sliced by ``start``/``end`` (opset 15) with Python clamping."""
    start = ctx.attrs.get("start", 0)
    end = ctx.attrs.get("end")
    return np.array(x.shape[start:end], dtype=np.int64)


@kernel("Size", since=1)
def size(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """The number of elements of the input as an int64 scalar."""
    # Only .shape is read, so a device tensor needs no copy to the host (see plan.METADATA_ONLY).
    return np.array(math.prod(x.shape), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# reshaping (all views)


def _reshape(x: np.ndarray, dims: list[int], allowzero: bool) -> np.ndarray:
    """``x`` viewed with ONNX shape ``dims`` (0 keeps the input dim unless allowzero)."""
    target = list(dims)
    infer = -1
    for i, d in enumerate(target):
        if d == -1:
            if infer >= 0:
                raise ValueError(f"Reshape: more than one -1 in shape {dims}")
            infer = i
        elif d == 0 and not allowzero:
            if i >= x.ndim:
                raise ValueError(f"Reshape: 0 at index {i} of {dims} but input has rank {x.ndim}")
            target[i] = x.shape[i]
        elif d < -1:
            raise ValueError(f"Reshape: invalid dimension {d} in shape {dims}")
    if infer >= 0:
        if allowzero and 0 in dims:
            raise ValueError(f"Reshape: allowzero with both 0 and -1 in shape {dims}")
        known = math.prod(d for i, d in enumerate(target) if i != infer)
        if known == 0 or x.size % known:
            raise ValueError(f"Reshape: cannot reshape {x.shape} into {dims}")
        target[infer] = x.size // known
    elif math.prod(target) != x.size:
        raise ValueError(f"Reshape: cannot reshape {x.shape} into {dims}")
    if _merges_innermost_channels(x, target):
        return _merge_channels_last(x)
    return x.reshape(target)


def _merges_innermost_channels(x: np.ndarray, target: list[int]) -> bool:
    """Whether ``x`` (5-D, not contiguous) is reshaped to 4-D by merging axes 1 and 2, and those
    are the innermost axes in memory: the end of a channel shuffle (ShuffleNet's Reshape,
    Transpose, Reshape) on a channels-last activation."""
    return (
        x.ndim == 5
        and len(target) == 4
        and target == [x.shape[0], x.shape[1] * x.shape[2], x.shape[3], x.shape[4]]
        and not x.flags.c_contiguous
        and x.size > 0
        and max(x.strides[1], x.strides[2]) < min(x.strides[3], x.strides[4])
        and _library.torch_functional() is not None
    )


def _merge_channels_last(x: np.ndarray) -> np.ndarray:
    """``x.reshape(N, C1*C2, H, W)`` written channels-last.

    NumPy's reshape would copy into C order (NCHW), which the next convolution converts back to
    NHWC: two full copies where one, written in the layout the source already has, serves.
    PyTorch's strided copy does it (NumPy's, with the 4-8 element innermost loops of a channel
    shuffle, is 2x slower than its own C-order reshape, so without torch that one is kept).
    """
    n, c1, c2, h, w = x.shape
    # bfloat16 (the reduced-precision mode's values) moves as its 16 bits: NumPy's bfloat16 is
    # ml_dtypes', which torch.from_numpy does not know
    bits = x.view(np.int16) if x.dtype.name == "bfloat16" else x
    nhwc = _library.as_tensor(bits.transpose(0, 3, 4, 1, 2)).contiguous().numpy()
    return nhwc.view(x.dtype).reshape(n, h, w, c1 * c2).transpose(0, 3, 1, 2)


@kernel("Reshape", since=1)
def reshape_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Reshape to the ``shape`` attribute (opset 1-4)."""
    return _reshape(x, _ints(ctx.attrs.get("shape", [])), False)


@kernel("Reshape", since=5)
def reshape(ctx: NodeContext, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Reshape to the ``shape`` input (``allowzero`` from opset 14)."""
    return _reshape(x, shape.tolist(), bool(ctx.attrs.get("allowzero", 0)))


@kernel("Flatten", since=1)
def flatten(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Collapse the dims before and from ``axis`` into a 2-D matrix."""
    axis = ctx.attrs.get("axis", 1)
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"Flatten: axis {axis} is out of range for rank {x.ndim}")
    if axis < 0:
        axis += x.ndim
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _squeeze(x: np.ndarray, axes: Any) -> np.ndarray:
    axes = None if axes is None else _axes(axes, x.ndim, "Squeeze")
    if not axes:  # absent (or empty, as other runtimes read it): every size-1 dim goes
        return x.reshape([d for d in x.shape if d != 1])
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"Squeeze: dimension {a} of shape {x.shape} is not 1")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@kernel("Squeeze", since=1)
def squeeze_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Remove the size-1 dims listed in the ``axes`` attribute (all of them when absent)."""
    return _squeeze(x, ctx.attrs.get("axes"))


@kernel("Squeeze", since=13)
def squeeze(ctx: NodeContext, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Remove the size-1 dims listed in the ``axes`` input (all of them when absent)."""
    return _squeeze(x, axes)


def _unsqueeze(x: np.ndarray, axes: Any) -> np.ndarray:
    rank = x.ndim + len(_ints(axes))
    inserted = _axes(axes, rank, "Unsqueeze")
    dims = iter(x.shape)
    return x.reshape([1 if i in inserted else next(dims) for i in range(rank)])


@kernel("Unsqueeze", since=1)
def unsqueeze_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Insert size-1 dims at the output positions of the ``axes`` attribute."""
    return _unsqueeze(x, ctx.attrs["axes"])


@kernel("Unsqueeze", since=13)
def unsqueeze(ctx: NodeContext, x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Insert size-1 dims at the output positions of the ``axes`` input."""
    return _unsqueeze(x, axes)


@kernel("Transpose", since=1)
def transpose(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Permute the dims by ``perm`` (reversed when absent); a strided view."""
    perm = ctx.attrs.get("perm")
    if perm is None:
        return x.transpose()
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"Transpose: perm {perm} is not a permutation of rank {x.ndim}")
    return x.transpose(perm)


# --------------------------------------------------------------------------------------------------
# joining and splitting


@kernel("Concat", since=1)
def concat(ctx: NodeContext, *inputs: np.ndarray) -> np.ndarray:
    """Join the inputs along ``axis`` (default 1 before opset 4)."""
    inputs = inputs[: ctx.num_inputs]
    y, _, plain_axis = _concatenate(ctx, inputs, chained=True, relu=False)
    if ctx.direct is None:
        everything = tuple(range(len(inputs)))
        if plain_axis is not None:
            # NumPy's concatenate, which the step may call directly (shape arithmetic joins many
            # short vectors)
            first = inputs[0]
            offer_direct(ctx, concat, inputs, everything,
                         functools.partial(_direct_concatenate, plain_axis, first.dtype,
                                           first.ndim),
                         _direct_concatenate)
        elif _chained(inputs[0]):
            if JOIN_CHAIN_LINKS:
                offer_direct(ctx, concat, inputs, everything, _direct_chain_link, _CHAIN_LINK)
        else:
            kept = ctx.cache.get("dnnl_concat")
            if kept is not None and kept.serves(inputs):
                offer_direct(ctx, concat, inputs, everything,
                             functools.partial(_direct_channel_concatenate, kept), kept)
    return y


def _direct_channel_concatenate(kept: _dnnl.Concat,
                                fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Concat's direct call on its kept oneDNN primitive: a chain's link (see below) goes to
    the kernel, which appends to the chain's buffer; the result is remembered as a chain's
    possible start, as the kernel does."""
    join = kept.direct(fallback)

    def call(*arrays: Any) -> Any:
        if _chained(arrays[0]):
            return fallback(*arrays)
        y = join(*arrays)
        _remember(_CONCATENATED, y, 0)
        return y

    # joined with its neighbours (one replay of their primitives), the result is remembered
    # by the replay where it leaves the joined run
    call.primitive = kept  # type: ignore[attr-defined]
    call.join = _dnnl.join_kept  # type: ignore[attr-defined]
    call.after = functools.partial(_remember, _CONCATENATED, used=0)  # type: ignore[attr-defined]
    return call


JOIN_CHAIN_LINKS = True
"""Whether a chain link (a Concat that extends a chain's buffer, see below) offers a direct
call that a plan joins with its neighbours (off: the link runs its kernel between them; for
``benchmarks/ab_dnnl.py --part link``)."""


class _ChainLink:
    """What a chain link's direct call runs (see :func:`_direct_chain_link`): kept oneDNN
    reorders, shared by the layouts they copy between, none of them the link's own."""

    copies = True
    """A replay's trace takes the reorders the step runs as its work (``_dnnl_chain``)."""


_CHAIN_LINK = _ChainLink()


def _direct_chain_link(fallback: Callable[..., Any]) -> Callable[..., Any]:
    """A chain link's direct call (a Concat extending a chain's buffer, see below): the
    kernel's own path, made joinable with its neighbours' kept primitives.  Traced for a
    replay, every copy it makes goes to a kept reorder (:func:`_copy_channels`), which the
    replay then makes on the chain's buffer placed with the run's other buffers; a link
    replayed costs one reorder, where the kernel's checks, registries and NumPy's copy of the
    small ones cost 54-73 us a link after a pause (DenseNet-121: 54 links, 2.9-3.9 ms a run
    at batch 1).  What leaves a replay is a chain's value again for the Concats outside it.
    One by one it is the kernel itself (``fallback``, made for this offer), marked."""
    fallback.primitive = _CHAIN_LINK  # type: ignore[attr-defined]
    fallback.join = _dnnl.join_kept  # type: ignore[attr-defined]
    fallback.after = functools.partial(  # type: ignore[attr-defined]
        _remember, _CONCATENATED, used=0)
    return fallback


def _chained(first: Any) -> bool:
    """Whether ``first`` is a channel Concat's output, which a Concat reading it extends."""
    base = getattr(first, "base", None)
    return (_registered(_CONCATENATED, first) is not None
            or (base is not None and _registered(_ROOMY, base) is not None))


def _direct_concatenate(axis: int, dtype: np.dtype, ndim: int,
                        fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Concat's direct call: ``np.concatenate`` of arrays of the type and rank seen, else (or
    on an error, which the kernel reports by name) the kernel."""

    def call(*arrays: Any) -> Any:
        for array in arrays:
            if type(array) is not np.ndarray or array.dtype != dtype or array.ndim != ndim:
                return fallback(*arrays)
        try:
            return np.concatenate(arrays, axis=axis)
        except ValueError:
            return fallback(*arrays)

    return call


def concatenate(ctx: NodeContext, inputs: tuple[np.ndarray, ...],
                relu: bool = False) -> tuple[np.ndarray, bool]:
    """Concat's result as a new array that shares memory with nothing (a copy of a single
    input), for a caller that writes to it; with ``relu``, max(x, 0) is applied as channels-last
    inputs are copied, and the flag returned says whether it was."""
    y, applied, _ = _concatenate(ctx, inputs, chained=False, relu=relu)
    return (y.copy() if y is inputs[0] else y), applied


def _concatenate(ctx: NodeContext, inputs: tuple[np.ndarray, ...], *, chained: bool,
                 relu: bool) -> tuple[np.ndarray, bool, int | None]:
    """Concat's result, whether ``relu`` was applied, and the axis when the inputs can never be
    a channel concatenation (not 4-D, or not along the channels), which NumPy's concatenate
    then serves on every call (else None); ``chained``: a channel concatenation may extend an
    earlier one's buffer (see below), sharing memory with its result."""
    first = inputs[0]
    axis = _axis(ctx.attrs.get("axis", 1), first.ndim, "Concat")
    if len(inputs) == 1:
        return first, False, None
    for other in inputs[1:]:
        if other.dtype != first.dtype or other.ndim != first.ndim:
            raise ValueError(
                f"Concat: inputs differ in type or rank ({first.dtype}{list(first.shape)} vs "
                f"{other.dtype}{list(other.shape)})"
            )
    if axis == 1 and first.ndim == 4:
        if _onednn.all_channels_last(inputs):
            y = _appended(inputs) if chained else None
            if y is None:
                y = None if relu else _kept_concatenation(ctx, inputs)
                if y is None:
                    y = _onednn.concat_channels(inputs, relu=relu)
                if chained:
                    _remember(_CONCATENATED, y, 0)
                return y, relu, None
            return y, False, None
        return np.concatenate(inputs, axis=axis), False, None
    return np.concatenate(inputs, axis=axis), False, axis


def _kept_concatenation(ctx: NodeContext, inputs: tuple[np.ndarray, ...]) -> np.ndarray | None:
    """The channel concatenation of channels-last ``inputs`` by the oneDNN primitive the node
    keeps (:class:`._dnnl.Concat`, made on the first call for a layout), or None where oneDNN's
    library does not serve it (remembered per layout)."""
    cache = ctx.cache
    kept = cache.get("dnnl_concat")
    if kept is None or not kept.serves(inputs):
        layouts = tuple((a.shape, a.strides, a.dtype) for a in inputs)
        if cache.get("dnnl_concat_refused") == layouts:
            return None
        kept = _dnnl.create_concat(inputs)
        if kept is None:
            cache["dnnl_concat_refused"] = layouts
            return None
        cache["dnnl_concat"] = kept
        cache["library_kernel"] = f"oneDNN concatenation {kept.implementation}, kept primitive"
    return kept(inputs)


# Channel concatenation chains (DenseNet: each layer's Concat appends 32 channels to the
# previous Concat's output).  Copying every input each time moves O(n^2) data over a block (7.7
# ms of DenseNet-121's 39 at batch 1, against 2.5 for ORT's NCHW copies).  So a Concat whose
# first input is itself a Concat's output writes into an NHWC buffer with room to spare, and a
# later Concat that extends exactly the channels in use copies only its new channels into the
# room.  Every value handed out is a prefix of its buffer's channels, and a buffer is written
# only past the channels in use, so no value handed out ever changes; a second Concat reading
# the same prefix (a branch) finds the channels in use moved on and copies into a new buffer.

_CONCATENATED: dict[int, list[Any]] = {}
"""id(output) -> [weak reference, 0]: channel Concat outputs made by copying, a chain's start."""
_ROOMY: dict[int, list[Any]] = {}
"""id(buffer) -> [weak reference, channels in use]: NHWC buffers with room for more channels."""


def _remember(registry: dict[int, list[Any]], array: np.ndarray, used: int) -> None:
    key = id(array)  # dropped when the array dies, before its id can be reused
    registry[key] = [weakref.ref(array, lambda _ref: registry.pop(key, None)), used]


def _registered(registry: dict[int, list[Any]], array: object) -> list[Any] | None:
    entry = registry.get(id(array))
    return entry if entry is not None and entry[0]() is array else None


def _appended(inputs: tuple[np.ndarray, ...]) -> np.ndarray | None:
    """The channel concatenation of NHWC-laid-out ``inputs`` when the first one is a Concat's
    output (see above), else None (the caller copies as usual)."""
    first = inputs[0]
    buffer = first.base
    roomy = None if buffer is None else _registered(_ROOMY, buffer)
    if roomy is None and _registered(_CONCATENATED, first) is None:
        return None  # not a chain
    n, channels, h, w = first.shape
    total = channels + sum(a.shape[1] for a in inputs[1:])
    if (
        roomy is not None
        and roomy[1] == channels  # no other Concat extended this prefix
        and buffer.shape[:3] == (n, h, w)  # the whole buffer, not a slice of its batch
        and buffer.shape[3] >= total
        and first.ctypes.data == buffer.ctypes.data
        and first.strides == tuple(buffer.strides[i] for i in (0, 3, 1, 2))
    ):
        roomy[1] = total
    else:  # a chain's second link, a full buffer or a branch: a new buffer, twice the size
        buffer = np.empty((n, h, w, 2 * total), first.dtype)
        _copy_channels(first, buffer, 0)
        _remember(_ROOMY, buffer, total)
    start = channels
    for array in inputs[1:]:
        _copy_channels(array, buffer, start)
        start += array.shape[1]
    return buffer[..., :total].transpose(0, 3, 1, 2)


CHAIN_REORDER_MIN_BYTES = 64 << 10
"""From this size a chain's copy goes to oneDNN's reorder (both threads), below it to NumPy's
assignment (DenseNet's last block copies 6-12 KB, where the call costs more than the copy).
DenseNet-121, ``benchmarks/ab_dnnl.py MODEL --part viewcopy`` (reorder/NumPy, 0.1 s pause):
bfloat16 0.983 at batch 1 and 0.940 at batch 8, float32 0.994 and 0.975; every copy on the
reorder read 1.008-1.015 bfloat16 at batch 1."""


def _copy_channels(array: np.ndarray, buffer: np.ndarray, start: int) -> None:
    """Write ``array`` (NCHW-indexed) into channels ``start...`` of the NHWC ``buffer``: by a
    kept oneDNN reorder from :data:`CHAIN_REORDER_MIN_BYTES` where it serves, else NumPy's
    assignment; every copy by a reorder while a run is traced to be replayed (a copy the
    replay could not make declines it)."""
    target = buffer[..., start:start + array.shape[1]].transpose(0, 3, 1, 2)
    traced = _dnnl.tracer is not None
    if (array.nbytes < CHAIN_REORDER_MIN_BYTES and not traced) or not _dnnl.copy_into(array,
                                                                                     target):
        if traced:
            _dnnl.tracer.refuse("a chain's copy that no kept reorder makes")
        target[...] = array


def _split(x: np.ndarray, axis: int, sizes: list[int] | None, parts: int, uneven: bool) -> tuple:
    """Views of ``x`` cut along ``axis`` into ``sizes`` or into ``parts`` equal chunks."""
    axis = _axis(axis, x.ndim, "Split")
    dim = x.shape[axis]
    if sizes is None:
        if parts <= 0:
            raise ValueError(f"Split: cannot split into {parts} parts")
        if dim % parts and not uneven:
            raise ValueError(f"Split: dimension {dim} does not split into {parts} equal parts")
        chunk = -(-dim // parts)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]
    if any(s < 0 for s in sizes) or sum(sizes) != dim:
        raise ValueError(f"Split: sizes {sizes} do not add up to dimension {dim} of {x.shape}")
    bounds = np.cumsum(sizes[:-1]).tolist()
    return tuple(np.split(x, bounds, axis=axis))


@kernel("Split", since=1)
def split_v1(ctx: NodeContext, x: np.ndarray, split: np.ndarray | None = None) -> tuple:
    """Split by the ``split`` input or attribute, else equally (opset 1)."""
    sizes = _ints(split) if split is not None else ctx.attrs.get("split")
    return _split(x, ctx.attrs.get("axis", 0), sizes, ctx.num_outputs, False)


@kernel("Split", since=2)
def split_v2(ctx: NodeContext, x: np.ndarray) -> tuple:
    """Split by the ``split`` attribute, else equally (opset 2-12)."""
    return _split(x, ctx.attrs.get("axis", 0), ctx.attrs.get("split"), ctx.num_outputs, False)


@kernel("Split", since=13)
def split(ctx: NodeContext, x: np.ndarray, split: np.ndarray | None = None) -> tuple:
    """Split by the ``split`` input, else into ``num_outputs`` (last one smaller, opset 18)."""
    sizes = _ints(split) if split is not None else None
    parts = ctx.attrs.get("num_outputs", ctx.num_outputs)
    if sizes is None and parts != ctx.num_outputs:
        raise ValueError(f"Split: num_outputs={parts} but the node has {ctx.num_outputs} outputs")
    return _split(x, ctx.attrs.get("axis", 0), sizes, parts, "num_outputs" in ctx.attrs)


def _slice(
    x: np.ndarray, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int]
) -> np.ndarray:
    """A basic-indexing view; Python's slice clamping is exactly ONNX's, negatives included."""
    return x[_slice_index(x.ndim, starts, ends, axes, steps)]


def _slice_index(
    ndim: int, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int]
) -> tuple[slice, ...]:
    """The basic index of a Slice on a rank-``ndim`` input (it depends on nothing else)."""
    if axes is None:
        axes = list(range(len(starts)))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError("Slice: starts, ends, axes and steps must have the same length")
    index = [slice(None)] * ndim
    for axis, start, end, step in zip(_axes(axes, ndim, "Slice"), starts, ends, steps, strict=True):
        if step == 0:
            raise ValueError("Slice: step cannot be 0")
        index[axis] = slice(start, end, step)
    return tuple(index)


@kernel("Slice", since=1)
def slice_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Slice by the ``starts``/``ends``/``axes`` attributes (opset 1-9)."""
    starts = ctx.attrs["starts"]
    return _slice(x, starts, ctx.attrs["ends"], ctx.attrs.get("axes"), [1] * len(starts))


@kernel("Slice", since=10)
def slice_(
    ctx: NodeContext,
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    """Slice by the ``starts``/``ends``/``axes``/``steps`` inputs; a view."""
    cached = ctx.cache.get("slice")
    # constant operands (read-only, the same arrays every run): the index is built once per rank;
    # compared one by one, not with all() over a generator, which costs more than the slicing
    if cached is not None:
        ndim, (c_starts, c_ends, c_axes, c_steps), index = cached
        if (ndim == x.ndim and c_starts is starts and c_ends is ends and c_axes is axes
                and c_steps is steps):
            return x[index]
    operands = (starts, ends, axes, steps)
    starts_l = starts.tolist()
    steps_l = steps.tolist() if steps is not None else [1] * len(starts_l)
    y = _slice(x, starts_l, ends.tolist(), axes.tolist() if axes is not None else None, steps_l)
    if all(a is None or not a.flags.writeable for a in operands):
        index = _slice_index(x.ndim, starts_l, ends.tolist(),
                             axes.tolist() if axes is not None else None, steps_l)
        ctx.cache["slice"] = (x.ndim, operands, index)
        # constant operands: the step may take x alone (a shape-arithmetic chain of many small
        # Slices spent half its time passing the four constants and comparing them)
        offer_direct(ctx, slice_, (x, *operands)[: ctx.num_inputs], (0,),
                     functools.partial(_direct_slice, x.ndim, index), index)
    return y


def _direct_slice(ndim: int, index: tuple[slice, ...],
                  fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Slice's direct call: ``x[index]`` for an array of rank ``ndim``, else the kernel."""

    def call(x: Any) -> Any:
        if type(x) is not np.ndarray or x.ndim != ndim:
            return fallback(x)
        return x[index]

    return call


# --------------------------------------------------------------------------------------------------
# broadcasting and repeating


@kernel("Expand", since=8)
def expand(ctx: NodeContext, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Broadcast ``x`` against ``shape`` (bidirectionally) into a new contiguous tensor."""
    dims = _ints(shape)
    try:
        out_shape = np.broadcast_shapes(x.shape, tuple(dims))
    except ValueError:
        raise ValueError(f"Expand: shape {x.shape} cannot broadcast to {dims}") from None
    # A fresh array rather than a broadcast view: zero-stride read-only views must not leak
    # into graph outputs or into kernels that write their results in place.
    out = np.empty(out_shape, dtype=x.dtype)
    out[...] = x
    return out


@kernel("Tile", since=1)
def tile_v1(ctx: NodeContext, x: np.ndarray, tiles: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Repeat ``x`` ``tiles`` times along one ``axis`` (opset 1-5)."""
    reps = [1] * x.ndim
    axis_ = _axis(int(_scalar(axis, "Tile", "axis")), x.ndim, "Tile")
    reps[axis_] = int(_scalar(tiles, "Tile", "tiles"))
    return np.tile(x, reps)


@kernel("Tile", since=6)
def tile(ctx: NodeContext, x: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """Repeat ``x`` ``repeats[i]`` times along each dim i."""
    reps = _ints(repeats)
    if len(reps) != x.ndim or any(r < 0 for r in reps):
        raise ValueError(f"Tile: repeats {reps} do not fit a tensor of rank {x.ndim}")
    return np.tile(x, reps)


def _pad(
    x: np.ndarray, pads: list[int], mode: str, value: Any, axes: list[int] | None
) -> np.ndarray:
    """Pad (positive) or crop (negative) each listed axis; pads = [begins..., ends...]."""
    axes = list(range(x.ndim)) if axes is None else _axes(axes, x.ndim, "Pad")
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes (need twice as many)")
    before = [0] * x.ndim
    after = [0] * x.ndim
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    order = memory_order(x)
    if order is not None:  # a transposed view (a convolution's channels-last output)
        # padded in its memory order and handed back in the same layout: NumPy's copies of a
        # transposed view into C order walk it with a cache miss per element (a reflect pad
        # of 1 x 32 x 128 x 128 channels-last took 1.7 ms so, 0.6 this way)
        inverse = np.argsort(order)
        padded = _pad(x.transpose(order), [before[a] for a in order] + [after[a] for a in order],
                      mode, value, None)
        return padded.transpose(inverse)
    if any(b < 0 or e < 0 for b, e in zip(before, after, strict=True)):
        # Negative pads crop first; the remaining positive pads then apply to the cropped tensor.
        crop = tuple(
            slice(-min(b, 0), d + min(e, 0)) for b, e, d in zip(before, after, x.shape, strict=True)
        )
        x = x[crop]
        if any(d < 0 for d in (s.stop - s.start for s in crop)):
            raise ValueError(f"Pad: pads {pads} crop more than the input has")
        before = [max(b, 0) for b in before]
        after = [max(e, 0) for e in after]
    if mode == "constant":
        if value is None:
            value = "" if x.dtype == object else 0
        out = np.full(
            [b + d + e for b, d, e in zip(before, x.shape, after, strict=True)], value, x.dtype
        )
        out[tuple(slice(b, b + d) for b, d in zip(before, x.shape, strict=True))] = x
        return out
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"Pad: unknown mode {mode!r}")
    if x.size == 0 and any(before + after):
        raise ValueError(f"Pad: cannot {mode}-pad an empty tensor")
    if mode == "reflect" and any(
        (b or e) and (b >= d or e >= d) for b, e, d in zip(before, after, x.shape, strict=True)
    ):
        raise ValueError(f"Pad: reflect pads {pads} must be smaller than the dims {x.shape}")
    return np.pad(x, list(zip(before, after, strict=True)), mode=mode)  # type: ignore[call-overload]


@kernel("Pad", since=1)
def pad_v1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Pad by the ``paddings`` attribute (opset 1)."""
    return _pad(x, ctx.attrs["paddings"], ctx.attrs["mode"], ctx.attrs["value"], None)


@kernel("Pad", since=2)
def pad_v2(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Pad by the ``pads`` attribute (opset 2-10)."""
    return _pad(x, ctx.attrs["pads"], ctx.attrs["mode"], ctx.attrs["value"], None)


@kernel("Pad", since=11)
def pad(
    ctx: NodeContext,
    x: np.ndarray,
    pads: np.ndarray,
    constant_value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
) -> np.ndarray:
    """Pad by the ``pads`` input, optionally only on ``axes`` (opset 18) or in wrap mode (19)."""
    value = None if constant_value is None or constant_value.size == 0 else constant_value
    if value is not None:
        value = _scalar(value, "Pad", "constant_value")
    return _pad(x, _ints(pads), ctx.attrs["mode"], value, None if axes is None else _ints(axes))


@kernel("CenterCropPad", since=18)
def center_crop_pad(ctx: NodeContext, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Crop or zero-pad the listed axes to ``shape``, keeping the content centred."""
    dims = _ints(shape)
    axes = ctx.attrs.get("axes")
    axes = list(range(x.ndim)) if axes is None else _axes(axes, x.ndim, "CenterCropPad")
    if len(dims) != len(axes):
        raise ValueError(f"CenterCropPad: shape {dims} does not match axes {axes}")
    out_shape = list(x.shape)
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    for a, want in zip(axes, dims, strict=True):
        have = x.shape[a]
        if want < 0:
            raise ValueError(f"CenterCropPad: negative target size {want}")
        out_shape[a] = want
        if have > want:  # crop: the window starts rounded down
            start = (have - want) // 2
            src[a] = slice(start, start + want)
        elif have < want:  # pad: the odd extra element goes to the end
            start = (want - have) // 2
            dst[a] = slice(start, start + have)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


# --------------------------------------------------------------------------------------------------
# generators


@kernel("Range", since=11)
def range_(ctx: NodeContext, start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``start + i * delta`` for i in [0, ceil((limit - start) / delta))."""
    dtype = np.asarray(start).dtype
    s = _scalar(start, "Range", "start")
    lim = _scalar(limit, "Range", "limit")
    d = _scalar(delta, "Range", "delta")
    if d == 0:
        raise ValueError("Range: delta cannot be 0")
    if np.issubdtype(dtype, np.integer):
        s, lim, d = int(s), int(lim), int(d)
        count = max(-(-(lim - s) // d), 0)
        return (np.arange(count, dtype=np.int64) * d + s).astype(dtype, copy=False)
    s, lim, d = float(s), float(lim), float(d)
    count = max(math.ceil((lim - s) / d), 0)
    # Computed in double and rounded once: for float16/bfloat16 this is at least as exact as
    # the float32 stash the spec asks for, and never accumulates rounding errors.
    return (np.arange(count, dtype=np.float64) * d + s).astype(dtype)


@kernel("EyeLike", since=9)
def eye_like(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """A 2-D matrix of x's shape with ones on diagonal ``k``, of type ``dtype`` or x's."""
    if x.ndim != 2:
        raise ValueError(f"EyeLike: input must be 2-D, got shape {x.shape}")
    code = ctx.attrs.get("dtype")
    dtype = x.dtype if code is None else tensor_dtype_to_np_dtype(code)
    return np.eye(x.shape[0], x.shape[1], k=ctx.attrs.get("k", 0), dtype=dtype)


@kernel("Trilu", since=14)
def trilu(ctx: NodeContext, x: np.ndarray, k: np.ndarray | None = None) -> np.ndarray:
    """Keep the upper (or lower) triangle above (below) diagonal ``k`` of the last two dims."""
    if x.ndim < 2:
        raise ValueError(f"Trilu: input must have rank >= 2, got shape {x.shape}")
    diag = 0 if k is None else int(_scalar(k, "Trilu", "k"))
    rows, cols = x.shape[-2:]
    # col - row >= k keeps the upper triangle; col - row <= k the lower one.
    offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    keep = offset >= diag if ctx.attrs.get("upper", 1) else offset <= diag
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


def _one_hot(
    ctx: NodeContext, indices: np.ndarray, depth: Any, values: np.ndarray, neg: bool
) -> np.ndarray:
    depth_n = int(_scalar(depth, "OneHot", "depth"))
    if depth_n < 1:
        raise ValueError(f"OneHot: depth must be positive, got {depth_n}")
    values = np.asarray(values).reshape(-1)
    if values.size != 2:
        raise ValueError(f"OneHot: 'values' must be [off_value, on_value], got {values.size} items")
    idx = np.asarray(indices).astype(np.int64)
    if neg:
        idx = np.where(idx < 0, idx + depth_n, idx)
    # Out-of-range indices match no position of arange and so stay off.
    hot = idx[..., None] == np.arange(depth_n, dtype=np.int64)
    axis = _axis(ctx.attrs.get("axis", -1), idx.ndim + 1, "OneHot")
    return np.moveaxis(values[hot.view(np.uint8)], -1, axis)


@kernel("OneHot", since=9)
def one_hot_v9(ctx: NodeContext, indices: np.ndarray, depth: Any, values: np.ndarray) -> np.ndarray:
    """One-hot encode ``indices`` (in [0, depth)) with [off, on] ``values`` along ``axis``."""
    return _one_hot(ctx, indices, depth, values, neg=False)


@kernel("OneHot", since=11)
def one_hot(ctx: NodeContext, indices: np.ndarray, depth: Any, values: np.ndarray) -> np.ndarray:
    """One-hot encode ``indices`` (in [-depth, depth)) with [off, on] ``values`` along ``axis``."""
    return _one_hot(ctx, indices, depth, values, neg=True)


# --------------------------------------------------------------------------------------------------
# block rearrangements


def _block_shape(x: np.ndarray, op: str) -> tuple[int, ...]:
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    return x.shape


@kernel("DepthToSpace", since=1)
def depth_to_space(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Move channel blocks into spatial ``blocksize`` x ``blocksize`` tiles (DCR or CRD)."""
    b, c, h, w = _block_shape(x, "DepthToSpace")
    bs = ctx.attrs["blocksize"]
    if bs <= 0 or c % (bs * bs):
        raise ValueError(f"DepthToSpace: channels {c} not divisible by blocksize^2 ({bs}^2)")
    oc = c // (bs * bs)
    crd = ctx.attrs.get("mode", "DCR") == "CRD"
    if memory_order(x) == (0, 2, 3, 1):
        # a channels-last input (a convolution's output) is rearranged in its own memory and
        # the result stays channels-last: NumPy's reshape of the NCHW view first copied it to
        # C order with a cache miss per element (1 x 64 x 96 x 96: 1.9 ms)
        nhwc = x.transpose(0, 2, 3, 1)
        if crd:
            tiles = nhwc.reshape(b, h, w, oc, bs, bs).transpose(0, 1, 4, 2, 5, 3)
        else:
            tiles = nhwc.reshape(b, h, w, bs, bs, oc).transpose(0, 1, 3, 2, 4, 5)
        return tiles.reshape(b, h * bs, w * bs, oc).transpose(0, 3, 1, 2)
    if crd:
        tmp = x.reshape(b, oc, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        tmp = x.reshape(b, bs, bs, oc, h, w).transpose(0, 3, 4, 1, 5, 2)
    return tmp.reshape(b, oc, h * bs, w * bs)


@kernel("SpaceToDepth", since=1)
def space_to_depth(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Move spatial ``blocksize`` x ``blocksize`` tiles into channels (DCR or CRD, opset 28)."""
    b, c, h, w = _block_shape(x, "SpaceToDepth")
    bs = ctx.attrs["blocksize"]
    if bs <= 0 or h % bs or w % bs:
        raise ValueError(f"SpaceToDepth: spatial dims {(h, w)} not divisible by blocksize {bs}")
    if memory_order(x) == (0, 2, 3, 1):  # channels-last in and out, as DepthToSpace
        tiles = x.transpose(0, 2, 3, 1).reshape(b, h // bs, bs, w // bs, bs, c)
        if ctx.attrs.get("mode", "DCR") == "CRD":
            tiles = tiles.transpose(0, 1, 3, 5, 2, 4)
        else:
            tiles = tiles.transpose(0, 1, 3, 2, 4, 5)
        return tiles.reshape(b, h // bs, w // bs, c * bs * bs).transpose(0, 3, 1, 2)
    tmp = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if ctx.attrs.get("mode", "DCR") == "CRD":
        tmp = tmp.transpose(0, 1, 3, 5, 2, 4)
    else:
        tmp = tmp.transpose(0, 3, 5, 1, 2, 4)
    return tmp.reshape(b, c * bs * bs, h // bs, w // bs)


@kernel("ReverseSequence", since=10)
def reverse_sequence(ctx: NodeContext, x: np.ndarray, sequence_lens: np.ndarray) -> np.ndarray:
    """Reverse the first ``sequence_lens[b]`` time steps of each batch entry b."""
    if x.ndim < 2:
        raise ValueError(f"ReverseSequence: input must have rank >= 2, got shape {x.shape}")
    t_axis = _axis(ctx.attrs.get("time_axis", 0), x.ndim, "ReverseSequence")
    b_axis = _axis(ctx.attrs.get("batch_axis", 1), x.ndim, "ReverseSequence")
    if t_axis == b_axis:
        raise ValueError("ReverseSequence: time_axis and batch_axis must differ")
    steps, batch = x.shape[t_axis], x.shape[b_axis]
    lens = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
    if lens.shape != (batch,) or np.any((lens < 0) | (lens > steps)):
        raise ValueError(f"ReverseSequence: sequence_lens {lens.tolist()} invalid for {x.shape}")
    t = np.arange(steps)[:, None]
    source = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # (time, batch)
    shape = [1] * x.ndim
    shape[t_axis], shape[b_axis] = steps, batch
    if t_axis > b_axis:
        source = source.T
    return np.take_along_axis(x, source.reshape(shape), axis=t_axis)


# --------------------------------------------------------------------------------------------------
# selection


@kernel("NonZero", since=9)
def non_zero(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """The int64 coordinates (rank x count) of the non-zero elements, in row-major order."""
    if x.ndim == 0:
        return np.zeros((0, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@kernel("Compress", since=9)
def compress(ctx: NodeContext, x: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """The slices along ``axis`` (of the flattened input when absent) where condition holds."""
    cond = np.asarray(condition).reshape(-1).astype(bool, copy=False)
    axis = ctx.attrs.get("axis")
    if axis is None:
        x, axis = x.reshape(-1), 0
    else:
        axis = _axis(axis, x.ndim, "Compress")
    dim = x.shape[axis]
    if cond.size > dim:
        if cond[dim:].any():
            raise ValueError(f"Compress: condition of length {cond.size} exceeds dim {dim}")
        cond = cond[:dim]
    return np.compress(cond, x, axis=axis)


def _dropout_inference(ctx: NodeContext, x: np.ndarray, mask_dtype: Any) -> Any:
    if ctx.num_outputs < 2:
        return x
    return x, np.ones(x.shape, dtype=mask_dtype)


@kernel("Dropout", since=1)
def dropout_v1(ctx: NodeContext, x: np.ndarray) -> Any:
    """Inference dropout (opset 1-9): the input, and a mask of ones of the input's type."""
    # Like other runtimes, the legacy ``is_test`` flag is ignored: this is an inference engine.
    return _dropout_inference(ctx, x, x.dtype)


@kernel("Dropout", since=10)
def dropout_v10(ctx: NodeContext, x: np.ndarray) -> Any:
    """Inference dropout (opset 10-11): the input, and an all-True mask."""
    return _dropout_inference(ctx, x, np.bool_)


@kernel("Dropout", since=12)
def dropout(
    ctx: NodeContext,
    x: np.ndarray,
    ratio: np.ndarray | None = None,
    training_mode: np.ndarray | None = None,
) -> Any:
    """Dropout: identity unless ``training_mode``, then zero with prob ``ratio`` and rescale."""
    rate = 0.5 if ratio is None else float(_scalar(ratio, "Dropout", "ratio"))
    training = training_mode is not None and bool(_scalar(training_mode, "Dropout", "training"))
    if not training or rate == 0.0:
        return _dropout_inference(ctx, x, np.bool_)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"Dropout: ratio {rate} is not in [0, 1]")
    # The legacy Mersenne-Twister stream: a given ``seed`` then reproduces the masks of the
    # ONNX test data (the spec leaves the generator to the implementation).
    seed = ctx.attrs.get("seed")
    rng = (
        np.random.RandomState(seed)
        if seed is not None
        else ctx.cache.setdefault("rng", np.random.RandomState())
    )
    mask = rng.uniform(0.0, 1.0, x.shape) >= rate
    if rate == 1.0:
        out = np.zeros_like(x)
    else:
        out = (x * mask * (1.0 / (1.0 - rate))).astype(x.dtype, copy=False)
    return (out, mask) if ctx.num_outputs > 1 else out
