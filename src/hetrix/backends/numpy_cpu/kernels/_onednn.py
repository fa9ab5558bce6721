"""Convolution through oneDNN, the CPU kernel library inside PyTorch, on the NumPy backend's arrays.

Why: on this class of CPU, oneDNN's direct convolution runs 2-3x faster than im2col + BLAS (which
pays a copy of the whole column matrix per conv and cannot fuse anything).  Three things make it
fast, and this module does all three:

* **weights packed once.**  oneDNN wants weights in a blocked layout chosen for the input size;
  packing costs as much as a small convolution, so it happens on the first call of a node and the
  packed tensor is kept in the node's cache.  Only constant weights are kept (the plan's weights
  are read-only arrays, the same object every run); a weight fed or computed at run time is
  writable, may change in place, and is packed per call, which is correct, only slower;
* **channels-last activations.**  oneDNN's fast float32 and bfloat16 kernels read and write NHWC.
  The output of one conv stays NHWC (the NumPy view handed to the next node has NHWC strides, which
  NumPy's ufuncs keep), so a chain of convs and elementwise ops never converts back and forth;
* **fused post-ops.**  The activation of a ``hetrix.FusedConv`` (Relu, Clip, LeakyRelu, Sigmoid,
  Tanh, Gelu) and its residual input ``Z`` (``act(conv(X) + B + Z)``, then only Relu) are applied
  by oneDNN while the output is still in cache, instead of one more pass over memory each.

Only 2-D convolutions with symmetric padding take this path; everything else keeps the NumPy
kernels.  With oneDNN's own library installed (the ``onednn`` extra), :func:`conv2d` first hands
a float32 or bfloat16 call with constant weights to a primitive the node keeps (:mod:`._dnnl`),
which skips the per-call setup of PyTorch's op; PyTorch's call serves what that path refuses.
``torch.from_numpy`` and ``Tensor.numpy`` share memory, so no data is copied at the boundary.
bfloat16 arrays (ml_dtypes) are viewed as torch bfloat16, which is what the reduced-precision mode
uses to reach the AMX units.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from hetrix.backends import registry
from hetrix.backends.numpy_cpu.kernels import _dnnl, _library
from hetrix.backends.registry import Kernel, NodeContext
from hetrix.runtime.memory import recycled_empty, sole_view

_UNARY_POST_OPS: dict[str, str] = {
    "": "none",
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "Clip": "hardtanh",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Gelu": "gelu",
    "GeluTanh": "gelu",
    "HardSwish": "hardswish",
}
"""Hetrix activation name -> oneDNN post-op name in ``torch.ops.mkldnn._convolution_pointwise``
and ``_linear_pointwise``."""

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_FLOAT32 = np.dtype(np.float32)
SUPPORTED_DTYPES = frozenset({np.dtype(np.float32), _BFLOAT16, np.dtype(np.float16)})
"""Float types oneDNN takes here (a set of dtypes: ``dtype.name`` is slow Python per call)."""


def available() -> bool:
    """Whether PyTorch (with oneDNN) is installed and allowed (see :mod:`._library`)."""
    return _library.torch_functional() is not None


def can_run(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads_begin: list[int],
            pads_end: list[int]) -> bool:
    """Whether :func:`conv2d` handles this convolution (else the caller uses NumPy)."""
    return (
        x.ndim == 4
        and w.ndim == 4
        and x.dtype in SUPPORTED_DTYPES
        and (w.dtype == x.dtype or w.dtype == np.float32)  # float32 weights convert when packed
        and (b is None or b.shape == (w.shape[0],))
        and pads_begin == pads_end
        and min(pads_begin) >= 0
        and available()
    )


def fuses(activation: str, with_residual: bool) -> bool:
    """Whether oneDNN can apply ``activation`` as a post-op (after a residual add, only Relu)."""
    if with_residual:
        return activation in ("", "Relu")
    return activation in _UNARY_POST_OPS


def conv2d(
    cache: dict[str, Any],
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    strides: list[int],
    dilations: list[int],
    pads: list[int],
    group: int,
    activation: str = "",
    activation_params: list[float] | None = None,
    residual: np.ndarray | None = None,
    owns_weight: bool = False,
    overwrite: bool = False,
) -> np.ndarray:
    """``act(conv(x, w) + b + residual)`` through oneDNN; the result is an NHWC-strided array.

    ``cache`` is the node's own dict: the packed weight and bias live there between runs.
    ``residual`` must have the output's shape (the fusion pass only fuses when shapes agree).
    ``owns_weight``: ``w`` is a constant only this node reads (``NodeContext.owned_inputs``), so
    once packed its own memory is released (see :func:`_packed`).  ``overwrite``: the result
    may go into ``residual``'s memory (see :func:`residual_overwritable`); a kept primitive
    then adds it there (:class:`._dnnl.Conv2d`) and returns ``residual`` itself.
    """
    params = activation_params or []
    direct = _direct(cache, x, w, b, strides, dilations, pads, group, activation, params,
                     residual, owns_weight, overwrite)
    if direct is not None:
        return direct
    cache["library_kernel"] = "oneDNN convolution, PyTorch's call"
    return _torch_conv(cache, x, w, b, strides, dilations, pads, group, activation, params,
                       residual, owns_weight)


def _torch_conv(cache: dict[str, Any], x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                strides: list[int], dilations: list[int], pads: list[int], group: int,
                activation: str, activation_params: list[float], residual: np.ndarray | None,
                owns_weight: bool) -> np.ndarray:
    """The convolution through PyTorch's oneDNN call (a weight it packed, kept in ``cache``);
    also leaves ``cache["onednn_prepared"]`` ready for the next call where it can."""
    import torch

    given = as_tensor(x)
    xt = given.contiguous(memory_format=torch.channels_last)
    weight, bias = _packed(cache, w, b, xt, strides, dilations, pads, group, owns_weight)
    unary, scalars, algorithm = _post_op(activation, activation_params)
    op: Any  # the oneDNN call a prepared node repeats (None: it cannot), and its arguments
    args: tuple[Any, ...]
    if residual is None:
        op = torch.ops.mkldnn._convolution_pointwise.default
        args = (weight, bias, pads, strides, dilations, group, unary, scalars, algorithm)
        y = op(xt, *args)
    else:
        z = _as_like(residual, xt)
        y = _conv_add(cache, xt, z, weight, bias, pads, strides, dilations, group, unary)
        binary = torch.ops.mkldnn._convolution_pointwise.binary
        op = None if cache.get("onednn_no_binary") else binary
        args = (weight, bias, pads, strides, dilations, group, "add", None,
                None if unary == "none" else unary, [], None)
    if (
        xt is given  # the input was channels-last already: nothing to convert next time either
        and x.dtype in _PREPARED_DTYPES
        and cache.get("onednn_source") is w  # the packed weight is kept
        and op is not None
        and (residual is None
             or (residual.dtype == x.dtype and z.data_ptr() == residual.ctypes.data))
    ):
        cache["onednn_prepared"] = PreparedConv(x, w, b, residual, op, args)
    return to_numpy(y)


_PREPARED_DTYPES = frozenset({_FLOAT32, _BFLOAT16})


RESIDUAL = 3
"""The position of a FusedConv's residual input ``Z``."""


