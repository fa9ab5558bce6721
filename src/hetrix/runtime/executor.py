"""Walks a :class:`~hetrix.runtime.plan.Plan`: the only code that runs per inference.

Everything that can be decided once (kernel choice, slots, frees) was decided by the planner, so the
loop below only fetches inputs, calls the kernel, stores outputs and drops dead values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hetrix.errors import ExecutionError, HetrixError
from hetrix.runtime.flops import node_flops
from hetrix.runtime.memory import intermediates_held
from hetrix.runtime.plan import Plan, Step, bind_direct_calls


@dataclass
class Watch:
    """Values a run keeps for the caller as the steps write them (see :func:`execute`).

    ``values`` receives the value of each slot in ``slots`` (numpy arrays over ``max_bytes``
    excepted); ``shapes`` receives only the shape of each slot in ``shape_slots`` (``None`` for
    a value without one), so that watching a large activation does not keep it alive past its
    last reader.
    """

    slots: frozenset[int] = frozenset()
    shape_slots: frozenset[int] = frozenset()
    max_bytes: int = 1 << 20
    values: dict[int, Any] = field(default_factory=dict)
    shapes: dict[int, Any] = field(default_factory=dict)


def execute(
    plan: Plan,
    inputs: Sequence[Any],
    captured: Sequence[Any] = (),
    record: dict[str, Any] | None = None,
    timings: list[tuple[Step, float, int | None]] | None = None,
    watch: Watch | None = None,
) -> list[Any]:
    """Run the plan on ``inputs`` (in ``plan.input_slots`` order; None keeps an initializer).

    ``captured`` holds the outer-scope values of a subgraph, in ``plan.captured_names`` order.
    With ``record`` given, every value computed is stored there by name (for debugging), and
    intermediates are not freed early.  With ``timings`` given, each step's wall time in seconds
    and its FLOPs (None where not counted) are appended to it (for profiling).  With ``watch``
    given, the values and shapes of its slots are kept there (for shape specialization).
    """
    slots = plan.initial_slots.copy()
    for slot, value in zip(plan.input_slots, inputs):
        if value is not None or slots[slot] is None:
            slots[slot] = value
    for slot, value in zip(plan.captured_slots, captured):
        slots[slot] = value
    # inf and nan are valid ONNX results: one errstate for the run, not one per kernel
    with np.errstate(all="ignore"):
        if record is None and timings is None and watch is None:
            _walk_lean(plan, slots)
        elif record is None:  # a watch keeps values computed from shapes, never overwritten
            _walk(plan, slots, record, timings, watch)
        else:  # the caller gets every intermediate: no kernel may write into one
            with intermediates_held():
                _walk(plan, slots, record, timings, watch)
        if not plan.direct_calls_bound:  # the kernels have made their primitives now
            bind_direct_calls(plan)
    slots[0] = None  # an omitted optional output of a step may have written the None slot
    return [slots[slot] for slot in plan.output_slots]


def _walk_lean(plan: Plan, slots: list[Any]) -> None:
    """The run loop as most runs take it: no recording, no timing, nothing checked per step
    that the planner already knows.  Kept separate from :func:`_walk` because its few
    instructions per node are the whole per-node overhead of Hetrix: one- and two-input
    steps (nearly all) fetch their arguments without building a list, and a step's single
    output is stored without a loop."""
    steps = plan.lean_run if plan.lean_run is not None else plan.lean_steps
    for call, count, first, second, inputs, output, outputs, frees, step in steps:
        try:
            if count == 1:
                result = call(slots[first])
            elif count == 2:
                result = call(slots[first], slots[second])
            else:
                result = call(*[slots[i] for i in inputs])
        except HetrixError:
            raise
        except Exception as exc:
            args = [slots[i] for i in step.inputs]  # all of them (a direct call takes fewer)
            raise ExecutionError(_failure_message(step, args, exc)) from exc
        if type(result) is tuple:
            for slot, value in zip(outputs, result):
                slots[slot] = value
        else:
            slots[output] = result
        for slot in frees:
            slots[slot] = None


def _walk(
    plan: Plan,
    slots: list[Any],
    record: dict[str, Any] | None,
    timings: list[tuple[Step, float, int | None]] | None,
    watch: Watch | None = None,
) -> None:
    """The run loop: for each step, make the call the lean loop makes (its kernel, or the direct
    call it was switched to: a profile times what runs), store its outputs, drop dead values."""
    for step, lean in zip(plan.steps, plan.lean_steps, strict=True):
        call, call_inputs = lean[0], lean[4]  # see lean_step: the call and the slots it takes
        args = [slots[i] for i in step.inputs]
        started = time.perf_counter() if timings is not None else 0.0
        try:
            result = call(*[slots[i] for i in call_inputs])
            if timings is not None:
                seconds = time.perf_counter() - started
                work = node_flops(step.ctx.op_type, step.ctx.attrs, args, result)
                timings.append((step, seconds, work))
        except HetrixError:
            raise
        except Exception as exc:
            raise ExecutionError(_failure_message(step, args, exc)) from exc
        if type(result) is tuple:
            for slot, value in zip(step.outputs, result):
                slots[slot] = value
        else:
            slots[step.outputs[0]] = result
        if watch is not None:
            _keep_watched(step, slots, watch)
        # the frees below must release the values: these names would keep the step's inputs
        # alive through the next step (as the lean loop, which holds none, does not)
        del args, result
        if record is not None:
            for slot in step.outputs:
                if slot:
                    record[plan.slot_names[slot]] = slots[slot]
        else:
            for slot in step.frees:
                slots[slot] = None


def _keep_watched(step: Step, slots: list[Any], watch: Watch) -> None:
    """Copy into ``watch`` what it asks of the step's inputs and outputs."""
    for slot in (*step.inputs, *step.outputs):
        if slot in watch.slots:
            value = slots[slot]
            if not (isinstance(value, np.ndarray) and value.nbytes > watch.max_bytes):
                watch.values[slot] = value
        if slot in watch.shape_slots:
            watch.shapes[slot] = getattr(slots[slot], "shape", None)


def _failure_message(step: Step, args: list[Any], exc: Exception) -> str:
    ctx = step.ctx
    shapes = ", ".join(_describe(name, value) for name, value in zip(ctx.input_names, args))
    return (
        f"node '{ctx.name}' ({ctx.op_type}, opset {ctx.opset}, backend {step.backend}) failed "
        f"on inputs [{shapes}]: {type(exc).__name__}: {exc}"
    )


def _describe(name: str, value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{name}: {value.dtype}{list(value.shape)}"
    return f"{name}: {type(value).__name__}"


class SubgraphRunner:
    """What a control-flow kernel receives for a graph attribute.

    ``run(inputs, outer)`` executes the subgraph; ``outer`` is the list of outer-scope values the
    node received after its own inputs (``inputs[ctx.num_inputs:]``), shared by all subgraphs of
    the node, from which this runner picks its own.
    """

    def __init__(self, plan: Plan, outer_index: list[int]) -> None:
        self.plan = plan
        self.outer_index = outer_index
        self.input_names = plan.input_names
        self.output_names = plan.output_names

    @property
    def num_inputs(self) -> int:
        return len(self.plan.input_names)

    @property
    def num_outputs(self) -> int:
        return len(self.plan.output_names)

    def run(self, inputs: Sequence[Any], outer: Sequence[Any] = ()) -> list[Any]:
        captured = [outer[i] for i in self.outer_index]
        return execute(self.plan, inputs, captured)
