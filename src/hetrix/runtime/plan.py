"""The execution plan: built once per session, walked on every run.

:func:`build_plan` turns an onnx-ir graph into a :class:`Plan`: the nodes in order, each bound
to the kernel of the backend the placer chose, its inputs and outputs as integer slots, and the
slots whose value dies after the step (freed at once, so peak memory follows liveness).  Where a
value crosses memory spaces (host <-> device) a copy step is inserted, once per value.  Subgraphs
of control flow nodes (If, Loop, Scan) become nested plans; the outer-scope values they read are
passed to the node as extra trailing inputs, so liveness sees them as uses.

Slot 0 always holds ``None``: an omitted optional input points there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from hetrix.backends.registry import Kernel, NodeContext
from hetrix.errors import ModelLoadError, UnsupportedOperatorError

NONE_SLOT = 0

METADATA_ONLY = frozenset({"Shape", "Size"})
"""Ops that read only their input's shape: its value is never copied between devices for them."""


@dataclass
class Placement:
    """Where one node runs and, when that is not the first choice, why."""

    node: str
    op_type: str
    domain: str
    backend: str
    reason: str = ""
    memory: str = "host"
    """The memory space its outputs live in ("host" for numpy arrays)."""
    host_inputs: frozenset[int] = frozenset()
    """Input positions the kernel takes from host memory whatever its own memory is."""


@dataclass
class Step:
    """One kernel call: ``outputs = kernel(ctx, *inputs)``, then drop the ``frees`` slots."""

    kernel: Kernel
    ctx: NodeContext
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    frees: tuple[int, ...]
    backend: str


@dataclass
class Plan:
    """A compiled graph.  Invariant: every slot is written before it is read on any run."""

    steps: list[Step]
    slot_names: list[str]
    initial_slots: list[Any]
    """Slot contents before a run: initializers and constants filled, everything else None."""
    input_slots: list[int]
    input_names: list[str]
    optional_input_names: set[str]
    """Graph inputs that also have an initializer: feeding them is allowed, not required."""
    output_slots: list[int]
    output_names: list[str]
    captured_names: list[str] = field(default_factory=list)
    """Outer-scope names this (sub)graph reads; their slots are ``captured_slots``."""
    captured_slots: list[int] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    lean_steps: list[tuple[Any, ...]] = field(default_factory=list)
    """:func:`lean_step` of each step: what the run loop reads, unpacked once here so that it
    does no attribute lookups per node."""
    output_memory: list[str] = field(default_factory=list)
    """Memory space of each output: a top-level plan leaves outputs where they were computed,
    and the session brings them to the host unless the caller keeps them on the device."""
    direct_calls_bound: bool = False
    """Whether :func:`bind_direct_calls` has looked at this plan (after its first run)."""
    lean_run: list[tuple[Any, ...]] | None = None
    """What the lean run loop walks once direct calls are bound: ``lean_steps`` with each run
    of joinable direct calls as one entry (:func:`join_direct_calls`); None before."""


class KernelChooser:
    """Callable ``(node, opset) -> (kernel, Placement)``; raises nothing, returns kernel None.

    It also supplies the functions that move a value between two memory spaces.
    """

    def __call__(self, node: ir.Node, opset: int) -> tuple[Kernel | None, Placement]:
        raise NotImplementedError

    def transfer(self, source: str, target: str) -> Callable[[Any], Any]:
        """A function that copies a value from memory ``source`` to memory ``target``."""
        raise NotImplementedError(f"no transfer from {source} to {target}")


HOST = "host"


SubgraphFactory = Callable[[Plan, list[int]], Any]
"""Makes the runner object a control-flow kernel receives for a subgraph attribute."""


@dataclass
class _Scope:
    """Name -> slot table of one graph while it is being planned."""

    slots: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=lambda: [""])
    captured: list[str] = field(default_factory=list)
    is_subgraph: bool = False
    initial: dict[int, Any] = field(default_factory=dict)
    memory: dict[int, str] = field(default_factory=dict)
    """Memory space of each slot produced on a device; absent means host."""
    copies: dict[tuple[int, str], int] = field(default_factory=dict)
    pending: list[Step] = field(default_factory=list)
    """Copy steps to insert before the step being planned."""

    def new_slot(self, name: str) -> int:
        self.names.append(name)
        self.slots[name] = len(self.names) - 1
        return self.slots[name]