def residual_overwritable(ctx: NodeContext, z: np.ndarray) -> bool:
    """Whether a convolution may add its result into its residual ``z``'s memory: the plan lets
    the node overwrite it (``NodeContext.reusable_inputs``), it is the only view of its buffer
    now (:func:`~hetrix.runtime.memory.sole_view`), and that buffer is the NHWC layout the
    result has (a convolution's output before: the residual of ResNet's and MobileNetV2's
    blocks)."""
    return (
        RESIDUAL in ctx.reusable_inputs
        and sole_view(z)
        and z.ndim == 4
        and z.transpose(0, 2, 3, 1).flags.c_contiguous
    )


def offer_direct_conv(ctx: NodeContext, kernel: Kernel, inputs: tuple[Any, ...]) -> None:
    """Offer the node's kept convolution primitive as its direct call (see
    :meth:`._dnnl._Primitive.direct`) when it has just computed ``kernel(ctx, *inputs)`` whole: made
    for these very arrays (not for a channels-last copy of the input), with the residual, the
    bias and the activation in it.  A primitive that adds into its residual in place checks on
    each call that it still may (:func:`residual_overwritable`), else the kernel serves."""
    conv = ctx.cache.get("onednn_prepared")
    if not isinstance(conv, _dnnl.Conv2d):
        return
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    residual = inputs[3] if len(inputs) > 3 else None
    if (
        not isinstance(x, np.ndarray)
        or conv.w is not w
        or conv.b is not b
        or (x.shape, x.strides, x.dtype) != (conv.shape, conv.x_strides, conv.dtype)
        or (residual is None) != (conv.residual is None)
    ):
        return
    if conv.accumulates:
        def make_call(fallback: Callable[..., Any]) -> Callable[..., Any]:
            # the call checks the residual's layout against the primitive's itself
            return conv.direct(fallback, lambda z: RESIDUAL in ctx.reusable_inputs
                               and sole_view(z))
    else:
        make_call = conv.direct
    registry.offer_direct(ctx, kernel, inputs, (0,) if residual is None else (0, RESIDUAL),
                          make_call, conv)


def _direct(cache: dict[str, Any], x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
            strides: list[int], dilations: list[int], pads: list[int], group: int,
            activation: str, activation_params: list[float], residual: np.ndarray | None,
            owns_weight: bool, overwrite: bool = False) -> np.ndarray | None:
    """The convolution by a oneDNN primitive this node keeps (:mod:`._dnnl`), or None where
    that path does not serve it (the library absent, a weight computed at run time, ...).
    ``overwrite``: see :func:`conv2d`.

    The node keeps one primitive per input layout (``dnnl_convs``, a few at most) and the
    latest in ``onednn_prepared``, which the kernel calls first on the next run.
    """
    if (
        w.flags.writeable
        or (b is not None and b.flags.writeable)
        or x.dtype not in _PREPARED_DTYPES
        or cache.get("dnnl_refused")
        or not _dnnl.available()
    ):
        return None
    nchw = x.shape[1] > 1 and x.strides[1] != x.itemsize
    if nchw and (residual is not None or x.shape[1] > STAGED_MAX_CHANNELS
                 or _staged_bytes(x, w, strides, dilations, pads) > STAGED_MAX_BYTES
                 or cache.get("dnnl_nchw_refused")):
        # an NCHW source of many channels, or a large output: copied to NHWC, where oneDNN's
        # fast kernels are
        x = _channels_last_copy(x)
        nchw = False
    elif not nchw and x.shape[1] > 1 and not x.transpose(0, 2, 3, 1).flags.c_contiguous:
        # some of a channels-last array's channels (a Split's or a Slice's view): oneDNN has
        # only its reference kernel for such strides, its fast ones read the dense copy
        x = _channels_last_copy(x)
    overwrite = overwrite and residual is not None and not cache.get("dnnl_sum_refused")
    key = (x.shape, x.strides, x.dtype,
           None if residual is None else (residual.shape, residual.strides, residual.dtype),
           overwrite)
    convs = cache.setdefault("dnnl_convs", {})
    conv = convs.get(key)
    if conv is None or conv.w is not w or conv.b is not b:
        with _PACKING:  # see _PACKING: the weight's original may be released below
            conv = _dnnl.create(
                x, w, dense_weight(cache, w), b, strides=strides, dilations=dilations,
                pads=pads, group=group, activation=activation,
                activation_params=activation_params, residual=residual,
                weights=cache.setdefault("dnnl_weights", []), accumulate=overwrite)
            if conv is not None:
                if len(convs) >= _MAX_LAYOUTS:
                    convs.clear()
                convs[key] = conv
                cache["library_kernel"] = (f"oneDNN convolution {conv.implementation}, "
                                           "kept primitive")
                if (owns_weight and w.dtype == _FLOAT32
                        and cache.get("onednn_released") is not w):
                    _release_packed(cache, w, conv.unpack)
        if conv is None:
            if overwrite:  # no in-place kernel: the residual as a second source then
                cache["dnnl_sum_refused"] = True
                return _direct(cache, x, w, b, strides, dilations, pads, group, activation,
                               activation_params, residual, owns_weight)
            if nchw:  # no kernel for the NCHW source here: the NHWC copy then
                cache["dnnl_nchw_refused"] = True
                return _direct(cache, x, w, b, strides, dilations, pads, group, activation,
                               activation_params, residual, owns_weight)
            cache["dnnl_refused"] = True  # the same refusal would follow for every call
            return None
    cache["onednn_prepared"] = conv
    return conv(x, w, b, residual, overwrite)


