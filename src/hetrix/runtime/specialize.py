"""Shape specialization: per input-shape signature, a plan with the shape arithmetic folded.

Exported models compute shapes at run time: ``Shape -> Gather -> Unsqueeze -> Concat`` feeding a
``Reshape``, ``Range``/``ConstantOfShape`` building masks from the sequence length, and so on.
With symbolic input dims the graph optimizer cannot fold them, so every run pays one kernel call
per node of that arithmetic.  Once the input shapes are known those values are constants, and
this module turns that into a cheaper plan:

1. **Analysis, once per session** (:func:`analyze`).  For every slot of the plan it decides
   whether its *value* is a function of the input shapes alone (constants, ``Shape``/``Size`` of
   such values, and deterministic steps of those) and whether its *shape* is (from per-op rules:
   :data:`SHAPE_ONLY_OPS`, :data:`SHAPE_VALUE_INPUTS`; an op outside the tables, control flow or
   a data-dependent op such as ``NonZero`` stops the propagation).
2. **Observation, one run per signature.**  The run at a new signature keeps the values of those
   slots (:class:`~hetrix.runtime.executor.Watch`): they are what every later run at that
   signature computes, since they depend on nothing else.
3. **Specialization** (:func:`specialize`).  A copy of the plan where those values are constants,
   the steps computing them are gone, ``Reshape``/``Expand``/``Flatten`` steps whose output
   shape equals their input shape read their input directly, and dead steps are dropped.  Steps
   and kernels are shared with the generic plan; planning takes microseconds to a few
   milliseconds (a walk over the steps), never a second optimization of the graph.

:class:`ShapeSpecializer` keeps the specialized plans in a small LRU cache keyed by the input
shapes.  A signature is specialized the second time it is seen, so a stream of ever-new shapes
runs the generic plan at no extra cost.  Correctness rests on the op tables: an op is listed only
when its output shapes are a function of its input shapes, attributes and the *values* of the
inputs named in :data:`SHAPE_VALUE_INPUTS`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetrix.runtime.executor import Watch, execute
from hetrix.runtime.plan import (
    NONE_SLOT,
    Plan,
    Step,
    assign_frees,
    has_subgraph,
    lean_step,
    reusable_inputs,
)

_ELEMENTWISE = (
    "Abs Acos Acosh Asin Asinh Atan Atanh BitwiseNot Cast CastLike Ceil Celu Clip Cos Cosh "
    "CumProd CumSum Elu Erf Exp Floor Gelu HardSigmoid HardSwish Hardmax Identity IsInf IsNaN "
    "LeakyRelu Log LogSoftmax LpNormalization LRN MeanVarianceNormalization Mish Neg Not "
    "Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softmax Softplus Softsign Sqrt Swish "
    "Tan Tanh ThresholdedRelu Trilu "
    "Add And BitShift BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less "
    "LessOrEqual Max Mean Min Mod Mul Or PRelu Pow Sub Sum Where Xor"
)
_STRUCTURAL = (
    "ArgMax ArgMin AveragePool BatchNormalization Concat Conv ConvInteger ConvTranspose "
    "DepthToSpace DequantizeLinear Dropout Einsum EyeLike Flatten Gather GatherElements GatherND "
    "Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization InstanceNormalization "
    "LayerNormalization LpPool MatMul MatMulInteger MaxPool QLinearConv QLinearMatMul "
    "QuantizeLinear RMSNormalization RandomNormalLike RandomUniformLike Bernoulli Scatter "
    "ScatterElements ScatterND Shape Size SpaceToDepth Transpose"
)

SHAPE_ONLY_OPS: frozenset[tuple[str, str]] = frozenset(
    {("", op) for op in (_ELEMENTWISE + " " + _STRUCTURAL).split()}
    | {("hetrix", op) for op in ("Attention", "FusedConv", "FusedConvPool", "FusedGemm",
                                 "FusedMatMul", "Gelu",
                                 "LayerNormalization", "Copy", "FusedBatchNormalization",
                                 "FusedConcat")}
)
"""``(domain, op)`` whose output shapes follow from input shapes and attributes alone."""

SHAPE_VALUE_INPUTS: dict[tuple[str, str], frozenset[int]] = {
    ("", op): frozenset(indices)
    for op, indices in {
        "Reshape": {1},
        "Expand": {1},
        "Tile": {1},
        "Slice": {1, 2, 3, 4},
        "Unsqueeze": {1},
        "Squeeze": {1},
        "Pad": {1, 3},
        "Resize": {1, 2, 3},
        "Upsample": {1},
        "ConstantOfShape": {0},
        "Range": {0, 1, 2},
        "TopK": {1},
        "Split": {1},
        "OneHot": {1},
        "CenterCropPad": {1},
        **{f"Reduce{kind}": {1} for kind in (
            "L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")},
    }.items()
}
"""``(domain, op)`` whose output shapes also depend on the values of these input positions."""

NON_DETERMINISTIC: frozenset[str] = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)
"""Ops never folded even when their inputs are known (Dropout: its training mode may be on)."""

IDENTITY_WHEN_SAME_SHAPE: frozenset[str] = frozenset({"Reshape", "Expand", "Flatten"})
"""Ops that return their first input unchanged when the output shape equals the input's."""