def build_plan(
    graph: ir.Graph,
    opsets: dict[str, int],
    choose: KernelChooser,
    make_subgraph: SubgraphFactory,
    is_subgraph: bool = False,
) -> Plan:
    """Plan ``graph``; raises UnsupportedOperatorError listing every node no backend can run."""
    scope = _Scope(is_subgraph=is_subgraph)
    initial = scope.initial
    initializer_names = set(graph.initializers)
    input_names, input_slots = [], []
    for value in graph.inputs:
        input_names.append(value.name)
        input_slots.append(scope.new_slot(value.name))
    for name, value in graph.initializers.items():
        slot = scope.slots.get(name) or scope.new_slot(name)
        initial[slot] = (
            tensor_to_numpy(value.const_value) if value.const_value is not None else None
        )

    nodes = _nodes_in_order(graph, scope, initializer_names)
    steps: list[Step] = []
    placements: list[Placement] = []
    unsupported: list[str] = []
    for node in nodes:
        step, placement = _plan_node(node, opsets, choose, make_subgraph, scope, placements)
        if step is None:
            unsupported.append(placement.reason)
            continue
        steps.extend(scope.pending)
        scope.pending.clear()
        steps.append(step)
        placements.append(placement)
    if unsupported:
        raise UnsupportedOperatorError(
            f"{len(unsupported)} node(s) have no kernel on this session's backends:\n  "
            + "\n  ".join(unsupported)
        )
    output_names = [value.name for value in graph.outputs]
    for name in output_names:
        if name not in scope.slots:
            _resolve(name, scope, f"graph output '{name}'")
    output_slots = [scope.slots[name] for name in output_names]
    if is_subgraph:  # control-flow kernels run on the host and take their results from there
        output_slots = [_in_memory(slot, HOST, scope, choose) for slot in output_slots]
        steps.extend(scope.pending)
    output_memory = [scope.memory.get(slot, HOST) for slot in output_slots]
    captured_slots = [scope.slots[name] for name in scope.captured]
    keep = {NONE_SLOT, *output_slots, *initial}
    assign_frees(steps, keep)
    for step, positions in zip(steps, reusable_inputs(steps, {*keep, *input_slots,
                                                            *captured_slots})):
        step.ctx.reusable_inputs = positions
    _mark_owned_constants(steps, initial, {*input_slots, *output_slots})
    slots: list[Any] = [None] * len(scope.names)
    for slot, value in initial.items():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # weights are shared by every run: no kernel may write them
        slots[slot] = value
    return Plan(
        steps=steps,
        slot_names=scope.names,
        initial_slots=slots,
        input_slots=input_slots,
        input_names=input_names,
        optional_input_names={n for n in input_names if n in initializer_names},
        output_slots=output_slots,
        output_names=output_names,
        captured_names=scope.captured,
        captured_slots=captured_slots,
        output_memory=output_memory,
        placements=placements,
        lean_steps=[lean_step(s) for s in steps],
    )


def _mark_owned_constants(steps: list[Step], initial: dict[int, Any], exposed: set[int]) -> None:
    """Set ``ctx.owned_inputs`` of each step: its inputs that are numpy constants no other step
    reads and the caller can neither feed nor receive (see :class:`NodeContext`)."""
    readers: dict[int, list[tuple[Step, int]]] = {}
    for step in steps:
        for position, slot in enumerate(step.inputs):
            readers.setdefault(slot, []).append((step, position))
    # an array another constant shares memory with (the same object in two slots, as constant
    # folding leaves for Identity, or a view of it) is not one node's to release
    holders: dict[int, int] = {}
    for value in initial.values():
        if isinstance(value, np.ndarray):
            root = _memory_root(value)
            holders[id(root)] = holders.get(id(root), 0) + 1
    owned: dict[int, set[int]] = {}
    for slot, value in initial.items():
        read = readers.get(slot, [])
        if (
            isinstance(value, np.ndarray)
            and slot not in exposed
            and len(read) == 1
            and _memory_root(value) is value
            and holders[id(value)] == 1
        ):
            step, position = read[0]
            owned.setdefault(id(step), set()).add(position)
    for step in steps:
        if id(step) in owned:
            step.ctx.owned_inputs = frozenset(owned[id(step)])


