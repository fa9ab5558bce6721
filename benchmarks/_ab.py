"""What the in-process A/B scripts share (``ab_rule.py``, ``ab_dnnl.py``): their common options
and the alternating timing loop with its per-arm report.

Both arms are sessions of one process, run alternately (the order swapped every round) on the
same inputs, because this VM drifts between processes by more than the changes measured.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def add_options(parser: argparse.ArgumentParser) -> None:
    """MODEL, ``--runs``, ``--pause``, ``--batch``, ``--threads``, ``--precision``."""
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per arm")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds of idle before each run (0: back to back)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (both arms)")


def alternate(arms: dict[str, Callable[[], object]], runs: int, pause: float) -> dict[str, float]:
    """Time ``runs`` calls of each arm (one inference each), alternating, the order swapped
    every round, after ``pause`` seconds of idle each; print each arm's median and 25th
    percentile and return the medians in milliseconds."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in (names if i % 2 == 0 else names[::-1]):
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:8s}: median {medians[name]:8.2f} ms, "
              f"p25 {np.percentile(t, 25) * 1e3:8.2f} ms")
    return medians
