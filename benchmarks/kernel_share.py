"""How much of a Hetrix run is oneDNN's kernels and how much everything around them.

Each execution of a kept oneDNN primitive (``kernels/_dnnl.py``) is timed, so that a run splits
into the time inside oneDNN and the rest: Python dispatch, NumPy kernels, buffer allocation,
the run's prologue and epilogue, and library calls that are not kept primitives (the
classifier's GEMM).  ORT runs in the same process, alternating with Hetrix, after the same
``--pause`` as in the suite (``run_suite.py``), so the caches are as cold as in its table.

The question it answers: how fast would Hetrix be if the code around the kernels cost
nothing?  "kernels / ORT" is that bound, against ORT's whole run.

With ``--steps N`` it also prints the N steps that spend the most time outside oneDNN, per
step, from Hetrix's profiler (the profiler adds a little to each step).

    python benchmarks/kernel_share.py MODEL.onnx [--precision fp32|bf16] [--batch N]
                                      [--runs 15] [--pause 0.1] [--rounds 2] [--steps 0]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from typing import Any

import numpy as np

import hetrix
from hetrix.backends.numpy_cpu.kernels import _dnnl
from hetrix.bench.inputs import make_feeds, model_inputs

_inside = [0.0]
"""Seconds spent inside oneDNN's primitive executions since the last reset."""


def _time_primitive_executions() -> None:
    """Wrap the ``execute`` of every oneDNN library object made from now on (the kept
    primitives bind it when they are made, so this has to come before the session)."""
    made = _dnnl._Library.__init__
    clock = time.perf_counter

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        execute = self.execute

        def timed(*call: Any) -> Any:
            started = clock()
            status = execute(*call)
            _inside[0] += clock() - started
            return status

        self.execute = timed

    _dnnl._Library.__init__ = init  # type: ignore[method-assign]


class _StepLog(list):  # type: ignore[type-arg]
    """The profiler's per-step list, each entry stored with the oneDNN time so far."""

    def append(self, item: Any) -> None:
        super().append((item, _inside[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pause", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0)
    args = parser.parse_args()

    import onnxruntime as ort

    _time_primitive_executions()
    profiling = args.steps > 0
    session = hetrix.InferenceSession(
        args.model, hetrix.SessionOptions(precision=args.precision, enable_profiling=profiling)
    )
    if not _dnnl.available():
        raise SystemExit("oneDNN's library is not available (install the 'onednn' extra)")
    reference = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    feeds = make_feeds(model_inputs(args.model), args.batch, {}, seed=0)
    for _ in range(3):
        session.run(None, feeds)
        reference.run(None, feeds)
    clock = time.perf_counter
    outside_by_step: dict[str, list[float]] = collections.defaultdict(list)
    print(
        f"{args.model}, {args.precision}, batch {args.batch}, {args.pause} s pause before "
        f"each run, medians of {args.runs} runs per round"
    )
    for round_ in range(1, args.rounds + 1):
        total, inside, theirs = [], [], []
        for _ in range(args.runs):
            time.sleep(args.pause)
            if profiling:
                session._timings = _StepLog()
            _inside[0] = 0.0
            started = clock()
            session.run(None, feeds)
            total.append(clock() - started)
            inside.append(_inside[0])
            if profiling:
                before = 0.0
                for (step, seconds, _flops), so_far in session._timings:
                    name = f"{step.ctx.name} ({step.ctx.op_type})"
                    outside_by_step[name].append(seconds - (so_far - before))
                    before = so_far
            time.sleep(args.pause)
            started = clock()
            reference.run(None, feeds)
            theirs.append(clock() - started)
        run, kernels, ort_run = (statistics.median(v) * 1e3 for v in (total, inside, theirs))
        rest = statistics.median(np.subtract(total, inside)) * 1e3
        print(
            f"round {round_}: Hetrix {run:.2f} ms = oneDNN kernels {kernels:.2f} + the rest "
            f"{rest:.2f}; ORT {ort_run:.2f} ms; Hetrix / ORT {run / ort_run:.2f}, "
            f"kernels / ORT {kernels / ort_run:.2f}"
        )
    if profiling:
        ranked = sorted(
            ((statistics.median(v) * 1e6, k) for k, v in outside_by_step.items()), reverse=True
        )
        print(
            f"outside oneDNN within steps: {sum(us for us, _ in ranked):.0f} us over "
            f"{len(ranked)} steps (the rest is the run loop); the largest:"
        )
        for us, name in ranked[: args.steps]:
            print(f"  {us:7.0f} us  {name}")


if __name__ == "__main__":
    main()
