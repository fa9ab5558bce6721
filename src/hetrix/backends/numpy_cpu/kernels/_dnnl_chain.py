"""A run of kept oneDNN primitives replayed on fixed buffers: one library call per primitive.

Why.  After an idle pause (the suite's 0.1 s, a server between requests) whatever a run
touches comes from memory again, and Hetrix's Python around each kept primitive (the direct
call's layout checks, its output's allocation, the data-handle calls) then costs about 20 us a
step, as much as many of the kernels.  A replay of the same executions from one list, on
buffers placed once, leaves only the library calls.  Measured (``benchmarks/ab_joined.py``,
one process, alternating runs after 0.1 s pauses; ``benchmarks/RESULTS.md`` has the table):
batch 1 in 0.73 of the time on ShuffleNet, 0.83-0.89 on SqueezeNet, the Inceptions and
MobileNetV2, 0.91 on ResNet-50, 0.82 on ResNet-50 in bfloat16.

How.  The plan hands over a run of consecutive steps whose direct calls offer to be joined
(their ``join`` attribute, :func:`join`).  The joined call's first call runs the steps one by
one while :data:`._dnnl.tracer` records each execution (its memory objects and the addresses
they point at) and each staging buffer made.  Each address is then placed: inside one of the
run's inputs (pointed at per call, relative to the array passed), inside a buffer the run
hands on (made per call, as the steps did), or inside one that dies within the run (a place in
the thread's arena, :class:`_ThreadArena`, shared by buffers whose lifetimes do not overlap
and by every replay on the thread); the weights and the thread's scratchpad stay as they are.
An address anywhere else (memory the trace cannot account for: a kernel's own copy), a step
that is not a single array out or that ran a primitive other than its direct call's (a Concat
chain's link aside, whose work is kept reorders shared between layouts), or a step that says
it did work the replay could not make (:meth:`_Tracer.refuse`) stops the run there: the steps
before and after it are joined on their own (:meth:`_Chain._split`).
The replay has its own memory objects and is checked once, on the traced inputs as they were,
against the traced outputs bit for bit (the same primitives on the same values); a step whose
direct call tests its result (Softmax's for NaN) has its result tested by the replay too.
Afterwards it serves the calls made on the tracing thread with the traced layouts (and, where
a primitive writes into an input, while that input may be overwritten: ``sole_view``); any
other call runs the steps one by one, each with its own checks.  A profiled run
(``enable_profiling``) times the steps one by one, not the replay.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hetrix.backends.numpy_cpu.kernels import _dnnl
from hetrix.runtime.memory import recycled_empty, release_free_memory, sole_view
from hetrix.runtime.plan import run_interface

logger = logging.getLogger(__name__)

Link = tuple[Callable[..., Any], tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""One step of a run: its direct call, the slots it reads, the slots it writes, the slots
freed after it."""

_WRITTEN = frozenset({17, 18, 19})
"""Execution arguments a primitive writes: ``DNNL_ARG_DST`` (``_dnnl._ARG_DST``), ``_DST_1``,
``_DST_2`` (literals: the two modules import each other, and mypy cannot type the other's
names through that cycle)."""

ALIGNMENT = 64
"""Byte alignment of each buffer placed in the arena (a cache line, as ``_aligned_empty``)."""


class _ThreadArena(threading.local):
    """This thread's arena, shared by every replay that runs on it.

    A replay's arena holds only buffers that die within its own run, and one thread replays
    one run at a time, so one buffer serves them all (as the scratchpad does, see
    ``_dnnl._ThreadScratchpad``): DenseNet-121's 55 joined runs at batch 8 held 190 MiB more
    than the steps' own allocations with an arena each.  It only grows; replays made on a
    smaller one point their memory objects at the new one on their next call.  The replays
    hold it, the thread only refers to it: it goes with the last session that replays on it."""

    _buffer: Callable[[], np.ndarray | None] = staticmethod(lambda: None)
    address = 0

    @property
    def buffer(self) -> np.ndarray | None:
        return self._buffer()

    def fit(self, nbytes: int) -> np.ndarray:
        """The arena, grown to hold ``nbytes`` first where it is smaller (or gone)."""
        buffer = self._buffer()
        if buffer is None or buffer.nbytes - ALIGNMENT < nbytes:
            buffer = np.empty(nbytes + ALIGNMENT, np.uint8)
            self._buffer = weakref.ref(buffer)
            self.address = buffer.ctypes.data + (-buffer.ctypes.data % ALIGNMENT)
        return buffer