def conv_pool(ctx: NodeContext, kernel: Kernel, x: np.ndarray, w: np.ndarray,
              b: np.ndarray | None, conv_geometry: tuple, activation: str,
              activation_params: list[float], pool_kind: str, window: Any) -> np.ndarray | None:
    """``pool(act(conv(x, w) + b))`` for an NCHW image ``x`` of a few channels, by oneDNN
    primitives that keep the convolution's blocked output for the pooling
    (:class:`._dnnl.ConvPool`), kept in the node's cache; None where that path does not serve
    the call (another layout, a weight computed at run time, no kernel for the pair).
    ``kernel``: the node's kernel, which this result is, so the primitives may become its direct
    call.  ``conv_geometry``: see ``conv.geometry``; ``window``: the pooling's window on the
    convolution's output (``pool.window``), of the oneDNN kind ``pool_kind``.

    Unlike a lone convolution's staging (:data:`STAGED_MAX_BYTES`), any batch takes this path:
    the blocked output is the size of the NHWC one the two ops would pass each other, and the
    NHWC copy of the input it saves is then memory saved too.
    """
    if (
        w.flags.writeable
        or (b is not None and b.flags.writeable)
        or x.dtype not in _PREPARED_DTYPES
        or not 1 < x.shape[1] <= STAGED_MAX_CHANNELS
        or x.strides[1] == x.itemsize  # channels-last already: the convolution's own path
        or not _dnnl.available()
    ):
        return None
    strides, dilations, pads, _, group = conv_geometry
    cache = ctx.cache

    def make() -> _dnnl.ConvPool | None:
        with _PACKING:  # see _PACKING: the weight's original may be released below
            conv = _dnnl.create(
                x, w, dense_weight(cache, w), b, strides=strides, dilations=dilations,
                pads=pads, group=group, activation=activation,
                activation_params=activation_params, residual=None,
                weights=cache.setdefault("dnnl_weights", []))
            if conv is None:
                return None
            made = _dnnl.create_conv_pool(
                conv, kind=pool_kind, kernel=window.kernel, strides=window.strides,
                dilations=window.dilations, pads_begin=window.begin,
                pads_end=window.library_end(), out=window.out)
            if (made is not None and 1 in ctx.owned_inputs and w.dtype == _FLOAT32
                    and cache.get("onednn_released") is not w):
                _release_packed(cache, w, conv.unpack)
            return made

    return _dnnl.run_kept(ctx, "dnnl_conv_pool", "convolution + pooling (blocked between)",
                          x, make, kernel=kernel, inputs=(x, w, b)[:ctx.num_inputs])


STAGED_MAX_CHANNELS = 4
"""An NCHW source of up to this many channels (a model's input image) goes to oneDNN as it is:
its first-layer kernels read NCHW and write a blocked layout, which a reorder turns into NHWC
(:attr:`._dnnl.Conv2d.staged`).  Alone, 2 threads, float32: 3 -> 32 channels 3x3 stride 2 at
224x224 (MobileNetV2's first layer) 63 us + 56 for the reorder, against 182 us on the NHWC copy
(which costs 50-80 us more); SqueezeNet's 3 -> 64 125 + 112 against 490; ResNet-50's 7x7
578 + 118 against 730.  More channels are copied to NHWC, where oneDNN's kernels for them are."""
STAGED_MAX_BYTES = 4 << 20
"""Largest blocked destination staged per call (see above): a model's first layer at batch 1
(SqueezeNet's 3.2 MB, ShuffleNet's 1.6).  The staging buffer is one more output-sized array at
that moment; at batch 8 (25 MB on SqueezeNet) the NHWC copy of the input (3 channels) costs far
less memory: SqueezeNet's peak at batch 8 was 53.5 MiB before staging, 77.0 with a stage kept
per thread, 46.0 with this bound."""