def has_subgraph(step: Step) -> bool:
    """Control flow (Loop, Scan, If): what the step does depends on a body run by its kernel."""
    return any(hasattr(v, "plan") for v in step.ctx.attrs.values()) or any(
        isinstance(v, list) and any(hasattr(x, "plan") for x in v) for v in step.ctx.attrs.values()
    )


def _memory_root(array: np.ndarray) -> Any:
    """The object that owns ``array``'s memory (the end of its ``base`` chain)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def lean_step(step: Step) -> tuple[Any, ...]:
    """The tuple :func:`_walk_lean` reads for ``step``: the kernel with its context bound, the
    input count and the first two input slots (the common cases, read without building a
    list), all input slots, the first output slot, all output slots, the slots to free, and the
    step itself (for error messages)."""
    inputs = step.inputs
    return (
        functools.partial(step.kernel, step.ctx),
        len(inputs),
        inputs[0] if inputs else 0,
        inputs[1] if len(inputs) > 1 else 0,
        inputs,
        step.outputs[0] if step.outputs else 0,
        step.outputs,
        step.frees,
        step,
    )


def bind_direct_calls(plan: Plan) -> int:
    """Switch each step whose kernel offers a direct call (``NodeContext.direct``) to it, where
    the plan fixes what the call leaves out: the step still runs that kernel, and each input
    the call does not take is a constant of this plan (no feed may replace it) and the very
    value the kernel saw.  Once per plan, after its first run, when the kernels have made their
    library primitives; returns the number of steps switched.

    The plan is in use meanwhile (other threads may be running it): each entry of
    ``lean_steps`` is replaced whole, which a running loop sees either before or after.
    """
    plan.direct_calls_bound = True
    fed = {*plan.input_slots, *plan.captured_slots}
    switched = 0
    for index, lean in enumerate(plan.lean_steps):
        step: Step = lean[-1]
        direct = step.ctx.direct
        if (direct is None or lean[0] is direct.call or step.kernel is not direct.kernel
                or len(direct.constants) != len(step.inputs)):
            continue
        runtime = tuple(step.inputs[position] for position in direct.positions)
        fixed = (
            slot not in fed and plan.initial_slots[slot] is direct.constants[position]
            for position, slot in enumerate(step.inputs) if position not in direct.positions
        )
        if not runtime or not all(fixed):
            continue
        plan.lean_steps[index] = (
            direct.call,
            len(runtime),
            runtime[0],
            runtime[1] if len(runtime) > 1 else 0,
            runtime,
            *lean[5:],
        )
        switched += 1
    plan.lean_run = join_direct_calls(plan.lean_steps)
    return switched


def run_interface(links: Sequence[tuple[Any, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
                  ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """For consecutive steps ``(call, reads, writes, frees)`` run as one call: the slots it
    reads before any step writes them, the slots it writes that outlive it (not freed by a
    step of the run: read later, or graph outputs, which are never freed), and the slots it
    frees that it did not write."""
    written: set[int] = set()
    reads: list[int] = []
    freed: list[int] = []
    for _, step_reads, writes, frees in links:
        reads += [s for s in step_reads if s not in written and s not in reads]
        written.update(writes)
        freed += frees
    outputs = tuple(sorted(s for s in written if s not in freed))
    return tuple(reads), outputs, tuple(s for s in freed if s not in written)


JOIN_MIN_STEPS = 2
"""The fewest consecutive joinable direct calls made one call."""


def join_direct_calls(lean_steps: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``lean_steps`` with each run of consecutive steps whose direct calls name the same
    ``join`` function (a library's, e.g. oneDNN's kept primitives: one replay of their
    executions) replaced by one entry for the call that function makes of them.  That call
    reads the slots the run reads before writing them, returns the slots it writes that
    outlive it (read after it, or graph outputs) as a tuple, and the entry frees what the
    steps freed.  The steps' own entries stay in ``lean_steps`` (the profiling loop times each)."""
    joined: list[tuple[Any, ...]] = []
    index = 0
    while index < len(lean_steps):
        join = getattr(lean_steps[index][0], "join", None)
        end = index + 1
        while (join is not None and end < len(lean_steps)
               and getattr(lean_steps[end][0], "join", None) is join):
            end += 1
        if join is None or end - index < JOIN_MIN_STEPS:
            joined.append(lean_steps[index])
            index += 1
            continue
        run = lean_steps[index:end]
        links = [(entry[0], entry[4], entry[6], entry[7]) for entry in run]
        inputs, outputs, frees = run_interface(links)
        joined.append((
            join(links, inputs, outputs),
            len(inputs),
            inputs[0] if inputs else 0,
            inputs[1] if len(inputs) > 1 else 0,
            inputs,
            outputs[0] if outputs else 0,
            outputs,
            frees,
            run[0][-1],
        ))
        index = end
    return joined