_ARENA = _ThreadArena()

_UNBOUND = object()
"""What a replay's memory points at before its first call: neither a buffer nor None (the
thread's arena before its first use)."""

_TRACING = threading.Lock()
"""Held while a run is traced: :data:`._dnnl.tracer` is one per process."""


class _Declined(Exception):
    """The traced run cannot be replayed (the message says why)."""


def join(links: Sequence[Link], inputs: tuple[int, ...],
         outputs: tuple[int, ...]) -> Callable[..., tuple[Any, ...]]:
    """One call for the steps ``links``: it takes the values of the slots ``inputs`` (those the
    steps read before any of them writes them) and returns those of ``outputs`` (the ones they
    write that outlive the run), as the steps one by one would."""
    return _Chain(tuple(links), inputs, outputs).call


class _Chain:
    """The joined call of a run of steps: the steps one by one until its first call has traced
    them, then their replay where it serves (see the module's docstring)."""

    def __init__(self, links: tuple[Link, ...], inputs: tuple[int, ...],
                 outputs: tuple[int, ...]) -> None:
        self.links, self.inputs, self.outputs = links, inputs, outputs
        self.replay: _Replay | None = None
        self.traced = False
        self.parts: tuple[Link, ...] | None = None
        """After a trace that a step stopped: the runs before and after it as chains of
        their own, and the step (see :meth:`_split`)."""

    def replayed_steps(self) -> int:
        """How many of the steps a replay serves (0 before the trace; after a split, those
        of the runs around the step left out)."""
        if self.replay is not None:
            return len(self.links)
        owners = (getattr(part[0], "__self__", None) for part in self.parts or ())
        return sum(owner.replayed_steps() for owner in owners if isinstance(owner, _Chain))

    def call(self, *values: Any) -> tuple[Any, ...]:
        replay = self.replay
        if replay is not None:
            result = replay.run(values)
            if result is not None:
                return result
        elif not self.traced and _TRACING.acquire(blocking=False):  # else: a later call
            try:
                if not self.traced:
                    self.traced = True
                    return self._trace(values)
            finally:
                _TRACING.release()
        return self.one_by_one(values)

    def one_by_one(self, values: Sequence[Any]) -> tuple[Any, ...]:
        slots = dict(zip(self.inputs, values, strict=True))
        for call, reads, writes, frees in self.parts or self.links:
            result = call(*[slots[slot] for slot in reads])
            if type(result) is tuple:
                for slot, value in zip(writes, result, strict=False):
                    slots[slot] = value
            else:
                slots[writes[0]] = result
            for slot in frees:
                slots.pop(slot, None)
        return tuple(slots[slot] for slot in self.outputs)

    def _trace(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """Run the steps one by one, traced; make the replay when the trace allows one."""
        library = _dnnl.library()
        tracer = _Tracer(library, values) if library is not None else None
        replay: _Replay | None = None
        _dnnl.tracer = tracer
        try:
            slots = dict(zip(self.inputs, values, strict=True))
            for index, (call, reads, writes, frees) in enumerate(self.links):
                arguments = [slots[slot] for slot in reads]
                if tracer is not None:
                    tracer.begin(index, list(slots.values()), call)
                result = call(*arguments)
                if tracer is not None:
                    tracer.end(result, len(writes))
                if type(result) is tuple:
                    for slot, value in zip(writes, result, strict=False):
                        slots[slot] = value
                else:
                    slots[writes[0]] = result
                del arguments, result
                for slot in frees:
                    slots.pop(slot, None)
            outputs = tuple(slots[slot] for slot in self.outputs)
        finally:
            _dnnl.tracer = None
        if tracer is None:
            return outputs
        # the steps' buffers are free now, and the large outputs their primitives keep for
        # reuse (37 MiB on MobileNetV2 at batch 8) go too: back to the OS before the arena
        # takes its own pages
        del slots
        for call, *_ in self.links:
            for part in _objects(call):
                spare = getattr(part, "_spare", None)
                if spare:
                    spare.clear()
        release_free_memory()
        try:
            replay = _Replay(library, tracer, values, outputs, self.links)
            replay.valid = self._validations(replay)
            replay.check(tracer.originals(), outputs)
        except _Declined as why:
            logger.debug("steps %s stay one by one: %s", _names(self.links), why)
            step = tracer.declined_step
            if step < 0 and replay is not None:
                step = replay.declined_step
            if step >= 0:
                self._split(step)
        else:
            # what a Concat's direct call does with its result besides returning it (it
            # remembers it, see ``after`` in kernels/tensor.py), the replay does too
            replay.after = self._output_hooks("after")
            self.replay = replay
        return outputs

    def _validations(self, replay: _Replay) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        """Per output, the test its step's direct call makes of its result (its ``valid``
        attribute: a Softmax's result must hold no NaN, which ONNX defines differently), which
        the replay then makes; a failed one sends the call to the steps.  A step with such a
        test is left out of the replay where its result does not leave the run (the test
        could not see it) or where the replay writes into an input (the steps could not run
        again on it)."""
        for index, (call, _, writes, _) in enumerate(self.links):
            if getattr(call, "valid", None) is not None and (
                    replay.written_inputs or not set(writes) & set(self.outputs)):
                replay.declined_step = index
                raise _Declined(f"step {index} tests its result, which the replay cannot")
        return self._output_hooks("valid")

    def _output_hooks(self, name: str) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        """``(position, function)`` for each output whose writer's direct call has a
        function ``name`` for its result (only those: the replay loops over these per call)."""
        hooks = []
        for position, slot in enumerate(self.outputs):
            writer = next(call for call, _, writes, _ in self.links if slot in writes)
            hook = getattr(writer, name, None)
            if hook is not None:
                hooks.append((position, hook))
        return tuple(hooks)

    def _split(self, step: int) -> None:
        """Run the steps before ``step`` and those after it as chains of their own (each
        traced on its next call), ``step`` alone between them."""
        parts: list[Link] = []
        for piece in (self.links[:step], self.links[step:step + 1], self.links[step + 1:]):
            if len(piece) < 2:
                parts += piece
                continue
            inputs, outputs, frees = run_interface(piece)
            parts.append((_Chain(piece, inputs, outputs).call, inputs, outputs, frees))
        self.parts = tuple(parts)


def _names(links: Sequence[Link]) -> str:
    first, last = links[0][0], links[-1][0]
    return f"{getattr(first, '__qualname__', first)}..{getattr(last, '__qualname__', last)}"


def _objects(call: Callable[..., Any]) -> list[Any]:
    """The kept primitives a direct call runs when it serves the call itself (its primitive,
    a staging reorder, a convolution + pooling's three, a scale and shift's copy), and the
    object that holds them."""
    made = getattr(call, "primitive", None)
    found = [made]
    for name in ("conv", "pool", "reorder", "copied"):
        found.append(getattr(made, name, None))
    found += [getattr(part, "staged", None) for part in list(found)]
    return [part for part in found if part is not None]


def _parts(call: Callable[..., Any]) -> set[int]:
    """The ids of :func:`_objects`: a step that ran any other primitive went to its kernel,
    whose work the trace may not see whole."""
    return {id(part) for part in _objects(call)}


def _same_layout_copy(value: Any) -> np.ndarray | None:
    """A copy of ``value`` with its shape, strides and type, or None where NumPy's copy would
    not keep them (a strided view)."""
    if type(value) is not np.ndarray:
        return None
    copy = np.empty_like(value, order="K")
    if copy.strides != value.strides:
        return None
    np.copyto(copy, value)
    return copy


def _bounds(array: np.ndarray) -> tuple[int, int]:
    """The first and one past the last byte address ``array``'s elements occupy."""
    low = high = array.ctypes.data
    for size, stride in zip(array.shape, array.strides, strict=True):
        if size == 0:
            return low, low
        if stride < 0:
            low += stride * (size - 1)
        else:
            high += stride * (size - 1)
    return low, high + array.itemsize


def _root(array: np.ndarray) -> np.ndarray:
    """The array that owns ``array``'s memory (the end of its chain of NumPy bases)."""
    while type(array.base) is np.ndarray:
        array = array.base
    return array


class _Buffer:
    """A buffer the steps made, identified across the trace while it is alive."""

    def __init__(self, root: np.ndarray, temporary: bool) -> None:
        self.alive = weakref.ref(root)
        self.start, self.end = _bounds(root)
        self.shape, self.dtype = root.shape, root.dtype
        self.temporary = temporary
        self.first = self.last = -1  # the executions that touch it, in order
        self.escapes = False
        self.place = -1  # its offset in the arena, or its index among the buffers made per call


class _Tracer:
    """Told of each execution and staging buffer of the steps (see :data:`._dnnl.tracer`);
    places every address they use once each step has returned."""

    def __init__(self, library: Any, inputs: tuple[Any, ...]) -> None:
        self.library = library
        self._inputs = inputs
        self._bounds = [_bounds(v) if type(v) is np.ndarray else (0, 0) for v in inputs]
        self._copies: dict[int, np.ndarray | None] = {}
        """Inputs a primitive wrote, as they were before (for the replay's check)."""
        self.owner = threading.get_ident()
        self.executions: list[tuple[Any, list[tuple[int, int, Any]]]] = []
        """Each traced execution: the primitive object and its (argument, memory, place)."""
        self.buffers: list[_Buffer] = []
        self._by_id: dict[int, _Buffer] = {}
        self._pending_start = 0
        self._temporaries: list[np.ndarray] = []
        self.declined = ""
        self.declined_step = -1
        """The step that made the trace unusable (-1: none, or not one step's doing)."""
        self.step = 0
        self._live: list[Any] = []
        self._parts: set[int] = set()
        self._copy_step = False
        get = library.lib.dnnl_memory_get_data_handle
        get.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self._get_handle = get

    # -- called by _dnnl while a step runs ---------------------------------------------------

    def executed(self, primitive: Any, count: int, args_address: int) -> None:
        if threading.get_ident() != self.owner:
            return
        entries = (_dnnl._ExecArg * count).from_address(args_address)
        args = []
        for entry in entries:
            handle = ctypes.c_void_p()
            self._get_handle(entry.memory, ctypes.byref(handle))
            args.append((entry.arg, entry.memory, handle.value))
            if entry.arg in _WRITTEN and handle.value is not None:
                self._keep_before_write(handle.value)
        self.executions.append((primitive, args))  # places filled in by end()

    def _keep_before_write(self, address: int) -> None:
        """Copy the input the primitive about to run writes into, if it is one."""
        for index, (low, high) in enumerate(self._bounds):
            if low <= address < high and index not in self._copies:
                self._copies[index] = _same_layout_copy(self._inputs[index])

    def originals(self) -> list[Any]:
        """The inputs as they were when the trace began."""
        return [self._copies.get(i, value) for i, value in enumerate(self._inputs)]

    def allocated(self, buffer: np.ndarray) -> None:
        """A buffer the running step made and lets die inside it (any view of it)."""
        if threading.get_ident() == self.owner:
            self._temporaries.append(_root(buffer))

    # -- called by the chain around each step --------------------------------------------------

    def refuse(self, why: str) -> None:
        """The step running now did work the replay could not make (``why``)."""
        if threading.get_ident() == self.owner and not self.declined:
            self.declined = f"step {self.step}: {why}"
            self.declined_step = self.step

    def begin(self, step: int, live: list[Any], call: Callable[..., Any]) -> None:
        self.step, self._live, self._parts = step, live, _parts(call)
        # a step whose work is copies (a Concat chain's link) runs kept reorders it shares
        self._copy_step = bool(getattr(getattr(call, "primitive", None), "copies", False))
        self._pending_start = len(self.executions)

    def end(self, result: Any, writes: int) -> None:
        temporaries, self._temporaries = self._temporaries, []
        live, self._live = self._live, []  # no value outlives its step because of the trace
        if self.declined:
            return
        if type(result) is not np.ndarray or writes != 1:
            self.declined = f"step {self.step} does not give one array"
            self.declined_step = self.step
            return
        if len(self.executions) == self._pending_start:
            self.declined = f"step {self.step} ran no kept primitive"
            self.declined_step = self.step
            return
        if any(id(p) not in self._parts and not (self._copy_step and type(p) is _dnnl._Reorder)
               for p, _ in self.executions[self._pending_start:]):
            self.declined = f"step {self.step} went to its kernel"
            self.declined_step = self.step
            return
        # the buffers the step's memory may lie in, the inputs' own aside (placed below)
        inputs = {id(_root(v)) for v in self._inputs if type(v) is np.ndarray}
        made = [_root(v) for v in (*live, result) if type(v) is np.ndarray]
        candidates = [self._buffer(root) for root in made if id(root) not in inputs]
        candidates += [self._buffer(t, temporary=True) for t in temporaries]
        constants_of: dict[int, set[int]] = {}
        for index in range(self._pending_start, len(self.executions)):
            primitive, args = self.executions[index]
            constants = constants_of.setdefault(id(primitive), {
                m.value for _, m in primitive.constant_args})
            placed = []
            for arg, memory, address in args:
                placed.append((arg, memory, self._place(arg, memory, address, constants,
                                                        candidates, index)))
                if self.declined:
                    return
            self.executions[index] = (primitive, placed)

    def _buffer(self, root: np.ndarray, temporary: bool = False) -> _Buffer:
        known = self._by_id.get(id(root))
        if known is not None and known.alive() is root:
            return known
        made = _Buffer(root, temporary)
        self.buffers.append(made)
        self._by_id[id(root)] = made
        return made

    def _place(self, arg: int, memory: int, address: int | None, constants: set[int],
               candidates: list[_Buffer], execution: int) -> Any:
        """Where an execution's argument points: ("scratchpad",), ("same",) for a memory the
        primitive holds for good, ("input", i, offset, written) or ("buffer", buffer, offset);
        None (and the trace declined) for an address no input or buffer of the step holds."""
        if arg == _dnnl._ARG_SCRATCHPAD:
            return ("scratchpad",)
        if memory in constants:
            return ("same",)
        if address is None:
            self.declined = f"step {self.step} passes an argument {arg} with no data"
            self.declined_step = self.step
            return None
        for buffer in candidates:
            if buffer.start <= address < buffer.end:
                if buffer.first < 0:
                    buffer.first = execution
                buffer.last = execution
                return ("buffer", buffer, address - buffer.start)
        for i, value in enumerate(self._inputs):
            if type(value) is np.ndarray:
                low, high = _bounds(value)
                if low <= address < high:
                    return ("input", i, address - value.ctypes.data, arg in _WRITTEN)
        self.declined = f"step {self.step} uses memory the trace cannot place"
        self.declined_step = self.step
        return None


class _Replay:
    """The traced executions on their own memory objects; :meth:`run` makes them."""

    def __init__(self, library: Any, tracer: _Tracer, values: tuple[Any, ...],
                 outputs: tuple[Any, ...], links: tuple[Link, ...]) -> None:
        if tracer.declined:
            raise _Declined(tracer.declined)
        self.library, self.links = library, links
        self._primitives = [primitive for primitive, _ in tracer.executions]  # their handles
        lib = library.lib
        lib.dnnl_memory_get_memory_desc.argtypes = [ctypes.c_void_p,
                                                     ctypes.POINTER(ctypes.c_void_p)]
        self._memories: list[Any] = []
        weakref.finalize(self, _dnnl._destroy, lib, [], self._memories, [], [])
        self.layouts = tuple(
            (v.shape, v.strides, v.dtype) if type(v) is np.ndarray else None for v in values)
        self.results = self._results(tracer, values, outputs)
        made_per_call = [b for b in tracer.buffers if b.escapes]
        for index, buffer in enumerate(made_per_call):
            buffer.place = index
        self.made_per_call = tuple((b.shape, b.dtype) for b in made_per_call)
        self.spares: tuple[list[np.ndarray], ...] = tuple([] for _ in made_per_call)
        """Each buffer made per call: the last one, kept when large (``recycled_empty``)."""
        self.arena_bytes = self._place_in_arena([b for b in tracer.buffers
                                                 if not b.escapes and b.first >= 0])
        self.arena: object = _UNBOUND  # the thread's arena its memory points into
        self.from_arena: list[tuple[Any, int]] = []
        self.from_inputs: list[tuple[Any, int, int]] = []
        self.from_made: list[tuple[Any, int, int]] = []
        self.scratchpads: list[Any] = []
        self.written_inputs: set[int] = set()
        self.scratchpad_bytes = 0
        self.executions = []
        self._args = []
        for primitive, placed in tracer.executions:
            entries = []
            for arg, memory, place in placed:
                entries.append(_dnnl._ExecArg(arg, self._memory_for(primitive, memory, place)))
            array = (_dnnl._ExecArg * len(entries))(*entries)
            self._args.append(array)
            self.executions.append((primitive.primitive, len(entries), ctypes.addressof(array)))
        self.scratchpad: object = _UNBOUND  # the thread's scratchpad its memory points at
        self.owner = threading.get_ident()
        self.after: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
        """(output position, function) to call with each such output (see _output_hooks)."""
        self.valid: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
        """(output position, test): the replay's result stands only where each test holds."""
        self.declined_step = -1

    def _results(self, tracer: _Tracer, values: tuple[Any, ...],
                 outputs: tuple[Any, ...]) -> tuple[tuple[Any, ...], ...]:
        """How to make each output per call: ("input", i) for an input passed through, or
        ("made", buffer, offset, shape, strides, dtype) for a view of a buffer made per call."""
        results: list[tuple[Any, ...]] = []
        for value in outputs:
            if type(value) is not np.ndarray:
                raise _Declined("an output that is not an array")
            passed = [i for i, v in enumerate(values) if v is value]
            if passed:
                results.append(("input", passed[0]))
                continue
            root = _root(value)
            buffer = tracer._by_id.get(id(root))
            if buffer is None or buffer.alive() is not root or buffer.temporary or buffer.first < 0:
                raise _Declined("an output the traced executions did not write")
            buffer.escapes = True
            results.append(("made", buffer, value.ctypes.data - buffer.start, value.shape,
                            value.strides, value.dtype))
        return tuple(results)

    @staticmethod
    def _place_in_arena(buffers: list[_Buffer]) -> int:
        """Give each buffer an offset in one arena, largest first, each at the lowest offset
        free of the buffers placed already that are alive at the same time (by execution);
        returns the arena's size in bytes.  Largest first packs tighter than first use first
        did: MobileNetV2's arena at batch 8 55.1 -> 45.9 MiB (its buffers' lifetime peak is
        46), ResNet-50's 5.36 -> 4.98; ShuffleNet, SqueezeNet, Inception v2 and DenseNet-121
        as before (2.97, 3.75, 3.83, 4.59).  A process's peak comes earlier, in the runs
        before the trace, so this is held memory, not the peak."""
        placed: list[tuple[int, int, int, int]] = []  # first, last, start, end
        top = 0
        for buffer in sorted(buffers, key=lambda b: (-(b.end - b.start), b.first)):
            size = -(-(buffer.end - buffer.start) // ALIGNMENT) * ALIGNMENT
            busy = sorted((start, end) for first, last, start, end in placed
                          if first <= buffer.last and last >= buffer.first)
            offset = 0
            for start, end in busy:
                if offset + size <= start:
                    break
                offset = max(offset, end)
            buffer.place = offset
            placed.append((buffer.first, buffer.last, offset, offset + size))
            top = max(top, offset + size)
        return top

    def _memory_for(self, primitive: Any, memory: int, place: tuple[Any, ...]) -> Any:
        """The memory object the replay passes for one traced argument."""
        kind = place[0]
        if kind == "same":
            return memory
        desc = ctypes.c_void_p()
        self.library.check("dnnl_memory_get_memory_desc", ctypes.c_void_p(memory),
                           ctypes.byref(desc))
        made = self.library.memory(desc, None)
        self._memories.append(made)
        if kind == "scratchpad":
            self.scratchpads.append(made)
            self.scratchpad_bytes = max(self.scratchpad_bytes, primitive.scratchpad_bytes)
        elif kind == "input":
            _, index, offset, written = place
            self.from_inputs.append((made, index, offset))
            if written:
                self.written_inputs.add(index)
        else:
            _, buffer, offset = place
            if buffer.escapes:
                self.from_made.append((made, buffer.place, offset))
            else:
                self.from_arena.append((made, buffer.place + offset))
        return made

    def check(self, originals: list[Any], traced: tuple[Any, ...]) -> None:
        """Replay once on the traced inputs as they were (copies of those a primitive wrote):
        the outputs must equal the traced ones bit for bit."""
        if any(o is None and layout is not None for o, layout in zip(originals, self.layouts,
                                                                    strict=True)):
            raise _Declined("an input written in place whose layout a copy does not keep")
        got = self._execute(originals)
        if got is None:
            raise _Declined("a step's test of its result failed on the traced inputs")
        for mine, theirs in zip(got, traced, strict=True):
            if not np.array_equal(mine, theirs, equal_nan=True):
                raise _Declined("the replay's result differs from the steps'")

    def run(self, values: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The outputs for ``values``, or None where the replay does not serve them (another
        thread, another layout, an input it writes that is not free to be written)."""
        if threading.get_ident() != self.owner:
            return None
        for value, layout in zip(values, self.layouts, strict=True):
            if layout is not None and (type(value) is not np.ndarray or (
                    value.shape, value.strides, value.dtype) != layout):
                return None
        for index in self.written_inputs:
            if not sole_view(values[index]):
                return None
        return self._execute(values)

    def _execute(self, values: Sequence[Any]) -> tuple[Any, ...] | None:
        """The outputs for ``values``, or None where a step's test of its result failed."""
        library = self.library
        set_handle, execute, stream = library.set_handle, library.execute, library.stream
        pad = _dnnl._SCRATCHPAD
        if pad.buffer is not self.scratchpad:  # first call, or a primitive made since grew it
            pad.fit(self.scratchpad_bytes)
            for memory in self.scratchpads:
                set_handle(memory, pad.address)
            self.scratchpad = pad.buffer
        arena = _ARENA
        if arena.buffer is not self.arena:  # first call, or a replay made since grew it
            self.arena = arena.fit(self.arena_bytes)
            for memory, offset in self.from_arena:
                set_handle(memory, arena.address + offset)
        for memory, index, offset in self.from_inputs:
            set_handle(memory, values[index].ctypes.data + offset)
        made = [recycled_empty(spare, shape, dtype)
                for spare, (shape, dtype) in zip(self.spares, self.made_per_call, strict=True)]
        for memory, index, offset in self.from_made:
            set_handle(memory, made[index].ctypes.data + offset)
        for primitive, count, args in self.executions:
            status = execute(primitive, stream, count, args)
            if status:
                raise _dnnl.DnnlError(f"oneDNN failed with status {status} in a replayed run")
        outputs = tuple(
            values[r[1]] if r[0] == "input"
            else np.ndarray(r[3], r[5], made[r[1].place], r[2], r[4])
            for r in self.results)
        for position, valid in self.valid:
            if not valid(outputs[position]):
                return None
        for position, after in self.after:
            after(outputs[position])
        return outputs
