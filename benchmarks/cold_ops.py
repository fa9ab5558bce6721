"""What a small op costs right after a large one: the per-op price of a long code path.

In a model run every op follows others that streamed megabytes through the caches (a layer's
weights and activations), so its own code and data come back from memory.  This times two tiny
ops (a NumPy add and a torch add on 100 floats) right after each of several large operations,
against the same ops back to back.  On a runtime whose per-op path is long (Python, NumPy's or
PyTorch's dispatch) this is where many-small-node models and the elementwise ops of
transformers lose to a compact C++ runtime.

    python benchmarks/cold_ops.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from hetrix.backends import torch_setup
from hetrix.backends.numpy_cpu.kernels import _dnnl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    torch = torch_setup.import_torch()  # the session's thread set-up
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 768), dtype=np.float32)  # BERT-base's 3072-wide layer
    w = rng.standard_normal((768, 3072), dtype=np.float32)
    out = np.empty((128, 3072), np.float32)
    stream = rng.standard_normal(3 << 20, dtype=np.float32)  # 12 MiB
    before: dict[str, Callable[[], object]] = {
        "nothing (back to back)": lambda: None,
        "NumPy add over 12 MiB": lambda: stream + 1.0,
        "NumPy matmul 128x768x3072": lambda: x @ w,
        "torch.mm 128x768x3072": lambda: torch.mm(torch.from_numpy(x), torch.from_numpy(w)),
    }
    if _dnnl.available():
        before["oneDNN sgemm 128x768x3072"] = lambda: _dnnl.gemm(x, w, out, False)
    small_np = rng.standard_normal(100)
    small_torch = torch.from_numpy(rng.standard_normal(100, dtype=np.float32))
    print(f"{'after':28s} {'NumPy add us':>13} {'torch add us':>13}  (100 floats, medians)")
    for name, large in before.items():
        numpy_times, torch_times = [], []
        for _ in range(args.rounds):
            large()
            started = time.perf_counter()
            small_np + 1.0
            middle = time.perf_counter()
            small_torch.add(1.0)
            ended = time.perf_counter()
            numpy_times.append(middle - started)
            torch_times.append(ended - middle)
        print(f"{name:28s} {statistics.median(numpy_times) * 1e6:13.1f} "
              f"{statistics.median(torch_times) * 1e6:13.1f}")


if __name__ == "__main__":
    main()
