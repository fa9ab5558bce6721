"""Reduced precision on the CPU: the dense part of a float32 model in bfloat16 or float16.

Selected with ``SessionOptions(precision="bf16")`` (or ``"fp16"``).  This backend goes first in the
session and takes the nodes where the matrix units pay off — Conv, MatMul, Gemm and their fused
forms — plus the ops that sit between them, so that a chain of them stays in the reduced type:

* in CNNs: Relu, Add, Concat, pooling, inference BatchNormalization, Flatten and LRN;
* in transformers: LayerNormalization, Hetrix's fused attention (the mask stays float32) and GELU;
* layout ops (Reshape, Transpose, Squeeze, Unsqueeze, Split, Slice, Identity, ChannelShuffle), and
  LRN, only after a node of this backend: on a float32 value they would round it for nothing.

Its values live in their own memory space, ``bf16:cpu`` (``fp16:cpu``): numpy arrays of the reduced
type, 4-D ones channels-last as oneDNN writes them.  The planner converts a float32 value once when
it enters that space and converts back where a float32 node reads it (Softmax, a graph output...),
exactly as it copies values to and from a GPU.  Constant weights are converted once, at planning
or on first use.  Convolutions and pooling run through oneDNN (:mod:`.numpy_cpu.kernels._onednn`,
AMX on CPUs that have it), matrix products with a constant weight through oneDNN's inner product
on a weight packed once, the rest through PyTorch's kernels; all accumulate in float32 inside.

Nothing is switched silently: the placement lists these nodes under ``bf16:cpu``, and
:meth:`hetrix.InferenceSession.compare_precision` measures the output difference against float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from hetrix.backends.base import Backend
from hetrix.backends.numpy_cpu.kernels import _dnnl, _onednn, fused, normalization, pool, tensor
from hetrix.backends.numpy_cpu.kernels.conv import conv_fused
from hetrix.backends.registry import Kernel, NodeContext
from hetrix.backends.torch_setup import import_torch
from hetrix.errors import InvalidArgumentError

PRECISIONS = {"bf16": "bfloat16", "fp16": "float16"}

SMALL_TO_HOST_ELEMENTS = 1 << 14
"""Up to this many elements a value leaves the reduced space by NumPy's cast, above it by
PyTorch's (vectorised and threaded: 6.6 against 19.8 us for 65,536 elements, back to back).