MAX_FOLDED_BYTES = 1 << 20
"""Values larger than this stay computed at run time (a specialized plan holds its constants)."""

DEFAULT_MAX_PLANS = 8
"""Specialized plans a session keeps (least recently used first out)."""


@dataclass(frozen=True)
class ShapeFacts:
    """What the analysis proved about a plan: the slots known from the input shapes alone.

    Invariant: the value of every slot in ``known_values`` and the shape of every slot in
    ``known_shapes`` are the same on every run whose inputs have the same shapes.
    """

    known_values: frozenset[int]
    known_shapes: frozenset[int]
    foldable: frozenset[int]
    """Slots of ``known_values`` written by a step (worth observing and folding)."""
    identity_candidates: tuple[int, ...]
    """Indices of Reshape/Expand/Flatten steps whose input and output shapes are known."""


def analyze(plan: Plan, shaped_inputs: Collection[str]) -> ShapeFacts | None:
    """The slots of ``plan`` whose values or shapes follow from the input shapes, or None when
    specializing could not remove a single step.

    ``shaped_inputs`` names the inputs that are tensors (the signature records their shapes);
    other inputs (sequences, optionals) are treated as unknown.
    """
    shaped = {s for s, n in zip(plan.input_slots, plan.input_names) if n in shaped_inputs}
    fed = set(plan.input_slots) | set(plan.captured_slots)
    values = {NONE_SLOT} | {
        slot for slot, v in enumerate(plan.initial_slots) if v is not None and slot not in fed
    }
    shapes = values | shaped
    foldable: set[int] = set()
    identities: list[int] = []
    for index, step in enumerate(plan.steps):
        key = (step.ctx.domain, step.ctx.op_type)
        if _value_known(step, values, shapes):
            values.update(step.outputs)
            shapes.update(step.outputs)
            foldable.update(slot for slot in step.outputs if slot != NONE_SLOT)
        elif _shape_known(step, key, values, shapes):
            shapes.update(step.outputs)
            if step.ctx.op_type in IDENTITY_WHEN_SAME_SHAPE and not step.ctx.domain:
                identities.append(index)
    if not foldable and not identities:
        return None
    return ShapeFacts(frozenset(values), frozenset(shapes), frozenset(foldable), tuple(identities))


def _value_known(step: Step, values: set[int], shapes: set[int]) -> bool:
    ctx = step.ctx
    if ctx.op_type in NON_DETERMINISTIC and not ctx.domain:
        return False
    if has_subgraph(step):
        return False
    if ctx.op_type in ("Shape", "Size") and not ctx.domain:
        return step.inputs[0] in shapes
    return all(slot in values for slot in step.inputs)


def _shape_known(step: Step, key: tuple[str, str], values: set[int], shapes: set[int]) -> bool:
    if key in SHAPE_ONLY_OPS:
        needs_value: frozenset[int] = frozenset()
    elif key in SHAPE_VALUE_INPUTS:
        needs_value = SHAPE_VALUE_INPUTS[key]
    else:
        return False
    if has_subgraph(step):
        return False
    return all(
        slot in values if position in needs_value else slot in shapes
        for position, slot in enumerate(step.inputs)
    )