def _staged_bytes(x: np.ndarray, w: np.ndarray, strides: list[int], dilations: list[int],
                  pads: list[int]) -> int:
    """The size of a staged convolution's blocked destination (channels padded to 16)."""
    n, _, h, width = x.shape
    k, _, kh, kw = w.shape
    oh = (h + 2 * pads[0] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (width + 2 * pads[1] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return n * -(-k // 16) * 16 * oh * ow * x.itemsize


_MAX_LAYOUTS = 4
"""Primitives one node keeps for different input layouts (a model fed varying batch sizes);
past that they are dropped and made anew.  The packed weight is shared among them."""


def _channels_last_copy(x: np.ndarray) -> np.ndarray:
    """``x`` (N, C, H, W) copied into NHWC memory, handed back as the (N, C, H, W) view.

    A model's first convolution gets its input in NCHW.  PyTorch's copy runs on the OpenMP
    threads with a blocked transpose: 0.45 ms for 8 x 3 x 224 x 224 float32 against 1.55 ms for
    NumPy's (``ascontiguousarray`` of the transposed view), 0.08 against 0.18 ms at batch 1.
    Read-only, bfloat16 or negatively strided arrays take NumPy's copy (PyTorch would copy them
    once more first).
    """
    n, c, h, w = x.shape
    if x.flags.writeable and x.dtype == _FLOAT32 and min(x.strides) >= 0:
        import torch

        y = np.empty((n, h, w, c), x.dtype)
        torch.from_numpy(y).permute(0, 3, 1, 2).copy_(torch.from_numpy(x))
        return y.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _release_packed(cache: dict[str, Any], w: np.ndarray, unpack: Callable[[], np.ndarray],
                    key: str = "onednn") -> None:
    """Release ``w``'s memory once a kept primitive holds an exact packed copy of it (``unpack``
    reads that copy back: float32 reorders are exact; the comparison guards the layout), and
    note it in ``cache`` as ``{key}_released`` and ``{key}_rebuild`` (the convolutions'
    :func:`dense_weight`, the products' :func:`linear_weight` rebuild it on demand)."""
    if w.nbytes < _RELEASE_MIN_BYTES:
        return
    if np.array_equal(unpack(), w):
        from hetrix.runtime.memory import release_pages

        if release_pages(w):
            cache.update({f"{key}_released": w, f"{key}_rebuild": unpack})


class PreparedConv:
    """One node's oneDNN call with everything but the data decided, for the runs that follow.

    Made by :func:`conv2d` after a float32 or bfloat16 call whose input (and residual) needed no
    conversion and whose packed weight is kept.  :meth:`__call__` checks that a new call is the
    same in all that the decisions depended on (shapes, strides, type, the weight and bias
    objects) and then makes only the library call: on MobileNet-sized layers the Python around
    it cost as much as the smaller convolutions themselves.
    """

    __slots__ = ("shape", "strides", "dtype", "w", "b", "residual", "op", "args", "from_numpy",
                 "to_numpy")

    def __init__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                 residual: np.ndarray | None, op: Any, args: tuple) -> None:
        import torch

        self.shape, self.strides, self.dtype, self.w, self.b = x.shape, x.strides, x.dtype, w, b
        self.residual = None if residual is None else (residual.shape, residual.strides)
        self.op, self.args = op, args
        self.from_numpy: Callable[[np.ndarray], Any]
        self.to_numpy: Callable[[Any], np.ndarray]
        if x.dtype == _FLOAT32:  # looked up once, not per call
            self.from_numpy, self.to_numpy = torch.from_numpy, torch.Tensor.numpy
        else:  # bfloat16 travels as its bits: NumPy's is ml_dtypes', unknown to torch
            self.from_numpy, self.to_numpy = _bfloat16_tensor, to_numpy

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                 residual: np.ndarray | None, overwrite: bool = False) -> np.ndarray | None:
        """The result, or None when this call differs (the caller then takes the full path).
        ``overwrite`` is not used: PyTorch's call reads the residual as a second source."""
        if (
            w is not self.w
            or b is not self.b
            or x.shape != self.shape
            or x.strides != self.strides
            or x.dtype != self.dtype
            or not x.flags.writeable  # torch may not view read-only memory
        ):
            return None
        if residual is None:
            if self.residual is not None:
                return None
            return self.to_numpy(self.op(self.from_numpy(x), *self.args))
        if (
            self.residual != (residual.shape, residual.strides)
            or residual.dtype != self.dtype
            or not residual.flags.writeable
        ):
            return None
        return self.to_numpy(self.op(self.from_numpy(x), self.from_numpy(residual), *self.args))


def _bfloat16_tensor(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)


def _conv_add(cache: dict[str, Any], xt: Any, z: Any, weight: Any, bias: Any, pads: list[int],
              strides: list[int], dilations: list[int], group: int, unary: str) -> Any:
    """``conv + z`` (then relu when ``unary`` says so), as one oneDNN call where PyTorch has it.

    For some reduced-precision grouped convolutions PyTorch routes the binary form to a generic
    kernel that refuses the type; the node then remembers to add separately.
    """
    import torch

    if not cache.get("onednn_no_binary"):
        try:
            # after a binary post-op oneDNN takes only relu (or nothing, spelled None)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                xt, z, weight, bias, pads, strides, dilations, group, "add", None,
                None if unary == "none" else unary, [], None,
            )
        except RuntimeError:
            cache["onednn_no_binary"] = True
    y = torch.ops.mkldnn._convolution_pointwise(
        xt, weight, bias, pads, strides, dilations, group, "none", [], ""
    )
    y += z
    return torch.relu_(y) if unary == "relu" else y


def _as_like(array: np.ndarray, like: Any) -> Any:
    """``array`` as a channels-last tensor of ``like``'s type."""
    import torch

    return as_tensor(array).to(like.dtype).contiguous(memory_format=torch.channels_last)


def _packed(cache: dict[str, Any], w: np.ndarray, b: np.ndarray | None, xt: Any,
            strides: list[int], dilations: list[int], pads: list[int], group: int,
            owns_weight: bool = False) -> tuple:
    """The node's weight in oneDNN's blocked layout and its bias, packed on first use.

    With ``owns_weight``, a float32 weight packed as float32 (an exact copy, checked) has its
    original's memory released: the plan's weights would otherwise be held twice, in NumPy's
    layout and in oneDNN's.  From then on this node reads the weight only through
    :func:`dense_weight`, which rebuilds it from the packed copy if some path needs it again.
    """
    import torch

    if (
        cache.get("onednn_source") is w
        and cache.get("onednn_bias_source") is b
        and cache.get("onednn_dtype") == xt.dtype
    ):
        return cache["onednn_weight"], cache["onednn_bias"]
    constant = not w.flags.writeable and (b is None or not b.flags.writeable)
    # only a constant is kept and may have its original released: a weight fed at run time is
    # packed by each call on its own, with no lock to wait for
    with _PACKING if constant else contextlib.nullcontext():  # see _PACKING
        if (
            cache.get("onednn_source") is w
            and cache.get("onednn_bias_source") is b
            and cache.get("onednn_dtype") == xt.dtype
        ):
            return cache["onednn_weight"], cache["onednn_bias"]
        dense = dense_weight(cache, w)
        # read in place, not copied (a constant weight is read-only, which as_tensor would
        # copy): the reorder only reads it, and a copy would stay in the process's peak memory
        source = as_tensor(dense) if dense.dtype == _BFLOAT16 else _library.as_tensor(dense)
        weight = torch.ops.mkldnn._reorder_convolution_weight(
            source.to(xt.dtype).contiguous(), pads, strides, dilations, group, list(xt.shape)
        )
        bias = None if b is None else as_tensor(b).to(xt.dtype).contiguous()
        if constant:
            # the plan's weights are read-only, the same object every run; a weight fed or
            # computed at run time is writable, may change in place, and is packed on every call
            cache.update(onednn_source=w, onednn_bias_source=b, onednn_dtype=xt.dtype,
                         onednn_weight=weight, onednn_bias=bias)
            if (
                owns_weight
                and dense is w
                and w.dtype == _FLOAT32
                and xt.dtype == torch.float32
                and w.nbytes >= _RELEASE_MIN_BYTES
                and torch.equal(weight.to_dense(), _library.as_tensor(w))
            ):
                from hetrix.runtime.memory import release_pages

                if release_pages(w):
                    cache.update(onednn_released=w,
                                 onednn_rebuild=lambda: weight.to_dense().numpy())
        return weight, bias


_PACKING = threading.Lock()
"""Held while a node packs a weight and releases its original: two runs of one session on two
threads must not both pack, the second reading an original the first has just released (its
pages then read as zeros).  Packing happens once per node, so the lock is almost never waited on."""

_RELEASE_MIN_BYTES = 1 << 16
"""Weights below this keep their memory (a few pages at most; not worth a system call)."""