Why: a classifier's scores (1,000 numbers) leave the reduced space after the model's last
convolution or product, once or twice a run, and PyTorch's call path then runs cold: its
cast took 213 us a run on Inception v2 (NumPy's: under 1 us back to back, either path 3 us
or less).  Converted by NumPy instead, batch 1 after a 0.1 s pause (``benchmarks/ab_dnnl.py
MODEL --part tohost --precision bf16``: two sessions of one process, runs alternating,
medians): SqueezeNet 0.940 of the time, ShuffleNet 0.951, Inception v1 0.985, Inception v2
0.989, ResNet-50 0.996.  The two casts give the same float32 values (widening is exact)."""


class ReducedPrecisionBackend(Backend):
    """Conv/MatMul/Gemm and the ops between them, in bfloat16 or float16, through oneDNN."""

    device = "cpu"
    runs_fused_ops = True  # FusedConv/FusedGemm/FusedMatMul: the fused forms are what it is for

    def __init__(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of fp32, {', '.join(PRECISIONS)}; got {precision!r}"
            )
        try:
            torch = import_torch()
        except ImportError as exc:
            raise InvalidArgumentError(
                f"precision={precision!r} computes through PyTorch's CPU kernels: "
                "pip install 'hetrix[torch]'"
            ) from exc
        refusal = _unsupported_reason(precision)
        if refusal:
            raise InvalidArgumentError(
                f"precision={precision!r} is not available on this CPU: {refusal}. "
                "Use precision='bf16' or the float32 default."
            )
        self.precision = precision
        self._decided: dict[int, tuple[ir.Node, Kernel | None]] = {}
        self.name = f"{precision}:cpu"
        self.memory = f"{precision}:cpu"
        self._torch_dtype = getattr(torch, PRECISIONS[precision])

    def kernel_for(self, node: ir.Node, opset: int) -> Kernel | None:
        """This backend's kernel for ``node``, decided once per node: followers and joins ask
        about their producers, and the placer asks in graph order, so with the answers kept
        each question is one step deep however long the chain of producers."""
        decided = self._decided.get(id(node))
        if decided is not None and decided[0] is node:
            return decided[1]
        kernel = self._decide(node, opset)
        self._decided[id(node)] = (node, kernel)  # the node is kept, so its id stays its own
        return kernel

    def _decide(self, node: ir.Node, opset: int) -> Kernel | None:
        make = _KERNELS.get((node.domain, node.op_type))
        if make is None:
            return None
        data = node.inputs[:1] if node.op_type in _LAYOUT_OPS else node.inputs
        if any(v is not None and v.dtype not in (None, ir.DataType.FLOAT) for v in data):
            return None  # only float32 models trade precision here
        if node.op_type in _FOLLOWERS and not self._produced_here(node, opset):
            return None
        if node.op_type in _JOINS and not all(
            self._produced_here(node, opset, i) or _is_constant(v)
            for i, v in enumerate(node.inputs) if v is not None
        ):
            return None
        if node.op_type == "LayerNormalization" and (
            len(node.outputs) > 1 or _attribute(node, "stash_type", 1) != 1
        ):
            return None  # its statistics outputs, or statistics in double: float32 kernel
        if node.op_type == "BatchNormalization" and (
            len(node.outputs) > 1 or _attribute(node, "training_mode", 0)
        ):
            return None  # training-mode statistics stay in float32
        return make

    def _produced_here(self, node: ir.Node, opset: int, index: int = 0) -> bool:
        """Whether input ``index`` of ``node`` comes from a node this backend takes.

        Followers: a reshape or transpose only moves values, and LRN computes in float32
        anyway; in the reduced space they spare the two conversions around them inside a CNN
        (ShuffleNet's channel shuffles, AlexNet's LRN), but on a float32 value they would round
        it to the reduced type for nothing.  Joins (Add, Sum) go reduced only when every input
        is reduced already: a transformer's residual stream, ``x + layer(x)`` then
        LayerNormalization, stays float32, which keeps BERT's bf16 error at a third (max 0.024
        against float32 instead of 0.076, OpenVINO's bf16: 0.025) for no measurable time.
        """
        source = node.inputs[index]
        producer = source.producer() if source is not None else None
        return producer is not None and self.kernel_for(producer, opset) is not None

    def host_input_indices(self, node: ir.Node) -> frozenset[int]:
        """Shape arguments, and constant weights: those stay the plan's read-only float32 arrays,
        converted (and, for convolutions, packed) once by the kernel that reads them."""
        indices = set(super().host_input_indices(node))
        if node.op_type == "LayerNormalization":
            indices.update(i for i, v in enumerate(node.inputs[1:3], start=1)
                           if v is not None and (v.const_value is not None or v.is_initializer()))
        if node.op_type == "Attention" and len(node.inputs) > 3:
            indices.add(3)  # the additive mask: float32, so that -1e9 or -inf stay what they are
        if node.op_type in _WEIGHTED_OPS:
            indices.update(
                i for i, v in enumerate(node.inputs[1:3], start=1)
                if v is not None and (v.const_value is not None or v.is_initializer())
            )
        return frozenset(indices)

    # -- memory: float32 <-> the reduced type, converted by PyTorch's vectorised casts -------------

    def from_host(self, value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.dtype == np.float32:
            if value.ndim == 4:
                # channels-last, as oneDNN's convolutions and pools want it (PyTorch's bfloat16
                # max pooling is 20x slower on NCHW: 1.36 against 0.07 ms on 96x55x55); by a
                # oneDNN reorder where it serves the type (half PyTorch's time on an image)
                cast = _dnnl.channels_last_cast(value, PRECISIONS[self.precision])
                if cast is not None:
                    return cast
                torch = import_torch()
                return _onednn.to_numpy(_onednn.as_tensor(value).to(
                    self._torch_dtype, memory_format=torch.channels_last))
            return _onednn.to_numpy(_onednn.as_tensor(value).to(self._torch_dtype))
        return value

    def to_host(self, value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.dtype.name in PRECISIONS.values():
            if value.size <= SMALL_TO_HOST_ELEMENTS:
                # NumPy's cast (ml_dtypes), exact as PyTorch's: see SMALL_TO_HOST_ELEMENTS
                return value.astype(np.float32, order="C")
            torch = import_torch()
            # C order on the way out: float32 readers (and users) expect plain NCHW arrays
            return _onednn.to_numpy(_onednn.as_tensor(value).to(torch.float32)
                                    .contiguous(memory_format=torch.contiguous_format))
        return value


_PROBED: dict[str, str] = {}
"""precision -> why this CPU cannot run it ("" when it can), probed once per process."""


def _unsupported_reason(precision: str) -> str:
    """Why oneDNN cannot convolve in ``precision`` on this CPU, or "" when it can.

    oneDNN's float16 convolutions need AVX512-FP16 or AVX-NE-CONVERT (many AMD and older Intel
    CPUs have neither); bfloat16 is emulated where AVX512-BF16 and AMX are missing.  Rather than
    restating oneDNN's rules, one tiny convolution asks the library itself, so the session refuses
    the mode up front with a clear reason instead of failing on its first convolution.
    """
    if precision not in _PROBED:
        torch = import_torch()
        dtype = getattr(torch, PRECISIONS[precision])
        try:
            with torch.no_grad():
                x = torch.zeros(1, 8, 4, 4, dtype=dtype).contiguous(
                    memory_format=torch.channels_last)
                w = torch.ops.mkldnn._reorder_convolution_weight(
                    torch.zeros(8, 8, 1, 1, dtype=dtype), [0, 0], [1, 1], [1, 1], 1,
                    list(x.shape))
                torch.ops.mkldnn._convolution_pointwise(
                    x, w, None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
            _PROBED[precision] = ""
        except RuntimeError as exc:
            _PROBED[precision] = f"PyTorch's oneDNN refuses a {PRECISIONS[precision]} " \
                f"convolution ({str(exc).splitlines()[0]})"
    return _PROBED[precision]


_WEIGHTED_OPS = ("Conv", "FusedConv", "FusedConvPool", "Gemm", "FusedGemm", "MatMul",
                 "FusedMatMul")
"""Ops whose inputs 1 and 2 are usually constant weight and bias."""


def _attribute(node: ir.Node, name: str, default: Any) -> Any:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _torch() -> Any:
    import torch

    return torch


# -- kernels: inputs and outputs are arrays of the reduced type -----------------------------------


def _conv(ctx: NodeContext, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
          z: np.ndarray | None = None) -> np.ndarray:
    y, applied = conv_fused(ctx, x, w, b, residual=z, activation=fused.activation_name(ctx))
    if not applied:
        return _reduced_result(fused.activate, ctx, y)
    _onednn.offer_direct_conv(ctx, _conv, (x, w, b, z)[:ctx.num_inputs])  # as float32's does
    return y


def _reduced_result(fn: Any, ctx: NodeContext, *arrays: np.ndarray) -> np.ndarray:
    """A float32 NumPy kernel on reduced inputs: computed in float32, returned reduced.

    The casts go through PyTorch, which keeps each array's layout and is 4-9x faster than
    NumPy's casts to and from ml_dtypes' bfloat16.
    """
    dtype = _onednn.torch_dtype(arrays[0].dtype)
    result = fn(ctx, *(_onednn.to_numpy(_onednn.as_tensor(a).float()) for a in arrays))
    return _onednn.to_numpy(_onednn.as_tensor(np.asarray(result)).to(dtype)) \
        if isinstance(result, np.ndarray) and result.dtype == np.float32 else result


def _in_float32(fn: Any) -> Kernel:
    """``fn``, a float32 NumPy kernel, as a kernel of this backend (see :func:`_reduced_result`):
    for ops with no reduced-type library kernel between two that have one (LRN between
    AlexNet's convolutions), where converting around the node would cost as much and leave
    the reduced memory space."""
    def run(ctx: NodeContext, *arrays: np.ndarray) -> np.ndarray:
        return _reduced_result(fn, ctx, *arrays)

    return run


def _torch_elementwise(op: str) -> Any:
    def run(ctx: NodeContext, *arrays: np.ndarray) -> np.ndarray:
        torch = _torch()
        tensors = [_onednn.as_tensor(a) for a in arrays[: ctx.num_inputs]]
        with torch.no_grad():
            if op == "Relu":
                result = torch.relu(tensors[0])
            else:  # Add, or a Sum of any number of inputs
                result = tensors[0]
                for other in tensors[1:]:
                    result = result + other
        return _onednn.to_numpy(result)

    return run


def _batch_norm(ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                mean: np.ndarray, var: np.ndarray, relu: bool = False) -> np.ndarray:
    """Inference BatchNormalization as ``x * multiplier + offset`` in the reduced type, the
    statistics folded once per node (``normalization.folded_batch_norm``): one
    ``torch.addcmul`` a run (25% faster than ``batch_norm`` on DenseNet's shapes), the fused
    Relu in place."""
    torch = _torch()
    multiplier, offset = normalization.folded_batch_norm(
        ctx.cache, scale, bias, mean, var, float(ctx.attrs.get("epsilon", 1e-5)), x.ndim,
        _onednn.torch_dtype(x.dtype))
    with torch.no_grad():
        y = torch.addcmul(offset, _onednn.as_tensor(x), multiplier)
        if relu:
            y.relu_()
    return _onednn.to_numpy(y)


def _matmul(ctx: NodeContext, a: np.ndarray, b: np.ndarray,
            bias: np.ndarray | None = None, activation: str = "",
            kernel: Kernel | None = None) -> np.ndarray:
    """``a @ b``, plus ``bias`` and ``activation`` for FusedMatMul; ``kernel``: the node's (see
    :func:`_linear`)."""
    post_op, params = fused.linear_post_op(ctx) if activation else ("", [])
    y = _linear(ctx, a, b, bias, transposed=False, activation=post_op, activation_params=params,
                kernel=kernel if post_op or not activation else None,
                inputs=(a, b, bias)[:ctx.num_inputs])
    if y is None:
        torch = _torch()
        with torch.no_grad():
            y = _onednn.to_numpy(torch.matmul(_onednn.as_tensor(a), _weight(ctx, b, "b", a)))
        if bias is not None:
            y = _onednn.to_numpy(_onednn.as_tensor(y) + _weight(ctx, bias, "bias", y))
    elif post_op:
        return y
    return _activate(ctx, y) if activation else y


def _linear(ctx: NodeContext, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
            transposed: bool, activation: str = "",
            activation_params: list[float] | tuple[float, ...] = (),
            kernel: Kernel | None = None,
            inputs: tuple[Any, ...] | None = None) -> np.ndarray | None:
    """``activation(a @ b + bias)`` on a weight packed once in the reduced type, the activation
    as a post-op (computed in float32 before the one rounding to the reduced type), or None
    when the product is not of that form: by the node's kept oneDNN matmul primitive
    (:func:`_onednn.kept_linear`, offered as the node's direct call when ``kernel`` returns
    this result as it is for ``inputs``), else oneDNN's inner product through PyTorch
    (:func:`_onednn.packed_linear`).

    A product with few rows is bound by reading the weight; packed in the reduced type it is
    read at memory speed (AlexNet's 9216x4096 layer at batch 1: 3.3 ms, against 4.6 ms through
    ``torch.matmul`` on the same bfloat16 weight; ``benchmarks/RESULTS.md``).  A single row goes
    to oneDNN's bfloat16 GEMM instead (:func:`_onednn.bfloat16_row`, faster still).
    """
    y = _onednn.kept_linear(ctx, a, b, bias, transposed=transposed, activation=activation,
                            activation_params=activation_params, kernel=kernel, inputs=inputs)
    if y is not None:
        return y
    row = _onednn.bfloat16_row(ctx.cache, a, b, bias, transposed=transposed)
    if row is not None:  # one row: the bfloat16 GEMM; activation in float32, one rounding
        return (fused.activate(ctx, row) if activation else row).astype(a.dtype)
    return _onednn.packed_linear(ctx.cache, a, b, bias, transposed=transposed,
                                 activation=activation, activation_params=activation_params)


def _gemm(ctx: NodeContext, a: np.ndarray, b: np.ndarray,
          c: np.ndarray | None = None, activation: str = "",
          kernel: Kernel | None = None) -> np.ndarray:
    """Gemm, and FusedGemm's ``activation``; ``kernel``: the node's (see :func:`_linear`)."""
    alpha, beta = float(ctx.attrs.get("alpha", 1.0)), float(ctx.attrs.get("beta", 1.0))
    y = None
    if alpha == 1.0 and beta == 1.0 and not ctx.attrs.get("transA", 0) and a.ndim == 2:
        post_op, params = fused.linear_post_op(ctx) if activation else ("", [])
        y = _linear(ctx, a, b, c, transposed=bool(ctx.attrs.get("transB", 0)),
                    activation=post_op, activation_params=params,
                    kernel=kernel if post_op or not activation else None,
                    inputs=(a, b, c)[:ctx.num_inputs])
        if y is not None and post_op:
            return y
    if y is None:
        y = _plain_gemm(ctx, a, b, c)
    return _activate(ctx, y) if activation else y


def _plain_gemm(ctx: NodeContext, a: np.ndarray, b: np.ndarray,
                c: np.ndarray | None = None) -> np.ndarray:
    torch = _torch()
    at, bt = _onednn.as_tensor(a), _weight(ctx, b, "b", a)
    if ctx.attrs.get("transA", 0):
        at = at.T
    if ctx.attrs.get("transB", 0):
        bt = bt.T
    alpha, beta = float(ctx.attrs.get("alpha", 1.0)), float(ctx.attrs.get("beta", 1.0))
    with torch.no_grad():
        y = torch.matmul(at, bt)
        if alpha != 1.0:
            y = y * alpha
        if c is not None and beta != 0.0:
            y = y + _weight(ctx, c, "c", a) * beta
    return _onednn.to_numpy(y)


def _weight(ctx: NodeContext, array: np.ndarray, slot: str, like: np.ndarray) -> Any:
    """``array`` as a tensor of ``like``'s type; constant weights (read-only float32, the same
    object every run) are converted once and kept."""
    torch = _torch()
    dtype = _onednn.torch_dtype(like.dtype)
    if array.flags.writeable:
        return _onednn.as_tensor(array).to(dtype)
    cached = ctx.cache.get(slot)
    if cached is None or cached[0] is not array:
        tensor = _onednn.as_tensor(np.ascontiguousarray(array)).to(dtype)
        cached = (array, tensor.contiguous(memory_format=torch.contiguous_format))
        ctx.cache[slot] = cached
    return cached[1]


def _fused_gemm(ctx: NodeContext, a: np.ndarray, b: np.ndarray,
                c: np.ndarray | None = None) -> np.ndarray:
    return _gemm(ctx, a, b, c, activation=fused.activation_name(ctx), kernel=_fused_gemm)


def _fused_matmul(ctx: NodeContext, a: np.ndarray, b: np.ndarray,
                  bias: np.ndarray | None = None) -> np.ndarray:
    return _matmul(ctx, a, b, bias, activation=fused.activation_name(ctx),
                   kernel=_fused_matmul)


def _fused_batch_norm(ctx: NodeContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                      mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    activation = fused.activation_name(ctx)
    if activation in ("", "Relu"):  # both in one oneDNN pass where it can
        y = normalization.kept_batch_norm(ctx, _fused_batch_norm, (x, scale, bias, mean, var),
                                          relu=activation == "Relu")
        if y is None:
            y = normalization.prefix_batch_norm(ctx, _fused_batch_norm,
                                                (x, scale, bias, mean, var),
                                                relu=activation == "Relu")
        if y is not None:
            return y
    y = _batch_norm(ctx, x, scale, bias, mean, var, relu=activation == "Relu")
    return y if activation in ("", "Relu") else _activate(ctx, y)


def _activate(ctx: NodeContext, y: np.ndarray) -> np.ndarray:
    """The node's activation: Relu and Gelu by torch in the reduced type, others in float32."""
    activation = fused.activation_name(ctx)
    if activation == "":
        return y
    if activation == "Relu":
        return _onednn.to_numpy(_torch().relu(_onednn.as_tensor(y)))
    if activation in _GELUS:
        return _gelu_tensor(y, _GELUS[activation])
    return _reduced_result(fused.activate, ctx, y)


