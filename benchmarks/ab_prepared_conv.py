"""A/B of the prepared oneDNN conv calls (``_onednn.PreparedConv``) in one process.

The machine drifts by tens of percent between processes, so both arms run in one process on one
session, alternating run by run: arm A with each node's prepared call, arm B with it switched off
(every conv then takes the full path).  Prints the median of each arm and their ratio.

    python benchmarks/ab_prepared_conv.py MODEL.onnx [--threads N] [--batch N] [--runs 60]
        [--precision bf16]
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

import hetrix


class _Off:
    """Stands in for a node's prepared call and declines every call (the full path runs)."""

    def __call__(self, *args: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    session = hetrix.InferenceSession(
        args.model, hetrix.SessionOptions(intra_op_num_threads=args.threads,
                                          precision=args.precision))
    spec = session.get_inputs()[0]
    shape = [args.batch if not isinstance(d, int) else d for d in spec.shape]
    feeds = {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(5):
        session.run(None, feeds)
    # the node caches that hold a prepared call (generic and shape-specialized plans share them)
    caches = [o for o in gc.get_objects() if type(o) is dict and "onednn_prepared" in o]
    prepared = [cache["onednn_prepared"] for cache in caches]
    off = _Off()
    arms: dict[str, list[float]] = {"prepared": [], "full path": []}
    for i in range(args.runs):
        on = i % 2 == 0
        for cache, call in zip(caches, prepared):
            cache["onednn_prepared"] = call if on else off
        start = time.perf_counter()
        session.run(None, feeds)
        arms["prepared" if on else "full path"].append(time.perf_counter() - start)
    a, b = (float(np.median(arms[k])) * 1e3 for k in ("prepared", "full path"))
    print(f"{args.model}: {len(caches)} prepared conv nodes; full path {b:.2f} ms, "
          f"prepared {a:.2f} ms, ratio {a / b:.3f} (median of {args.runs // 2} runs each)")


if __name__ == "__main__":
    main()
