"""oneDNN's C API, called directly: a convolution primitive made once per node and kept.

Why: PyTorch's oneDNN convolution (:mod:`._onednn`) rebuilds the primitive descriptor, the
memory objects and the attribute set on every call.  On the small layers of MobileNet-class
models that bookkeeping costs as much as the arithmetic: measured here (2 threads, float32,
batch 1), a grouped 1x1 conv of 272 channels at 14x14 took 83 us through PyTorch and 48 us with
the primitive kept; a depthwise 3x3 of 96 channels at 56x56, 73 -> 51 us; a 1x1 from 320 to 1280
channels at 7x7, 273 -> 191 us.  Same library, same kernel (``brgconv_1x1``, ``brdgmm_dw``),
bit-identical outputs.  So each node creates its primitive on its first run for an input layout
and afterwards only points the memory objects at the new arrays and executes.

Where the library comes from: the ``onednn-cpu-gomp`` wheel (the ``onednn`` extra), oneDNN 3.x
built on GNU OpenMP.  PyTorch computes on GNU OpenMP as well and the loader keeps one copy of
``libgomp.so.1`` per process, so both share one thread pool and one thread count (the session's
``intra_op_num_threads`` reaches both through ``torch.set_num_threads``).  Without the wheel, or
with ``HETRIX_DNNL=0``, convolutions keep PyTorch's path.  ``HETRIX_DNNL_LIBRARY`` names another
``libdnnl.so.3`` (it must be an OpenMP build of oneDNN 3).

Thread safety: a primitive may run on several threads at once; what each call binds (the memory
objects pointing at its arrays, and the scratchpad) is kept per thread.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import ml_dtypes
import numpy as np

from hetrix.backends import registry
from hetrix.backends.registry import Kernel, NodeContext
from hetrix.backends.torch_setup import openmp_set_up
from hetrix.runtime.memory import mapped_empty, recycled_empty

logger = logging.getLogger(__name__)

# ---- the C API's constants (oneDNN 3.x, include/oneapi/dnnl/dnnl_types.h)
_SUCCESS = 0
_DATA_TYPE_UNDEF = 0  # a sum post-op's "the destination's type"
_ENGINE_CPU = 1
_STREAM_IN_ORDER = 1
_FORWARD_INFERENCE = 0x60
_CONVOLUTION_DIRECT = 0x1
_FORMAT_ANY = 1
_SCRATCHPAD_USER = 1
_QUERY_IMPL_INFO = 8
_QUERY_EXEC_ARG_MD = 255
_ARG_SRC, _ARG_SRC_1, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS, _ARG_SCRATCHPAD = 1, 2, 17, 33, 41, 80
_ARG_POST_OP_BASE = 32768  # DNNL_ARG_ATTR_MULTIPLE_POST_OP(i) = base * (i + 1)
_ARG_MULTIPLE_SRC = 1024  # a concatenation's i-th source: base + i
_ARG_MEAN, _ARG_VARIANCE, _ARG_SCALE, _ARG_SHIFT = 49, 50, 51, 52
_GLOBAL_STATS, _USE_SCALE, _USE_SHIFT, _FUSE_RELU = 0x1, 0x2, 0x4, 0x8  # normalization flags
_SOFTMAX, _LOG_SOFTMAX = 0x30000, 0x30001
_LRN_ACROSS_CHANNELS = 0xAFF
_BINARY_ADD, _BINARY_MUL = 0x1FFF0, 0x1FFF1
_RUNTIME_OMP = 2
_MAX_DIMS = 12

_FLOAT32 = np.dtype(np.float32)
_DATA_TYPES = {_FLOAT32: 3, np.dtype(ml_dtypes.bfloat16): 2}
"""NumPy dtype -> dnnl_data_type_t, for the types this module computes in."""

_ELTWISE = {
    "Relu": 0x20,  # alpha: the negative slope (0), so LeakyRelu is relu with alpha
    "LeakyRelu": 0x20,
    "Tanh": 0x21,
    "Sigmoid": 0x29,  # "logistic"
    "GeluTanh": 0x2B,
    "Clip": 0x2E,  # alpha, beta: the bounds
    "Gelu": 0x31,  # "gelu_erf"
    "HardSwish": 0x34,  # x * clip(alpha x + beta, 0, 1), alpha 1/6 and beta 1/2 for ONNX's
}
"""Hetrix activation name -> oneDNN eltwise algorithm, applied as a post-op."""

_Dims = ctypes.c_int64 * _MAX_DIMS
_Handle = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _Handle)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


class DnnlError(RuntimeError):
    """A oneDNN call returned an error status (the primitive is then not used)."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _declined_as_none(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R | None]]:
    """Decorate a ``create_*`` factory: where oneDNN refuses to make the primitive (or offers
    only its reference kernel), it returns None, logged, and the node's other paths serve it."""

    def decorate(create: Callable[_P, _R]) -> Callable[_P, _R | None]:
        @functools.wraps(create)
        def made(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
            try:
                return create(*args, **kwargs)
            except DnnlError as exc:
                logger.debug("oneDNN %s not made (%s); the other paths serve it", what, exc)
                return None

        return made

    return decorate


class _Library:
    """The loaded ``libdnnl.so.3`` with its CPU engine and stream (one per process)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        lib.dnnl_primitive_desc_query_md.restype = _Handle
        lib.dnnl_primitive_desc_query_md.argtypes = [_Handle, ctypes.c_int, ctypes.c_int]
        lib.dnnl_primitive_desc_query.argtypes = [_Handle, ctypes.c_int, ctypes.c_int,
                                                  ctypes.c_void_p]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        lib.dnnl_memory_desc_get_size.argtypes = [_Handle]
        lib.dnnl_memory_desc_equal.argtypes = [_Handle, _Handle]
        lib.dnnl_memory_set_data_handle.argtypes = [_Handle, _Handle]
        lib.dnnl_primitive_execute.argtypes = [_Handle, _Handle, ctypes.c_int, _Handle]
        lib.dnnl_post_ops_append_eltwise.argtypes = [_Handle, ctypes.c_int, ctypes.c_float,
                                                     ctypes.c_float]
        lib.dnnl_post_ops_append_binary.argtypes = [_Handle, ctypes.c_int, _Handle]
        lib.dnnl_post_ops_append_sum.argtypes = [_Handle, ctypes.c_float, ctypes.c_int32,
                                                 ctypes.c_int]
        lib.dnnl_lrn_forward_primitive_desc_create.argtypes = [
            _Handle, _Handle, ctypes.c_int, ctypes.c_int, _Handle, _Handle, ctypes.c_int64,
            ctypes.c_float, ctypes.c_float, ctypes.c_float, _Handle]
        lib.dnnl_batch_normalization_forward_primitive_desc_create.argtypes = [
            _Handle, _Handle, ctypes.c_int, _Handle, _Handle, ctypes.c_float, ctypes.c_uint,
            _Handle]
        lib.dnnl_layer_normalization_forward_primitive_desc_create.argtypes = [
            _Handle, _Handle, ctypes.c_int, _Handle, _Handle, _Handle, ctypes.c_float,
            ctypes.c_uint, _Handle]
        version = lib.dnnl_version().contents
        if version.major != 3 or version.cpu_runtime != _RUNTIME_OMP:
            raise DnnlError(f"oneDNN {version.major}.{version.minor} with CPU runtime "
                            f"{version.cpu_runtime}: Hetrix needs oneDNN 3 built on OpenMP")
        self.version = f"{version.major}.{version.minor}.{version.patch}"
        self.engine = self.new("dnnl_engine_create", ctypes.c_int(_ENGINE_CPU), ctypes.c_size_t(0))
        self.stream = self.new("dnnl_stream_create", self.engine, ctypes.c_uint(_STREAM_IN_ORDER))
        lib.dnnl_sgemm.argtypes = [ctypes.c_char, ctypes.c_char, *[ctypes.c_int64] * 3,
                                   ctypes.c_float, ctypes.c_void_p, ctypes.c_int64,
                                   ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
                                   ctypes.c_void_p, ctypes.c_int64]
        # looked up once: these run on every call
        self.set_handle = lib.dnnl_memory_set_data_handle
        self.execute = lib.dnnl_primitive_execute
        self.sgemm = lib.dnnl_sgemm
        lib.dnnl_gemm_bf16bf16f32.argtypes = lib.dnnl_sgemm.argtypes
        self.gemm_bf16 = lib.dnnl_gemm_bf16bf16f32

    def check(self, name: str, *args: Any) -> None:
        status = getattr(self.lib, name)(*args)
        if status != _SUCCESS:
            raise DnnlError(f"{name} failed with oneDNN status {status}")

    def new(self, name: str, *args: Any) -> _Handle:
        """Call a ``dnnl_*_create`` function; returns the handle it made."""
        handle = _Handle()
        self.check(name, ctypes.byref(handle), *args)
        return handle

    def memory_desc(self, shape: tuple[int, ...], strides: tuple[int, ...] | None,
                    data_type: int) -> _Handle:
        """A memory descriptor: ``strides`` in elements, or None for "any layout" (weights)."""
        if strides is None:
            return self.new("dnnl_memory_desc_create_with_tag", ctypes.c_int(len(shape)),
                            _Dims(*shape), ctypes.c_int(data_type), ctypes.c_int(_FORMAT_ANY))
        return self.new("dnnl_memory_desc_create_with_strides", ctypes.c_int(len(shape)),
                        _Dims(*shape), ctypes.c_int(data_type), _Dims(*strides))

    def memory(self, desc: _Handle, data: int | None) -> _Handle:
        """A memory object of layout ``desc`` over the bytes at address ``data`` (set later
        when None)."""
        return self.new("dnnl_memory_create", desc, self.engine, _Handle(data))

    def reorder(self, source_desc: _Handle, source: int, target_desc: _Handle,
                target: int) -> None:
        """Copy ``source`` into ``target``'s layout (and type), once."""
        pd = self.new("dnnl_reorder_primitive_desc_create", source_desc, self.engine,
                      target_desc, self.engine, None)
        memories = [self.memory(source_desc, source), self.memory(target_desc, target)]
        try:
            primitive = self.new("dnnl_primitive_create", pd)
            try:
                args = (_ExecArg * 2)(_ExecArg(_ARG_SRC, memories[0]),
                                      _ExecArg(_ARG_DST, memories[1]))
                self.check("dnnl_primitive_execute", primitive, self.stream, 2, args)
                self.check("dnnl_stream_wait", self.stream)
            finally:
                self.lib.dnnl_primitive_destroy(primitive)
        finally:
            for memory in memories:
                self.lib.dnnl_memory_destroy(memory)
            self.lib.dnnl_primitive_desc_destroy(pd)


_LIBRARY: _Library | None = None
_LOADED = False
_LOAD_LOCK = threading.Lock()


def _library_path() -> str | None:
    """Where ``libdnnl.so.3`` is: ``HETRIX_DNNL_LIBRARY``, else the onednn-cpu-gomp wheel's."""
    given = os.environ.get("HETRIX_DNNL_LIBRARY")
    if given:
        return given
    try:
        files = importlib.metadata.files("onednn-cpu-gomp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "libdnnl.so.3":
            return str(file.locate())
    return None


def library() -> _Library | None:
    """The loaded library, or None when it is absent, refused, or off (``HETRIX_DNNL=0``)."""
    global _LIBRARY, _LOADED
    if _LOADED:
        return _LIBRARY
    with _LOAD_LOCK:
        if not _LOADED:
            path = None if os.environ.get("HETRIX_DNNL") == "0" else _library_path()
            if path is not None:
                try:
                    with openmp_set_up():  # it may be the first to load libgomp
                        loaded = ctypes.CDLL(path)
                    _LIBRARY = _Library(loaded)
                except (OSError, DnnlError, AttributeError) as exc:
                    logger.warning("oneDNN at %s not used: %s", path, exc)
            _LOADED = True
    return _LIBRARY


def available() -> bool:
    """Whether :class:`Conv2d` can be used in this process."""
    return library() is not None


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool,
         b_transposed: bool = False) -> None:
    """``out = a @ b (+ out when accumulate)`` by oneDNN's GEMM, for C-contiguous 2-D arrays
    (M, K), (K, N), (M, N) (the caller checks): ``a`` and ``b`` float32 (``dnnl_sgemm``) or
    both bfloat16 (``dnnl_gemm_bf16bf16f32``), ``out`` float32.  With ``b_transposed``, ``b``
    is (N, K) and read as its transpose.  Threads are OpenMP's, shared with the primitives here
    and PyTorch.

    Why not the inner-product primitive on a packed weight (PyTorch's call): alone, weights
    evicted from cache as in a model run, 2 threads on this AMD EPYC, this GEMM on the plain
    (K, N) weight took 261 vs 435 us (1 x 1280 @ 1280 x 1000, MobileNetV2's classifier), 400 vs
    590 at 8 rows, 847 vs 1194 (128 x 768 @ 768 x 768, BERT's projections), and was level or
    ahead on 768 x 3072 and 3072 x 768 up to 1024 rows (``benchmarks/RESULTS.md``); nothing to
    pack, so the weight is read where the model keeps it.
    """
    lib = library()
    if lib is None:
        raise DnnlError("oneDNN is not available")
    m, k = a.shape
    n = b.shape[0] if b_transposed else b.shape[1]
    function = lib.sgemm if a.dtype == _FLOAT32 else lib.gemm_bf16
    status = function(b"N", b"T" if b_transposed else b"N", m, n, k, 1.0, a.ctypes.data, k,
                       b.ctypes.data, k if b_transposed else n, 1.0 if accumulate else 0.0,
                       out.ctypes.data, n)
    if status != _SUCCESS:
        raise DnnlError(f"oneDNN's GEMM failed with status {status}")


def _unbroadcast_strides(array: np.ndarray) -> tuple[int, ...] | None:
    """``array``'s strides in elements, or None when oneDNN cannot describe them or the array
    is a broadcast view (a zero stride over more than one element: NumPy's paths copy it)."""
    strides = _element_strides(array)
    if strides is None or any(s == 0 and d > 1 for s, d in zip(strides, array.shape)):
        return None
    return strides


def _element_strides(array: np.ndarray) -> tuple[int, ...] | None:
    """``array``'s strides in elements, or None when oneDNN cannot describe them."""
    itemsize = array.itemsize
    if any(s < 0 or s % itemsize for s in array.strides):
        return None
    return tuple(s // itemsize for s in array.strides)


tracer: Any = None
"""While a run of direct calls is traced to be replayed on fixed buffers
(:mod:`._dnnl_chain`), the object told of every primitive execution and every staging buffer
made; None otherwise (one test per execution)."""


def _aligned_empty(nbytes: int) -> tuple[np.ndarray, int]:
    """A byte buffer and the 64-byte-aligned address inside it (oneDNN's kernels load whole
    cache lines; NumPy aligns to 16 bytes only)."""
    buffer = np.empty(nbytes + 64, np.uint8)
    if tracer is not None:
        tracer.allocated(buffer)
    address = buffer.ctypes.data
    return buffer, address + (-address % 64)


MAPPED_MIN_BYTES = 1 << 20


def _packed_empty(nbytes: int) -> tuple[np.ndarray, int]:
    """A buffer for a layer product's packed weight and its 64-byte-aligned address: from
    ``MAPPED_MIN_BYTES`` up in pages of its own (:func:`~hetrix.runtime.memory.mapped_empty`),
    as it is made on the node's first run, among the run's activations, and lives with the
    session.  (Convolutions' weights, smaller, showed no such growth: ShuffleNet, ResNet-50
    and DenseNet-121 held as much or 1-5 MiB more with theirs mapped from 64 KiB.)"""
    if nbytes < MAPPED_MIN_BYTES:
        return _aligned_empty(nbytes)
    buffer = mapped_empty(nbytes)
    return buffer, buffer.ctypes.data


class PackedWeights:
    """One node's weight in the blocked layout a primitive asked for; the node's primitives for
    other input shapes share it when they ask for the same layout.  Owns ``desc``."""

    def __init__(self, lib: _Library, desc: _Handle, buffer: np.ndarray, address: int) -> None:
        self.lib, self.desc, self.buffer, self.address = lib, desc, buffer, address
        self.memory = lib.memory(desc, address)
        weakref.finalize(self, _destroy, lib.lib, [desc], [self.memory], [], [])

    def matches(self, desc: _Handle | int) -> bool:
        return bool(self.lib.lib.dnnl_memory_desc_equal(self.desc, desc))


def _pack(lib: _Library, pd: _Handle, dense: np.ndarray,
          describe: Callable[[np.ndarray], _Handle], shared: list[PackedWeights],
          allocate: Callable[[int], tuple[np.ndarray, int]]) -> PackedWeights:
    """The weight in the layout ``pd`` asks for: one of the node's packings so far
    (``shared``) in that layout, or ``dense``'s values (``describe`` gives their descriptor)
    reordered into a new buffer from ``allocate``, added to ``shared``."""
    wanted = lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, _ARG_WEIGHTS)
    for packed in shared:
        if packed.matches(wanted):
            return packed
    target = _Handle()  # the query's descriptor belongs to pd: keep a copy of our own
    lib.check("dnnl_memory_desc_clone", ctypes.byref(target), _Handle(wanted))
    dense = np.ascontiguousarray(dense, np.float32)  # bfloat16 widens exactly
    source = describe(dense)
    try:
        buffer, address = allocate(int(lib.lib.dnnl_memory_desc_get_size(target)))
        lib.reorder(source, dense.ctypes.data, target, address)
    finally:
        lib.lib.dnnl_memory_desc_destroy(source)
    packed = PackedWeights(lib, target, buffer, address)
    shared.append(packed)
    return packed


def _unpack(lib: _Library, packed: PackedWeights, shape: tuple[int, ...],
            describe: Callable[[np.ndarray], _Handle]) -> np.ndarray:
    """``packed``'s values as a new float32 array of ``shape``, laid out as ``describe`` says."""
    dense = np.empty(shape, np.float32)
    target = describe(dense)
    try:
        lib.reorder(packed.desc, packed.address, target, dense.ctypes.data)
    finally:
        lib.lib.dnnl_memory_desc_destroy(target)
    return dense


class _Primitive:
    """What every kept primitive here has: the descriptors and objects it made (destroyed with
    it), the primitive, and per-thread bindings of the arrays each call passes.

    Subclasses build their primitive descriptor with :meth:`_desc`, :meth:`_attr` and
    :meth:`_primitive_desc`, declare the arguments bound per call (``runtime_args``, in the
    order :meth:`_execute` gets their addresses) and those fixed for good (``constant_args``),
    and call :meth:`_finish`.
    """

    shape: tuple[int, ...]
    """The source's shape, strides (bytes) and type the primitive was made for, and its
    destination's shape in memory order (set by each subclass)."""
    x_strides: tuple[int, ...]
    dtype: np.dtype
    out_shape: tuple[int, ...]
    out_axes: tuple[int, ...] | None = None
    """The transpose that turns the destination (memory order) into what a call returns."""
    residual: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    """A second source read per call (a convolution's residual): its shape and strides."""
    accumulates = False
    """Whether the residual is the destination too: the result is added into its memory."""
    staged: _Primitive | None = None
    """A reorder run after the primitive, from the layout it computes its destination in (a
    blocked one, in a buffer of ``staged_bytes`` made per call) to the array handed out; None
    where the primitive writes that array itself."""
    staged_bytes = 0
    copied: _Primitive | None = None
    """A reorder run before the primitive, copying the source into the array handed out, which
    the primitive then computes in place (a strided source that its kernels take only as
    reference code); None where the primitive reads the source itself."""

    def __init__(self, lib: _Library) -> None:
        self.lib = lib
        self._descs: list[_Handle] = []
        self._memories: list[_Handle] = []
        self._pds: list[_Handle] = []
        self._primitives: list[_Handle] = []
        # one finalizer over lists filled while the object is built: whatever was made before
        # an error (a refused case) is destroyed as well
        weakref.finalize(self, _destroy, lib.lib, self._descs, self._memories, self._pds,
                         self._primitives)
        self.runtime_args: list[tuple[int, _Handle]] = []
        self.constant_args: list[tuple[int, _Handle]] = []
        self.implementation = ""
        self._local = threading.local()
        self._spare: list[np.ndarray] = []  # the last large output, see recycled_empty

    def _desc(self, shape: tuple[int, ...], strides: tuple[int, ...] | None,
              data_type: int) -> _Handle:
        made = self.lib.memory_desc(shape, strides, data_type)
        self._descs.append(made)
        return made

    def _attr(self, post_ops: list[tuple[str, tuple[Any, ...]]] | None = None) -> _Handle:
        """A primitive attribute: user-managed scratchpad (per thread, see :class:`_Bindings`)
        and the given post-ops, each ``("eltwise", (algorithm, alpha, beta))``,
        ``("binary", (algorithm, descriptor))`` or ``("sum", (scale, zero point, type))``."""
        lib = self.lib
        attr = lib.new("dnnl_primitive_attr_create")
        try:
            lib.check("dnnl_primitive_attr_set_scratchpad_mode", attr, _SCRATCHPAD_USER)
            if post_ops:
                chain = lib.new("dnnl_post_ops_create")
                try:
                    for kind, args in post_ops:
                        lib.check(f"dnnl_post_ops_append_{kind}", chain, *args)
                    lib.check("dnnl_primitive_attr_set_post_ops", attr, chain)
                finally:
                    lib.lib.dnnl_post_ops_destroy(chain)
        except DnnlError:
            lib.lib.dnnl_primitive_attr_destroy(attr)
            raise
        return attr

    def _primitive_desc(self, function: str, attr: _Handle, *args: Any) -> _Handle:
        """``dnnl_<function>_primitive_desc_create(engine, *args, attr)``; frees ``attr``."""
        try:
            pd = self.lib.new(f"dnnl_{function}_primitive_desc_create", self.lib.engine, *args,
                              attr)
        finally:
            self.lib.lib.dnnl_primitive_attr_destroy(attr)
        self._pds.append(pd)
        return pd

    def _finish(self, pd: _Handle) -> None:
        """Refuse oneDNN's reference kernel (slower than the paths it would replace), size the
        scratchpad and create the primitive."""
        lib = self.lib
        info = ctypes.c_char_p()
        lib.check("dnnl_primitive_desc_query", pd, _QUERY_IMPL_INFO, 0, ctypes.byref(info))
        self.implementation = (info.value or b"").decode()
        if self.implementation.startswith("ref"):
            raise DnnlError(f"only oneDNN's reference kernel ({self.implementation})")
        scratchpad = lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, _ARG_SCRATCHPAD)
        self.scratchpad_bytes = int(lib.lib.dnnl_memory_desc_get_size(scratchpad))
        self.scratchpad_desc = _Handle(scratchpad)  # owned by pd, which this object keeps
        self.primitive = lib.new("dnnl_primitive_create", pd)
        self._primitives.append(self.primitive)

    def _constant(self, arg: int, desc: _Handle, address: int) -> None:
        """Bind ``arg`` for good to the bytes at ``address`` (the caller keeps them alive)."""
        memory = self.lib.memory(desc, address)
        self._memories.append(memory)
        self.constant_args.append((arg, memory))

    def _run_one(self, x: np.ndarray) -> np.ndarray | None:
        """For a primitive of one source made for ``x``'s shape, strides and type (kept as
        ``shape``, ``x_strides``, ``dtype``): run it into a new array of ``out_shape`` (its
        memory order) and return that, or None for another ``x``."""
        if x.shape != self.shape or x.strides != self.x_strides or x.dtype != self.dtype:
            return None
        y = recycled_empty(self._spare, self.out_shape, self.dtype)
        self._execute((x.ctypes.data, y.ctypes.data))
        return y

    def _thread_bindings(self) -> _Bindings:
        """The calling thread's memory objects for this primitive, made on its first call."""
        bindings: _Bindings | None = getattr(self._local, "bindings", None)
        if bindings is None:  # this thread's first call
            bindings = self._local.bindings = _Bindings(self)
        return bindings

    def _execute(self, addresses: tuple[int, ...]) -> None:
        """Run on the arrays at ``addresses`` (one per ``runtime_args`` entry)."""
        bindings = self._thread_bindings()
        set_handle = self.lib.set_handle
        if self.staged is not None:  # the destination goes through a staging buffer
            stage, stage_address = _aligned_empty(self.staged_bytes)
            output = addresses[1]
            addresses = (addresses[0], stage_address, *addresses[2:])
        for memory, address in zip(bindings.runtime, addresses, strict=True):
            set_handle(memory, address)
        if bindings.scratchpad is not _SCRATCHPAD.buffer:  # another primitive grew it
            bindings.point_scratchpad()
        if tracer is not None:
            tracer.executed(self, bindings.count, bindings.args_address)
        status = self.lib.execute(self.primitive, self.lib.stream, bindings.count,
                                  bindings.args_address)
        if status != _SUCCESS:
            raise DnnlError(f"oneDNN {self.implementation} failed with status {status}")
        if self.staged is not None:
            self.staged._execute((stage_address, output))
            del stage  # alive until the reorder has read it

    def direct(self, fallback: Callable[..., Any]) -> Callable[..., Any]:
        """This primitive as a plain function of the arrays it reads per call (the source, and
        the residual where it has one), for the calling thread: what a call returns, with no
        check but the arrays' layout; any other call (another layout or type, another thread)
        goes to ``fallback`` with the same arguments: a node's direct call
        (:func:`~hetrix.backends.registry.offer_direct`), three short Python calls and three
        library calls per run (the checks, :meth:`_bound_run`, :meth:`_bound_execute`).  The
        function holds this object (its ``primitive`` attribute), whose handles it uses: a plan
        keeps the call after the node has dropped the primitive for one of another layout.
        Each thread binds its own memory objects, so the call serves the thread that made it.

        Why: a kernel reaches its kept primitive through a few Python layers that check what
        the plan has fixed (weights, attributes, post-ops), and in a run each short layer costs
        far more than alone (its code comes back from memory after every large op).  Called
        directly, batch 1 took 0.89-0.91 of the time on ShuffleNet (69 of 79 steps direct),
        0.95-0.96 on MobileNetV2, 0.96-0.97 on SqueezeNet, 0.98-1.00 on Inception v2 (one
        process, two sessions, 40 alternating runs each after a 0.1 s pause, medians)."""
        spare, set_handle = self._spare, self.lib.set_handle
        bindings = self._thread_bindings()
        run = self._bound_run(bindings)
        shape, strides, dtype = self.shape, self.x_strides, self.dtype
        out_shape, axes = self.out_shape, self.out_axes
        owner = threading.get_ident()
        get_ident = threading.get_ident

        if self.residual is None:
            def call(x: Any) -> Any:
                if (type(x) is not np.ndarray or x.strides != strides or x.shape != shape
                        or x.dtype != dtype or get_ident() != owner):
                    return fallback(x)
                y = recycled_empty(spare, out_shape, dtype)
                run(x, y)
                return y if axes is None else y.transpose(axes)

            call.primitive = self  # type: ignore[attr-defined]
            call.join = join_kept  # type: ignore[attr-defined]
            return call
        residual_layout, residual_memory = self.residual, bindings.runtime[2]

        def call_with_residual(x: Any, z: Any) -> Any:
            if (type(x) is not np.ndarray or type(z) is not np.ndarray
                    or x.strides != strides or x.shape != shape or x.dtype != dtype
                    or (z.shape, z.strides) != residual_layout or z.dtype != dtype
                    or get_ident() != owner):
                return fallback(x, z)
            set_handle(residual_memory, z.ctypes.data)
            y = recycled_empty(spare, out_shape, dtype)
            run(x, y)
            return y if axes is None else y.transpose(axes)

        call_with_residual.primitive = self  # type: ignore[attr-defined]
        call_with_residual.join = join_kept  # type: ignore[attr-defined]
        return call_with_residual

    def _bound_run(self, bindings: _Bindings) -> Callable[[np.ndarray, np.ndarray], None]:
        """What every direct call does once it has checked its arrays: run the primitive from
        ``x`` into ``y`` (in its memory order; through the staging buffer and its reorder, or
        after the copy into ``y``, where the primitive has one) on ``bindings``, the calling
        thread's memory objects.  The form is chosen here, not on each call."""
        set_handle, execute = self.lib.set_handle, self._bound_execute(bindings)
        source, target = bindings.runtime[0], bindings.runtime[1]
        staged, staged_bytes, copied = self.staged, self.staged_bytes, self.copied
        if copied is not None:
            copy_bindings = copied._thread_bindings()
            copy = copied._bound_execute(copy_bindings)
            copy_source, copy_target = copy_bindings.runtime

            def run_in_place(x: np.ndarray, y: np.ndarray) -> None:
                address = y.ctypes.data
                set_handle(copy_source, x.ctypes.data)
                set_handle(copy_target, address)
                copy()
                set_handle(source, address)
                set_handle(target, address)
                execute()

            return run_in_place
        if staged is not None:
            def run_staged(x: np.ndarray, y: np.ndarray) -> None:
                set_handle(source, x.ctypes.data)
                stage, stage_address = _aligned_empty(staged_bytes)
                set_handle(target, stage_address)
                execute()
                staged._execute((stage_address, y.ctypes.data))
                del stage  # alive until the reorder has read it

            return run_staged

        def run(x: np.ndarray, y: np.ndarray) -> None:
            set_handle(source, x.ctypes.data)
            set_handle(target, y.ctypes.data)
            execute()

        return run

    def _bound_execute(self, bindings: _Bindings) -> Callable[[], None]:
        """The primitive's execution on the arrays ``bindings`` point at now (the calling
        thread's scratchpad re-pointed if another primitive grew it); raises on a failure."""
        lib, primitive, label = self.lib, self.primitive, self.implementation
        execute, stream = lib.execute, lib.stream
        count, args = bindings.count, bindings.args_address

        def go() -> None:
            if bindings.scratchpad is not _SCRATCHPAD.buffer:
                bindings.point_scratchpad()
            if tracer is not None:
                tracer.executed(self, count, args)
            status = execute(primitive, stream, count, args)
            if status != _SUCCESS:
                raise DnnlError(f"oneDNN {label} failed with status {status}")

        return go


