"""oneDNN's float32 GEMM (``dnnl_sgemm``, the call ``_onednn.plain_gemm`` makes) on a weight
stored (N, K) and read as its transpose (NT) against the same weight copied to (K, N) (NN).

Why: a layer's weight arrives as (N, K) from Gemm ``transB=1`` (every CNN classifier); Hetrix
copies it to (K, N) only where that is faster (``_onednn.COPY_MIN_ROWS``).  Each call runs after
a 64 MiB write that evicts the weight from the caches, as in a model run, NT and NN alternating,
with the session's threads (PyTorch's OpenMP pool, OpenBLAS capped at one thread as in Hetrix).

    python benchmarks/gemm_layouts.py [--rows 1 2 8 16] [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from hetrix.backends import torch_setup
from hetrix.backends.numpy_cpu.kernels import _dnnl

SHAPES = [(544, 1000), (1024, 1000), (1280, 1000), (2048, 1000), (4096, 1000), (4096, 4096),
          (768, 768), (768, 3072), (3072, 768)]
"""(K, N): CNN classifiers (ShuffleNet, Inception/DenseNet, MobileNetV2, ResNet, AlexNet's
last two layers) and BERT-base's projections."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    if not _dnnl.available():
        sys.exit("oneDNN's library is not installed (pip install 'hetrix[onednn]')")
    torch_setup.import_torch()  # the session's thread set-up: bound workers, OpenBLAS capped
    evict = np.zeros(64 << 18, np.float32)
    rng = np.random.default_rng(0)
    print(f"{'rows':>4} {'K':>5} {'N':>5} {'NT us':>9} {'NN us':>9} {'NT/NN':>6}")
    for k, n in SHAPES:
        stored = rng.standard_normal((n, k), dtype=np.float32)  # (N, K), as Gemm transB=1
        copied = np.ascontiguousarray(stored.T)
        for rows in args.rows:
            x = rng.standard_normal((rows, k), dtype=np.float32)
            out = np.empty((rows, n), np.float32)
            weights = {"NT": (stored, True), "NN": (copied, False)}
            times: dict[str, list[float]] = {name: [] for name in weights}
            for i in range(args.rounds):
                for name in (("NT", "NN") if i % 2 else ("NN", "NT")):
                    weight, transposed = weights[name]
                    evict += 1.0
                    started = time.perf_counter()
                    _dnnl.gemm(x, weight, out, False, b_transposed=transposed)
                    times[name].append(time.perf_counter() - started)
            nt, nn = (statistics.median(times[name]) for name in ("NT", "NN"))
            print(f"{rows:>4} {k:>5} {n:>5} {nt * 1e6:>9.1f} {nn * 1e6:>9.1f} {nt / nn:>6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