def dense_weight(cache: dict[str, Any], w: np.ndarray) -> np.ndarray:
    """``w``'s values: ``w`` itself, or, when its memory was released after packing (see
    :func:`_packed`), a copy rebuilt from the packed float32 weight (once, then kept)."""
    if cache.get("onednn_released") is not w:
        return w
    dense = cache.get("onednn_dense")
    if dense is None:
        dense = cache["onednn_dense"] = cache["onednn_rebuild"]()
        dense.setflags(write=False)
    return dense


def linear_fuses(activation: str) -> bool:
    """Whether :func:`packed_linear` applies ``activation`` (a Hetrix activation name) inside
    oneDNN's inner product, while the output is still in cache."""
    return activation in _UNARY_POST_OPS


def packed_linear(cache: dict[str, Any], a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
                  *, transposed: bool, activation: str = "",
                  activation_params: list[float] | tuple[float, ...] = (),
                  owns_weight: bool = False) -> np.ndarray | None:
    """``activation(a @ b + bias)`` by oneDNN's inner product on ``b`` packed once
    into the node's ``cache``, in ``a``'s type (float32, or bfloat16 for the reduced-precision
    mode); None when the product is not of that form: ``b`` not a constant 2-D weight, ``bias``
    not N constants, or oneDNN refusing the type.  ``transposed``: ``b`` is (N, K), as Gemm's
    ``transB=1`` has it.  ``activation`` is one :func:`linear_fuses` takes (or empty), with
    its ``activation_params``: applied as a post-op, it costs almost nothing (GPT-2's
    128x768 @ 768x3072 with the tanh Gelu: 3.06 ms fused, 3.66 ms as product then PyTorch's
    Gelu).

    Why packed: on the plain weight oneDNN reorders it on every call.  Measured alone here
    (float32, 2 threads): BERT's 128x768 @ 768x3072 4.46 -> 2.95 ms, 128x3072 @ 3072x768 3.26 ->
    2.94; at batch 1, AlexNet's 9216x4096 13.6 -> 4.3 ms, against 7.2 for OpenBLAS's GEMV
    capped to one thread beside torch.  With ``owns_weight`` (a constant only this node reads), a
    float32 weight packed as float32 has its original's memory released, as convolutions do
    (:func:`_packed`); :func:`linear_weight` then gives its values back to any other path.
    """
    if (b.ndim != 2 or a.ndim < 2 or b.flags.writeable or a.dtype not in _PREPARED_DTYPES
            or cache.get("linear_refused")):
        return None
    n, k = b.shape if transposed else b.shape[::-1]
    if a.shape[-1] != k:
        return None  # the general path reports the shape error
    if bias is not None and (bias.flags.writeable or bias.shape[-1:] != (n,) or bias.size != n):
        return None  # a bias that broadcasts over rows too, or one computed at run time
    import torch

    try:
        cached = cache.get("linear")
        if cached is None or cached[0] is not b or cached[1] is not bias or cached[2] != a.dtype:
            with _PACKING:  # see _PACKING
                cached = cache.get("linear")
                if (cached is None or cached[0] is not b or cached[1] is not bias
                        or cached[2] != a.dtype):
                    cached = _pack_linear(cache, a, b, bias, transposed, owns_weight)
        with torch.no_grad():
            y = _inner_product(as_tensor(a).reshape(-1, k), cached[3], cached[4],
                               _post_op(activation, list(activation_params)))
    except RuntimeError:
        # oneDNN without an inner product for this type on this CPU (the session's probe checks
        # convolutions only): this node keeps the other paths from now on
        cache["linear_refused"] = True
        return None
    return to_numpy(y.reshape(*a.shape[:-1], n))


PACK_MAX_BYTES = 64 << 20
"""Weights above this keep the unpacked paths: packing holds the original and the packed copy
at once until the original is released, and VGG-19's 392 MiB layer would lift the peak by
that much (its GEMV at batch 1 is memory-bound either way)."""

KEPT_LINEAR = True
"""Whether :func:`kept_linear` serves products (``benchmarks/ab_dnnl.py --part linear``
switches it off for one arm)."""

KEPT_LINEAR_MIN_ROWS = {_FLOAT32: 2, _BFLOAT16: 1}
"""Rows from which :func:`kept_linear` takes a product, per type.  A float32 single row is a
GEMV bound by reading the weight, where ``dnnl_sgemm`` on the plain weight was level or
ahead (1 x 1024 @ 1024 x 1000 alone, evicted: 248 against 286 us; :func:`plain_gemm`)."""


def kept_linear(ctx: NodeContext, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, *,
                transposed: bool, activation: str = "",
                activation_params: list[float] | tuple[float, ...] = (),
                kernel: Kernel | None = None,
                inputs: tuple[Any, ...] | None = None) -> np.ndarray | None:
    """``activation(a @ b + bias)`` by the node's kept oneDNN matmul primitive
    (:class:`._dnnl.Linear`, one per input shape, the weight packed once in ``a``'s type), or
    None where that path does not serve: no library, ``a`` not float32 or bfloat16 or of fewer
    rows than :data:`KEPT_LINEAR_MIN_ROWS`, ``b`` not a constant 2-D float32 weight (at most
    :data:`PACK_MAX_BYTES`; a float32 one owned by this node, since packing it as float32 copies
    it, and the original is then released), ``bias`` not N float32 constants, an activation
    oneDNN does not apply, oneDNN refusing.  ``transposed``: ``b`` is (N, K).

    ``kernel``: the node's kernel when it returns this result as it is for ``inputs`` (``a``
    first, the others constants): the primitive is then offered as the node's direct call.
    """
    cache = ctx.cache
    if (not KEPT_LINEAR or a.dtype not in _PREPARED_DTYPES or b.ndim != 2 or a.ndim < 2
            or b.dtype != _FLOAT32 or b.flags.writeable or cache.get("dnnl_linear_refused")
            or not _dnnl.available()):
        return None
    n, k = b.shape if transposed else b.shape[::-1]
    if a.shape[-1] != k or a.size // max(k, 1) < KEPT_LINEAR_MIN_ROWS[a.dtype]:
        return None
    if bias is not None and (bias.flags.writeable or bias.size != n or bias.dtype != _FLOAT32
                             or bias.shape[-1:] != (n,)):
        return None
    owns_weight = 1 in ctx.owned_inputs
    if "dnnl_linears" not in cache and (
            b.nbytes > PACK_MAX_BYTES
            or (a.dtype == _FLOAT32 and not owns_weight)
            or "linear" in cache or "gemm_weight" in cache):  # another path holds the weight
        return None
    x = a if a.flags.c_contiguous else np.ascontiguousarray(a)
    key = (x.shape, x.dtype, activation)
    linears = cache.setdefault("dnnl_linears", {})
    linear = linears.get(key)
    if linear is False:  # refused for this shape before
        return None
    if linear is None or linear.w is not b or linear.b is not bias:
        with _PACKING:  # see _PACKING: the weight's original may be released below
            made = _dnnl.create_linear(
                x, b, linear_weight(cache, b), bias, transposed=transposed,
                activation=activation, activation_params=list(activation_params),
                weights=cache.setdefault("dnnl_linear_weights", []))
            if made is None:
                if any(isinstance(v, _dnnl.Linear) for v in linears.values()):
                    linears[key] = False  # the others stay; this shape takes the other paths
                else:  # the same refusal would follow for every call
                    del cache["dnnl_linears"]
                    cache["dnnl_linear_refused"] = True
                return None
            linear = made
            if len(linears) >= _MAX_LAYOUTS:
                linears.clear()
            linears[key] = linear
            cache["library_kernel"] = (f"oneDNN matmul {linear.implementation}, packed weight, "
                                       "kept primitive")
            if (owns_weight and b.dtype == _FLOAT32 and x.dtype == _FLOAT32
                    and b.nbytes >= _RELEASE_MIN_BYTES
                    and cache.get("linear_released") is not b):
                from hetrix.runtime.memory import release_free_memory

                _release_packed(cache, b, linear.unpack, key="linear")
                # the check's unpacked copy is freed now; glibc would keep it (see
                # _pack_linear)
                release_free_memory()
    y = linear(x)
    if y is None:
        return None
    if kernel is not None and x is a:
        registry.offer_direct(ctx, kernel, inputs or (a,), (0,), linear.direct, linear)
    return y