def _lrn(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """LRN on a kept oneDNN primitive in the reduced type where it can, else in float32."""
    y = normalization.kept_lrn(ctx, _lrn, x)
    return _lrn_float32(ctx, x) if y is None else y


_lrn_float32 = _in_float32(normalization.lrn)

_GELUS = {"Gelu": "none", "GeluTanh": "tanh"}


def _gelu_tensor(x: np.ndarray, approximate: str) -> np.ndarray:
    """Gelu by PyTorch on the reduced type (it computes each value in float32 inside)."""
    torch = _torch()
    with torch.no_grad():
        return _onednn.to_numpy(torch.nn.functional.gelu(_onednn.as_tensor(x),
                                                         approximate=approximate))


def _gelu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    approximate = ctx.attrs.get("approximate", "none") or "none"
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return _gelu_tensor(x, approximate)


def _layer_norm(ctx: NodeContext, x: np.ndarray, scale: np.ndarray,
                bias: np.ndarray | None = None) -> np.ndarray:
    """LayerNormalization by PyTorch on the reduced activation, statistics in float32 inside,
    with the float32 scale and bias as they are (PyTorch takes that mix on the CPU)."""
    axis = int(ctx.attrs.get("axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    normalized = tuple(x.shape[axis:])
    torch = _torch()
    params = ctx.cache.get("layer_norm")
    if params is None or params[0] is not scale or params[1] is not bias \
            or params[2] != normalized:
        params = (scale, bias, normalized,
                  *(None if p is None else _onednn.as_tensor(
                      np.ascontiguousarray(np.broadcast_to(p, normalized), np.float32))
                    for p in (scale, bias)))
        if not (scale.flags.writeable or (bias is not None and bias.flags.writeable)):
            ctx.cache["layer_norm"] = params
    with torch.no_grad():
        y = torch.nn.functional.layer_norm(_onednn.as_tensor(x), list(normalized), params[3],
                                           params[4], float(ctx.attrs.get("epsilon", 1e-5)))
    return _onednn.to_numpy(y)


def _attention(ctx: NodeContext, q: np.ndarray, kt: np.ndarray, v: np.ndarray,
               mask: np.ndarray | None = None) -> np.ndarray:
    """Hetrix's fused attention, ``softmax(q @ kt * scale + mask) @ v``, by PyTorch's fused
    CPU kernel on the reduced type (scores and softmax in float32 inside; the mask stays
    float32), where its semantics match (see ``attention.sdpa_fits``); else in float32."""
    from hetrix.backends.numpy_cpu.kernels import attention

    if attention.node_sdpa_fits(ctx, q, kt, v, mask, dtype=q.dtype):
        torch = _torch()
        with torch.no_grad():
            y = torch.nn.functional.scaled_dot_product_attention(
                _onednn.as_tensor(q), _onednn.as_tensor(kt).transpose(-1, -2),
                _onednn.as_tensor(v),
                attn_mask=None if mask is None else _onednn.as_tensor(mask),
                scale=float(ctx.attrs.get("scale", 1.0)))
        return _onednn.to_numpy(y)
    if mask is not None and mask.dtype == np.float32:
        dtype = _onednn.torch_dtype(q.dtype)
        qf, ktf, vf = (_onednn.to_numpy(_onednn.as_tensor(a).float()) for a in (q, kt, v))
        y = attention.scaled_dot_product(ctx, qf, ktf, vf, mask)
        return _onednn.to_numpy(_onednn.as_tensor(y).to(dtype))
    return _reduced_result(attention.scaled_dot_product, ctx, q, kt, v, *(
        () if mask is None else (mask,)))


def _matmul_kernel(ctx: NodeContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _matmul(ctx, a, b, kernel=_matmul_kernel)


def _gemm_kernel(ctx: NodeContext, a: np.ndarray, b: np.ndarray,
                 c: np.ndarray | None = None) -> np.ndarray:
    return _gemm(ctx, a, b, c, kernel=_gemm_kernel)


def _by_opset(*forms: tuple[int | None, Kernel]) -> Kernel:
    """The NumPy kernel of the node's opset among ``(below_opset, kernel)`` forms (the last
    one's bound None), for ops whose attributes became inputs over the opsets."""
    def run(ctx: NodeContext, *inputs: Any) -> Any:
        for below, form in forms:
            if below is None or ctx.opset < below:
                return form(ctx, *inputs)
        raise AssertionError("the last form has no bound")

    return run


_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Split",
                         "Slice", "ChannelShuffle"})
"""Ops that move values without computing; their other inputs are shapes and axes."""
_FOLLOWERS = _LAYOUT_OPS | {"LRN", "LayerNormalization"}
"""Ops taken only after a node of this backend: see ``ReducedPrecisionBackend._produced_here``."""
_JOINS = frozenset({"Add", "Sum"})
"""Ops taken only when every input is reduced already (or a constant): see ``_produced_here``."""


def _is_constant(value: ir.Value) -> bool:
    return value.const_value is not None or value.is_initializer()

_KERNELS: dict[tuple[str, str], Kernel] = {
    ("", "Conv"): _conv,
    ("hetrix", "FusedConv"): _conv,
    ("hetrix", "FusedConvPool"): fused.fused_conv_pool,  # takes reduced arrays as they are
    ("", "MatMul"): _matmul_kernel,
    ("", "Gemm"): _gemm_kernel,
    ("hetrix", "FusedGemm"): _fused_gemm,
    ("hetrix", "FusedMatMul"): _fused_matmul,
    ("", "Relu"): _torch_elementwise("Relu"),
    ("", "Add"): _torch_elementwise("Add"),
    ("", "Sum"): _torch_elementwise("Sum"),
    ("", "BatchNormalization"): _batch_norm,
    ("hetrix", "FusedBatchNormalization"): _fused_batch_norm,
    # the NumPy kernels below take reduced arrays as they are (their oneDNN paths for 2-D inputs)
    ("", "MaxPool"): pool.max_pool,
    ("", "AveragePool"): pool.average_pool,
    ("", "GlobalAveragePool"): pool.global_average_pool,
    ("", "Concat"): tensor.concat,
    ("hetrix", "FusedConcat"): fused.fused_concat,
    ("", "Flatten"): tensor.flatten,
    ("", "LRN"): _lrn,
    # the transformer ops between the matrix products
    ("", "LayerNormalization"): _layer_norm,
    ("hetrix", "LayerNormalization"): _layer_norm,
    ("hetrix", "Attention"): _attention,
    ("", "Gelu"): _gelu,
    ("hetrix", "Gelu"): _gelu,
    # layout ops, taken only after a node of this backend (see _produced_here); NumPy's views
    ("", "Reshape"): _by_opset((5, tensor.reshape_v1), (None, tensor.reshape)),
    ("", "Transpose"): tensor.transpose,
    ("hetrix", "ChannelShuffle"): fused.channel_shuffle,
    ("", "Squeeze"): _by_opset((13, tensor.squeeze_v1), (None, tensor.squeeze)),
    ("", "Unsqueeze"): _by_opset((13, tensor.unsqueeze_v1), (None, tensor.unsqueeze)),
    ("", "Identity"): tensor.identity,
    ("", "Split"): _by_opset((2, tensor.split_v1), (13, tensor.split_v2), (None, tensor.split)),
    ("", "Slice"): _by_opset((10, tensor.slice_v1), (None, tensor.slice_)),
}
"""The ops this backend takes; everything else stays in float32 on the NumPy backend."""

__all__ = ["PRECISIONS", "ReducedPrecisionBackend"]