class _ThreadScratchpad(threading.local):
    """This thread's scratchpad, shared by every kept primitive that runs on it.

    oneDNN uses a primitive's scratchpad only inside one execute call, and one thread runs one
    primitive at a time, so a buffer per thread serves them all (oneDNN's own "library" mode
    does the same).  One buffer per primitive held 0.3-1.4 MiB on the suite's CNNs (a few KiB
    each, 30-126 primitives); shared, it is the largest one.  It only grows: the primitives
    bound to a smaller one are pointed at the new one on their next call.
    """

    buffer: np.ndarray | None = None
    address = 0
    nbytes = -1

    def fit(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            self.buffer, self.address = _aligned_empty(nbytes)
            self.nbytes = nbytes


_SCRATCHPAD = _ThreadScratchpad()


class _Bindings:
    """One thread's memory objects for one primitive's per-call arrays and its scratchpad."""

    def __init__(self, primitive: _Primitive) -> None:
        lib = primitive.lib
        self.lib, self.scratchpad_bytes = lib, primitive.scratchpad_bytes
        self.runtime = [lib.memory(desc, None) for _, desc in primitive.runtime_args]
        self.scratchpad_memory = lib.memory(primitive.scratchpad_desc, None)
        self.scratchpad: np.ndarray | None = None  # the thread's buffer it points at
        self.point_scratchpad()
        args = [(arg, memory) for (arg, _), memory in zip(primitive.runtime_args, self.runtime,
                                                          strict=True)]
        args += [*primitive.constant_args, (_ARG_SCRATCHPAD, self.scratchpad_memory)]
        self.count = len(args)
        self.args = (_ExecArg * len(args))(*(_ExecArg(a, m) for a, m in args))
        self.args_address = ctypes.addressof(self.args)
        weakref.finalize(self, _destroy, lib.lib, [], [*self.runtime, self.scratchpad_memory],
                         [], [])

    def point_scratchpad(self) -> None:
        """Bind the scratchpad to this thread's shared buffer, grown to fit first."""
        _SCRATCHPAD.fit(self.scratchpad_bytes)
        self.lib.set_handle(self.scratchpad_memory, _SCRATCHPAD.address)
        self.scratchpad = _SCRATCHPAD.buffer


def _nhwc(c: int, h: int, w: int) -> tuple[int, ...]:
    """Element strides of an NCHW-indexed array laid out NHWC."""
    return (h * w * c, 1, w * c, c)


class Conv2d(_Primitive):
    """One node's 2-D convolution (with bias, a post-op activation and an optional residual
    add) as a oneDNN primitive for one input layout; :meth:`__call__` runs it.

    The residual is read one of two ways.  As a second source (a binary post-op), into a new
    output; or, made with ``accumulate``, as the destination itself (a sum post-op): the result
    is added into the residual's own NHWC memory, for a residual nothing reads afterwards
    (``NodeContext.reusable_inputs``).  In place is faster: the 1x1 convolutions that end
    ResNet-50's blocks took 0.81-0.91 of the time alone (56x56, 64 -> 256 channels: 368 us
    against 453), one stream less over an output that does not fit in the cache.

    Create with :func:`create`, which returns None where oneDNN offers no kernel for the case
    or only its reference one (PyTorch's path then serves the node).
    """

    def __init__(self, lib: _Library, x: np.ndarray, x_strides: tuple[int, ...],
                 w: np.ndarray, dense: np.ndarray, b: np.ndarray | None, *, strides: list[int],
                 dilations: list[int], pads: list[int], group: int, activation: str,
                 activation_params: list[float], residual: np.ndarray | None,
                 residual_strides: tuple[int, ...] | None,
                 weights: list[PackedWeights], accumulate: bool = False) -> None:
        super().__init__(lib)
        n, c, h, wd = x.shape
        k, _, kh, kw = w.shape
        oh = (h + 2 * pads[0] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
        ow = (wd + 2 * pads[1] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
        self.shape, self.x_strides, self.dtype, self.w, self.b = x.shape, x.strides, x.dtype, w, b
        self.residual = None if residual is None else (residual.shape, residual.strides)
        self.out_shape = (n, oh, ow, k)  # NHWC in memory, handed out as an NCHW view
        self.out_axes = (0, 3, 1, 2)
        data_type = _DATA_TYPES[x.dtype]
        # oneDNN's grouped weights carry the group as a leading axis
        weight_shape = (group, k // group, c // group, kh, kw) if group > 1 else (k, c, kh, kw)
        self.weight_shape = weight_shape
        src = self._desc((n, c, h, wd), x_strides, data_type)
        nhwc = self._desc((n, k, oh, ow), _nhwc(k, oh, ow), data_type)
        # an NCHW source (a model's input image): oneDNN's kernels for it write a blocked
        # layout, reordered into NHWC after each call (see :func:`create`)
        staged = residual is None and c > 1 and x_strides[1] != 1
        dst = self._desc((n, k, oh, ow), None, data_type) if staged else nhwc
        bias = None if b is None else self._desc((k,), (1,), _DATA_TYPES[_FLOAT32])
        post_ops: list[tuple[str, tuple[Any, ...]]] = []
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        if residual is not None and accumulate:
            if staged or residual_strides != _nhwc(k, oh, ow):
                raise DnnlError("a residual added in place must be the NHWC destination")
            post_ops.append(("sum", (1.0, 0, _DATA_TYPE_UNDEF)))
            self.accumulates = True
        elif residual is not None:
            assert residual_strides is not None
            src1 = self._desc((n, k, oh, ow), residual_strides, data_type)
            post_ops.append(("binary", (_BINARY_ADD, src1)))
            self.runtime_args.append((_ARG_POST_OP_BASE | _ARG_SRC_1, src1))
        if activation:
            alpha, beta = _eltwise_parameters(activation, activation_params)
            post_ops.append(("eltwise", (_ELTWISE[activation], alpha, beta)))
        dilate = [d - 1 for d in dilations]  # oneDNN counts the gaps: 0 is no dilation
        pd = self._primitive_desc(
            "convolution_forward", self._attr(post_ops), _FORWARD_INFERENCE, _CONVOLUTION_DIRECT,
            src, self._desc(weight_shape, None, data_type), bias, dst, _Dims(*strides),
            _Dims(*dilate), _Dims(*pads), _Dims(*pads))
        self._finish(pd)
        if staged:
            chosen = _Handle(lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD,
                                                                   _ARG_DST))
            self.runtime_args[1] = (_ARG_DST, chosen)  # owned by pd, which this object keeps
            self.staged_bytes = int(lib.lib.dnnl_memory_desc_get_size(chosen))
            self.staged = _Reorder(lib, chosen, nhwc)
        self.weights = _pack(lib, pd, dense, self._weight_desc, weights, _aligned_empty)
        self.constant_args.append((_ARG_WEIGHTS, self.weights.memory))
        if b is not None and bias is not None:
            self.bias_array = np.ascontiguousarray(b, np.float32)  # kept: the memory points here
            self._constant(_ARG_BIAS, bias, self.bias_array.ctypes.data)

    def _weight_desc(self, dense: np.ndarray) -> _Handle:
        """``dense`` (the ONNX weight, grouped as oneDNN wants it) as a descriptor."""
        return self.lib.memory_desc(self.weight_shape, _c_strides(self.weight_shape),
                                    _DATA_TYPES[dense.dtype])

    def unpack(self) -> np.ndarray:
        """The packed weight's values in the ONNX layout (float32 when packed as float32)."""
        return _unpack(self.lib, self.weights, self.w.shape, self._weight_desc)

    def direct(self, fallback: Callable[..., Any],
               overwritable: Callable[[np.ndarray], bool] | None = None) -> Callable[..., Any]:
        """As :meth:`_Primitive.direct`; for a primitive that :attr:`accumulates`, a call of
        ``(x, z)`` that adds into ``z`` and returns it, where ``overwritable(z)`` allows."""
        if not self.accumulates:
            return super().direct(fallback)
        run = self._bound_run(self._thread_bindings())
        shape, strides, dtype, residual_layout = self.shape, self.x_strides, self.dtype, \
            self.residual
        may_write = overwritable or (lambda z: False)
        owner, get_ident = threading.get_ident(), threading.get_ident

        def call_accumulating(x: Any, z: Any) -> Any:
            if (type(x) is not np.ndarray or type(z) is not np.ndarray
                    or x.strides != strides or x.shape != shape or x.dtype != dtype
                    or (z.shape, z.strides) != residual_layout or z.dtype != dtype
                    or get_ident() != owner or not may_write(z)):
                return fallback(x, z)
            run(x, z)
            return z

        call_accumulating.primitive = self  # type: ignore[attr-defined]
        call_accumulating.join = join_kept  # type: ignore[attr-defined]
        return call_accumulating

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                 residual: np.ndarray | None, overwrite: bool = False) -> np.ndarray | None:
        """``act(conv(x) + b + residual)`` as an NHWC-strided array, or None when this call is
        not the one the primitive was made for (the caller then takes its general path).
        ``overwrite``: the caller lets the result go into ``residual``'s memory, which a
        primitive that :attr:`accumulates` needs (it then returns ``residual`` itself)."""
        if (
            overwrite != self.accumulates
            or
            w is not self.w
            or b is not self.b
            or x.shape != self.shape
            or x.strides != self.x_strides
            or x.dtype != self.dtype
            or (None if residual is None else (residual.shape, residual.strides))
            != self.residual
            or (residual is not None and residual.dtype != self.dtype)
        ):
            return None
        if self.accumulates:
            assert residual is not None
            self._execute((x.ctypes.data, residual.ctypes.data))
            return residual
        y = recycled_empty(self._spare, self.out_shape, self.dtype)
        if residual is None:
            self._execute((x.ctypes.data, y.ctypes.data))
        else:
            self._execute((x.ctypes.data, y.ctypes.data, residual.ctypes.data))
        return y.transpose(0, 3, 1, 2)


class _Reorder(_Primitive):
    """A copy of an array from one layout to another (``source`` and ``target`` descriptors,
    kept alive by the caller), e.g. a convolution's blocked destination into NHWC."""

    def __init__(self, lib: _Library, source: _Handle, target: _Handle) -> None:
        super().__init__(lib)
        self.runtime_args = [(_ARG_SRC, source), (_ARG_DST, target)]
        attr = self._attr()
        try:
            pd = lib.new("dnnl_reorder_primitive_desc_create", source, lib.engine, target,
                         lib.engine, attr)
        finally:
            lib.lib.dnnl_primitive_attr_destroy(attr)
        self._pds.append(pd)
        self._finish(pd)


class _StridedCopy(_Primitive):
    """A reorder between two strided layouts of one shape, from one type to another (it owns
    the two descriptors)."""

    def __init__(self, lib: _Library, shape: tuple[int, ...], source: tuple[int, ...],
                 source_dtype: np.dtype, target: tuple[int, ...], target_dtype: np.dtype) -> None:
        super().__init__(lib)
        self.copy = _Reorder(lib, self._desc(shape, source, _DATA_TYPES[source_dtype]),
                             self._desc(shape, target, _DATA_TYPES[target_dtype]))


_COPIES: dict[tuple[Any, ...], _StridedCopy | None] = {}
_MAX_COPIES = 64


def _kept_copy(shape: tuple[int, ...], source: tuple[int, ...], source_dtype: np.dtype,
               target: tuple[int, ...], target_dtype: np.dtype) -> _StridedCopy | None:
    """The reorder kept for copying ``shape`` from the ``source`` element strides and type to
    the ``target`` ones, made on first use and shared by every caller that copies between
    those layouts (None where oneDNN refuses it, remembered as well); the cache is emptied when
    it reaches :data:`_MAX_COPIES`."""
    key = (shape, source, source_dtype, target, target_dtype)
    try:
        kept = _COPIES[key]
    except KeyError:
        lib = library()
        try:
            kept = None if lib is None else _StridedCopy(lib, shape, source, source_dtype,
                                                         target, target_dtype)
        except DnnlError as exc:
            logger.debug("oneDNN reorder not made (%s); the other paths copy", exc)
            kept = None
        if len(_COPIES) >= _MAX_COPIES:
            _COPIES.clear()
        _COPIES[key] = kept
    return kept


def _copy_into(array: np.ndarray, dtype: np.dtype, channels_last: bool) -> np.ndarray | None:
    """``array`` copied into a new array of ``dtype`` (C order, or channels-last and handed
    back as the NCHW view) by a oneDNN reorder kept per shape, types and layouts, or None
    where oneDNN does not serve it."""
    lib = library()
    if lib is None or array.dtype not in _DATA_TYPES or dtype not in _DATA_TYPES \
            or array.ndim == 0:
        return None
    strides = _element_strides(array)
    if strides is None:
        return None
    if channels_last:
        n, c, h, w = array.shape
        target, out_shape = _nhwc(c, h, w), (n, h, w, c)
    else:
        target, out_shape = _c_strides(array.shape), array.shape
    copy = _kept_copy(array.shape, strides, array.dtype, target, dtype)
    if copy is None:
        return None
    out = np.empty(out_shape, dtype)
    copy.copy._execute((array.ctypes.data, out.ctypes.data))
    return out.transpose(0, 3, 1, 2) if channels_last else out


def copy_into(source: np.ndarray, target: np.ndarray) -> bool:
    """Copy ``source`` into ``target``, a view of the same shape and type (a channel slice of a
    wider NHWC buffer), by a oneDNN reorder kept per pair of layouts and shared by every node
    that copies them; False where this module does not serve it (the caller copies).

    Why: DenseNet's Concat chain copies each layer's new channels into the room of the chain's
    buffer, on NumPy's single-threaded strided assignment; the reorder runs on both threads
    (measured with the bound the caller applies: ``tensor.CHAIN_REORDER_MIN_BYTES``)."""
    lib = library()
    if (lib is None or source.dtype not in _DATA_TYPES or target.dtype != source.dtype
            or target.shape != source.shape or source.size == 0):
        return False
    source_strides, target_strides = _element_strides(source), _element_strides(target)
    if source_strides is None or target_strides is None:
        return False
    copy = _kept_copy(source.shape, source_strides, source.dtype, target_strides, source.dtype)
    if copy is None:
        return False
    copy.copy._execute((source.ctypes.data, target.ctypes.data))
    return True


def c_order_copy(array: np.ndarray) -> np.ndarray | None:
    """``array`` copied into a new C-ordered array by a oneDNN reorder (see
    :func:`_copy_into`), or None where oneDNN does not serve it.  For a channels-last result
    handed to the caller: 217 us for 1 x 64 x 112 x 112 float32 (a first convolution's
    output), where NumPy's copy of the transposed view takes 5.4 ms."""
    return _copy_into(array, array.dtype, channels_last=False)


def channels_last_cast(array: np.ndarray, dtype: Any) -> np.ndarray | None:
    """A 4-D ``array`` converted to ``dtype`` in a new channels-last array (the NCHW view of
    it), by a oneDNN reorder (see :func:`_copy_into`), or None where oneDNN does not serve it.
    For a model's input image entering bfloat16: 42 us for 1 x 3 x 224 x 224 float32 (301 at
    batch 8), where PyTorch's cast to channels-last takes 86 (671)."""
    if array.ndim != 4:
        return None
    return _copy_into(array, np.dtype(dtype), channels_last=True)


POOLINGS = {"max": 0x1FF, "average_with_pads": 0x2FF, "average": 0x3FF}
"""Pooling kind -> oneDNN algorithm: the max, the mean over the window including the explicit
pads, and the mean over the input elements only."""


class Pool2d(_Primitive):
    """One node's 2-D max or average pooling as a oneDNN primitive for one input layout.

    The output keeps the input's layout (NHWC after a convolution).  Padding is asymmetric as
    given, so ONNX's ceil mode is ``pads_end`` extended by the caller.  Create with
    :func:`create_pool`.  NaN: the max drops it (a window holding one gives its largest
    number), where PyTorch and NumPy give NaN, and ONNX Runtime and ONNX's reference evaluator
    either, by where the NaN sits in the window; the averages give NaN.
    """

    def __init__(self, lib: _Library, x: np.ndarray, x_strides: tuple[int, ...], *,
                 kind: str, kernel: list[int], strides: list[int], dilations: list[int],
                 pads_begin: list[int], pads_end: list[int], out: list[int]) -> None:
        super().__init__(lib)
        n, c, h, w = x.shape
        oh, ow = out
        self.shape, self.x_strides, self.dtype = x.shape, x.strides, x.dtype
        self.channels_last = c > 1 and x_strides[1] == 1
        data_type = _DATA_TYPES[x.dtype]
        src = self._desc((n, c, h, w), x_strides, data_type)
        dst_strides = _nhwc(c, oh, ow) if self.channels_last else _c_strides((n, c, oh, ow))
        dst = self._desc((n, c, oh, ow), dst_strides, data_type)
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        self.out_shape = (n, oh, ow, c) if self.channels_last else (n, c, oh, ow)
        self.out_axes = (0, 3, 1, 2) if self.channels_last else None
        _make_pooling(self, src, dst, kind=kind, kernel=kernel, strides=strides,
                      dilations=dilations, pads_begin=pads_begin, pads_end=pads_end)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The pooled array, or None when ``x`` is not what the primitive was made for."""
        y = self._run_one(x)
        if y is None or not self.channels_last:
            return y
        return y.transpose(0, 3, 1, 2)


def _make_pooling(primitive: _Primitive, src: _Handle, dst: _Handle, *, kind: str,
                  kernel: list[int], strides: list[int], dilations: list[int],
                  pads_begin: list[int], pads_end: list[int]) -> _Handle:
    """Make ``primitive`` a pooling from ``src`` to ``dst``; returns its primitive descriptor."""
    pd = primitive._primitive_desc(
        "pooling_forward", primitive._attr(), _FORWARD_INFERENCE, POOLINGS[kind], src, dst,
        _Dims(*strides), _Dims(*kernel), _Dims(*(d - 1 for d in dilations)),
        _Dims(*pads_begin), _Dims(*pads_end))
    primitive._finish(pd)
    return pd


class ConvPool:
    """A convolution of an NCHW image and the pooling that reads it (ResNet's, SqueezeNet's,
    DenseNet's first layer and max pooling: ``hetrix.FusedConvPool``), as oneDNN primitives
    that pass the blocked layout between them; only the pooled result is reordered to NHWC.

    Why: oneDNN's kernels for an NCHW source of few channels write a blocked layout
    (nChw16c), which a lone convolution reorders into NHWC for the next op
    (:attr:`Conv2d.staged`).  That reorder reads and writes the whole convolution output, the
    largest activation of these models (64 x 112 x 112 floats, 3.2 MB), right after an idle
    moment when nothing of it is in the caches; the pooling reads the blocked layout as fast
    and writes a quarter of it, so here only that quarter is reordered.  SqueezeNet's first
    layer and pooling, alone after a 0.1 s pause: 1089 -> 796 us (back to back: 433 -> 289).

    Quacks like a one-source :class:`_Primitive` for :func:`run_kept`: ``shape``,
    ``x_strides``, ``dtype``, ``implementation``, a call on ``x`` and :meth:`direct`.  The
    convolution's weight, bias and activation are in ``conv``; create with
    :func:`create_conv_pool`.
    """

    def __init__(self, conv: Conv2d, *, kind: str, kernel: list[int], strides: list[int],
                 dilations: list[int], pads_begin: list[int], pads_end: list[int],
                 out: list[int]) -> None:
        if conv.staged is None or conv.residual is not None:
            raise DnnlError("the convolution does not write a blocked layout of its own")
        lib = conv.lib
        self.conv = conv
        self.shape, self.x_strides, self.dtype = conv.shape, conv.x_strides, conv.dtype
        n, _, _, k = conv.out_shape
        oh, ow = out
        data_type = _DATA_TYPES[conv.dtype]
        blocked = conv.runtime_args[1][1]  # the convolution's own destination layout
        self.pool = pool = _Primitive(lib)
        pooled = pool._desc((n, k, oh, ow), None, data_type)  # the layout the pooling likes
        pd = _make_pooling(pool, blocked, pooled, kind=kind, kernel=kernel, strides=strides,
                           dilations=dilations, pads_begin=pads_begin, pads_end=pads_end)
        pooled = _Handle(lib.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, _ARG_DST))
        pool.runtime_args = [(_ARG_SRC, blocked), (_ARG_DST, pooled)]
        self.pooled_bytes = int(lib.lib.dnnl_memory_desc_get_size(pooled))
        self.reorder = _Reorder(lib, pooled, pool._desc((n, k, oh, ow), _nhwc(k, oh, ow),
                                                        data_type))
        self.out_shape = (n, oh, ow, k)
        self.implementation = f"{conv.implementation} + {pool.implementation}"
        self._spare: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The pooled result as an NHWC-strided array, or None for another ``x`` layout."""
        if x.shape != self.shape or x.strides != self.x_strides or x.dtype != self.dtype:
            return None
        return self._bound_run()(x)

    def _bound_run(self) -> Callable[[np.ndarray], np.ndarray]:
        """The three primitives' run on ``x`` for the calling thread (its memory objects)."""
        conv, pool, reorder = self.conv, self.pool, self.reorder
        set_handle = conv.lib.set_handle
        steps = []
        for primitive in (conv, pool, reorder):
            bindings = primitive._thread_bindings()
            steps.append((bindings.runtime[0], bindings.runtime[1],
                          primitive._bound_execute(bindings)))
        (conv_src, conv_dst, run_conv), (pool_src, pool_dst, run_pool), \
            (reorder_src, reorder_dst, run_reorder) = steps
        staged_bytes, pooled_bytes = conv.staged_bytes, self.pooled_bytes
        spare, out_shape, dtype = self._spare, self.out_shape, self.dtype

        def run(x: np.ndarray) -> np.ndarray:
            stage, stage_address = _aligned_empty(staged_bytes)
            set_handle(conv_src, x.ctypes.data)
            set_handle(conv_dst, stage_address)
            run_conv()
            pooled, pooled_address = _aligned_empty(pooled_bytes)
            set_handle(pool_src, stage_address)
            set_handle(pool_dst, pooled_address)
            run_pool()
            del stage  # alive until the pooling has read it
            y = recycled_empty(spare, out_shape, dtype)
            set_handle(reorder_src, pooled_address)
            set_handle(reorder_dst, y.ctypes.data)
            run_reorder()
            del pooled
            return y.transpose(0, 3, 1, 2)

        return run

    def direct(self, fallback: Callable[..., Any]) -> Callable[..., Any]:
        """As :meth:`_Primitive.direct`: the run on ``x``, for the calling thread."""
        run = self._bound_run()
        shape, strides, dtype = self.shape, self.x_strides, self.dtype
        owner, get_ident = threading.get_ident(), threading.get_ident

        def call(x: Any) -> Any:
            if (type(x) is not np.ndarray or x.strides != strides or x.shape != shape
                    or x.dtype != dtype or get_ident() != owner):
                return fallback(x)
            return run(x)

        call.primitive = self  # type: ignore[attr-defined]
        call.join = join_kept  # type: ignore[attr-defined]
        return call


@_declined_as_none("convolution + pooling")
def create_conv_pool(conv: Conv2d, *, kind: str, kernel: list[int], strides: list[int],
                     dilations: list[int], pads_begin: list[int], pads_end: list[int],
                     out: list[int]) -> ConvPool | None:
    """A :class:`ConvPool` of ``conv`` (made for an NCHW source) and a 2-D pooling of its
    output, or None where oneDNN does not serve that pair with its fast kernels."""
    return ConvPool(conv, kind=kind, kernel=kernel, strides=strides, dilations=dilations,
                    pads_begin=pads_begin, pads_end=pads_end, out=out)


class ChannelShuffle(_Primitive):
    """One node's channel shuffle, ``[N, g, C/g, H, W] -> [N, C/g, g, H, W]`` on a 4-D input,
    as a oneDNN reorder kept per node: the source seen as 5-D (N, g, C/g, H, W), the
    destination the same dims with the channel strides exchanged.  The output keeps the
    input's memory order (NHWC after a convolution).

    Why: oneDNN's shuffle primitive has only its reference kernel for NHWC, the reorder a
    generated one (``jit:uni``).  Alone (2 threads, medians of 300 calls) ShuffleNet's shuffles
    of 240 channels at 28x28, 480 at 14x14 and 960 at 7x7 took 31, 32 and 21 us against 73, 68
    and 34 for torch's ``native_channel_shuffle``; and its call path in a run is the short one
    the kept convolutions share.  Create with :func:`create_shuffle`.
    """

    def __init__(self, lib: _Library, x: np.ndarray, x_strides: tuple[int, ...],
                 groups: int) -> None:
        super().__init__(lib)
        n, c, h, w = x.shape
        per_group = c // groups
        self.shape, self.x_strides, self.dtype = x.shape, x.strides, x.dtype
        order = sorted(range(4), key=lambda axis: -x_strides[axis])  # x's axes, outermost first
        self.out_shape = tuple(x.shape[axis] for axis in order)
        self.inverse = tuple(int(axis) for axis in np.argsort(order))
        self.out_axes = self.inverse
        memory = _c_strides(self.out_shape)
        yn, yc, yh, yw = (memory[order.index(axis)] for axis in range(4))
        sn, sc, sh, sw = x_strides
        data_type = _DATA_TYPES[x.dtype]
        dims = (n, groups, per_group, h, w)
        src = self._desc(dims, (sn, per_group * sc, sc, sh, sw), data_type)
        # input channel i * C/g + j goes to output channel j * g + i
        dst = self._desc(dims, (yn, yc, groups * yc, yh, yw), data_type)
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        attr = self._attr()
        try:
            pd = self.lib.new("dnnl_reorder_primitive_desc_create", src, self.lib.engine, dst,
                              self.lib.engine, attr)
        finally:
            self.lib.lib.dnnl_primitive_attr_destroy(attr)
        self._pds.append(pd)
        self._finish(pd)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The shuffled array, or None when ``x`` is not what the primitive was made for."""
        y = self._run_one(x)
        return None if y is None else y.transpose(self.inverse)


class Concat(_Primitive):
    """One node's concatenation of 4-D arrays along the channels, as a oneDNN primitive for one
    layout of its sources (channels-last, as convolutions write them); the output is NHWC.

    Why: NHWC sources join by interleaving, each pixel's channels from each source in turn.
    Alone (2 threads, medians of 100, caches flushed between calls) SqueezeNet's 2 x 64 channels
    at 55x55 took 91 us here against 153 for NumPy's copies into channel slices, 4 x 64 at 56x56
    151 against 209 (``simple:any``, on both threads); and its call path in a run is the short
    one the kept convolutions share.  Create with :func:`create_concat`.
    """

    def __init__(self, lib: _Library, arrays: tuple[np.ndarray, ...] | list[np.ndarray],
                 strides: list[tuple[int, ...]]) -> None:
        super().__init__(lib)
        n, _, h, w = arrays[0].shape
        channels = sum(a.shape[1] for a in arrays)
        self.dtype = arrays[0].dtype
        self.layouts = tuple((a.shape, a.strides) for a in arrays)
        data_type = _DATA_TYPES[self.dtype]
        sources = [self._desc(a.shape, s, data_type) for a, s in zip(arrays, strides, strict=True)]
        dst = self._desc((n, channels, h, w), _nhwc(channels, h, w), data_type)
        self.out_shape = (n, h, w, channels)
        self.out_axes = (0, 3, 1, 2)
        self.runtime_args = [(_ARG_MULTIPLE_SRC + i, source) for i, source in enumerate(sources)]
        self.runtime_args.append((_ARG_DST, dst))
        attr = self._attr()
        try:
            pd = self.lib.new("dnnl_concat_primitive_desc_create", self.lib.engine, dst,
                              ctypes.c_int(len(sources)), ctypes.c_int(1),
                              (_Handle * len(sources))(*sources), attr)
        finally:
            self.lib.lib.dnnl_primitive_attr_destroy(attr)
        self._pds.append(pd)
        self._finish(pd)

    def serves(self, arrays: tuple[np.ndarray, ...] | list[np.ndarray]) -> bool:
        """Whether the primitive was made for these arrays' count, layouts and type."""
        return len(arrays) == len(self.layouts) and all(
            a.dtype == self.dtype and (a.shape, a.strides) == layout
            for a, layout in zip(arrays, self.layouts, strict=True))

    def __call__(self, arrays: tuple[np.ndarray, ...] | list[np.ndarray]) -> np.ndarray | None:
        """The concatenation (an NHWC-strided array), or None when ``arrays`` are not what the
        primitive was made for."""
        if not self.serves(arrays):
            return None
        y = recycled_empty(self._spare, self.out_shape, self.dtype)
        self._execute((*(a.ctypes.data for a in arrays), y.ctypes.data))
        return y.transpose(self.out_axes)

    def direct(self, fallback: Callable[..., Any]) -> Callable[..., Any]:
        """As :meth:`_Primitive.direct`, for the sources this primitive joins."""
        spare, set_handle = self._spare, self.lib.set_handle
        bindings = self._thread_bindings()
        memories, execute = bindings.runtime, self._bound_execute(bindings)
        layouts, dtype, out_shape = self.layouts, self.dtype, self.out_shape
        owner = threading.get_ident()
        get_ident = threading.get_ident

        def call(*arrays: Any) -> Any:
            for array, layout in zip(arrays, layouts, strict=True):
                if (type(array) is not np.ndarray or (array.shape, array.strides) != layout
                        or array.dtype != dtype):
                    return fallback(*arrays)
            if get_ident() != owner:
                return fallback(*arrays)
            y = recycled_empty(spare, out_shape, dtype)
            for memory, array in zip(memories, arrays, strict=False):
                set_handle(memory, array.ctypes.data)
            set_handle(memories[-1], y.ctypes.data)
            execute()
            return y.transpose(0, 3, 1, 2)

        call.primitive = self  # type: ignore[attr-defined]
        call.join = join_kept  # type: ignore[attr-defined]
        return call


class _SameShape(_Primitive):
    """A one-source primitive whose output has the source's shape and memory order (NHWC after
    a convolution, else C order): :meth:`_source_and_target` makes both descriptors."""

    def _source_and_target(self, x: np.ndarray, x_strides: tuple[int, ...]) -> tuple:
        n, c, h, w = x.shape
        self.shape, self.x_strides, self.dtype = x.shape, x.strides, x.dtype
        channels_last = c > 1 and x_strides[1] == 1
        data_type = _DATA_TYPES[x.dtype]
        src = self._desc((n, c, h, w), x_strides, data_type)
        dst = self._desc((n, c, h, w), _nhwc(c, h, w) if channels_last
                         else _c_strides((n, c, h, w)), data_type)
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        self.out_shape = (n, h, w, c) if channels_last else (n, c, h, w)
        self.out_axes = (0, 3, 1, 2) if channels_last else None
        return src, dst

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The result, or None when ``x`` is not what the primitive was made for."""
        y = self._run_one(x)
        if y is None or self.out_axes is None:
            return y
        return y.transpose(self.out_axes)


class BatchNorm(_SameShape):
    """One node's inference BatchNormalization, ``(x - mean) / sqrt(var + eps) * scale + B``,
    then Relu where the node fuses it, as a oneDNN primitive for one input layout; the output
    keeps the input's memory order (NHWC after a convolution).  The statistics are copied in
    when it is made: the caller makes one only for constant ones.

    Why: DenseNet's pre-activation BatchNormalization + Relu (120 of them, none foldable into a
    convolution) ran on PyTorch's ``addcmul`` and ``relu_``, two passes and PyTorch's call
    path.  Alone (2 threads, medians of 200, NHWC): 128 channels at 56x56 float32 106 us
    against 217, 1,024 at 7x7 17 against 35; bfloat16 49 against 186 and 13 against 19.
    Create with :func:`create_batch_norm`.
    """

    def __init__(self, lib: _Library, x: np.ndarray, x_strides: tuple[int, ...],
                 parameters: tuple[np.ndarray, ...], epsilon: float, relu: bool) -> None:
        super().__init__(lib)
        src, dst = self._source_and_target(x, x_strides)
        flags = _GLOBAL_STATS | _USE_SCALE | _USE_SHIFT | (_FUSE_RELU if relu else 0)
        pd = self._primitive_desc("batch_normalization_forward", self._attr(),
                                  _FORWARD_INFERENCE, src, dst, ctypes.c_float(epsilon),
                                  ctypes.c_uint(flags))
        self._finish(pd)
        self.parameters = []  # kept: the memory objects point here
        channel = self._desc((x.shape[1],), (1,), _DATA_TYPES[_FLOAT32])
        for arg, values in zip((_ARG_SCALE, _ARG_SHIFT, _ARG_MEAN, _ARG_VARIANCE), parameters,
                               strict=True):
            kept = np.ascontiguousarray(values, np.float32)
            self.parameters.append(kept)
            self._constant(arg, channel, kept.ctypes.data)


class ScaleShift(_Primitive):
    """One node's inference BatchNormalization folded to ``x * multiplier + offset`` per channel
    (then Relu where the node fuses it), for a 4-D channels-last source whose channels are a
    prefix of a wider buffer: a kept reorder copies the source into a dense NHWC array, where a
    binary primitive (the multiplication, the offset added and the Relu as post-ops) computes
    in place.  The offset and multiplier are float32, computed in float64 by the caller.

    Why: DenseNet's pre-activation normalizations read the channel prefixes of its Concat
    chain, strided views that oneDNN's normalization and binary kernels take only as reference
    code, so they ran on PyTorch's ``addcmul`` and ``relu_``, which are slow in bfloat16 (1 x
    160 x 56 x 56 strided: 126 us, against 21 for the copy plus 49 for the binary, back to
    back).  DenseNet-121 in bfloat16: 0.944 / 0.960 of the time at batch 1, 0.760 at batch 8
    (in-process A/Bs).  In float32 PyTorch's pass alone is the faster (72 us against 98), but
    as a direct call (:meth:`direct`) a plan joins this one with the convolutions after it:
    DenseNet-121 0.907-0.915 of the time at batch 1, 0.935 at batch 8 in float32, and 0.844-0.852
    / 0.866 in bfloat16 against the same primitive called through its kernel.  Create with
    :func:`create_scale_shift`.
    """

    copied: _Primitive  # always: the strided source's copy

    def __init__(self, lib: _Library, x: np.ndarray, x_strides: tuple[int, ...],
                 multiplier: np.ndarray, offset: np.ndarray, relu: bool) -> None:
        super().__init__(lib)
        n, c, h, w = x.shape
        self.shape, self.x_strides, self.dtype = x.shape, x.strides, x.dtype
        data_type = _DATA_TYPES[x.dtype]
        dense = self._desc((n, c, h, w), _nhwc(c, h, w), data_type)
        self.copied = _Reorder(lib, self._desc((n, c, h, w), x_strides, data_type), dense)
        channel = self._desc((1, c, 1, 1), (c, 1, 1, 1), _DATA_TYPES[_FLOAT32])
        post_ops: list[tuple[str, tuple[Any, ...]]] = [("binary", (_BINARY_ADD, channel))]
        if relu:
            post_ops.append(("eltwise", (_ELTWISE["Relu"], 0.0, 0.0)))
        pd = self._primitive_desc("binary", self._attr(post_ops), ctypes.c_int(_BINARY_MUL),
                                  dense, channel, dense)
        self.runtime_args = [(_ARG_SRC, dense), (_ARG_DST, dense)]
        self._finish(pd)
        self.implementation = f"{self.copied.implementation} + {self.implementation}"
        self.out_shape, self.out_axes = (n, h, w, c), (0, 3, 1, 2)
        self.parameters = [np.ascontiguousarray(multiplier, np.float32),
                           np.ascontiguousarray(offset, np.float32)]  # the memories point here
        self._constant(_ARG_SRC_1, channel, self.parameters[0].ctypes.data)
        self._constant(_ARG_POST_OP_BASE | _ARG_SRC_1, channel, self.parameters[1].ctypes.data)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The result as an NHWC-strided array, or None when ``x`` is not what the primitive
        was made for."""
        if x.shape != self.shape or x.strides != self.x_strides or x.dtype != self.dtype:
            return None
        y = recycled_empty(self._spare, self.out_shape, self.dtype)
        self.copied._execute((x.ctypes.data, y.ctypes.data))
        self._execute((y.ctypes.data, y.ctypes.data))
        return y.transpose(self.out_axes)


class LayerNorm(_Primitive):
    """One node's LayerNormalization over its trailing axes, ``(x - mean) / sqrt(var + eps) *
    scale + B`` per row of a C-ordered input seen as (rows, columns), as a oneDNN primitive for
    one input shape; the statistics are computed in float32 and not kept (inference).

    Why: a transformer's LayerNormalization follows a large matrix product, whose threads left
    its input in the other core's cache; in BERT-base's runs PyTorch's call took 133 us a node
    (ORT: 42), alone 18 (this primitive: 15).  A kept primitive and its direct call make the
    path through Python and the library short.  Create with :func:`create_layer_norm`.
    """

    def __init__(self, lib: _Library, x: np.ndarray, columns: int, scale: np.ndarray,
                 bias: np.ndarray | None, epsilon: float) -> None:
        super().__init__(lib)
        self.shape, self.x_strides, self.dtype = x.shape, x.strides, x.dtype
        self.out_shape = x.shape  # C order, as the source
        rows = x.size // columns
        data_type = _DATA_TYPES[x.dtype]
        src = self._desc((rows, columns), (columns, 1), data_type)
        dst = self._desc((rows, columns), (columns, 1), data_type)
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        flags = _USE_SCALE | (_USE_SHIFT if bias is not None else 0)
        pd = self._primitive_desc("layer_normalization_forward", self._attr(),
                                  _FORWARD_INFERENCE, src, dst, None, ctypes.c_float(epsilon),
                                  ctypes.c_uint(flags))
        self._finish(pd)
        self.parameters = []  # kept: the memory objects point here
        channel = self._desc((columns,), (1,), _DATA_TYPES[_FLOAT32])
        for arg, values in ((_ARG_SCALE, scale), (_ARG_SHIFT, bias)):
            if values is not None:
                kept = np.ascontiguousarray(values, np.float32).reshape(columns)
                self.parameters.append(kept)
                self._constant(arg, channel, kept.ctypes.data)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The result in ``x``'s shape, or None when ``x`` is not what it was made for."""
        return self._run_one(x)


class Linear(_Primitive):
    """One node's layer product ``activation(x @ W + bias)`` on a constant weight, as a oneDNN
    matmul primitive for one input shape: ``x`` C-ordered (..., K), seen as (rows, K); ``W``
    packed once into the layout the primitive asks for (shared by the node's primitives for
    other row counts), in ``x``'s type; the bias (float32) and the activation applied in
    float32 before the one rounding to ``x``'s type.

    Why: called per node through PyTorch, oneDNN's inner product costs tens of microseconds of
    Python and bookkeeping, and ``dnnl_sgemm`` on the plain weight reads it unpacked.  Alone,
    2 threads on this Xeon (AMX), weight and input evicted before each call, medians of 40
    alternating calls: bfloat16 8 x 1280 @ 1280 x 1000 (MobileNetV2's classifier at batch 8)
    303 us against 642 through PyTorch's inner product and 563 by ``dnnl_gemm_bf16bf16f32``;
    128 x 3072 @ 3072 x 768 (BERT) 741 against 1650 / 1310; float32 8 x 1280 @ 1280 x 1000
    398 against 562 by ``dnnl_sgemm``, BERT's shapes 0.94-0.99 of its time.  Kept, the
    product is a direct call a plan can join with its neighbours (:mod:`._dnnl_chain`).
    Create with :func:`create_linear`.
    """

    def __init__(self, lib: _Library, x: np.ndarray, w: np.ndarray, dense: np.ndarray,
                 b: np.ndarray | None, *, transposed: bool, activation: str,
                 activation_params: list[float], weights: list[PackedWeights]) -> None:
        super().__init__(lib)
        k = x.shape[-1]
        n = dense.shape[0] if transposed else dense.shape[1]
        rows = x.size // k
        self.shape, self.x_strides, self.dtype, self.w, self.b = x.shape, x.strides, x.dtype, w, b
        self.out_shape = (*x.shape[:-1], n)  # C order, as the source
        self.transposed = transposed
        data_type = _DATA_TYPES[x.dtype]
        src = self._desc((rows, k), (k, 1), data_type)
        dst = self._desc((rows, n), (n, 1), data_type)
        bias = None if b is None else self._desc((1, n), (n, 1), _DATA_TYPES[_FLOAT32])
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        post_ops: list[tuple[str, tuple[Any, ...]]] = []
        if activation:
            alpha, beta = _eltwise_parameters(activation, activation_params)
            post_ops.append(("eltwise", (_ELTWISE[activation], alpha, beta)))
        pd = self._primitive_desc("matmul", self._attr(post_ops), src,
                                  self._desc((k, n), None, data_type), bias, dst)
        self._finish(pd)
        self.weights = _pack(lib, pd, dense, self._weight_desc, weights, _packed_empty)
        self.constant_args.append((_ARG_WEIGHTS, self.weights.memory))
        if b is not None and bias is not None:
            self.bias_array = np.ascontiguousarray(b, np.float32).reshape(n)  # the memory's
            self._constant(_ARG_BIAS, bias, self.bias_array.ctypes.data)

    def _weight_desc(self, dense: np.ndarray) -> _Handle:
        """``dense`` (the node's weight) as the (K, N) weight: a (N, K) one read transposed."""
        if self.transposed:
            n, k = dense.shape
            return self.lib.memory_desc((k, n), (1, k), _DATA_TYPES[dense.dtype])
        return self.lib.memory_desc(dense.shape, _c_strides(dense.shape),
                                    _DATA_TYPES[dense.dtype])

    def unpack(self) -> np.ndarray:
        """The packed weight's values in the node's layout ((K, N), or (N, K) for a transposed
        one; float32 when packed as float32)."""
        return _unpack(self.lib, self.weights, self.w.shape, self._weight_desc)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The product in ``x``'s shape (last axis N), or None when ``x`` is not what it was
        made for."""
        return self._run_one(x)


@_declined_as_none("matrix product")
def create_linear(x: np.ndarray, w: np.ndarray, dense: np.ndarray, b: np.ndarray | None, *,
                  transposed: bool, activation: str, activation_params: list[float],
                  weights: list[PackedWeights]) -> Linear | None:
    """A :class:`Linear` for ``x`` (C-ordered, float32 or bfloat16) and the node's weight ``w``
    (2-D, (K, N), or (N, K) with ``transposed``; ``dense`` its values, as for :func:`create`),
    or None where this module does not serve it (no library, another type or layout, an
    activation oneDNN does not apply, only the reference kernel)."""
    lib = library()
    if (lib is None or x.dtype not in _DATA_TYPES or x.ndim < 2 or not x.flags.c_contiguous
            or dense.ndim != 2 or (activation and activation not in _ELTWISE)):
        return None
    return Linear(lib, x, w, dense, b, transposed=transposed, activation=activation,
                  activation_params=activation_params, weights=weights)


@_declined_as_none("layer normalization")
def create_layer_norm(x: np.ndarray, axis: int, scale: np.ndarray, bias: np.ndarray | None,
                      epsilon: float) -> LayerNorm | None:
    """A :class:`LayerNorm` of ``x`` over its axes from ``axis`` on, with ``scale`` and ``bias``
    given in the normalized shape (the caller broadcasts them), or None where this module does
    not serve it (no library, a type it does not compute in, a strided input)."""
    lib = library()
    if lib is None or x.dtype not in _DATA_TYPES or x.size == 0 or not x.flags.c_contiguous:
        return None
    columns = math.prod(x.shape[axis:])
    if any(p is not None and p.size != columns for p in (scale, bias)):
        return None
    return LayerNorm(lib, x, columns, scale, bias, epsilon)


class LocalResponseNorm(_SameShape):
    """One node's LRN across channels, ``x / (bias + alpha / size * sum(x^2))^beta`` over a
    window of ``size`` channels centred on each (an odd size: ONNX's window is then oneDNN's),
    as a oneDNN primitive for one input layout; the output keeps the input's memory order.

    Why: AlexNet's, ZFNet's and Inception v1's LRNs ran as ``size`` shifted adds on PyTorch
    (float32, and bfloat16 converted to float32 around it): 3.6 ms a run on Inception v1 in
    bfloat16 and 6.1 on ZFNet, against 0.6 and 0.9 for OpenVINO's.  Create with
    :func:`create_lrn`.
    """

    def __init__(self, lib: _Library, x: np.ndarray, x_strides: tuple[int, ...], size: int,
                 alpha: float, beta: float, bias: float) -> None:
        super().__init__(lib)
        src, dst = self._source_and_target(x, x_strides)
        pd = self._primitive_desc("lrn_forward", self._attr(), _FORWARD_INFERENCE,
                                  _LRN_ACROSS_CHANNELS, src, dst, ctypes.c_int64(size),
                                  ctypes.c_float(alpha), ctypes.c_float(beta),
                                  ctypes.c_float(bias))
        self._finish(pd)


@_declined_as_none("LRN")
def create_lrn(x: np.ndarray, size: int, alpha: float, beta: float,
               bias: float) -> LocalResponseNorm | None:
    """A :class:`LocalResponseNorm` for ``x``, or None where this module does not serve it (no
    library, not 4-D, a type it does not compute in, an even window: ONNX puts its extra
    channel after the centre)."""
    lib = library()
    if (lib is None or x.ndim != 4 or x.dtype not in _DATA_TYPES or 0 in x.shape
            or size < 1 or size % 2 == 0):
        return None
    x_strides = _unbroadcast_strides(x)
    if x_strides is None:
        return None
    return LocalResponseNorm(lib, x, x_strides, size, alpha, beta, bias)


class Softmax(_Primitive):
    """One node's Softmax or LogSoftmax over the middle axis of a 3-D view of its input (outer,
    axis, inner: ONNX's one axis, or the 2-D coercion of opsets before 13 as (rows, columns,
    1)), as a oneDNN primitive for one input layout; the output is C-ordered, in the input's
    shape.

    ONNX (and ONNX Runtime) give a whole row NaN when it holds a NaN or +inf; oneDNN only the
    elements computed from them.  So a call whose result holds a NaN is refused (None) and the
    caller's path computes it.  The test is the result's dot product with itself (NaN exactly
    when an element is: no square of a softmax or log-softmax value is NaN, and infinities
    only add up to infinity), BLAS's short loop where NumPy's sum runs its reduction
    machinery: in SqueezeNet runs 8 us against 16 back to back, 25 against 55 after a 0.1 s
    pause (the step's other parts: the primitive 9-22 us, the allocation and reshape 4-8).

    Why: a classifier's last op, 1,000 numbers.  In a run its code comes back from memory after
    the model's last large convolution: PyTorch's softmax took 135-165 us there on SqueezeNet,
    NumPy's four passes 115-120 (ORT: 14).  Create with :func:`create_softmax`.
    """

    def __init__(self, lib: _Library, x: np.ndarray, view: tuple[int, ...],
                 view_strides: tuple[int, ...], axis: int, log: bool) -> None:
        super().__init__(lib)
        self.shape, self.x_strides, self.dtype = x.shape, x.strides, x.dtype
        self.size = x.size
        data_type = _DATA_TYPES[x.dtype]
        src = self._desc(view, view_strides, data_type)
        dst = self._desc(view, _c_strides(view), data_type)
        self.runtime_args = [(_ARG_SRC, src), (_ARG_DST, dst)]
        self.out_shape = view
        pd = self._primitive_desc("softmax_forward", self._attr(), _FORWARD_INFERENCE,
                                  _LOG_SOFTMAX if log else _SOFTMAX, src, dst, ctypes.c_int(axis))
        self._finish(pd)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The result in ``x``'s shape, or None for another ``x`` or a row ONNX makes NaN."""
        if x.shape != self.shape or x.strides != self.x_strides or x.dtype != self.dtype:
            return None
        y = np.empty(self.size, self.dtype)  # flat: the NaN test's dot product takes 1-D
        self._execute((x.ctypes.data, y.ctypes.data))
        return None if math.isnan(y.dot(y)) else y.reshape(self.shape)

    def direct(self, fallback: Callable[..., Any]) -> Callable[..., Any]:
        """As :meth:`_Primitive.direct`; a row ONNX makes NaN goes to ``fallback`` too."""
        run = self._bound_run(self._thread_bindings())
        shape, strides, dtype, size = self.shape, self.x_strides, self.dtype, self.size
        owner, get_ident, isnan = threading.get_ident(), threading.get_ident, math.isnan

        def call(x: Any) -> Any:
            if (type(x) is not np.ndarray or x.strides != strides or x.shape != shape
                    or x.dtype != dtype or get_ident() != owner):
                return fallback(x)
            y = np.empty(size, dtype)
            run(x, y)
            return fallback(x) if isnan(y.dot(y)) else y.reshape(shape)

        def valid(result: np.ndarray) -> bool:  # for a replay of this call (see join_kept)
            flat = result.reshape(-1)
            return not isnan(flat.dot(flat))

        call.primitive = self  # type: ignore[attr-defined]
        call.join = join_kept  # type: ignore[attr-defined]
        call.valid = valid  # type: ignore[attr-defined]
        return call


@_declined_as_none("softmax")
def create_softmax(x: np.ndarray, view: tuple[int, int, int], log: bool) -> Softmax | None:
    """A :class:`Softmax` of ``x`` seen as ``view`` (outer, axis, inner) over the middle axis,
    or None where this module does not serve it (no library, a type it does not compute in,
    a view that is not one of ``x``'s memory)."""
    lib = library()
    if lib is None or x.dtype not in _DATA_TYPES or x.size == 0:
        return None
    try:
        seen = x.view()
        seen.shape = view  # raises where the reshape would need a copy
    except (AttributeError, ValueError):
        return None
    view_strides = _element_strides(seen)
    if view_strides is None:
        return None
    return Softmax(lib, x, view, view_strides, 1, log)


@_declined_as_none("scale and shift")
def create_scale_shift(x: np.ndarray, multiplier: np.ndarray, offset: np.ndarray,
                       relu: bool) -> ScaleShift | None:
    """A :class:`ScaleShift` for ``x`` (4-D, channels-last strides, channels a prefix of a
    wider buffer), or None where this module does not serve it."""
    lib = library()
    if (lib is None or x.ndim != 4 or x.dtype not in _DATA_TYPES or 0 in x.shape
            or multiplier.shape != (x.shape[1],) or offset.shape != (x.shape[1],)):
        return None
    x_strides = _element_strides(x)
    if x_strides is None or x_strides[1] != 1:
        return None
    return ScaleShift(lib, x, x_strides, multiplier, offset, relu)


@_declined_as_none("batch normalization")
def create_batch_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                      var: np.ndarray, epsilon: float, relu: bool) -> BatchNorm | None:
    """A :class:`BatchNorm` for ``x``, or None where this module does not serve it (no library,
    not 4-D, a type it does not compute in, parameters not one float value per channel)."""
    lib = library()
    if lib is None or x.ndim != 4 or x.dtype not in _DATA_TYPES or 0 in x.shape:
        return None
    channels = x.shape[1]
    parameters = (scale, bias, mean, var)
    if any(p.shape != (channels,) or (p.dtype.kind != "f" and p.dtype not in _DATA_TYPES)
           for p in parameters):
        return None
    x_strides = _unbroadcast_strides(x)
    if x_strides is None:
        return None
    return BatchNorm(lib, x, x_strides, parameters, epsilon, relu)