def _nodes_in_order(graph: ir.Graph, scope: _Scope, initializers: set[str]) -> list[ir.Node]:
    """The graph's nodes in an order where producers come first (sorted if the file was not)."""
    defined = set(scope.slots) | initializers
    produced = {out.name for node in graph for out in node.outputs}
    for node in graph:
        names = [v.name for v in node.inputs if v is not None and v.name]
        if any(name not in defined and name in produced for name in names):
            try:
                graph.sort()
            except Exception as exc:
                raise ModelLoadError(f"graph '{graph.name}' has a cycle: {exc}") from exc
            break
        defined.update(out.name for out in node.outputs)
    return list(graph)


def _plan_node(
    node: ir.Node,
    opsets: dict[str, int],
    choose: KernelChooser,
    make_subgraph: SubgraphFactory,
    scope: _Scope,
    placements: list[Placement],
) -> tuple[Step | None, Placement]:
    label = f"node '{node.name}' ({node.domain + '::' if node.domain else ''}{node.op_type})"
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in opsets:
        raise ModelLoadError(f"{label} uses domain '{domain}', which the model does not import")
    opset = opsets[domain]
    inputs = [
        NONE_SLOT if value is None or not value.name else _resolve(value.name, scope, label)
        for value in node.inputs
    ]
    attrs, subplans = _convert_attributes(node, opsets, choose, make_subgraph)
    captured = _bind_subgraphs(attrs, subplans, make_subgraph)
    for plan in _flatten(subplans):
        placements.extend(plan.placements)  # nested nodes are listed before their parent
    inputs += [_resolve(name, scope, label) for name in captured]
    kernel, placement = choose(node, opset)
    if kernel is None:
        for value in node.outputs:  # keep planning, so one error lists every unsupported node
            if value.name:
                scope.new_slot(value.name)
        return None, placement
    if not (node.op_type in METADATA_ONLY and not domain):
        inputs = [
            _in_memory(
                slot, HOST if i in placement.host_inputs else placement.memory, scope, choose
            )
            for i, slot in enumerate(inputs)
        ]
    outputs = tuple(
        scope.new_slot(value.name) if value.name else NONE_SLOT for value in node.outputs
    )
    ctx = NodeContext(
        op_type=node.op_type,
        domain=domain,
        name=node.name or "",
        opset=opset,
        attrs=attrs,
        num_inputs=len(node.inputs),
        num_outputs=len(node.outputs),
        input_names=tuple(v.name if v is not None else "" for v in node.inputs),
        output_names=tuple(v.name or "" for v in node.outputs),
        output_dtypes=tuple(_numpy_dtype(v) for v in node.outputs),
    )
    step = Step(kernel, ctx, tuple(inputs), outputs, (), placement.backend)
    if placement.memory != HOST:
        scope.memory.update((slot, placement.memory) for slot in outputs if slot != NONE_SLOT)
    return step, placement