PLAIN_GEMM = True
"""Whether :func:`plain_gemm` serves float32 products (``benchmarks/ab_dnnl.py --part gemm``
switches it off for one arm)."""


def plain_gemm_available() -> bool:
    """Whether :func:`plain_gemm` can serve in this process (the ``onednn`` extra)."""
    return _dnnl.available()


COPY_MIN_ROWS = 16
"""Rows from which :func:`plain_gemm` copies a (N, K) weight into (K, N).  Measured alone
(``python benchmarks/gemm_layouts.py``: ``dnnl_sgemm``, 2 threads, weight evicted before each
call, medians of 40 alternating calls, AMD EPYC), the (N, K) weight read transposed against
the (K, N) copy: one row 0.75-0.94 of the copy's time on the classifiers from 1024 x 1000 up
(4096 x 4096: 2.43 vs 2.92 ms), 1.06-1.10 on 544 x 1000 and 768 x 3072; two rows 0.65-0.97;
eight rows 0.80-1.10; sixteen rows 1.5-4.6 times the copy's."""


def plain_gemm(cache: dict[str, Any], a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
               *, transposed: bool, owns_weight: bool,
               max_copy_bytes: int) -> np.ndarray | None:
    """``a @ b + bias`` in float32 by oneDNN's GEMM on the weight as a plain (K, N) array
    (:func:`._dnnl.gemm`, faster than the packed inner product here), or None where it does
    not serve: no oneDNN library, another type, ``b`` not a constant C-contiguous 2-D weight,
    ``bias`` not N constants, or a node already on the packed product.

    A (K, N) weight is read in place: no copy at all.  A (N, K) one (Gemm's ``transB=1``) that
    this node owns is copied once into (K, N) on the first call with ``COPY_MIN_ROWS`` rows or
    more, and its original released as packing does (:func:`linear_weight` then gives the
    values back as a view of the copy), unless earlier calls had fewer rows: then the original
    stays, as a run on another thread may still be reading it.  From 16 rows the GEMM reading
    (N, K) as the transpose is 1.5-4.6x slower than on (K, N); below (a CNN's classifier at
    batch 1) the (N, K) weight read in place is the faster way: each thread streams whole rows
    of it, where on (K, N) it reads a strided column block (see ``COPY_MIN_ROWS``).
    Weights above ``max_copy_bytes`` (a copy would lift the load's peak by that much: AlexNet's
    151 MiB classifier) and weights the node does not own are read in place at any row count.
    The bias fills the output first and the GEMM adds to it.  Activations are not fused here:
    callers with one use :func:`packed_linear`, whose inner product applies it as a post-op.
    """
    if (not PLAIN_GEMM or a.dtype != _FLOAT32 or b.dtype != _FLOAT32 or b.ndim != 2
            or a.ndim < 2 or b.flags.writeable or not b.flags.c_contiguous
            or not _dnnl.available() or "linear" in cache or "dnnl_linears" in cache):
        return None
    n, k = b.shape if transposed else b.shape[::-1]
    if a.shape[-1] != k:
        return None  # the general path reports the shape error
    if bias is not None and (bias.flags.writeable or bias.size != n or bias.dtype != _FLOAT32
                             or bias.shape[-1:] != (n,)):
        return None
    rows = a.size // k if k else 0
    copy = owns_weight and b.nbytes <= max_copy_bytes and rows >= COPY_MIN_ROWS
    kept = cache.get("gemm_weight")
    # kept[2]: the weight is read transposed in place; a call with many rows copies it then
    if kept is None or kept[0] is not b or (copy and kept[2]):
        with _PACKING:  # one copy even when runs of a session start together
            kept = cache.get("gemm_weight")
            first = kept is None or kept[0] is not b
            if first or (copy and kept is not None and kept[2]):
                # a later copy keeps the original: a run on another thread may be reading it
                kept = _plain_weight(cache, b, transposed, copy=copy, release=first)
    assert kept is not None  # made above, or by an earlier call
    x = np.ascontiguousarray(a.reshape(-1, k))
    # a large output (GPT-2's logits) reuses the node's last one: see recycled_empty
    y = recycled_empty(cache.setdefault("spare_outputs", []), (x.shape[0], n), _FLOAT32)
    if bias is not None:
        y[...] = bias.reshape(n)
    _dnnl.gemm(x, kept[1], y, accumulate=bias is not None, b_transposed=kept[2])
    return y.reshape(*a.shape[:-1], n)