@_declined_as_none("concatenation")
def create_concat(arrays: tuple[np.ndarray, ...] | list[np.ndarray]) -> Concat | None:
    """A :class:`Concat` of ``arrays`` along the channels, or None where this module does not
    serve it (no library, not 4-D, types it does not compute in or that differ, other dims
    that differ, a layout oneDNN cannot describe)."""
    lib = library()
    if lib is None or not arrays:
        return None
    first = arrays[0]
    if first.ndim != 4 or first.dtype not in _DATA_TYPES:
        return None
    strides = []
    for array in arrays:
        element_strides = _element_strides(array)
        if (element_strides is None or array.ndim != 4 or array.dtype != first.dtype
                or array.shape[0] != first.shape[0] or array.shape[2:] != first.shape[2:]):
            return None
        strides.append(element_strides)
    return Concat(lib, arrays, strides)


def run_kept(ctx: NodeContext, name: str, label: str, x: np.ndarray,
             make: Callable[[], Any], kernel: Kernel | None = None,
             inputs: tuple[Any, ...] | None = None) -> np.ndarray | None:
    """``x`` through the one-source primitive (pooling, channel shuffle, batch normalization)
    the node keeps in ``ctx.cache[name]``, made by ``make()`` when none serves ``x``'s layout
    yet; None where this module does not serve it (``make`` gave None: remembered for that
    layout, so the refused creation is not tried again on every run).  ``kernel``: the node's
    kernel, which returns this result as it is for ``inputs`` (default ``(x,)``; ``x`` first,
    the others constants the primitive holds), so the primitive may be its direct call
    (:meth:`_Primitive.direct`)."""
    cache = ctx.cache
    kept: Any = cache.get(name)
    layout = (x.shape, x.strides, x.dtype)
    if kept is None or (kept.shape, kept.x_strides, kept.dtype) != layout:
        if cache.get(f"{name}_refused") == layout or library() is None:
            return None
        kept = make()
        if kept is None:
            cache[f"{name}_refused"] = layout
            return None
        cache[name] = kept
        cache["library_kernel"] = f"oneDNN {label} {kept.implementation}, kept primitive"
    y = kept(x)
    if y is None:  # made for this x, but it declines this call (a softmax's NaN row)
        return None
    if kernel is not None:
        registry.offer_direct(ctx, kernel, inputs or (x,), (0,), kept.direct, kept)
    return y


