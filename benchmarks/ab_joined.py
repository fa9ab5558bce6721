"""A/B of joined direct calls in one process: the model with its runs of kept oneDNN primitives
replayed as one call each (as shipped) and with every step called on its own.

Both arms are sessions of the same process, run alternately (the order swapped every round)
after ``--pause`` seconds of idle each, on the inputs ``hetrix bench`` makes; with ``--ort``
ONNX Runtime is a third arm.  Checks first that both Hetrix arms compute the same outputs bit
for bit (the replay runs the same primitives on the same values), then prints each arm's
median and 25th percentile and the ratios.

    python benchmarks/ab_joined.py MODEL.onnx [--runs 40] [--pause 0.1] [--batch N]
        [--threads N] [--precision bf16] [--ort]
"""

from __future__ import annotations

import argparse

import _ab  # benchmarks/_ab.py, beside this script
import numpy as np

import hetrix
from hetrix.bench.inputs import make_feeds, model_inputs
from hetrix.runtime import plan as plan_module

WARM_UP_RUNS = 6
"""Runs before timing: a plan is specialized on the third, its direct calls are bound after its
first run and their joined call traced on the next."""


def _plans(session: hetrix.InferenceSession) -> list[plan_module.Plan]:
    specializer = session._specializer  # noqa: SLF001 - a benchmark looks inside
    return [session._plan, *(specializer._plans.values() if specializer else [])]  # noqa: SLF001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _ab.add_options(parser)
    parser.add_argument("--ort", action="store_true", help="time ONNX Runtime as a third arm")
    args = parser.parse_args()

    options = hetrix.SessionOptions(intra_op_num_threads=args.threads, precision=args.precision)
    feeds = make_feeds(model_inputs(args.model), args.batch, {})
    joined = hetrix.InferenceSession(args.model, options)
    saved = plan_module.JOIN_MIN_STEPS
    plan_module.JOIN_MIN_STEPS = 10**9  # this session's plans join nothing
    try:
        steps = hetrix.InferenceSession(args.model, options)
        for _ in range(WARM_UP_RUNS):
            steps.run(None, feeds)
    finally:
        plan_module.JOIN_MIN_STEPS = saved
    for _ in range(WARM_UP_RUNS):
        joined.run(None, feeds)
    replayed = [plan for plan in _plans(joined) if plan.lean_run
                and len(plan.lean_run) < len(plan.lean_steps)]
    if not replayed:
        parser.error(f"no steps of {args.model} are joined (no kept oneDNN primitives in a row?)")
    for plan in replayed:
        calls = len(plan.lean_run)
        print(f"plan of {len(plan.lean_steps)} steps run as {calls} call{'s' * (calls != 1)}")
    for a, b in zip(joined.run(None, feeds), steps.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    arms = {"joined": lambda: joined.run(None, feeds), "steps": lambda: steps.run(None, feeds)}
    if args.ort:
        import onnxruntime as ort

        reference = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        reference.run(None, feeds)
        arms["ort"] = lambda: reference.run(None, feeds)
    medians = _ab.alternate(arms, args.runs, args.pause)
    print(f"joined / steps: {medians['joined'] / medians['steps']:.3f}")
    if args.ort:
        print(f"joined / ORT: {medians['joined'] / medians['ort']:.3f}, "
              f"steps / ORT: {medians['steps'] / medians['ort']:.3f}")


if __name__ == "__main__":
    main()