def bfloat16_row(cache: dict[str, Any], a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
                 *, transposed: bool) -> np.ndarray | None:
    """``a @ b + bias`` as float32 (the caller applies any activation, then rounds) for a
    bfloat16 ``a`` of one row, by oneDNN's bfloat16 GEMM on a bfloat16 (N, K) copy of the
    weight made once; None where it does not serve (more rows, no library, ``b`` not a constant
    float32 2-D weight, ``bias`` not N constants).

    A one-row product reads the whole weight for a row of output: alone, cache flushed, this
    GEMM took AlexNet's 9216x4096 layer from 4.29 ms (the packed inner product) to 2.88, and
    1280x1000 from 461 to 229 us; from 8 rows on the packed product is the faster one (4.4 vs
    7.5 ms), so only single rows come here.  The copy takes the place of the packed one.
    """
    if (a.dtype != _BFLOAT16 or b.dtype != _FLOAT32 or b.ndim != 2 or a.ndim < 2
            or a.size != a.shape[-1] or b.flags.writeable or not PLAIN_GEMM
            or not _dnnl.available() or "linear" in cache or "dnnl_linears" in cache):
        return None
    n, k = b.shape if transposed else b.shape[::-1]
    if a.shape[-1] != k or (bias is not None and (bias.flags.writeable or bias.size != n)):
        return None
    kept = cache.get("gemm_weight_bf16")
    if kept is None or kept[0] is not b:
        with _PACKING:
            kept = cache.get("gemm_weight_bf16")
            if kept is None or kept[0] is not b:
                weight = (b if transposed else b.T).astype(_BFLOAT16, order="C")
                kept = cache["gemm_weight_bf16"] = (b, weight)
                cache["library_kernel"] = ("oneDNN bfloat16 GEMM (dnnl_gemm_bf16bf16f32) on a "
                                           "bfloat16 copy of the weight")
    y = np.empty((1, n), np.float32)
    if bias is not None:
        y[...] = bias.reshape(n)
    _dnnl.gemm(np.ascontiguousarray(a.reshape(1, k)), kept[1], y,
               accumulate=bias is not None, b_transposed=True)
    return y.reshape(*a.shape[:-1], n)


def _plain_weight(cache: dict[str, Any], b: np.ndarray, transposed: bool,
                  copy: bool, release: bool = True) -> tuple:
    """Keep ``(b, the weight the GEMM reads, whether that is (N, K))`` in ``cache``: ``b``
    itself, or with ``copy``, a (N, K) ``b`` copied into (K, N) and, with ``release``,
    released; see :func:`plain_gemm`."""
    weight = b
    if transposed and copy:
        weight = np.ascontiguousarray(b.T)
        weight.setflags(write=False)
        if release and b.nbytes >= _RELEASE_MIN_BYTES:
            from hetrix.runtime.memory import release_pages

            if release_pages(b):
                cache.update(linear_released=b, linear_dense=weight.T)
    kept = (b, weight, weight is b and transposed)
    cache["gemm_weight"] = kept
    cache["library_kernel"] = ("oneDNN GEMM (dnnl_sgemm) on the plain weight"
                               + (", read transposed" if kept[2] else ""))
    return kept


def _pack_linear(cache: dict[str, Any], a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
                 transposed: bool, owns_weight: bool) -> tuple:
    """Pack ``b`` as (N, K) in oneDNN's layout for about ``a``'s row count; cache and return
    ``(b, bias, dtype, packed, bias tensor)``.  The packing reads ``b`` in place (float32), so
    the only copy is the packed one, and ``b``'s memory is released when this node owns it."""
    import torch

    dtype = torch_dtype(a.dtype)
    dense = linear_weight(cache, b)
    n = dense.shape[0] if transposed else dense.shape[1]
    source = _library.as_tensor(dense) if dense.dtype != _BFLOAT16 else as_tensor(dense)
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(
            (source if transposed else source.t()).to(dtype), math.prod(a.shape[:-1]))
    tail = None if bias is None else as_tensor(bias.reshape(n)).to(dtype)
    cached = (b, bias, a.dtype, packed, tail)
    cache["linear"] = cached
    cache["library_kernel"] = "oneDNN inner product on a packed weight, PyTorch's call"
    if (owns_weight and dense is b and b.dtype == _FLOAT32 and a.dtype == _FLOAT32
            and b.nbytes >= _RELEASE_MIN_BYTES and _reads_back(packed, b, transposed)):
        from hetrix.runtime.memory import release_free_memory, release_pages

        if release_pages(b):
            cache.update(linear_released=b, linear_transposed=transposed)
        # whatever the reorder allocated on the way is freed now; glibc would keep it for good
        # (see runtime.memory): without this, BERT-base's 72 layers left 230 MiB of such heap
        release_free_memory()
    return cached


def _reads_back(packed: Any, b: np.ndarray, transposed: bool) -> bool:
    """Whether the packed weight computes what ``b`` does, on one probe row (a float32 reorder
    is exact, so this guards the layout, not rounding): the condition for releasing ``b``.  A
    whole ``to_dense`` comparison would cost one more copy of the weight at the load's peak."""
    import torch

    k = b.shape[1] if transposed else b.shape[0]
    probe = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
    want = probe @ (b.T if transposed else b)  # float32 in place: no copy of the weight
    with torch.no_grad():
        got = _inner_product(torch.from_numpy(probe), packed, None).numpy()
    scale = float(np.abs(want).max()) or 1.0
    return bool(np.abs(got - want).max() <= 1e-4 * scale * max(1.0, k ** 0.5))


def _inner_product(x: Any, packed: Any, bias: Any,
                   post_op: tuple[str, list[float], str] = ("none", [], "")) -> Any:
    """``x @ packed.T + bias``, then the unary ``post_op`` (:func:`_post_op`), by oneDNN's inner
    product on a packed weight."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, *post_op)


def linear_weight(cache: dict[str, Any], b: np.ndarray) -> np.ndarray:
    """``b``'s values: ``b`` itself, or, when its memory was released after packing (see
    :func:`packed_linear` and :func:`kept_linear`), a copy rebuilt from the packed weight
    (once, then kept)."""
    if cache.get("linear_released") is not b:
        return b
    dense = cache.get("linear_dense")
    if dense is None:
        if "linear_rebuild" in cache:  # released by kept_linear: its primitive unpacks it
            dense = cache["linear_rebuild"]()
        else:
            rebuilt = cache["linear"][3].to_dense().numpy()  # (N, K)
            dense = rebuilt if cache["linear_transposed"] else rebuilt.T
        dense.setflags(write=False)
        cache["linear_dense"] = dense
    return dense


def _post_op(activation: str, params: list[float]) -> tuple[str, list[float], str]:
    """oneDNN's (post-op name, scalars, algorithm) for a Hetrix activation."""
    name = _UNARY_POST_OPS[activation]
    if activation == "Gelu":
        return name, [], "none"
    if activation == "GeluTanh":
        return name, [], "tanh"
    if activation in ("LeakyRelu", "Clip"):
        # Clip's open bounds (+-inf) are what hardtanh clamps to as well
        return name, [float(p) for p in params], ""
    return name, [], ""