def watch_for(plan: Plan, facts: ShapeFacts) -> Watch:
    """What the observing run keeps: the foldable values, and the shapes of the identity
    candidates' inputs and outputs."""
    shape_slots: set[int] = set()
    for index in facts.identity_candidates:
        step = plan.steps[index]
        shape_slots.update((step.inputs[0], step.outputs[0]))
    return Watch(
        slots=facts.foldable, shape_slots=frozenset(shape_slots), max_bytes=MAX_FOLDED_BYTES
    )


@dataclass(frozen=True)
class Specialization:
    """One specialized plan, as :meth:`InferenceSession.get_shape_specializations` lists it."""

    input_shapes: dict[str, tuple[int, ...] | None]
    steps_before: int
    steps_after: int
    folded: int
    """Steps whose outputs became constants at these shapes."""
    identities: int
    """Reshape/Expand/Flatten steps found to keep their input's shape: bypassed."""
    dead: int
    """Steps dropped because nothing read their outputs any more."""
    seconds: float
    """Time to build the plan (the observing run not included)."""


def specialize(plan: Plan, facts: ShapeFacts, watch: Watch) -> tuple[Plan, dict[str, int]]:
    """``plan`` for the input shapes of the run ``watch`` observed; and counts of what changed.

    Invariant: for inputs of those shapes the result computes the same outputs as ``plan``.
    """
    folded = {
        slot: _frozen(value)
        for slot, value in watch.values.items()
        if slot in facts.foldable and _foldable_value(value)
    }
    outputs = set(plan.output_slots)
    alias = _identity_aliases(plan, facts, watch, outputs)
    kept: list[Step] = []
    counts = {"folded": 0, "identities": len(alias), "dead": 0}
    for step in plan.steps:
        if step.outputs and all(s == NONE_SLOT or s in folded for s in step.outputs):
            counts["folded"] += 1
        elif step.outputs and step.outputs[0] in alias:
            continue
        else:
            inputs = tuple(_follow(alias, slot) for slot in step.inputs)
            kept.append(Step(step.kernel, step.ctx, inputs, step.outputs, (), step.backend))
    output_slots = [_follow(alias, slot) for slot in plan.output_slots]
    live = _drop_dead(kept, output_slots)
    counts["dead"] = len(kept) - len(live)
    initial = plan.initial_slots.copy()
    read = {slot for step in live for slot in step.inputs} | set(output_slots)
    for slot, value in folded.items():
        if slot in read:
            initial[slot] = value
    keep = {NONE_SLOT, *output_slots, *(s for s, v in enumerate(initial) if v is not None)}
    assign_frees(live, keep)
    # the nodes' contexts are shared with ``plan``: what either plan forbids, both do
    fixed = {*keep, *plan.input_slots, *plan.captured_slots}
    for step, positions in zip(live, reusable_inputs(live, fixed)):
        step.ctx.reusable_inputs &= positions
    specialized = Plan(
        steps=live,
        slot_names=plan.slot_names,
        initial_slots=initial,
        input_slots=plan.input_slots,
        input_names=plan.input_names,
        optional_input_names=plan.optional_input_names,
        output_slots=output_slots,
        output_names=plan.output_names,
        captured_names=plan.captured_names,
        captured_slots=plan.captured_slots,
        placements=plan.placements,
        lean_steps=[lean_step(s) for s in live],
        output_memory=plan.output_memory,
    )
    return specialized, counts


def _foldable_value(value: Any) -> bool:
    """Host values small enough to keep: numpy arrays (not object arrays) and scalars."""
    if isinstance(value, np.generic):
        return True
    return (
        isinstance(value, np.ndarray) and value.dtype != object and value.nbytes <= MAX_FOLDED_BYTES
    )


def _frozen(value: Any) -> Any:
    """A private, read-only copy: the plan's constant must not change if a caller writes to
    the array it got from the observing run."""
    if isinstance(value, np.ndarray):
        value = value.copy()
        value.setflags(write=False)
    return value