@_declined_as_none("channel shuffle")
def create_shuffle(x: np.ndarray, groups: int) -> ChannelShuffle | None:
    """A :class:`ChannelShuffle` for ``x``, or None where this module does not serve it (no
    library, not 4-D, a type it does not compute in, channels not divisible by ``groups``)."""
    lib = library()
    if (lib is None or x.ndim != 4 or x.dtype not in _DATA_TYPES or groups < 1
            or x.shape[1] % groups or 0 in x.shape):
        return None
    x_strides = _unbroadcast_strides(x)
    if x_strides is None:
        return None
    return ChannelShuffle(lib, x, x_strides, groups)


@_declined_as_none("pooling")
def create_pool(x: np.ndarray, *, kind: str, kernel: list[int], strides: list[int],
                dilations: list[int], pads_begin: list[int], pads_end: list[int],
                out: list[int]) -> Pool2d | None:
    """A :class:`Pool2d` for ``x``, or None where this module does not serve it (no library,
    a type or layout oneDNN cannot take, only its reference kernel)."""
    lib = library()
    if lib is None or x.ndim != 4 or x.dtype not in _DATA_TYPES:
        return None
    x_strides = _element_strides(x)
    if x_strides is None:
        return None
    return Pool2d(lib, x, x_strides, kind=kind, kernel=kernel, strides=strides,
                  dilations=dilations, pads_begin=pads_begin, pads_end=pads_end, out=out)