def is_channels_last(array: np.ndarray) -> bool:
    """A 4-D array laid out NHWC (as convolution outputs here are), with more than one channel."""
    return (
        array.ndim == 4
        and array.shape[1] > 1
        and array.strides[1] == array.itemsize
        and not array.flags.c_contiguous
    )


def all_channels_last(arrays: tuple[np.ndarray, ...] | list[np.ndarray]) -> bool:
    """Whether every array is a channels-last float tensor of one type (:func:`concat_channels`)."""
    return (
        available()
        and all(a.dtype in SUPPORTED_DTYPES and is_channels_last(a) for a in arrays)
        and len({a.dtype for a in arrays}) == 1
    )


NUMPY_CONCAT_MAX_BYTES = 2 << 20
"""Largest :func:`concat_channels` output copied by NumPy rather than by torch.cat.  In a model
run an op's own code comes back from memory after the layers before it, and NumPy's path is
the shorter one (``benchmarks/cold_ops.py``: a tiny add after a large op, 9-32 us on NumPy
against 35-134 on torch); torch.cat copies on both threads.  Measured in the models (sessions
alternating, 0.1 s pause, batch 1): SqueezeNet 0.93-0.97x, ShuffleNet 0.97-0.98x, Inception
v1/v2 level; SqueezeNet at batch 8 (12 MiB outputs) 1.12x slower on NumPy, hence the bound."""


def concat_channels(arrays: tuple[np.ndarray, ...] | list[np.ndarray],
                    relu: bool = False) -> np.ndarray:
    """Concatenation along the channels of NHWC-laid-out arrays, keeping that layout; with
    ``relu``, max(x, 0) of it (NaN stays NaN), applied as the inputs are copied.

    NumPy's concatenate would write a C-ordered (NCHW) result that the next convolution must
    transpose back.  Up to :data:`NUMPY_CONCAT_MAX_BYTES` each input is copied into its channel
    slice of a new NHWC buffer; above, torch.cat does it (it writes channels-last when its
    inputs are).  Raises ValueError when the inputs differ in batch or spatial size.
    """
    n, _, h, w = arrays[0].shape
    for array in arrays[1:]:
        if array.shape[0] != n or array.shape[2:] != (h, w):
            raise ValueError(f"Concat: inputs of shapes {[list(a.shape) for a in arrays]} differ "
                             "in a dimension other than the channels")
    channels = sum(a.shape[1] for a in arrays)
    if n * channels * h * w * arrays[0].itemsize > NUMPY_CONCAT_MAX_BYTES:
        import torch

        joined = torch.cat([as_tensor(a) for a in arrays], dim=1)
        return to_numpy(joined.relu_() if relu else joined)
    buffer = np.empty((n, h, w, channels), arrays[0].dtype)
    start = 0
    for array in arrays:
        target = buffer[..., start:start + array.shape[1]]
        if relu:
            np.maximum(array.transpose(0, 2, 3, 1), 0, out=target)
        else:
            target[...] = array.transpose(0, 2, 3, 1)
        start += array.shape[1]
    return buffer.transpose(0, 3, 1, 2)


def conv_transpose2d(cache: dict[str, Any], x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                     strides: list[int], dilations: list[int], out: list[int],
                     begin: list[int], group: int) -> np.ndarray | None:
    """A 2-D ConvTranspose through PyTorch's deconvolution (oneDNN's, on channels-last
    memory), or None where it does not serve: not 4-D, a type other than float32 and
    bfloat16, or a crop PyTorch cannot say (its padding is the same at both ends, and
    ``output_padding`` below the stride or the dilation).  ``out`` and ``begin`` are the
    output's spatial size and the crop at its start, as ONNX's attributes give them.

    The NumPy path (a product then col2im, which loops over kernel offsets in Python) took
    5.6 ms for a U-Net-style 64 -> 32 channel 4x4 stride-2 upsampling of 64x64; this 0.9.
    The weight is viewed (or, read-only, copied) once per node and kept in ``cache``.
    """
    if (x.ndim != 4 or w.ndim != 4 or x.dtype not in _PREPARED_DTYPES or w.dtype != x.dtype
            or (b is not None and b.dtype != x.dtype) or not available()):
        return None
    spatial = x.shape[2:]
    kernel_size = w.shape[2:]
    output_padding = []
    for i, s, d, k, o, p in zip(spatial, strides, dilations, kernel_size, out, begin,
                                strict=True):
        extra = o - ((i - 1) * s - 2 * p + d * (k - 1) + 1)
        if p < 0 or not 0 <= extra < max(s, d):
            return None
        output_padding.append(extra)
    import torch

    kept = cache.get("deconv_weight")
    if kept is None or kept[0] is not w or kept[1] is not b:
        kept = (w, b, as_tensor(w), None if b is None else as_tensor(b))
        cache["deconv_weight"] = kept
    xt = as_tensor(x).contiguous(memory_format=torch.channels_last)
    y = torch.nn.functional.conv_transpose2d(xt, kept[2], kept[3], strides, begin,
                                             output_padding, group, dilations)
    cache["library_kernel"] = "oneDNN deconvolution, PyTorch's call"
    return to_numpy(y)


def as_tensor(array: np.ndarray) -> Any:
    """A torch view of ``array`` (bfloat16 through its int16 bits).  Read-only arrays are copied
    (torch cannot promise not to write to them), as are negative strides (torch has none)."""
    import torch

    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = array.copy()
    if array.dtype == _BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def torch_dtype(dtype: np.dtype) -> Any:
    """The torch dtype of a float NumPy dtype this module handles."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype.name
    ]


def to_numpy(tensor: Any) -> np.ndarray:
    """The NumPy view of a CPU tensor (bfloat16 as ml_dtypes' bfloat16)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_BFLOAT16)
    return tensor.numpy()