def _identity_aliases(
    plan: Plan, facts: ShapeFacts, watch: Watch, outputs: set[int]
) -> dict[int, int]:
    """Output slot -> input slot of each identity candidate whose observed output shape equals
    its input shape (graph outputs excepted: the caller must get arrays of their own)."""
    alias: dict[int, int] = {}
    for index in facts.identity_candidates:
        step = plan.steps[index]
        source, target = step.inputs[0], step.outputs[0]
        if target in outputs or target == NONE_SLOT:
            continue
        shape = watch.shapes.get(target)
        if shape is not None and shape == watch.shapes.get(source):
            alias[target] = source
    return alias


def _follow(alias: dict[int, int], slot: int) -> int:
    while slot in alias:
        slot = alias[slot]
    return slot


def _drop_dead(steps: list[Step], outputs: Sequence[int]) -> list[Step]:
    """``steps`` without those whose outputs nothing reads (walking back from the outputs)."""
    needed = set(outputs)
    live: list[Step] = []
    for step in reversed(steps):
        if any(slot in needed for slot in step.outputs if slot != NONE_SLOT):
            live.append(step)
            needed.update(step.inputs)
    live.reverse()
    return live


class ShapeSpecializer:
    """Runs a plan, switching to a plan specialized to the feeds' shapes once worthwhile.

    A signature (the shapes of the feeds) is observed the second time it is seen and served by
    its specialized plan from the third; at most ``max_plans`` plans are kept, least recently
    used out first.  Safe to call from several threads (the cache is locked; plans are
    immutable once built).
    """

    def __init__(self, plan: Plan, facts: ShapeFacts, max_plans: int = DEFAULT_MAX_PLANS) -> None:
        self.plan = plan
        self.facts = facts
        self.max_plans = max(1, int(max_plans))
        self._plans: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._made: OrderedDict[tuple[Any, ...], Specialization] = OrderedDict()
        self._lock = threading.Lock()

    def execute(self, feeds: Sequence[Any], timings: list[Any] | None = None) -> list[Any]:
        """Run on ``feeds`` (in ``plan.input_slots`` order) with the best plan for their shapes."""
        key = tuple(getattr(value, "shape", None) for value in feeds)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            observe = plan is None and self._second_sighting(key)
        if plan is not None:
            return execute(plan, feeds, timings=timings)
        if not observe:
            return execute(self.plan, feeds, timings=timings)
        watch = watch_for(self.plan, self.facts)
        outputs = execute(self.plan, feeds, timings=timings, watch=watch)
        self._add(key, watch)
        return outputs

    def plans(self) -> list[Plan]:
        """The specialized plans held now, least recently built first."""
        with self._lock:
            return list(self._plans.values())

    def specializations(self) -> list[Specialization]:
        """The plans held now, least recently built first."""
        with self._lock:
            return [self._made[key] for key in self._plans]

    def _second_sighting(self, key: tuple[Any, ...]) -> bool:
        """Whether ``key`` was seen before (and remember it); the caller holds the lock."""
        if key in self._seen:
            del self._seen[key]
            return True
        self._seen[key] = None
        if len(self._seen) > 4 * self.max_plans:
            self._seen.popitem(last=False)
        return False

    def _add(self, key: tuple[Any, ...], watch: Watch) -> None:
        started = time.perf_counter()
        plan, counts = specialize(self.plan, self.facts, watch)
        made = Specialization(
            input_shapes={
                name: (tuple(int(d) for d in shape) if shape is not None else None)
                for name, shape in zip(self.plan.input_names, key)
            },
            steps_before=len(self.plan.steps),
            steps_after=len(plan.steps),
            folded=counts["folded"],
            identities=counts["identities"],
            dead=counts["dead"],
            seconds=time.perf_counter() - started,
        )
        with self._lock:
            self._plans[key] = plan
            self._made[key] = made
            while len(self._plans) > self.max_plans:
                old, _ = self._plans.popitem(last=False)
                self._made.pop(old, None)
