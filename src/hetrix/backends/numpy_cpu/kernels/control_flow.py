"""Control flow: If, Loop, Scan, SequenceMap.

Each graph attribute arrives as a :class:`~hetrix.runtime.executor.SubgraphRunner`.  The node's
inputs beyond ``ctx.num_inputs`` are the outer-scope values its subgraphs read; they are passed to
``runner.run`` unchanged, and the runner picks its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


def _split(ctx: NodeContext, args: tuple[Any, ...]) -> tuple[list[Any], tuple[Any, ...]]:
    """(the node's own inputs, the outer-scope values for its subgraphs)."""
    own = list(args[: ctx.num_inputs])
    return own, args[ctx.num_inputs :]


def _result(values: list[Any]) -> Any:
    return tuple(values) if len(values) != 1 else values[0]


@kernel("If", since=1)
def if_(ctx: NodeContext, *args: Any) -> Any:
    """Run then_branch or else_branch depending on the boolean condition."""
    (cond,), outer = _split(ctx, args)
    if np.size(cond) != 1:
        raise ValueError(f"If condition must hold one value, got shape {np.shape(cond)}")
    branch = (
        ctx.attrs["then_branch"] if bool(np.asarray(cond).reshape(())) else ctx.attrs["else_branch"]
    )
    return _result(branch.run([], outer))


@kernel("Loop", since=1)
def loop(ctx: NodeContext, *args: Any) -> Any:
    """Iterate the body while the trip count and the condition allow, stacking scan outputs."""
    own, outer = _split(ctx, args)
    max_trips, cond, carried = own[0], own[1], list(own[2:])
    body = ctx.attrs["body"]
    num_carried = len(carried)
    num_scan = body.num_outputs - 1 - num_carried
    trips = None if max_trips is None else int(np.asarray(max_trips).reshape(()))
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(()))
    scans: list[list[np.ndarray]] = [[] for _ in range(num_scan)]
    iteration = 0
    while keep_going and (trips is None or iteration < trips):
        outputs = body.run(
            [np.array(iteration, dtype=np.int64), np.array(keep_going), *carried], outer
        )
        keep_going = bool(np.asarray(outputs[0]).reshape(()))
        carried = list(outputs[1 : 1 + num_carried])
        for index, value in enumerate(outputs[1 + num_carried :]):
            scans[index].append(value)
        iteration += 1
    stacked = []
    for index, values in enumerate(scans):
        if values:
            stacked.append(np.stack(values))
        else:
            dtype = ctx.output_dtypes[num_carried + index] or np.float32
            stacked.append(np.empty((0,), dtype=dtype))
    return _result(carried + stacked)


@kernel("Scan", since=9)
def scan(ctx: NodeContext, *args: Any) -> Any:
    """Run the body over slices of the scan inputs, threading the state variables."""
    own, outer = _split(ctx, args)
    return _result(_scan(ctx, own, outer))


@kernel("Scan", since=8)
def scan_8(ctx: NodeContext, *args: Any) -> Any:
    """Scan-8: a leading batch axis on every input, and an optional sequence_lens first input."""
    own, outer = _split(ctx, args)
    sequence_lens, rest = own[0], own[1:]
    num_scan = ctx.attrs["num_scan_inputs"]
    num_state = len(rest) - num_scan
    batch = rest[0].shape[0]
    per_batch = []
    for b in range(batch):
        items = [value[b] for value in rest]
        if sequence_lens is not None:
            length = int(sequence_lens[b])
            items = items[:num_state] + [value[:length] for value in items[num_state:]]
        per_batch.append(_scan(ctx, items, outer, directions_attr="directions"))
    return _result([np.stack(values) for values in zip(*per_batch)])


def _scan(
    ctx: NodeContext, own: list[Any], outer: tuple[Any, ...], directions_attr: str = ""
) -> list[Any]:
    body = ctx.attrs["body"]
    num_scan = ctx.attrs["num_scan_inputs"]
    states, scan_inputs = own[: len(own) - num_scan], own[len(own) - num_scan :]
    num_state = len(states)
    input_axes = ctx.attrs.get("scan_input_axes") or [0] * num_scan
    input_dirs = ctx.attrs.get(directions_attr or "scan_input_directions") or [0] * num_scan
    num_out = body.num_outputs - num_state
    output_axes = ctx.attrs.get("scan_output_axes") or [0] * num_out
    output_dirs = ctx.attrs.get("scan_output_directions") or [0] * num_out
    slices = [np.moveaxis(x, axis, 0) for x, axis in zip(scan_inputs, input_axes)]
    length = slices[0].shape[0] if slices else 0
    collected: list[list[np.ndarray]] = [[] for _ in range(num_out)]
    for step in range(length):
        items = [s[length - 1 - step] if d else s[step] for s, d in zip(slices, input_dirs)]
        outputs = body.run([*states, *items], outer)
        states = list(outputs[:num_state])
        for index, value in enumerate(outputs[num_state:]):
            collected[index].append(value)
    results = list(states)
    for index, values in enumerate(collected):
        if output_dirs[index]:
            values = values[::-1]
        stacked = np.stack(values) if values else np.empty((0,), dtype=np.float32)
        axis = output_axes[index]
        axis = axis + stacked.ndim if axis < 0 else axis
        results.append(np.moveaxis(stacked, 0, axis))
    return results


@kernel("SequenceMap", since=17)
def sequence_map(ctx: NodeContext, *args: Any) -> Any:
    """Apply the body to each element of the input sequence(s); outputs are sequences."""
    own, outer = _split(ctx, args)
    body = ctx.attrs["body"]
    length = len(own[0])
    outputs: list[list[Any]] = [[] for _ in range(body.num_outputs)]
    for index in range(length):
        items = [value[index] if isinstance(value, list) else value for value in own]
        for slot, result in enumerate(body.run(items, outer)):
            outputs[slot].append(result)
    return _result(outputs)
