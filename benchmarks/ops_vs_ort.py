"""Where the time goes, per operator type, in Hetrix and in ONNX Runtime, on the same runs.

Both runtimes profile (Hetrix's ``enable_profiling``, ORT's own profiler) while they alternate
runs in one process, each run after ``--pause`` seconds of idle as in the suite (``--block``:
all of one runtime's runs, then the other's, back to back).  Prints the median wall times,
each runtime's sum of per-node times, and that sum per operator type (ORT's after its graph
rewrites: its fused Conv covers what Hetrix calls FusedConv, and it adds layout reorders).
Timing per operator is what a run spends in it, cold code and wake-ups included, which is what
this tool is for: the first node after a pause, a short op after a large one.

    python benchmarks/ops_vs_ort.py MODEL.onnx [--batch 1] [--runs 20] [--pause 0.1] [--block]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort

import hetrix
from hetrix.bench.inputs import make_feeds, model_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.1, help="idle seconds before each run")
    parser.add_argument("--block", action="store_true",
                        help="one runtime's runs back to back, then the other's")
    args = parser.parse_args()

    feeds = make_feeds(model_inputs(args.model), args.batch, {})
    ours = hetrix.InferenceSession(args.model, hetrix.SessionOptions(enable_profiling=True))
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    theirs = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        ours.run(None, feeds)
        theirs.run(None, feeds)
    ours._timings.clear()
    walls: dict[str, list[float]] = {"hetrix": [], "onnxruntime": []}
    calls = {"hetrix": lambda: ours.run(None, feeds),
             "onnxruntime": lambda: theirs.run(None, feeds)}
    order = (["hetrix"] * args.runs + ["onnxruntime"] * args.runs if args.block
             else ["hetrix", "onnxruntime"] * args.runs)
    started = time.time_ns() // 1000  # ORT's event times are microseconds since its start
    for name in order:
        time.sleep(args.pause)
        start = time.perf_counter()
        calls[name]()
        walls[name].append(time.perf_counter() - start)
    with open(theirs.end_profiling()) as file:
        events = json.load(file)
    runs = [e for e in events if e.get("name") == "model_run"][-args.runs:]
    first = runs[0]["ts"] if runs else started
    by_op: dict[str, collections.Counter[str]] = {"hetrix": collections.Counter(),
                                                  "onnxruntime": collections.Counter()}
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["ts"] >= first):
            by_op["onnxruntime"][event["args"]["op_name"]] += event["dur"] / args.runs
    for step, seconds, _flops in ours._timings:
        by_op["hetrix"][step.ctx.op_type] += seconds * 1e6 / args.runs
    medians = {name: float(np.median(values)) * 1e3 for name, values in walls.items()}
    print(f"{args.model}: batch {args.batch}, {args.runs} runs each, "
          f"{'in blocks' if args.block else 'alternating'}, pause {args.pause} s")
    ratio = medians["hetrix"] / medians["onnxruntime"]
    print(f"median wall: hetrix {medians['hetrix']:.2f} ms, onnxruntime "
          f"{medians['onnxruntime']:.2f} ms, ratio {ratio:.3f}")
    for name, ops in by_op.items():
        print(f"{name}: {sum(ops.values()) / 1e3:.2f} ms in nodes per run")
        for op, micros in ops.most_common():
            print(f"  {op:28s} {micros:9.0f} us")


if __name__ == "__main__":
    main()
