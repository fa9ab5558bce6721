"""Side-by-side benchmarks: Hetrix against ONNX Runtime and OpenVINO on the same inputs.

:func:`run_benchmark` times the runtimes in one process with alternating runs, compares their
outputs and measures each one's peak memory in a fresh process; :mod:`hetrix.bench.report` turns
the :class:`BenchResult` into a table, a JSON document and a bar chart.
"""

from __future__ import annotations

from hetrix.bench.runner import (
    Agreement,
    BenchConfig,
    BenchResult,
    LatencyStats,
    RuntimeResult,
    compare_outputs,
    count_steps,
    run_benchmark,
)

__all__ = [
    "Agreement",
    "BenchConfig",
    "BenchResult",
    "LatencyStats",
    "RuntimeResult",
    "compare_outputs",
    "count_steps",
    "run_benchmark",
]