@_declined_as_none("convolution")
def create(x: np.ndarray, w: np.ndarray, dense: np.ndarray, b: np.ndarray | None, *,
           strides: list[int], dilations: list[int], pads: list[int], group: int,
           activation: str, activation_params: list[float], residual: np.ndarray | None,
           weights: list[PackedWeights], accumulate: bool = False) -> Conv2d | None:
    """A :class:`Conv2d` for this call, or None where this module does not serve it
    (``accumulate``: the result added into the residual's memory, see :class:`Conv2d`).

    ``w`` is the node's weight object (calls are matched to it by identity), ``dense`` its
    values (the same array, or a copy rebuilt after ``w``'s memory was released); ``weights``
    the node's packed weights so far, to which a new packing is added.
    """
    lib = library()
    if (
        lib is None
        or x.ndim != 4
        or w.ndim != 4
        or x.dtype not in _DATA_TYPES
        or (activation and activation not in _ELTWISE)
        or (residual is not None and residual.dtype != x.dtype)
    ):
        return None
    x_strides = _element_strides(x)
    residual_strides = None if residual is None else _element_strides(residual)
    if x_strides is None or (residual is not None and residual_strides is None):
        return None
    return Conv2d(lib, x, x_strides, w, dense, b, strides=strides, dilations=dilations,
                  pads=pads, group=group, activation=activation,
                  activation_params=activation_params, residual=residual,
                  residual_strides=residual_strides, weights=weights,
                  accumulate=accumulate)


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _eltwise_parameters(activation: str, params: list[float]) -> tuple[float, float]:
    """oneDNN's (alpha, beta) for a Hetrix activation's parameters."""
    if activation == "LeakyRelu":
        return (float(params[0]) if params else 0.01), 0.0
    if activation == "Clip":
        low = float(params[0]) if params else -np.inf
        high = float(params[1]) if len(params) > 1 else np.inf
        return low, high
    if activation == "HardSwish":
        return 1.0 / 6.0, 0.5
    return 0.0, 0.0


def _destroy(lib: ctypes.CDLL, descs: list[_Handle], memories: list[_Handle],
             pds: list[_Handle], primitives: list[_Handle]) -> None:
    for primitive in primitives:
        lib.dnnl_primitive_destroy(primitive)
    for pd in pds:
        lib.dnnl_primitive_desc_destroy(pd)
    for memory in memories:
        lib.dnnl_memory_destroy(memory)
    for desc in descs:
        lib.dnnl_memory_desc_destroy(desc)


# Last, as it reads this module's names.  Imported with it, not on a plan's first join: a
# module compiled on import (no bytecode cache) costs 1.5 MiB of heap, which a model's first
# run would otherwise show.
from hetrix.backends.numpy_cpu.kernels import _dnnl_chain  # noqa: E402

join_kept = _dnnl_chain.join
"""The ``join`` of the direct calls that run kept primitives and nothing else: consecutive
ones in a plan become one replay of their executions (:mod:`._dnnl_chain`)."""