def _in_memory(slot: int, memory: str, scope: _Scope, choose: KernelChooser) -> int:
    """A slot holding the value of ``slot`` in ``memory``, adding a copy step when needed.

    Each value is copied to a memory space at most once.  Constants are copied now, at plan
    time, so weights move to a device once per session, not once per run.
    """
    source = scope.memory.get(slot, HOST)
    if slot == NONE_SLOT or source == memory:
        return slot
    if (slot, memory) in scope.copies:
        return scope.copies[(slot, memory)]
    move = choose.transfer(source, memory)
    name = f"{scope.names[slot]}@{memory}"
    target = scope.new_slot(name)
    scope.copies[(slot, memory)] = target
    if memory != HOST:
        scope.memory[target] = memory
    if slot in scope.initial:
        scope.initial[target] = move(scope.initial[slot])
        return target
    ctx = NodeContext(
        op_type="Copy",
        domain="hetrix",
        name=f"copy:{name}",
        opset=1,
        attrs={},
        num_inputs=1,
        num_outputs=1,
        input_names=(scope.names[slot],),
        output_names=(name,),
    )
    scope.pending.append(Step(_Copy(move), ctx, (slot,), (target,), (), f"{source}->{memory}"))
    return target


class _Copy:
    """The kernel of a copy step: moves one value between memory spaces."""

    def __init__(self, move: Callable[[Any], Any]) -> None:
        self.move = move

    def __call__(self, ctx: NodeContext, value: Any) -> Any:
        return self.move(value)


def _resolve(name: str, scope: _Scope, label: str) -> int:
    """The slot of ``name``; in a subgraph an unknown name is an outer-scope capture."""
    slot = scope.slots.get(name)
    if slot is not None:
        return slot
    if not scope.is_subgraph:
        raise ModelLoadError(
            f"{label} reads '{name}', which no earlier node, initializer or graph input defines"
        )
    scope.captured.append(name)
    return scope.new_slot(name)


def _convert_attributes(
    node: ir.Node,
    opsets: dict[str, int],
    choose: KernelChooser,
    make_subgraph: SubgraphFactory,
) -> tuple[dict[str, Any], dict[str, Plan | list[Plan]]]:
    """Attributes as Python values, and the planned subgraphs by attribute name."""
    label = f"node '{node.name}' ({node.op_type})"
    attrs: dict[str, Any] = {}
    subplans: dict[str, Plan | list[Plan]] = {}
    for name, attr in node.attributes.items():
        if attr.type == ir.AttributeType.GRAPH:
            subplans[name] = build_plan(attr.value, opsets, choose, make_subgraph, True)
        elif attr.type == ir.AttributeType.GRAPHS:
            subplans[name] = [
                build_plan(g, opsets, choose, make_subgraph, True) for g in attr.value
            ]
        else:
            attrs[name] = attribute_value(attr, label)
    return attrs, subplans


def _flatten(subplans: dict[str, Plan | list[Plan]]) -> list[Plan]:
    return [
        p for plans in subplans.values() for p in (plans if isinstance(plans, list) else [plans])
    ]


def _bind_subgraphs(
    attrs: dict[str, Any], subplans: dict[str, Plan | list[Plan]], make_subgraph: SubgraphFactory
) -> list[str]:
    """Put a runner for each subgraph into ``attrs``; returns the outer names they capture."""
    captured: list[str] = []
    for plan in _flatten(subplans):
        captured += [n for n in plan.captured_names if n not in captured]
    for name, plans in subplans.items():
        if isinstance(plans, list):
            attrs[name] = [make_subgraph(p, _indices(p, captured)) for p in plans]
        else:
            attrs[name] = make_subgraph(plans, _indices(plans, captured))
    return captured


def _indices(plan: Plan, captured: list[str]) -> list[int]:
    return [captured.index(name) for name in plan.captured_names]


