"""Per-node cost: a model's median run time divided by the nodes each runtime executes.

Made for the suite's many-small-ops model, where the per-node cost of the runtime, not its
kernels, is the run time.  Both runtimes first optimize the graph (the 1,201 nodes of
``small_ops_1200`` become 500 in each), so each is divided by the nodes it actually runs:
Hetrix's executed steps (from its profiler) and ORT's optimized graph.  Runs are back to back
(20 warm-up, 200 timed, median), Hetrix's and ORT's in turn.

    python benchmarks/per_node_cost.py [MODEL.onnx]   # default: the suite's small_ops model
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

import hetrix

HERE = Path(__file__).resolve().parent


def _median_seconds(run: Callable[[], object], warmup: int = 20, repeat: int = 200) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(HERE / ".cache" / "small_ops.onnx"),
                        help="default: the suite's many-small-ops model (run the suite once)")
    args = parser.parse_args()
    import onnxruntime as ort

    options = hetrix.SessionOptions(enable_profiling=True)
    session = hetrix.InferenceSession(args.model, options)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
             .astype(np.float32) for i in session.get_inputs()}
    session.run(None, feeds)
    steps = len(session.profile_nodes())  # the steps one run executes (one profiled run)
    timed = hetrix.InferenceSession(args.model)  # the same plan, without profiling

    with tempfile.TemporaryDirectory() as folder:
        ort_options = ort.SessionOptions()
        ort_options.log_severity_level = 3
        ort_options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        reference = ort.InferenceSession(args.model, ort_options,
                                         providers=["CPUExecutionProvider"])
        ort_nodes = len(onnx.load(ort_options.optimized_model_filepath).graph.node)

    ours = _median_seconds(lambda: timed.run(None, feeds))
    theirs = _median_seconds(lambda: reference.run(None, feeds))
    model_nodes = len(onnx.load(args.model, load_external_data=False).graph.node)
    print(f"{Path(args.model).name}: {model_nodes} nodes in the model")
    print(f"  Hetrix: {steps} steps, {ours * 1e3:.3f} ms a run, {ours / steps * 1e6:.2f} us/step")
    print(f"  ORT:    {ort_nodes} nodes, {theirs * 1e3:.3f} ms a run, "
          f"{theirs / ort_nodes * 1e6:.2f} us/node")


if __name__ == "__main__":
    main()