def attribute_value(attr: ir.Attr, label: str) -> Any:
    """A non-graph attribute as a plain Python / numpy value."""
    kind, value = attr.type, attr.value
    if kind == ir.AttributeType.TENSOR:
        return tensor_to_numpy(value)
    if kind == ir.AttributeType.TENSORS:
        return [tensor_to_numpy(t) for t in value]
    if kind in (ir.AttributeType.SPARSE_TENSOR, ir.AttributeType.SPARSE_TENSORS):
        return (
            _sparse_to_dense(value)
            if kind == ir.AttributeType.SPARSE_TENSOR
            else [_sparse_to_dense(v) for v in value]
        )
    if kind in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(value)
    return value


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """An onnx-ir tensor as a numpy array; string tensors become object arrays of ``str``."""
    array = tensor.numpy()
    if array.dtype == object or array.dtype.kind in "SU":
        decode = np.vectorize(
            lambda s: s.decode("utf-8", errors="replace") if isinstance(s, bytes) else str(s),
            otypes=[object],
        )
        array = decode(array) if array.size else array.astype(object)
    return array


def _sparse_to_dense(sparse: Any) -> np.ndarray:
    """A SparseTensorProto as the dense array it denotes."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
    if indices.ndim == 2:  # one row of coordinates per value
        indices = np.ravel_multi_index(indices.T, tuple(sparse.dims))
    dense[indices] = values
    return dense.reshape(tuple(sparse.dims))


def _numpy_dtype(value: ir.Value) -> Any:
    dtype = value.dtype
    if dtype is None or dtype == ir.DataType.UNDEFINED:
        return None
    try:
        return np.dtype(dtype.numpy())
    except (TypeError, ValueError, NotImplementedError):
        return None


def assign_frees(steps: Sequence[Step], keep: set[int]) -> None:
    """Give each step the slots whose last reader it is (never outputs or constants)."""
    last_use: dict[int, int] = {}
    for index, step in enumerate(steps):
        for slot in (*step.inputs, *step.outputs):
            last_use[slot] = index
    frees: dict[int, list[int]] = {}
    for slot, index in last_use.items():
        if slot not in keep:
            frees.setdefault(index, []).append(slot)
    for index, step in enumerate(steps):
        step.frees = tuple(frees.get(index, ()))


FRESH_OUTPUT_OPS = frozenset({("", "Conv"), ("hetrix", "FusedConv")})
"""Ops whose kernels (on every backend) return memory no other live value shares: arrays of
their own, or (a FusedConv adding into its residual) the memory of an input this analysis let
them overwrite, whose other sharers are all dead by then.  A whitelist: the outputs of any
other op are taken to share memory with its inputs (a Reshape's view, an Identity's very
object, a DenseNet chain's joined buffer)."""


def reusable_inputs(steps: Sequence[Step], keep: set[int]) -> list[frozenset[int]]:
    """For each step, the positions of its inputs whose memory it may overwrite: a value this
    run computed (not in ``keep``: outputs, constants; not fed: pass the input and captured
    slots in ``keep`` too) that the step reads once and last, where every other value that may
    share its memory (see :data:`FRESH_OUTPUT_OPS`) is dead before the step.

    Static only: the kernel still checks at run time that the array is the only view of its
    buffer (:func:`hetrix.runtime.memory.sole_view`), against what the plan cannot see: a view
    some kernel made that the plan took for a fresh array, a caller recording intermediates.
    """
    parent: dict[int, int] = {}

    def root(slot: int) -> int:
        while parent.get(slot, slot) != slot:
            slot = parent[slot]
        return slot

    last_read: dict[int, int] = {}
    for index, step in enumerate(steps):
        for slot in step.inputs:
            last_read[slot] = index
        if (step.ctx.domain, step.ctx.op_type) in FRESH_OUTPUT_OPS:
            continue
        joined = [s for s in (*step.inputs, *step.outputs) if s != NONE_SLOT]
        for slot in joined[1:]:  # union: the outputs may alias any input
            a, b = root(joined[0]), root(slot)
            if a != b:
                parent[b] = a
    members: dict[int, list[int]] = {}
    for slot in {*last_read, *parent}:
        members.setdefault(root(slot), []).append(slot)
    result = []
    for index, step in enumerate(steps):
        positions = set()
        for position, slot in enumerate(step.inputs):
            if (slot == NONE_SLOT or slot in keep or last_read.get(slot) != index
                    or step.inputs.count(slot) != 1):
                continue
            shared = members.get(root(slot), [slot])
            if all(other == slot or (other not in keep and last_read.get(other, -1) < index)
                   for other in shared):
                positions.add(position)
        result.append(frozenset(positions))
    return result
